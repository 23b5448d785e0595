// Command k3semu is a k3s emulator for fleetcert's e2e tests: installed as
// /usr/local/bin/k3s in the node image, it follows docs/k3s-behaviour.md
// closely enough that what a real k3s punishes is punished here too. It
// deliberately shares no code with fleetcert.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	argv, environ := os.Args, os.Environ()
	if realArgv, realEnv, hidden, err := recoverHidden(); err != nil {
		fmt.Fprintf(os.Stderr, "k3semu: %v\n", err)
		os.Exit(1)
	} else if hidden {
		argv, environ = realArgv, realEnv
		restoreEnviron(environ)
	} else if sub := hiddenSubcommand(argv); sub != "" {
		// Like k3s's SetProcTitle: /proc must show neither flags nor
		// environment (hide.go). Only returns on failure.
		err := hideProcess(argv, environ, sub)
		fmt.Fprintf(os.Stderr, "k3semu: hiding the process arguments: %v\n", err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	os.Exit(run(ctx, defaultEnvFor(envLookup(environ), argv[0]), argv))
}

const usage = `NAME:
   k3s - Kubernetes, but small and simple (k3semu emulator)

USAGE:
   k3s [global options] command [command options] [arguments...]

COMMANDS:
   server         Run management server
   agent          Run node agent
   kubectl        Run kubectl (get nodes, get --raw PATH)
   etcd-snapshot  Manage etcd snapshots (save)
   certificate    Manage K3s certificates (rotate, rotate-ca, check)
`

// run dispatches argv and returns the exit code.
func run(ctx context.Context, e *Env, argv []string) int {
	args := argv[1:]
	switch filepath.Base(argv[0]) {
	case staticPodEtcd, staticPodAPIServer:
		// A static pod the rke2 supervisor started (staticpods.go).
		if err := runStaticPod(ctx, e, filepath.Base(argv[0]), args); err != nil {
			e.Log.Fatalf("%v", err)
			return 1
		}
		return 0
	}
	if filepath.Base(argv[0]) == "kubectl" {
		args = append([]string{"kubectl"}, args...)
	}
	for len(args) > 0 && (args[0] == "--debug" || args[0] == "-debug") {
		args = args[1:]
	}
	if len(args) == 0 || args[0] == "--help" || args[0] == "-h" || args[0] == "help" {
		fmt.Fprint(e.Stdout, usage)
		return 0
	}
	var err error
	switch args[0] {
	case "-v", "--version":
		printVersion(e)
	case "server":
		err = runNode(ctx, e, args[1:], true)
	case "agent":
		err = runNode(ctx, e, args[1:], false)
	case "kubectl":
		if filepath.Base(argv[0]) != "kubectl" && e.prod().Name != "k3s" {
			// rke2 has no kubectl subcommand: it ships kubectl in its bin dir.
			fmt.Fprintf(os.Stderr, "No help topic for '%s'\n", args[0])
			return 3
		}
		if err = cmdKubectl(e, args[1:]); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	case "certificate", "cert":
		if len(args) > 1 && !certSubcommandExists(e.version(), args[1]) {
			fmt.Fprintf(os.Stderr, "No help topic for '%s'\n", args[1])
			return 3
		}
		err = runCertificate(e, args[1:])
	case "etcd-snapshot":
		sub := args[1:]
		if len(sub) > 0 && !strings.HasPrefix(sub[0], "-") {
			if sub[0] != "save" {
				err = fmt.Errorf("k3s emulator: etcd-snapshot %s is not supported", sub[0])
				break
			}
			sub = sub[1:]
		}
		if err == nil {
			err = cmdEtcdSnapshotSave(e, sub, time.Now())
		}
	default:
		fmt.Fprintf(os.Stderr, "No help topic for '%s'\n", args[0])
		return 3
	}
	if err != nil {
		e.Log.Fatalf("%v", err)
		return 1
	}
	return 0
}

func runCertificate(e *Env, args []string) error {
	if len(args) == 0 {
		return errors.New("certificate: a subcommand is required (rotate, rotate-ca, check)")
	}
	switch args[0] {
	case "rotate-ca":
		return cmdRotateCA(e, args[1:])
	case "rotate":
		return cmdCertRotate(e, args[1:], time.Now())
	case "check":
		return cmdCertCheck(e, args[1:], e.now())
	}
	return fmt.Errorf("No help topic for '%s'", args[0])
}

// certSubcommandExists hides subcommands the emulated version lacks.
func certSubcommandExists(version, sub string) bool {
	switch sub {
	case "rotate-ca":
		return hasRotateCA(version)
	case "check":
		return hasCertCheck(version)
	}
	return true
}

func printVersion(e *Env) {
	v := e.version()
	sum := sha256.Sum256([]byte(v))
	fmt.Fprintf(e.Stdout, "%s version %s (%s)\n", e.prod().Name, v, hex.EncodeToString(sum[:])[:8])
	fmt.Fprintf(e.Stdout, "go version %s\n", runtime.Version())
}

// runNode runs `k3s server` or `k3s agent` after applying any fault.
func runNode(ctx context.Context, e *Env, args []string, isServer bool) error {
	cfg, err := loadNodeConfig(ctx, e, isServer, args)
	if err != nil {
		return err
	}
	if stop, err := applyFault(ctx, e); stop || err != nil {
		return err
	}
	if h := tokenHashFault(e); h != "" && !isServer {
		e.Log.Warnf("k3semu fault token-hash: joining as if the token pinned %s", h)
		cfg.Token = pinTokenHash(cfg.Token, h)
	}
	if isServer {
		return runServer(ctx, e, cfg)
	}
	return runAgent(ctx, e, cfg)
}

// faultPoll is how often a hang-start looks whether its fault was cleared.
var faultPoll = time.Second

// applyFault reads <EmuDir>/fault: fail-start, hang-start or crash-after=N
// (token-hash=HASH is tokenHashFault's).
// stop=true means the node must not start (hang-start ended by a signal).
func applyFault(ctx context.Context, e *Env) (stop bool, err error) {
	b, err := os.ReadFile(filepath.Join(e.EmuDir, "fault"))
	if err != nil {
		return false, nil
	}
	fault := strings.TrimSpace(string(b))
	switch {
	case fault == "":
		return false, nil
	case fault == "fail-start":
		e.Log.Errorf("k3semu fault fail-start: failing at start")
		return true, errors.New("k3semu fault: fail-start")
	case fault == "hang-start":
		// Like a k3s start stuck on something outside it (etcd quorum, a
		// full disk): it waits as long as the cause lasts. Clearing the
		// fault is fixing the cause: the start then goes on, as a real
		// k3s's would, without anyone restarting the unit.
		e.Log.Warnf("k3semu fault hang-start: never becoming ready")
		for {
			select {
			case <-ctx.Done():
				return true, nil
			case <-time.After(faultPoll):
			}
			b, err := os.ReadFile(filepath.Join(e.EmuDir, "fault"))
			if err != nil || strings.TrimSpace(string(b)) != "hang-start" {
				e.Log.Infof("k3semu fault hang-start cleared: starting")
				return applyFault(ctx, e)
			}
		}
	case strings.HasPrefix(fault, "crash-after="):
		n, err := strconv.Atoi(strings.TrimPrefix(fault, "crash-after="))
		if err != nil || n < 0 {
			return true, fmt.Errorf("k3semu fault: bad %q", fault)
		}
		go func() {
			time.Sleep(time.Duration(n) * time.Second)
			e.Log.Fatalf("k3semu fault crash-after=%d: crashing", n)
			os.Exit(1)
		}()
		return false, nil
	case strings.HasPrefix(fault, "token-hash="):
		return false, nil // tokenHashFault
	}
	e.Log.Warnf("k3semu: unknown fault %q ignored", fault)
	return false, nil
}

// tokenHashFault is the HASH of the fault token-hash=HASH, read at start:
// an agent then joins as if its token pinned HASH, whatever its token
// sources say, like an agent whose token was left on an old CA somewhere
// fleetcert did not rewrite. "" without that fault.
func tokenHashFault(e *Env) string {
	b, err := os.ReadFile(filepath.Join(e.EmuDir, "fault"))
	if err != nil {
		return ""
	}
	h, ok := strings.CutPrefix(strings.TrimSpace(string(b)), "token-hash=")
	if !ok {
		return ""
	}
	return h
}

// pinTokenHash makes token pin hash: a secure token's hash is replaced, a
// short one becomes K10<hash>::server:<token>.
func pinTokenHash(token, hash string) string {
	if rest, ok := strings.CutPrefix(token, "K10"); ok {
		if _, creds, ok := strings.Cut(rest, "::"); ok {
			return "K10" + hash + "::" + creds
		}
	}
	return "K10" + hash + "::server:" + token
}
