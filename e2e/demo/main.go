// Command demo shows fleetcert on a container fleet:
//
//	go run ./e2e/demo        # make demo: start, run fleetcert, remove, exit
//	go run ./e2e/demo up     # make demo-up: start and keep it running
//	go run ./e2e/demo down   # make demo-down: remove it
//
// The fleet is harness.DemoClusters: alpha (3 servers + 2 agents, secure
// tokens in mixed places), beta (1 server + 1 agent, short token), gamma
// (1 server + 1 agent on OpenRC, as on Alpine, secure tokens in
// command_args and the agent's .env file) and delta (RKE2). facts and
// rotate-ca run on all of them.
package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/fleetcert/fleetcert/e2e/harness"
	"github.com/fleetcert/fleetcert/e2e/image/build"
)

// fleetName labels the demo's containers, network and volumes.
const fleetName = "demo"

type stdoutLogger struct{}

func (stdoutLogger) Logf(format string, args ...any) { fmt.Printf("  "+format+"\n", args...) }

func main() {
	mode := ""
	if len(os.Args) > 1 {
		mode = os.Args[1]
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	var err error
	switch mode {
	case "":
		err = demo(ctx)
	case "up":
		err = up(ctx)
	case "down":
		err = down(ctx)
	default:
		err = fmt.Errorf("usage: go run ./e2e/demo [up|down]")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

// keptDir is where `demo up` keeps the inventory and keys, so that they
// outlive this process and `demo down` can remove them.
func keptDir() (string, error) {
	cache, err := build.DefaultCacheDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(cache, "demo"), nil
}

func refuseIfRunning(ctx context.Context) error {
	if err := harness.EngineAvailable(ctx); err != nil {
		return fmt.Errorf("no Docker engine: %w", err)
	}
	leftovers, err := harness.Leftovers(ctx, fleetName)
	if err != nil {
		return err
	}
	if len(leftovers) > 0 {
		return fmt.Errorf("a demo fleet is already there (%s); remove it with `make demo-down`", strings.Join(leftovers, ", "))
	}
	return nil
}

func start(ctx context.Context, dir string) (*harness.Fleet, error) {
	fmt.Println("==> starting the demo fleet (node image, containers, k3s emulator)")
	t0 := time.Now()
	f, err := harness.Start(ctx, stdoutLogger{}, harness.Spec{Name: fleetName, Clusters: harness.DemoClusters(), Dir: dir})
	if err != nil {
		return nil, err
	}
	fmt.Printf("==> fleet up in %s\n\n", time.Since(t0).Round(100*time.Millisecond))
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "CLUSTER\tNODE\tROLE\tSSH\tTOKEN")
	for _, c := range f.Clusters {
		for _, n := range c.Nodes() {
			fmt.Fprintf(w, "%s\t%s\t%s\t127.0.0.1:%d\t%s\n", c.Name, n.Name, n.Role, n.Port, n.Describe())
		}
	}
	w.Flush()
	fmt.Println()
	return f, nil
}

// demo is `make demo`: the whole story, then everything is removed.
func demo(ctx context.Context) (err error) {
	if err := refuseIfRunning(ctx); err != nil {
		return err
	}
	f, err := start(ctx, "")
	if err != nil {
		return err
	}
	defer func() {
		fmt.Println("==> removing the demo fleet")
		if cerr := f.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()

	bin, cleanup, err := buildFleetcert(ctx)
	if err != nil {
		return err
	}
	defer cleanup()

	inv := f.InventoryPath()
	fmt.Printf("==> inventory %s\n", inv)
	if !hasCommand(ctx, bin, "facts") {
		fmt.Println("note: this fleetcert has no `facts` command yet; skipping it")
		return nil
	}
	fmt.Println("==> fleetcert facts -i " + inv)
	if err := run(ctx, bin, "facts", "-i", inv); err != nil {
		fmt.Printf("fleetcert facts: %v\n", err)
	}
	if !hasCommand(ctx, bin, "rotate-ca") {
		fmt.Println("\nnote: this fleetcert has no `rotate-ca` command yet; skipping the rotation")
		return nil
	}
	before := caHashes(ctx, f)
	fmt.Println("\n==> fleetcert rotate-ca -i " + inv + " --yes")
	rotErr := run(ctx, bin, "rotate-ca", "-i", inv, "--yes")
	after := caHashes(ctx, f)
	fmt.Println("\n==> CA hash (from each first server's server/token) before and after")
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "CLUSTER\tBEFORE\tAFTER")
	for _, c := range f.Clusters {
		fmt.Fprintf(w, "%s\t%s\t%s\n", c.Name, before[c.Name], after[c.Name])
	}
	w.Flush()
	if rotErr != nil {
		return fmt.Errorf("fleetcert rotate-ca: %w", rotErr)
	}
	fmt.Println("\n==> after the rotation, judged from inside the containers")
	for _, c := range f.Clusters {
		if err := f.WaitReady(ctx, c.Name); err != nil {
			return err
		}
		fmt.Printf("%s: all %d nodes Ready, servers answer readyz\n", c.Name, len(c.Nodes()))
	}
	return nil
}

// up is `make demo-up`: start, print how to use it, leave it running.
func up(ctx context.Context) error {
	if err := refuseIfRunning(ctx); err != nil {
		return err
	}
	dir, err := keptDir()
	if err != nil {
		return err
	}
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	f, err := start(ctx, dir)
	if err != nil {
		return err
	}
	first := f.Clusters[0].Servers[0]
	fmt.Printf(`The demo fleet is running.

  inventory    %s
  known_hosts  %s
  SSH key      %s

  go build -o bin/fleetcert . && bin/fleetcert facts -i %s
  ssh -i %s -o UserKnownHostsFile=%s -p %d fleet@127.0.0.1   # %s
  docker exec -it fleetcert-%s-%s bash

Remove it with: make demo-down
`, f.InventoryPath(), f.KnownHostsPath(), f.SSHKeyPath(), f.InventoryPath(),
		f.SSHKeyPath(), f.KnownHostsPath(), first.Port, first.Name, fleetName, first.Name)
	return nil
}

// down is `make demo-down`: remove whatever a demo left, found by label.
func down(ctx context.Context) error {
	removed, err := harness.RemoveLeftovers(ctx, fleetName)
	for _, r := range removed {
		fmt.Println("removed", r)
	}
	if dir, derr := keptDir(); derr == nil {
		if _, serr := os.Stat(dir); serr == nil {
			fmt.Println("removed", dir)
		}
		err = errors.Join(err, os.RemoveAll(dir))
	}
	if len(removed) == 0 && err == nil {
		fmt.Println("no demo fleet was running")
	}
	return err
}

// buildFleetcert builds the fleetcert binary of this checkout, unless
// $FLEETCERT_BIN names one already built.
func buildFleetcert(ctx context.Context) (string, func(), error) {
	if bin := os.Getenv("FLEETCERT_BIN"); bin != "" {
		return bin, func() {}, nil
	}
	root, err := build.FindRepoRoot()
	if err != nil {
		return "", nil, err
	}
	dir, err := os.MkdirTemp("", "fleetcert-demo-bin-")
	if err != nil {
		return "", nil, err
	}
	bin := filepath.Join(dir, "fleetcert")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, ".")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return "", nil, fmt.Errorf("go build fleetcert: %w\n%s", err, out)
	}
	return bin, func() { os.RemoveAll(dir) }, nil
}

// hasCommand tells whether `fleetcert <name> --help` is a known command;
// cobra answers an unknown one with `unknown command`.
func hasCommand(ctx context.Context, bin, name string) bool {
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, name, "--help")
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return err == nil && !strings.Contains(out.String(), "unknown command")
}

func run(ctx context.Context, bin string, args ...string) error {
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	return cmd.Run()
}

// caHashes reads the CA hash of each cluster from its first server's
// server/token, which k3s rewrites at every start.
func caHashes(ctx context.Context, f *harness.Fleet) map[string]string {
	out := map[string]string{}
	for _, c := range f.Clusters {
		s := c.Servers[0]
		data, err := f.ReadFile(ctx, s.Name, s.DataDir+"/server/token")
		if err != nil {
			out[c.Name] = "error: " + err.Error()
			continue
		}
		hash, _, _ := strings.Cut(strings.TrimPrefix(strings.TrimSpace(string(data)), "K10"), "::")
		out[c.Name] = hash
	}
	return out
}
