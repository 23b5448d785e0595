// Package harness starts fleets of k3s-like nodes in containers for
// fleetcert's end-to-end tests, from a declarative Spec, and writes the
// inventory and known_hosts that point fleetcert at them.
//
// Each node is a container of the e2e node image (e2e/image) running real
// systemd as PID 1, real OpenSSH and the k3s emulator at /usr/local/bin/k3s,
// installed the way install.sh installs k3s: a unit with ExecStart
// continuation lines, a 0600 .env file, config.yaml and drop-ins, and the
// join token wherever the Spec says. A node with Init "openrc" runs the
// OpenRC image instead: openrc-init as PID 1, k3s under supervise-daemon
// from the /etc/init.d script install.sh writes on OpenRC. fleetcert reaches every node as user
// "fleet" (passwordless sudo) through an sshd port published on 127.0.0.1.
//
// The contract with the emulator is e2e/README.md: a Docker volume per
// cluster at /var/lib/k3semu/shared on its servers is the datastore, the
// hostname is the node name, /etc/k3semu/{version,fault,clock} are switches.
//
// Everything is labelled fleetcert.e2e.fleet=<name>; Close removes it, and
// Start registers Close with t.Cleanup when given a testing.TB, so a failing
// test leaves nothing behind. RemoveLeftovers cleans up after a crash.
package harness

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/mount"
	mnetwork "github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"
	"github.com/testcontainers/testcontainers-go"
	tclog "github.com/testcontainers/testcontainers-go/log"
	"github.com/testcontainers/testcontainers-go/network"
	"golang.org/x/crypto/ssh"

	"github.com/fleetcert/fleetcert/e2e/image/build"
)

// Logger receives progress lines; *testing.T and *testing.B satisfy it. When
// it also has Cleanup(func()) (a testing.TB), Start registers Close there.
type Logger interface {
	Logf(format string, args ...any)
}

// Fleet is a running set of clusters.
type Fleet struct {
	Name     string
	Dir      string
	Clusters []*Cluster

	log      Logger
	cli      *client.Client
	net      *testcontainers.DockerNetwork
	volumes  []string
	nodes    map[string]*Node
	ownDir   bool
	timeout  time.Duration
	closeMu  sync.Mutex
	closed   bool
	timings  []Timing
	inv, kh  string
	keyPath  string
	pubKey   string
	imageTag string
	// openrcImage is the OpenRC nodes' image (empty while no node needs it).
	openrcImage string
}

// Cluster is one running cluster.
type Cluster struct {
	Name    string
	Servers []*Node
	Agents  []*Node
	// ShortToken is the cluster's password (the first server's token as
	// installed); SecureToken is K10<hash>::server:<password> as the first
	// server wrote it to server/token at bring-up.
	ShortToken  string
	SecureToken string
	// CA is the custom CA's root and intermediate (nil for default CAs).
	CA *CustomCA

	spec   ClusterSpec
	volume string
}

// Node is one running node.
type Node struct {
	Name    string // hostname, k3s node name, inventory name
	Cluster string
	Role    Role
	Port    int    // sshd on 127.0.0.1
	DataDir string // as installed
	Unit    string // systemd unit without .service, or the OpenRC service
	Init    string // InitSystemd or InitOpenRC
	// Token is what was installed (empty with NoToken).
	Token string

	spec      NodeSpec
	container testcontainers.Container
	id        string
}

// Timing is how long one bring-up phase took.
type Timing struct {
	Phase string
	Took  time.Duration
}

func (c *Cluster) embeddedEtcd() bool { return c.spec.ClusterInit || len(c.Servers) > 1 }
func (c *Cluster) url() string {
	if isRKE2(c.product()) {
		return fmt.Sprintf("https://%s:%d", c.Servers[0].Name, rke2Supervisor)
	}
	return "https://" + c.Servers[0].Name + ":6443"
}

// Nodes returns the cluster's servers then agents.
func (c *Cluster) Nodes() []*Node { return append(append([]*Node{}, c.Servers...), c.Agents...) }

// Start brings up the fleet the spec declares and returns once every node
// not marked ExpectUnready is healthy: servers answer readyz, and every node
// is Ready in `k3s kubectl get nodes`. On error, whatever was created is
// removed again.
func Start(ctx context.Context, log Logger, spec Spec) (f *Fleet, err error) {
	if h, ok := log.(interface{ Helper() }); ok {
		h.Helper()
	}
	if err := spec.validate(); err != nil {
		return nil, fmt.Errorf("harness: %w", err)
	}
	fleet := &Fleet{Name: spec.Name, log: log, nodes: map[string]*Node{}, timeout: spec.ReadyTimeout,
		imageTag: spec.Image, openrcImage: spec.OpenRCImage}
	f = fleet
	if tb, ok := log.(interface{ Cleanup(func()) }); ok {
		tb.Cleanup(func() {
			if err := fleet.Close(); err != nil {
				log.Logf("harness: close: %v", err)
			}
		})
	}
	defer func() {
		if err != nil {
			if cerr := f.Close(); cerr != nil {
				log.Logf("harness: cleanup after failed start: %v", cerr)
			}
			f = nil
		}
	}()
	// testcontainers' own chatter goes nowhere; the harness logs what matters.
	tclog.SetDefault(tclog.NewNoopLogger())

	if f.cli, err = dockerClient(); err != nil {
		return f, err
	}
	if err := f.prepare(ctx, &spec); err != nil {
		return f, err
	}
	if err := f.bringUp(ctx); err != nil {
		return f, err
	}
	return f, nil
}

func (f *Fleet) phase(name string, start time.Time) {
	t := Timing{name, time.Since(start).Round(10 * time.Millisecond)}
	f.timings = append(f.timings, t)
	f.log.Logf("harness: %s: %s", name, t.Took)
}

// Timings returns how long each bring-up phase took.
func (f *Fleet) Timings() []Timing { return append([]Timing(nil), f.timings...) }

// prepare makes the directory, the SSH key, the image, the network and the
// volumes, and the Node objects.
func (f *Fleet) prepare(ctx context.Context, spec *Spec) error {
	start := time.Now()
	f.Dir = spec.Dir
	if f.Dir == "" {
		d, err := os.MkdirTemp("", "fleetcert-e2e-"+spec.Name+"-")
		if err != nil {
			return err
		}
		f.Dir, f.ownDir = d, true
	} else if err := os.MkdirAll(f.Dir, 0o700); err != nil {
		return err
	}
	if err := f.makeKey(); err != nil {
		return err
	}
	needOpenRC := false
	for _, cs := range spec.Clusters {
		for _, ns := range append(append([]NodeSpec{}, cs.Servers...), cs.Agents...) {
			needOpenRC = needOpenRC || ns.Init == InitOpenRC
		}
	}
	if f.imageTag == "" {
		res, err := build.Ensure(ctx, build.Options{Logf: f.log.Logf})
		if err != nil {
			return fmt.Errorf("node image: %w", err)
		}
		f.imageTag = res.Image
	}
	if needOpenRC && f.openrcImage == "" {
		res, err := build.Ensure(ctx, build.Options{Logf: f.log.Logf, Init: build.OpenRC})
		if err != nil {
			return fmt.Errorf("OpenRC node image: %w", err)
		}
		f.openrcImage = res.Image
	}
	f.phase("image", start)

	labels := map[string]string{labelKey: "1", labelFleet: f.Name}
	var err error
	if f.net, err = network.New(ctx, network.WithLabels(labels)); err != nil {
		return fmt.Errorf("network: %w", err)
	}
	for _, cs := range spec.Clusters {
		c := &Cluster{Name: cs.Name, spec: cs, ShortToken: cs.Token}
		c.volume = "fleetcert-" + f.Name + "-" + cs.Name
		if _, err := f.cli.VolumeCreate(ctx, client.VolumeCreateOptions{Name: c.volume, Labels: labels}); err != nil {
			return fmt.Errorf("volume %s: %w", c.volume, err)
		}
		f.volumes = append(f.volumes, c.volume)
		add := func(ns NodeSpec, role Role) *Node {
			n := &Node{Name: ns.Name, Cluster: c.Name, Role: role, DataDir: ns.DataDir, Unit: ns.Unit, Init: ns.Init, spec: ns}
			if n.Unit == "" {
				n.Unit = defaultUnit(ns.Product, role)
			}
			f.nodes[n.Name] = n
			return n
		}
		for _, ns := range cs.Servers {
			c.Servers = append(c.Servers, add(ns, Server))
		}
		for _, ns := range cs.Agents {
			c.Agents = append(c.Agents, add(ns, Agent))
		}
		f.Clusters = append(f.Clusters, c)
	}
	return nil
}

// makeKey creates the fleet's ed25519 SSH key pair in Dir.
func (f *Fleet) makeKey() error {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	block, err := ssh.MarshalPrivateKey(priv, "fleetcert-e2e")
	if err != nil {
		return err
	}
	f.keyPath = filepath.Join(f.Dir, "id_ed25519")
	if err := os.WriteFile(f.keyPath, pem.EncodeToMemory(block), 0o600); err != nil {
		return err
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		return err
	}
	f.pubKey = strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sshPub))) + " fleetcert-e2e\n"
	return os.WriteFile(f.keyPath+".pub", []byte(f.pubKey), 0o644)
}

// bringUp boots every container in parallel, then installs k3s cluster by
// cluster (clusters in parallel): first server, its token, the other
// servers one at a time, the agents together; then waits for health and
// writes the inventory.
func (f *Fleet) bringUp(ctx context.Context) error {
	start := time.Now()
	var boot []func() error
	for _, c := range f.Clusters {
		var caFiles []file
		if c.spec.CustomCA {
			ca, files, err := makeCustomCA(filepath.Join(f.Dir, c.Name, "ca"), c.Servers[0].DataDir)
			if err != nil {
				return fmt.Errorf("cluster %s: custom CA: %w", c.Name, err)
			}
			c.CA, caFiles = ca, files
		}
		for _, n := range c.Nodes() {
			extra := []file(nil)
			if n == c.Servers[0] {
				extra = caFiles
			}
			boot = append(boot, func() error { return f.boot(ctx, c, n, extra) })
		}
	}
	if err := parallel(boot); err != nil {
		return err
	}
	f.phase(fmt.Sprintf("boot %d containers", len(boot)), start)

	start = time.Now()
	var installs []func() error
	for _, c := range f.Clusters {
		installs = append(installs, func() error { return f.installCluster(ctx, c) })
	}
	if err := parallel(installs); err != nil {
		return err
	}
	f.phase("install k3s and wait until Ready", start)

	start = time.Now()
	if err := f.writeInventory(ctx); err != nil {
		return err
	}
	f.phase("inventory and known_hosts", start)
	return nil
}

// boot creates and starts a node container and waits for its init to finish
// booting. OpenRC nodes get the same settings; openrc-init needs none of
// them but tmpfs /run (a fresh /run/openrc each boot), and they keep both
// kinds of node alike. Why these settings (see the package README for the
// finding):
// systemd as PID 1 needs the host cgroup tree (/sys/fs/cgroup, cgroup v1
// here), tmpfs /run and /run/lock, and capabilities to mount and manage
// cgroups. --privileged cannot be used on this engine: it asks for every
// capability, including CAP_SYS_RESOURCE which the engine itself lacks, and
// runc fails with "unable to apply caps: operation not permitted". So the
// container gets all capabilities but that one, and no seccomp or AppArmor
// confinement, which is what systemd needs from "privileged".
func (f *Fleet) boot(ctx context.Context, c *Cluster, n *Node, extra []file) error {
	files := []file{{Path: authorizedKeys, Mode: 0o644, Data: []byte(f.pubKey)}}
	if n.spec.Version != "" {
		files = append(files, file{Path: emuVersionFile, Mode: 0o644, Data: []byte(n.spec.Version + "\n")})
	}
	if n.spec.Fault != "" {
		files = append(files, file{Path: emuFaultFile, Mode: 0o644, Data: []byte(n.spec.Fault + "\n")})
	}
	if n.spec.K3sClock != 0 {
		files = append(files, file{Path: emuClockFile, Mode: 0o644, Data: []byte(n.spec.K3sClock.String() + "\n")})
	}
	if n.spec.Busybox {
		files = append(files, busyboxLinks()...)
	}
	files = append(files, extra...)

	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		port, err := freePort()
		if err != nil {
			return err
		}
		lastErr = f.create(ctx, c, n, port, files)
		// The port was free when chosen, but another fleet's container or
		// any outgoing connection (an ephemeral port: SSH clients to other
		// nodes) may take it before the engine binds it: choose again.
		if lastErr == nil || !(strings.Contains(lastErr.Error(), "port is already allocated") ||
			strings.Contains(lastErr.Error(), "address already in use")) {
			break
		}
	}
	if lastErr != nil {
		return fmt.Errorf("node %s: %w", n.Name, lastErr)
	}
	return f.waitBooted(ctx, n)
}

func (f *Fleet) create(ctx context.Context, c *Cluster, n *Node, port int, files []file) error {
	labels := map[string]string{labelKey: "1", labelFleet: f.Name, labelNode: n.Name}
	image := f.imageTag
	if n.Init == InitOpenRC {
		image = f.openrcImage
	}
	req := testcontainers.ContainerRequest{
		Image:          image,
		Name:           "fleetcert-" + f.Name + "-" + n.Name,
		Labels:         labels,
		ExposedPorts:   []string{"22/tcp"},
		Networks:       []string{f.net.Name},
		NetworkAliases: map[string][]string{f.net.Name: {n.Name}},
		ConfigModifier: func(cfg *container.Config) {
			cfg.Hostname = n.Name
			cfg.Env = append(cfg.Env, "container=docker")
		},
		HostConfigModifier: func(hc *container.HostConfig) {
			hc.CapAdd = []string{"ALL"}
			hc.CapDrop = []string{"SYS_RESOURCE"}
			hc.SecurityOpt = []string{"seccomp=unconfined", "apparmor=unconfined"}
			hc.Tmpfs = map[string]string{"/run": "rw,mode=755", "/run/lock": "rw,mode=1777", "/tmp": "rw,mode=1777"}
			hc.Mounts = append(hc.Mounts, mount.Mount{Type: mount.TypeBind, Source: "/sys/fs/cgroup", Target: "/sys/fs/cgroup", ReadOnly: true})
			if n.Role == Server {
				hc.Mounts = append(hc.Mounts, mount.Mount{Type: mount.TypeVolume, Source: c.volume, Target: sharedDatastore})
			}
			hc.PortBindings = mnetwork.PortMap{
				mnetwork.MustParsePort("22/tcp"): {{HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: strconv.Itoa(port)}},
			}
		},
	}
	// Files go in between create and start, so sshd and the emulator see
	// them at first boot.
	req.LifecycleHooks = []testcontainers.ContainerLifecycleHooks{{
		PostCreates: []testcontainers.ContainerHook{func(ctx context.Context, ctr testcontainers.Container) error {
			return putFiles(ctx, f.cli, ctr.GetContainerID(), files)
		}},
	}}
	ctr, err := testcontainers.GenericContainer(ctx, testcontainers.GenericContainerRequest{ContainerRequest: req, Started: true})
	if err != nil {
		// A container created but not started would block the name for a
		// retry: remove it now.
		if ctr != nil {
			ctr.Terminate(context.Background(), testcontainers.RemoveVolumes())
		}
		return err
	}
	n.container, n.id = ctr, ctr.GetContainerID()
	n.Port = port
	return nil
}

// waitBooted waits until systemd reports the boot finished (running or
// degraded) and sshd is active, or on OpenRC until OpenRC booted (its
// softlevel exists) and has started sshd.
// Until systemd has set up its private bus, systemctl fails at once
// ("Failed to connect to bus"), hence the polling around --wait.
func (f *Fleet) waitBooted(ctx context.Context, n *Node) error {
	if n.Init == InitOpenRC {
		return f.waitBootedOpenRC(ctx, n)
	}
	var state string
	err := f.poll(ctx, func(ctx context.Context) (bool, error) {
		r, err := execIn(ctx, f.cli, n.id, nil, "sh", "-c", "systemctl is-system-running --wait; systemctl is-active --quiet ssh")
		state = strings.TrimSpace(r.Stdout)
		return err == nil && r.ExitCode == 0 && (state == "running" || state == "degraded"), err
	})
	if err != nil {
		st, _ := execIn(context.Background(), f.cli, n.id, nil, "systemctl", "--failed", "--no-pager")
		return fmt.Errorf("node %s: systemd boot (state %q): %w\n%s", n.Name, state, err, st.Stdout)
	}
	return nil
}

// waitBootedOpenRC: openrc-init runs the sysinit, boot and default
// runlevels; sshd is in default, so "sshd started" means the boot is as
// far as the node needs it. /run/openrc/softlevel is what tells a booted
// OpenRC system (and what `rc-service` needs to work at all).
func (f *Fleet) waitBootedOpenRC(ctx context.Context, n *Node) error {
	var out string
	err := f.poll(ctx, func(ctx context.Context) (bool, error) {
		r, err := execIn(ctx, f.cli, n.id, nil, "sh", "-c", "test -e /run/openrc/softlevel && rc-service sshd status")
		out = strings.TrimSpace(r.Stdout + r.Stderr)
		return err == nil && r.ExitCode == 0, err
	})
	if err != nil {
		st, _ := execIn(context.Background(), f.cli, n.id, nil, "sh", "-c", "rc-status --all 2>&1 | head -n 30")
		return fmt.Errorf("node %s: OpenRC boot (sshd: %q): %w\n%s", n.Name, out, err, st.Stdout)
	}
	return nil
}

// installCluster installs and starts k3s on a cluster's nodes in k3s's
// order and waits for them.
func (f *Fleet) installCluster(ctx context.Context, c *Cluster) error {
	first := c.Servers[0]
	if err := f.install(ctx, c, first, f.tokenFor(c, first, true)); err != nil {
		return err
	}
	if err := f.waitServer(ctx, first); err != nil {
		return err
	}
	tok, err := f.ReadFile(ctx, first.Name, path.Join(first.DataDir, "server", "token"))
	if err != nil {
		return fmt.Errorf("cluster %s: reading the secure token: %w", c.Name, err)
	}
	c.SecureToken = strings.TrimSpace(string(tok))
	if !strings.HasPrefix(c.SecureToken, "K10") {
		return fmt.Errorf("cluster %s: %s/server/token on %s is not a secure token", c.Name, first.DataDir, first.Name)
	}

	// Servers join one at a time, as k3s docs and etcd want.
	for _, n := range c.Servers[1:] {
		if err := f.install(ctx, c, n, f.tokenFor(c, n, false)); err != nil {
			return err
		}
		if n.spec.ExpectUnready {
			continue
		}
		if err := f.waitServer(ctx, n); err != nil {
			return err
		}
	}
	// The first server asked for a secure token: reinstall it with the
	// secure one, as an operator re-running install.sh would, and restart.
	if first.spec.Token == SecureToken && first.spec.TokenValue == "" && first.Token != c.SecureToken {
		if err := f.install(ctx, c, first, c.SecureToken); err != nil {
			return err
		}
		if err := f.waitServer(ctx, first); err != nil {
			return err
		}
	}
	var agents []func() error
	for _, n := range c.Agents {
		agents = append(agents, func() error { return f.install(ctx, c, n, f.tokenFor(c, n, false)) })
	}
	if err := parallel(agents); err != nil {
		return err
	}
	return f.WaitReady(ctx, c.Name)
}

// tokenFor is the token a node is installed with.
func (f *Fleet) tokenFor(c *Cluster, n *Node, firstStart bool) string {
	if n.spec.TokenValue != "" {
		return n.spec.TokenValue
	}
	switch n.spec.Token {
	case NoToken:
		return ""
	case ShortToken:
		return c.ShortToken
	case WrongHashToken:
		sum := sha256.Sum256([]byte("not the cluster CA of " + c.Name))
		_, pw, _ := strings.Cut(strings.TrimPrefix(c.SecureToken, "K10"), "::server:")
		if pw == "" {
			pw = c.ShortToken
		}
		return "K10" + hex.EncodeToString(sum[:]) + "::server:" + pw
	case SecureToken:
		if firstStart {
			return c.ShortToken
		}
		return c.SecureToken
	default: // DefaultToken
		if n == c.Servers[0] {
			return c.ShortToken
		}
		return c.SecureToken
	}
}

// install writes the node's install.sh files and (re)starts its unit:
// daemon-reload, enable, and restart --no-block (a Type=notify start would
// block until k3s is ready, possibly for ever). On OpenRC, as install.sh
// does there: `rc-update add <service> default`, then restart (start when
// it is stopped; it returns once supervise-daemon runs k3s: there is no
// readiness on OpenRC).
func (f *Fleet) install(ctx context.Context, c *Cluster, n *Node, token string) error {
	n.Token = token
	files, prep := installFor(n, c, token).files(), ""
	if isRKE2(n.spec.Product) {
		files, prep = rke2Install(n, c, token), rke2InstallShell
	}
	if err := putFiles(ctx, f.cli, n.id, files); err != nil {
		return fmt.Errorf("node %s: install: %w", n.Name, err)
	}
	unit := n.Unit + ".service"
	script := prep + "systemctl daemon-reload && systemctl enable --quiet " + unit + " && systemctl --no-block restart " + unit
	if n.Init == InitOpenRC {
		unit = n.Unit
		script = "rc-update add " + unit + " default >/dev/null && rc-service " + unit + " restart"
	}
	r, err := execIn(ctx, f.cli, n.id, nil, "sh", "-c", script)
	if err == nil {
		err = r.Err()
	}
	if err != nil {
		return fmt.Errorf("node %s: starting %s: %w", n.Name, unit, err)
	}
	return nil
}

// waitServer polls `k3s kubectl get --raw /readyz` on a server until "ok".
func (f *Fleet) waitServer(ctx context.Context, n *Node) error {
	err := f.poll(ctx, func(ctx context.Context) (bool, error) {
		r, err := execIn(ctx, f.cli, n.id, nil, append(kubectlCmd(n), "get", "--raw", "/readyz")...)
		return err == nil && r.ExitCode == 0 && strings.TrimSpace(r.Stdout) == "ok", err
	})
	if err != nil {
		return fmt.Errorf("server %s not ready: %w\n%s", n.Name, err, f.diagnose(n))
	}
	return nil
}

// WaitReady waits until every server of the cluster answers readyz and every
// node not marked ExpectUnready is Ready in `k3s kubectl get nodes` on the
// first server.
func (f *Fleet) WaitReady(ctx context.Context, cluster string) error {
	c := f.Cluster(cluster)
	if c == nil {
		return fmt.Errorf("no cluster %q", cluster)
	}
	for _, n := range c.Servers {
		if !n.spec.ExpectUnready {
			if err := f.waitServer(ctx, n); err != nil {
				return err
			}
		}
	}
	var missing []string
	err := f.poll(ctx, func(ctx context.Context) (bool, error) {
		ready, err := f.ReadyNodes(ctx, c.Servers[0].Name)
		if err != nil {
			return false, nil
		}
		missing = missing[:0]
		for _, n := range c.Nodes() {
			if !n.spec.ExpectUnready && !ready[n.Name] {
				missing = append(missing, n.Name)
			}
		}
		return len(missing) == 0, nil
	})
	if err != nil {
		var diag strings.Builder
		for _, name := range missing {
			diag.WriteString(f.diagnose(f.nodes[name]))
		}
		return fmt.Errorf("cluster %s: nodes not Ready: %s: %w\n%s", c.Name, strings.Join(missing, ", "), err, diag.String())
	}
	return nil
}

// ReadyNodes runs `k3s kubectl get nodes` on a server and returns which
// nodes are Ready.
func (f *Fleet) ReadyNodes(ctx context.Context, server string) (map[string]bool, error) {
	n := f.nodes[server]
	if n == nil {
		return nil, fmt.Errorf("no node %q", server)
	}
	r, err := f.Exec(ctx, server, strings.Join(kubectlCmd(n), " ")+" get nodes")
	if err != nil {
		return nil, err
	}
	if err := r.Err(); err != nil {
		return nil, err
	}
	return parseGetNodes(r.Stdout), nil
}

// parseGetNodes reads kubectl's table: NAME STATUS ROLES AGE VERSION.
func parseGetNodes(out string) map[string]bool {
	ready := map[string]bool{}
	for i, line := range strings.Split(out, "\n") {
		fields := strings.Fields(line)
		if i == 0 || len(fields) < 2 || fields[0] == "NAME" {
			continue
		}
		ready[fields[0]] = fields[1] == "Ready" || strings.HasPrefix(fields[1], "Ready,")
	}
	return ready
}

func (f *Fleet) poll(ctx context.Context, ok func(context.Context) (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	var last error
	for {
		done, err := ok(ctx)
		if done {
			return nil
		}
		if err != nil {
			last = err
		}
		select {
		case <-ctx.Done():
			if last != nil {
				return fmt.Errorf("%w (last error: %v)", ctx.Err(), last)
			}
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// diagnose collects what explains a node that is not healthy: the unit's
// status and journal, or the OpenRC service's status and log file.
func (f *Fleet) diagnose(n *Node) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	script := "systemctl status --no-pager " + n.Unit + " 2>&1 | head -n 12; journalctl -u " + n.Unit + " --no-pager -n 25 2>&1"
	if n.Init == InitOpenRC {
		script = "rc-service " + n.Unit + " status 2>&1; tail -n 25 " + openRCLog(n.Unit) + " 2>&1"
	}
	r, err := execIn(ctx, f.cli, n.id, nil, "sh", "-c", script)
	if err != nil {
		return fmt.Sprintf("--- %s: %v\n", n.Name, err)
	}
	return fmt.Sprintf("--- %s:\n%s\n", n.Name, r.Stdout)
}

// Close removes the fleet's containers, network, volumes and (when Start
// made it) Dir. It is safe to call more than once.
func (f *Fleet) Close() error {
	f.closeMu.Lock()
	defer f.closeMu.Unlock()
	if f.closed {
		return nil
	}
	f.closed = true
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var errs []error
	var jobs []func() error
	for _, n := range f.nodes {
		if n.container == nil {
			continue
		}
		jobs = append(jobs, func() error {
			return n.container.Terminate(ctx, testcontainers.StopTimeout(5*time.Second), testcontainers.RemoveVolumes())
		})
	}
	errs = append(errs, parallel(jobs))
	if f.net != nil {
		errs = append(errs, f.net.Remove(ctx))
	}
	if f.cli != nil {
		for _, v := range f.volumes {
			if _, err := f.cli.VolumeRemove(ctx, v, client.VolumeRemoveOptions{Force: true}); err != nil {
				errs = append(errs, err)
			}
		}
		f.cli.Close()
	}
	if f.ownDir {
		errs = append(errs, os.RemoveAll(f.Dir))
	}
	return errors.Join(errs...)
}

// RemoveLeftovers removes every container, network and volume labelled as
// belonging to fleet name, or to any e2e fleet when name is empty (for
// `make demo-down` and after a crash). It reports what it removed.
func RemoveLeftovers(ctx context.Context, name string) ([]string, error) {
	return leftovers(ctx, name, true)
}

// FleetNames lists the names of the e2e fleets that have containers on the
// engine, running or not.
func FleetNames(ctx context.Context) ([]string, error) {
	cli, err := dockerClient()
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	ctrs, err := cli.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: make(client.Filters).Add("label", labelFleet)})
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var names []string
	for _, c := range ctrs.Items {
		if name := c.Labels[labelFleet]; !seen[name] {
			seen[name] = true
			names = append(names, name)
		}
	}
	sort.Strings(names)
	return names, nil
}

// Leftovers lists what RemoveLeftovers would remove.
func Leftovers(ctx context.Context, name string) ([]string, error) {
	return leftovers(ctx, name, false)
}

func leftovers(ctx context.Context, name string, remove bool) ([]string, error) {
	cli, err := dockerClient()
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	filter := make(client.Filters).Add("label", labelKey)
	if name != "" {
		filter = make(client.Filters).Add("label", labelFleet+"="+name)
	}
	var found []string
	var errs []error
	ctrs, err := cli.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: filter})
	if err != nil {
		return nil, err
	}
	for _, c := range ctrs.Items {
		if remove {
			if _, err := cli.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true}); err != nil {
				errs = append(errs, err)
				continue
			}
		}
		found = append(found, "container "+strings.TrimPrefix(firstOr(c.Names, c.ID), "/"))
	}
	nets, err := cli.NetworkList(ctx, client.NetworkListOptions{Filters: filter})
	if err != nil {
		return found, err
	}
	for _, n := range nets.Items {
		if remove {
			if _, err := cli.NetworkRemove(ctx, n.ID, client.NetworkRemoveOptions{}); err != nil {
				errs = append(errs, err)
				continue
			}
		}
		found = append(found, "network "+n.Name)
	}
	vols, err := cli.VolumeList(ctx, client.VolumeListOptions{Filters: filter})
	if err != nil {
		return found, err
	}
	for _, v := range vols.Items {
		if remove {
			if _, err := cli.VolumeRemove(ctx, v.Name, client.VolumeRemoveOptions{Force: true}); err != nil {
				errs = append(errs, err)
				continue
			}
		}
		found = append(found, "volume "+v.Name)
	}
	sort.Strings(found)
	return found, errors.Join(errs...)
}

func firstOr(list []string, def string) string {
	if len(list) > 0 {
		return list[0]
	}
	return def
}

// parallel runs the jobs concurrently and joins their errors.
func parallel(jobs []func() error) error {
	errs := make([]error, len(jobs))
	var wg sync.WaitGroup
	for i, job := range jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = job()
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}
