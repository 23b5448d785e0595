// Command fleet measures `fleetcert check` against real OpenSSH (make
// bench-fleet): N loopback nodes, each a real sshd from the e2e node
// image's Debian rootfs, chrooted into it with a mount and UTS namespace
// of its own, so that every node has its own hostname and its own k3s
// server files at the usual places (/var/lib/rancher/k3s,
// /etc/rancher/k3s, the install.sh unit). No systemd and no k3s run there:
// check reads every certificate, finds no running k3s to ask and says so.
//
// In alternating rounds it runs `fleetcert check --concurrency C` and a
// minimal fan-out baseline (this program, `baseline` mode: x/crypto/ssh,
// one connection and one session per node, `cat` of the same certificate
// files), each as a process of its own, and prints per run and as medians
// the wall time, the controller's CPU time and peak RSS, the CPU the nodes
// spent (the sshd processes and everything they ran), and the ratio of the
// medians of check's wall time to the baseline's.
//
//	go run ./bench/fleet [-nodes 100] [-concurrency 50] [-rounds 5] [-bin bin/fleetcert] [-rootfs TAR|DIR] [-keep]
//
// It needs root (chroot, namespaces, mounts) and the node rootfs, which
// `make e2e-image` caches in ~/.cache/fleetcert-e2e; -rootfs names another
// Debian tarball or directory with openssh-server.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/fleetcert/fleetcert/bench/internal/k3snode"
)

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case nodeMode:
			nodeMain(os.Args[2:]) // never returns
		case "baseline":
			os.Exit(baselineMain(os.Args[2:]))
		}
	}
	os.Exit(benchMain(os.Args[1:]))
}

type options struct {
	nodes, concurrency, rounds int
	bin, rootfs, work          string
	keep                       bool
}

func benchMain(args []string) int {
	var o options
	fs := flag.NewFlagSet("fleet", flag.ContinueOnError)
	fs.IntVar(&o.nodes, "nodes", 100, "loopback nodes, each a real sshd")
	fs.IntVar(&o.concurrency, "concurrency", 50, "nodes in flight, for check and the baseline alike")
	fs.IntVar(&o.rounds, "rounds", 5, "measured rounds (each runs the baseline and check once, in alternating order), after one warm-up round")
	fs.StringVar(&o.bin, "bin", "", "the fleetcert binary to measure (default: built from this checkout)")
	fs.StringVar(&o.rootfs, "rootfs", "", "Debian rootfs with openssh-server, a tarball or a directory (default: the e2e node image's, from ~/.cache/fleetcert-e2e)")
	fs.StringVar(&o.work, "work", "", "directory for the nodes' files, keys and inventory (default: a temporary one, removed at the end)")
	fs.BoolVar(&o.keep, "keep", false, "leave the nodes running after the rounds and print how to reach them (Ctrl-C stops them)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "bench-fleet:", err)
		return 1
	}
	return 0
}

func run(o options) error {
	if os.Geteuid() != 0 {
		return errors.New("needs root: every node is an sshd chrooted into the rootfs, with a mount and UTS namespace of its own")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	root, err := prepareRootfs(o.rootfs)
	if err != nil {
		return err
	}
	work := o.work
	if work == "" {
		if work, err = os.MkdirTemp("", "fleetcert-bench-fleet-"); err != nil {
			return err
		}
		defer os.RemoveAll(work)
	}
	bin := o.bin
	if bin == "" {
		bin = filepath.Join(work, "fleetcert")
		logf("building fleetcert")
		if out, err := exec.Command("go", "build", "-trimpath", "-o", bin, ".").CombinedOutput(); err != nil {
			return fmt.Errorf("go build: %v\n%s", err, out)
		}
	}
	if bin, err = filepath.Abs(bin); err != nil {
		return err
	}

	f, err := newFleet(work, root, o.nodes)
	if err != nil {
		return err
	}
	defer f.stop()
	logf("starting %d sshd nodes", o.nodes)
	if err := f.start(ctx); err != nil {
		return err
	}
	banner, _ := sshBanner(f.nodes[0].port)
	logf("nodes up: %s, %d certificate files each", banner, len(f.certFiles))

	checkArgs := []string{"check", "-i", f.inventory, "--concurrency", strconv.Itoa(o.concurrency)}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	baseArgs := []string{"baseline", "-nodes", f.nodesFile, "-key", f.key, "-known-hosts", f.knownHosts,
		"-concurrency", strconv.Itoa(o.concurrency), "-files", strings.Join(f.certFiles, ",")}

	// Before any timing: what check reports on these nodes. Findings are
	// allowed (exit 1); a node it could not read is not.
	if err := verifyCheck(ctx, bin, append(checkArgs, "-o", "json"), o.nodes, len(f.certFiles)); err != nil {
		return err
	}

	tools := []tool{{"baseline", self, baseArgs}, {"check", bin, checkArgs}}
	results := map[string][]measure{}
	fmt.Printf("\n%d nodes, concurrency %d: %s; %d certificate files per node\n", o.nodes, o.concurrency, banner, len(f.certFiles))
	fmt.Printf("%-6s %-9s %8s %8s %9s %9s %5s\n", "round", "tool", "wall", "cpu", "peak-rss", "node-cpu", "exit")
	for r := 0; r <= o.rounds; r++ {
		order := tools
		if r%2 == 1 {
			order = []tool{tools[1], tools[0]}
		}
		for _, t := range order {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			m, err := f.measure(ctx, t)
			if err != nil {
				return fmt.Errorf("%s: %w", t.name, err)
			}
			label := strconv.Itoa(r)
			if r == 0 {
				label = "warmup"
			} else {
				results[t.name] = append(results[t.name], m)
			}
			fmt.Printf("%-6s %-9s %8s %8s %9s %9s %5d\n", label, t.name, secs(m.wall), secs(m.cpu), mib(m.rss), secs(m.nodeCPU), m.exit)
		}
	}
	fmt.Println()
	meds := map[string]measure{}
	for _, t := range tools {
		m := median(results[t.name])
		meds[t.name] = m
		fmt.Printf("median %-9s wall %s  cpu %s  peak-rss %s  node-cpu %s\n", t.name, secs(m.wall), secs(m.cpu), mib(m.rss), secs(m.nodeCPU))
	}
	if o.rounds > 0 {
		fmt.Printf("check/baseline wall ratio (medians): %.2fx\n", meds["check"].wall.Seconds()/meds["baseline"].wall.Seconds())
	}

	if o.keep {
		fmt.Printf("\nnodes left running; inventory %s (key %s, known_hosts %s)\n  %s %s\nCtrl-C stops them.\n",
			f.inventory, f.key, f.knownHosts, bin, strings.Join(checkArgs, " "))
		<-ctx.Done()
	}
	return nil
}

type tool struct {
	name string
	bin  string
	args []string
}

// measure is one run of a tool.
type measure struct {
	wall, cpu, nodeCPU time.Duration
	rss                int64 // bytes
	exit               int
}

// measure runs t once over the fleet, with the nodes' CPU counted from
// before its start to after the last of its sessions ended.
func (f *fleet) measure(ctx context.Context, t tool) (measure, error) {
	var m measure
	before, err := f.nodeCPU()
	if err != nil {
		return m, err
	}
	cmd := exec.CommandContext(ctx, t.bin, t.args...)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = io.Discard, &stderr
	start := time.Now()
	err = cmd.Run()
	m.wall = time.Since(start)
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee) && ee.ExitCode() == 1 && t.name == "check":
		// findings: verifyCheck showed which, and that every node was read
	case err != nil:
		return m, fmt.Errorf("%v\n%s", err, tail(stderr.String()))
	}
	m.exit = cmd.ProcessState.ExitCode()
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	m.cpu = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	m.rss = ru.Maxrss * 1024
	if err := f.settle(ctx); err != nil {
		return m, err
	}
	after, err := f.nodeCPU()
	if err != nil {
		return m, err
	}
	m.nodeCPU = after - before
	return m, nil
}

// verifyCheck runs check once with JSON output and holds it to reading
// every certificate of every node.
func verifyCheck(ctx context.Context, bin string, args []string, nodes, certFiles int) error {
	cmd := exec.CommandContext(ctx, bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !(errors.As(err, &ee) && ee.ExitCode() == 1) {
		return fmt.Errorf("check: %v\n%s", err, tail(stderr.String()))
	}
	var r struct {
		Summary struct {
			NodesChecked, Unreachable, Certificates, Findings, ExitCode int
		}
		Clusters []struct {
			Findings []struct{ Kind, Message string }
		}
	}
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		return fmt.Errorf("check -o json: %v", err)
	}
	s := r.Summary
	kinds := map[string]int{}
	for _, c := range r.Clusters {
		for _, f := range c.Findings {
			kinds[f.Kind]++
		}
	}
	logf("check -o json: exit %d, %d/%d nodes checked, %d unreachable, %d certificates, findings %v",
		s.ExitCode, s.NodesChecked, nodes, s.Unreachable, s.Certificates, kinds)
	// A certificate file can hold several certificates (CA bundles), so
	// check counts at least one per file.
	if s.NodesChecked != nodes || s.Unreachable != 0 || s.Certificates < nodes*certFiles {
		return fmt.Errorf("check did not read every certificate of every node:\n%s", tail(stderr.String()))
	}
	return nil
}

// ---- the fleet ----------------------------------------------------------------

type node struct {
	name string
	dir  string
	port int
	cmd  *exec.Cmd
}

type fleet struct {
	work, root                 string
	nodes                      []*node
	certFiles                  []string
	key, knownHosts, inventory string
	nodesFile                  string
	cpu                        *cpuMeter
}

// newFleet writes every node's files, the client key, known_hosts and the
// inventory.
func newFleet(work, root string, n int) (*fleet, error) {
	f := &fleet{work: work, root: root}
	tmpl, err := k3snode.NewTemplate()
	if err != nil {
		return nil, err
	}
	f.certFiles = tmpl.CertFiles()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	f.key = filepath.Join(work, "id_ed25519")
	if err := writeKey(f.key, priv); err != nil {
		return nil, err
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		return nil, err
	}
	authorized := ssh.MarshalAuthorizedKey(sshPub)
	ports, err := freePorts(n)
	if err != nil {
		return nil, err
	}
	var known, inv, list strings.Builder
	fmt.Fprintf(&inv, "defaults:\n  ssh: {user: root, identityFile: %s, knownHostsFile: %s}\nclusters:\n", f.key, filepath.Join(work, "known_hosts"))
	for i := range n {
		nd := &node{name: fmt.Sprintf("n%03d", i+1), port: ports[i]}
		nd.dir = filepath.Join(work, "nodes", nd.name)
		files, err := tmpl.Node(nd.name)
		if err != nil {
			return nil, err
		}
		for p, file := range files {
			if err := writeFile(filepath.Join(nd.dir, hostDir(p)), file.Data, os.FileMode(file.Mode)); err != nil {
				return nil, err
			}
		}
		hostPub, hostPriv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, err
		}
		if err := writeKey(filepath.Join(nd.dir, "ssh", "ssh_host_ed25519_key"), hostPriv); err != nil {
			return nil, err
		}
		if err := writeFile(filepath.Join(nd.dir, "ssh", "authorized_keys"), authorized, 0o600); err != nil {
			return nil, err
		}
		hk, err := ssh.NewPublicKey(hostPub)
		if err != nil {
			return nil, err
		}
		known.WriteString(knownhosts.Line([]string{knownhosts.Normalize(fmt.Sprintf("127.0.0.1:%d", nd.port))}, hk) + "\n")
		fmt.Fprintf(&inv, "  - name: c%03d\n    servers:\n      - {name: %s, host: 127.0.0.1, ssh: {port: %d}}\n", i+1, nd.name, nd.port)
		fmt.Fprintf(&list, "%d\n", nd.port)
		f.nodes = append(f.nodes, nd)
	}
	f.knownHosts = filepath.Join(work, "known_hosts")
	f.inventory = filepath.Join(work, "hosts.yaml")
	f.nodesFile = filepath.Join(work, "ports")
	for p, data := range map[string]string{f.knownHosts: known.String(), f.inventory: inv.String(), f.nodesFile: list.String()} {
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			return nil, err
		}
	}
	return f, nil
}

// mounts are the node's own directories, bound over the shared rootfs in
// the node's mount namespace: node dir name -> path in the rootfs.
var mounts = []struct{ from, to string }{
	{"var-lib-rancher", "/var/lib/rancher"},
	{"etc-rancher", "/etc/rancher"},
	{"systemd", "/etc/systemd/system"},
	{"ssh", "/etc/ssh/bench"},
}

// hostDir maps a node path to where the node's copy lives under its dir.
func hostDir(p string) string {
	for _, m := range mounts {
		if rest, ok := strings.CutPrefix(p, m.to+"/"); ok {
			return filepath.Join(m.from, rest)
		}
	}
	panic("k3snode file outside the node's mounts: " + p)
}

// start launches every node's sshd and waits until each accepts
// connections.
func (f *fleet) start(ctx context.Context) error {
	for _, m := range mounts {
		if err := os.MkdirAll(filepath.Join(f.root, m.to), 0o755); err != nil {
			return err
		}
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	if f.cpu, err = newCPUMeter(); err != nil {
		return err
	}
	for _, nd := range f.nodes {
		for _, m := range mounts {
			if err := os.MkdirAll(filepath.Join(nd.dir, m.from), 0o755); err != nil {
				return err
			}
		}
		// Debian's stock sshd_config (UsePAM yes, ...), with only what a
		// node of this bench needs on top; -o options win over the file.
		args := []string{nodeMode, f.root, nd.dir, nd.name, "--", "/usr/sbin/sshd", "-D", "-e",
			"-o", "ListenAddress=127.0.0.1:" + strconv.Itoa(nd.port),
			"-o", "HostKey=/etc/ssh/bench/ssh_host_ed25519_key",
			"-o", "AuthorizedKeysFile=/etc/ssh/bench/authorized_keys",
			"-o", "PermitRootLogin=prohibit-password",
			"-o", "PidFile=none",
			"-o", "LogLevel=ERROR"}
		cmd := exec.Command(self, args...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWUTS, Pdeathsig: syscall.SIGTERM}
		// sshd logs what it refuses (the 6443 forward to no k3s, the
		// readiness probes below) to its node's log, not the terminal.
		log, err := os.Create(filepath.Join(nd.dir, "sshd.log"))
		if err != nil {
			return err
		}
		cmd.Stdout, cmd.Stderr = log, log
		err = cmd.Start()
		log.Close()
		if err != nil {
			return err
		}
		nd.cmd = cmd
		if err := f.cpu.add(cmd.Process.Pid); err != nil {
			return err
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, nd := range f.nodes {
		for {
			if _, err := sshBanner(nd.port); err == nil {
				break
			}
			if ctx.Err() != nil || time.Now().After(deadline) {
				return fmt.Errorf("node %s: sshd did not come up on port %d", nd.name, nd.port)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return nil
}

// settle waits until no node has a connection left: until every sshd has
// reaped what the last run started, so its CPU is counted.
func (f *fleet) settle(ctx context.Context) error {
	deadline := time.Now().Add(10 * time.Second)
	for _, nd := range f.nodes {
		p := fmt.Sprintf("/proc/%d/task/%d/children", nd.cmd.Process.Pid, nd.cmd.Process.Pid)
		for {
			b, err := os.ReadFile(p)
			if err != nil || len(bytes.TrimSpace(b)) == 0 {
				break
			}
			if ctx.Err() != nil || time.Now().After(deadline) {
				return fmt.Errorf("node %s: sessions still open after the run", nd.name)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return nil
}

func (f *fleet) nodeCPU() (time.Duration, error) {
	var pids []int
	for _, nd := range f.nodes {
		pids = append(pids, nd.cmd.Process.Pid)
	}
	return f.cpu.read(pids)
}

func (f *fleet) stop() {
	for _, nd := range f.nodes {
		if nd.cmd != nil && nd.cmd.Process != nil {
			_ = nd.cmd.Process.Signal(syscall.SIGTERM)
		}
	}
	for _, nd := range f.nodes {
		if nd.cmd != nil && nd.cmd.Process != nil {
			_ = nd.cmd.Wait()
		}
	}
	if f.cpu != nil {
		f.cpu.close()
	}
}

// ---- one node: namespaces, chroot, sshd --------------------------------------

const nodeMode = "__node"

// nodeMain runs in a fresh mount and UTS namespace (see start): it binds
// the node's own directories over the rootfs, gives it a /run and /proc,
// names the host, chroots and becomes sshd.
func nodeMain(args []string) {
	if len(args) < 5 || args[3] != "--" {
		fatalf("usage: %s ROOTFS NODEDIR HOSTNAME -- SSHD ARGS...", nodeMode)
	}
	root, dir, host, argv := args[0], args[1], args[2], args[4:]
	must := func(what string, err error) {
		if err != nil {
			fatalf("node %s: %s: %v", host, what, err)
		}
	}
	// Nothing mounted here may leak to the host's namespace.
	must("private mounts", syscall.Mount("", "/", "", syscall.MS_REC|syscall.MS_PRIVATE, ""))
	for _, m := range mounts {
		must("bind "+m.to, syscall.Mount(filepath.Join(dir, m.from), filepath.Join(root, m.to), "", syscall.MS_BIND, ""))
	}
	must("mount /run", syscall.Mount("tmpfs", filepath.Join(root, "run"), "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, "mode=755,size=16m"))
	must("mkdir /run/sshd", os.Mkdir(filepath.Join(root, "run", "sshd"), 0o755))
	must("mount /proc", syscall.Mount("proc", filepath.Join(root, "proc"), "proc", syscall.MS_NOSUID|syscall.MS_NODEV|syscall.MS_NOEXEC, ""))
	must("hostname", syscall.Sethostname([]byte(host)))
	must("chroot", syscall.Chroot(root))
	must("chdir", os.Chdir("/"))
	env := []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"}
	must("exec sshd", syscall.Exec(argv[0], argv, env))
}

// ---- the baseline --------------------------------------------------------------

// baselineMain is the minimal fan-out check is measured against: one
// x/crypto/ssh connection per node (host key verified against known_hosts,
// ed25519 key), one session that cats the certificate files, output read
// to the end, at most -concurrency nodes at once.
func baselineMain(args []string) int {
	fs := flag.NewFlagSet("baseline", flag.ContinueOnError)
	nodesFile := fs.String("nodes", "", "file with one port per line (nodes on 127.0.0.1)")
	keyFile := fs.String("key", "", "private key")
	khFile := fs.String("known-hosts", "", "known_hosts")
	conc := fs.Int("concurrency", 50, "nodes in flight")
	files := fs.String("files", "", "comma-separated files to cat on every node")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	err := baseline(*nodesFile, *keyFile, *khFile, *conc, strings.Split(*files, ","))
	if err != nil {
		fmt.Fprintln(os.Stderr, "baseline:", err)
		return 1
	}
	return 0
}

func baseline(nodesFile, keyFile, khFile string, conc int, files []string) error {
	data, err := os.ReadFile(nodesFile)
	if err != nil {
		return err
	}
	ports := strings.Fields(string(data))
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return err
	}
	signer, err := ssh.ParsePrivateKey(keyPEM)
	if err != nil {
		return err
	}
	hk, err := knownhosts.New(khFile)
	if err != nil {
		return err
	}
	cfg := &ssh.ClientConfig{User: "root", Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)}, HostKeyCallback: hk, Timeout: 30 * time.Second}
	script := "cat -- " + strings.Join(files, " ")
	sem := make(chan struct{}, conc)
	errs := make(chan error, len(ports))
	for _, port := range ports {
		sem <- struct{}{}
		go func() {
			defer func() { <-sem }()
			errs <- catOne(cfg, "127.0.0.1:"+port, script)
		}()
	}
	var all []error
	for range ports {
		if err := <-errs; err != nil {
			all = append(all, err)
		}
	}
	return errors.Join(all...)
}

func catOne(cfg *ssh.ClientConfig, addr, script string) error {
	c, err := ssh.Dial("tcp", addr, cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	s, err := c.NewSession()
	if err != nil {
		return err
	}
	defer s.Close()
	out, err := s.Output(script)
	if err != nil {
		return fmt.Errorf("%s: %w", addr, err)
	}
	if len(out) == 0 {
		return fmt.Errorf("%s: no output", addr)
	}
	return nil
}

// ---- the rootfs ----------------------------------------------------------------

// prepareRootfs returns a directory holding the rootfs: the one given, or
// the tarball (given or the e2e image's cached one) extracted once into
// ~/.cache/fleetcert-bench.
func prepareRootfs(given string) (string, error) {
	tarball := given
	if given != "" {
		if st, err := os.Stat(given); err != nil {
			return "", err
		} else if st.IsDir() {
			return given, checkRootfs(given)
		}
	} else {
		cache, err := os.UserCacheDir()
		if err != nil {
			return "", err
		}
		found, _ := filepath.Glob(filepath.Join(cache, "fleetcert-e2e", "rootfs-*.tar"))
		if len(found) == 0 {
			return "", fmt.Errorf("no node rootfs in %s: run `make e2e-image` once (it caches one), or give -rootfs a Debian tarball or directory with openssh-server",
				filepath.Join(cache, "fleetcert-e2e"))
		}
		sort.Slice(found, func(i, j int) bool { return modTime(found[i]).After(modTime(found[j])) })
		tarball = found[0]
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(cache, "fleetcert-bench", strings.TrimSuffix(filepath.Base(tarball), ".tar"))
	stamp := filepath.Join(dir, ".fleetcert-bench-extracted")
	if _, err := os.Stat(stamp); err == nil {
		return dir, checkRootfs(dir)
	}
	logf("extracting %s into %s", tarball, dir)
	_ = os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	if out, err := exec.Command("tar", "-C", dir, "--numeric-owner", "-xpf", tarball).CombinedOutput(); err != nil {
		return "", fmt.Errorf("extracting %s: %v\n%s", tarball, err, out)
	}
	if err := os.WriteFile(stamp, nil, 0o644); err != nil {
		return "", err
	}
	return dir, checkRootfs(dir)
}

func checkRootfs(dir string) error {
	for _, p := range []string{"usr/sbin/sshd", "bin/sh", "usr/bin/base64", "usr/bin/stat"} {
		if _, err := os.Stat(filepath.Join(dir, p)); err != nil {
			return fmt.Errorf("rootfs %s: %w (it needs openssh-server and coreutils)", dir, err)
		}
	}
	return nil
}

func modTime(p string) time.Time {
	st, err := os.Stat(p)
	if err != nil {
		return time.Time{}
	}
	return st.ModTime()
}

// ---- node CPU ------------------------------------------------------------------

// cpuMeter counts the CPU time of the node processes and all they start:
// with a cpuacct cgroup (v1) or a cgroup v2 when the machine has one, else
// from the sshd listeners' reaped-children times in /proc (10 ms ticks).
type cpuMeter struct {
	dir  string // cgroup directory, "" for /proc
	file string // usage file in dir
}

func newCPUMeter() (*cpuMeter, error) {
	name := fmt.Sprintf("fleetcert-bench-%d", os.Getpid())
	for _, c := range []struct{ parent, file string }{
		{"/sys/fs/cgroup/cpuacct", "cpuacct.usage"},
		{"/sys/fs/cgroup/unified", "cpu.stat"},
		{"/sys/fs/cgroup", "cpu.stat"},
	} {
		if _, err := os.Stat(filepath.Join(c.parent, c.file)); err != nil && !(c.file == "cpu.stat" && exists(filepath.Join(c.parent, "cgroup.controllers"))) {
			continue
		}
		dir := filepath.Join(c.parent, name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			continue
		}
		if exists(filepath.Join(dir, c.file)) {
			return &cpuMeter{dir: dir, file: c.file}, nil
		}
		_ = os.Remove(dir)
	}
	return &cpuMeter{}, nil
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

// add puts a freshly started node process (and so all it will start)
// into the cgroup.
func (m *cpuMeter) add(pid int) error {
	if m.dir == "" {
		return nil
	}
	return os.WriteFile(filepath.Join(m.dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644)
}

func (m *cpuMeter) read(pids []int) (time.Duration, error) {
	if m.dir != "" {
		b, err := os.ReadFile(filepath.Join(m.dir, m.file))
		if err != nil {
			return 0, err
		}
		if m.file == "cpuacct.usage" {
			ns, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
			return time.Duration(ns), err
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			if us, ok := strings.CutPrefix(sc.Text(), "usage_usec "); ok {
				n, err := strconv.ParseInt(us, 10, 64)
				return time.Duration(n) * time.Microsecond, err
			}
		}
		return 0, errors.New("cpu.stat: no usage_usec")
	}
	var ticks int64
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return 0, err
		}
		// Fields after the command name: state is field 3, utime 14,
		// stime 15, cutime 16, cstime 17.
		rest := string(b[bytes.LastIndexByte(b, ')')+2:])
		fields := strings.Fields(rest)
		for _, i := range []int{11, 12, 13, 14} {
			n, _ := strconv.ParseInt(fields[i], 10, 64)
			ticks += n
		}
	}
	return time.Duration(ticks) * 10 * time.Millisecond, nil
}

func (m *cpuMeter) close() {
	if m.dir != "" {
		// The node processes are gone; the kernel refuses while any is left.
		for range 50 {
			if os.Remove(m.dir) == nil {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// ---- helpers -------------------------------------------------------------------

func writeKey(p string, priv ed25519.PrivateKey) error {
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		return err
	}
	return writeFile(p, pem.EncodeToMemory(block), 0o600)
}

func writeFile(p string, data []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(p, data, mode); err != nil {
		return err
	}
	return os.Chmod(p, mode) // whatever the umask
}

func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// sshBanner reads the server's identification line.
func sshBanner(port int) (string, error) {
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

func median(ms []measure) measure {
	pick := func(get func(measure) int64) int64 {
		v := make([]int64, len(ms))
		for i, m := range ms {
			v[i] = get(m)
		}
		slices.Sort(v)
		if len(v) == 0 {
			return 0
		}
		if len(v)%2 == 1 {
			return v[len(v)/2]
		}
		return (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return measure{
		wall:    time.Duration(pick(func(m measure) int64 { return int64(m.wall) })),
		cpu:     time.Duration(pick(func(m measure) int64 { return int64(m.cpu) })),
		nodeCPU: time.Duration(pick(func(m measure) int64 { return int64(m.nodeCPU) })),
		rss:     pick(func(m measure) int64 { return m.rss }),
	}
}

func secs(d time.Duration) string { return fmt.Sprintf("%.3fs", d.Seconds()) }
func mib(b int64) string          { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }

func tail(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	return strings.Join(lines, "\n")
}

func logf(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(1)
}
