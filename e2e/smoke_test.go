// Package e2e holds fleetcert's black-box tests: the built fleetcert binary
// against a fleet of containers (real systemd, real OpenSSH, the k3s
// emulator) started by e2e/harness.
//
// Outside CI a machine without a Docker engine skips them with a message;
// with CI=true nothing skips and a missing engine fails.
package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/fleetcert/fleetcert/e2e/harness"
	"github.com/fleetcert/fleetcert/e2e/image/build"
	"github.com/fleetcert/fleetcert/internal/certtest"
)

// The smoke fleet: the two demo clusters, plus gamma whose agent holds a
// token pinning another CA and must never join. It is started once and
// shared by the tests of this file (bring-up is the expensive part).
var smoke struct {
	once  sync.Once
	fleet *harness.Fleet
	err   error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if fleetcertBin.owned {
		os.RemoveAll(filepath.Dir(fleetcertBin.path))
	}
	if smoke.fleet != nil {
		if err := smoke.fleet.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "e2e: removing the smoke fleet:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// requireEngine skips the test when no Docker engine answers, unless CI=true:
// then it fails, because CI must never pass by skipping.
func requireEngine(t *testing.T) {
	t.Helper()
	err := harness.EngineAvailable(context.Background())
	if err == nil {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("CI=true and no Docker engine: e2e tests cannot run: %v", err)
	}
	t.Skipf("skipping e2e: no Docker engine (%v); set CI=true to make this a failure", err)
}

type stderrLogger struct{}

func (stderrLogger) Logf(format string, args ...any) {
	if testing.Verbose() {
		fmt.Fprintf(os.Stderr, format+"\n", args...)
	}
}

func smokeFleet(t *testing.T) *harness.Fleet {
	t.Helper()
	requireEngine(t)
	smoke.once.Do(func() {
		removeDeadSmokeFleets(t)
		// alpha and beta only: the smoke fleet has a gamma and a delta of
		// its own, and the demo's RKE2 delta has e2e/rke2_test.go.
		var clusters []harness.ClusterSpec
		for _, c := range harness.DemoClusters() {
			if c.Name == "alpha" || c.Name == "beta" {
				clusters = append(clusters, c)
			}
		}
		// One node on another version, so that facts has to tell them apart.
		clusters[1].Servers[0].Version = "v1.32.3+k3s1"
		clusters = append(clusters, harness.ClusterSpec{
			Name:    "gamma",
			Servers: []harness.NodeSpec{{}},
			Agents:  []harness.NodeSpec{{Token: harness.WrongHashToken, ExpectUnready: true}},
		})
		// delta: a custom CA installed before the first start, a custom data
		// dir, tokens in the remaining places.
		clusters = append(clusters, harness.ClusterSpec{
			Name:     "delta",
			CustomCA: true,
			Servers:  []harness.NodeSpec{{DataDir: "/srv/k3s", TokenIn: []harness.TokenPlace{harness.InExecStartEquals, harness.InTokenFileConfig}}},
			Agents:   []harness.NodeSpec{{TokenIn: []harness.TokenPlace{harness.InDistroEnvFile}}},
		})
		ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
		defer cancel()
		start := time.Now()
		smoke.fleet, smoke.err = harness.Start(ctx, stderrLogger{}, harness.Spec{Name: "smoke-" + fmt.Sprint(os.Getpid()), Clusters: clusters})
		if smoke.err == nil {
			t.Logf("smoke fleet of %d nodes up in %s:", len(smoke.fleet.Nodes()), time.Since(start).Round(100*time.Millisecond))
			for _, tm := range smoke.fleet.Timings() {
				t.Logf("  %-36s %s", tm.Phase, tm.Took)
			}
		}
	})
	if smoke.err != nil {
		t.Fatalf("starting the smoke fleet: %v", smoke.err)
	}
	if smokeReleased.Load() {
		// releaseSmokeFleet (rotate_helpers_test.go) removes it when the
		// parallel tests start: only sequential tests may use it.
		t.Fatal("the smoke fleet is only for sequential tests (no t.Parallel); it is gone by now")
	}
	return smoke.fleet
}

// removeDeadSmokeFleets removes the fleets of earlier smoke runs whose test
// process is gone (killed by a timeout before TestMain could clean up).
func removeDeadSmokeFleets(t *testing.T) {
	ctx := ctxFor(t, time.Minute)
	names, err := harness.FleetNames(ctx)
	if err != nil {
		t.Logf("listing e2e fleets: %v", err)
		return
	}
	for _, name := range names {
		pid, ok := strings.CutPrefix(name, "smoke-")
		if !ok {
			continue
		}
		if _, err := os.Stat("/proc/" + pid); err == nil {
			continue // its test process still runs
		}
		removed, err := harness.RemoveLeftovers(ctx, name)
		t.Logf("removed leftovers of %s: %v %v", name, removed, err)
	}
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// TestDemoClustersComeUp: both demo clusters run, every node is Ready as
// seen from its cluster's servers, and the nodes are installed the way
// install.sh installs them.
func TestDemoClustersComeUp(t *testing.T) {
	f := smokeFleet(t)
	ctx := ctxFor(t, 2*time.Minute)
	for _, name := range []string{"alpha", "beta", "delta"} {
		c := f.Cluster(name)
		for _, s := range c.Servers {
			ready, err := f.ReadyNodes(ctx, s.Name)
			if err != nil {
				t.Fatalf("%s: k3s kubectl get nodes: %v", s.Name, err)
			}
			for _, n := range c.Nodes() {
				if !ready[n.Name] {
					t.Errorf("%s: node %s is not Ready (get nodes: %v)", s.Name, n.Name, ready)
				}
			}
		}
		for _, n := range c.Nodes() {
			r, err := f.Exec(ctx, n.Name, "systemctl is-active "+n.Unit+" && systemctl show -p Type --value "+n.Unit+" && stat -c %a /etc/systemd/system/"+n.Unit+".service.env")
			if err != nil {
				t.Fatal(err)
			}
			wantType := n.UnitType()
			if got := strings.Fields(r.Stdout); r.ExitCode != 0 || len(got) != 3 || got[1] != wantType || got[2] != "600" {
				t.Errorf("%s: unit state, Type, env file mode = %q (exit %d), want active, %s, 600", n.Name, r.Stdout, r.ExitCode, wantType)
			}
			for _, p := range n.TokenPlaces() {
				data, err := f.ReadFile(ctx, n.Name, n.TokenFile(p))
				if err != nil {
					t.Fatal(err)
				}
				if !strings.Contains(string(data), n.Token) {
					t.Errorf("%s: %s does not hold the installed token", n.Name, n.TokenFile(p))
				}
			}
		}
	}
	// The inventory's way in works: the generated key, strict host key
	// checking against the generated known_hosts, passwordless sudo.
	for _, n := range f.Nodes() {
		out, err := sshRun(f, n, "sudo -n cat /etc/hostname")
		if err != nil {
			t.Errorf("ssh to %s (127.0.0.1:%d): %v", n.Name, n.Port, err)
		} else if strings.TrimSpace(out) != n.Name {
			t.Errorf("ssh to %s reached host %q", n.Name, strings.TrimSpace(out))
		}
	}
	if tok := f.Cluster("alpha").SecureToken; !strings.HasPrefix(tok, "K10") || !strings.Contains(tok, "::server:") {
		t.Errorf("alpha's server/token is not a secure token: %q", tok)
	}
}

// TestCustomCAInstall: CA files placed in server/tls before the first start
// are the cluster's CAs, and the secure token pins the custom root: hashCA of
// a bundle is sha256 of its root's DER (docs/k3s-behaviour.md#hashca).
func TestCustomCAInstall(t *testing.T) {
	f := smokeFleet(t)
	ctx := ctxFor(t, time.Minute)
	c := f.Cluster("delta")
	rootPEM, err := os.ReadFile(c.CA.RootCert)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(rootPEM)
	if block == nil {
		t.Fatal("no PEM in " + c.CA.RootCert)
	}
	want := fmt.Sprintf("K10%x::server:", sha256.Sum256(block.Bytes))
	if !strings.HasPrefix(c.SecureToken, want) {
		t.Errorf("secure token %s…, want it to pin the custom root: %s…", c.SecureToken[:70], want)
	}
	for _, n := range c.Nodes() {
		ca := n.DataDir + "/server/tls/server-ca.crt"
		if n.Role == harness.Agent {
			ca = n.DataDir + "/agent/server-ca.crt"
		}
		data, err := f.ReadFile(ctx, n.Name, ca)
		if err != nil {
			t.Fatal(err)
		}
		if got := bytes.Count(data, []byte("BEGIN CERTIFICATE")); got != 3 || !bytes.HasSuffix(data, rootPEM) {
			t.Errorf("%s:%s holds %d certificates, want cluster CA + intermediate + the custom root", n.Name, ca, got)
		}
	}
}

// TestWrongHashAgentNeverJoins: an agent whose token pins another CA logs
// k3s's mismatch error, retries, and never becomes Ready (docs/k3s-behaviour.md#tokens).
func TestWrongHashAgentNeverJoins(t *testing.T) {
	f := smokeFleet(t)
	ctx := ctxFor(t, 2*time.Minute)
	c := f.Cluster("gamma")
	agent, server := c.Agents[0], c.Servers[0]

	const want = "token CA hash does not match the Cluster CA certificate hash"
	deadline := time.Now().Add(60 * time.Second)
	var logs string
	for {
		var err error
		if logs, err = f.Logs(ctx, agent.Name); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(logs, want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never logged %q; journal:\n%s", agent.Name, want, logs)
		}
		time.Sleep(time.Second)
	}
	// Watch it for a few retry periods (k3s retries every 2 s): it must not
	// show up Ready at any moment, and it must keep complaining.
	for range 4 {
		ready, err := f.ReadyNodes(ctx, server.Name)
		if err != nil {
			t.Fatal(err)
		}
		if ready[agent.Name] {
			t.Fatalf("agent %s with a wrong CA hash is Ready", agent.Name)
		}
		time.Sleep(2 * time.Second)
	}
	logs, _ = f.Logs(ctx, agent.Name)
	if n := strings.Count(logs, want); n < 2 {
		t.Errorf("agent logged the mismatch %d time(s); it should retry", n)
	}
	if _, err := f.ReadFile(ctx, agent.Name, "/var/lib/rancher/k3s/agent/client-kubelet.crt"); err == nil {
		t.Errorf("agent %s obtained a kubelet client certificate despite the wrong CA hash", agent.Name)
	}
}

// TestRotateCAStagedOutsideTLSChangesNothing: k3s's rotate-ca reads only
// DIR/tls/; CA files put directly in DIR are ignored, even with --force, and
// after a restart the server's CA material is what it was (docs/k3s-behaviour.md#rotate-ca-inputs).
func TestRotateCAStagedOutsideTLSChangesNothing(t *testing.T) {
	f := smokeFleet(t)
	ctx := ctxFor(t, 3*time.Minute)
	s := f.Cluster("gamma").Servers[0]
	tls := s.DataDir + "/server/tls"
	watched := []string{tls, s.DataDir + "/server/token", s.DataDir + "/server/cred"}
	before, err := f.Checksums(ctx, s.Name, watched...)
	if err != nil {
		t.Fatal(err)
	}
	if len(before) == 0 {
		t.Fatalf("no files under %s on %s", tls, s.Name)
	}
	caBefore, err := f.ReadFile(ctx, s.Name, tls+"/server-ca.crt")
	if err != nil {
		t.Fatal(err)
	}

	// Material that k3s WOULD take had it been staged in DIR/tls: with
	// --force every file is saved whatever validation says, so reading DIR
	// by mistake would change the CAs.
	dir := s.DataDir + "/server/rotate-ca-misplaced"
	for name, data := range stagedCAFiles() {
		if err := f.WriteFile(ctx, s.Name, dir+"/"+name, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	r, err := f.Exec(ctx, s.Name, "cd "+dir+" && touch * etcd/* && k3s certificate rotate-ca --path="+dir+" --force")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("rotate-ca (exit %d):\n%s%s", r.ExitCode, r.Stdout, r.Stderr)

	if err := f.RestartUnit(ctx, s.Name); err != nil {
		t.Fatal(err)
	}
	if err := f.WaitReady(ctx, "gamma"); err != nil {
		t.Fatal(err)
	}
	after, err := f.Checksums(ctx, s.Name, watched...)
	if err != nil {
		t.Fatal(err)
	}
	if diff := harness.DiffChecksums(before, after); len(diff) > 0 {
		t.Errorf("rotate-ca with files outside DIR/tls changed the server:\n  %s", strings.Join(diff, "\n  "))
	}
	caAfter, err := f.ReadFile(ctx, s.Name, tls+"/server-ca.crt")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(caBefore, caAfter) {
		t.Error("server-ca.crt changed")
	}
}

// stagedCAFiles is a complete set of new, self-signed CA files and a new
// service.key, named as rotate-ca expects them inside DIR/tls.
func stagedCAFiles() map[string][]byte {
	return certtest.NewK3sCAs(time.Now()).Files(certtest.NewRSAKey(2048))
}

// sshRun runs a command on a node over SSH exactly as the inventory says to
// reach it.
func sshRun(f *harness.Fleet, n *harness.Node, cmd string) (string, error) {
	keyPEM, err := os.ReadFile(f.SSHKeyPath())
	if err != nil {
		return "", err
	}
	signer, err := ssh.ParsePrivateKey(keyPEM)
	if err != nil {
		return "", err
	}
	hostKeys, err := knownhosts.New(f.KnownHostsPath())
	if err != nil {
		return "", err
	}
	conn, err := ssh.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", n.Port), &ssh.ClientConfig{
		User:            "fleet",
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: hostKeys,
		Timeout:         10 * time.Second,
	})
	if err != nil {
		return "", err
	}
	defer conn.Close()
	sess, err := conn.NewSession()
	if err != nil {
		return "", err
	}
	defer sess.Close()
	out, err := sess.CombinedOutput(cmd)
	return string(out), err
}

// TestInventoryValidates: fleetcert accepts the inventory the harness
// writes.
func TestInventoryValidates(t *testing.T) {
	f := smokeFleet(t)
	bin := fleetcertBinary(t)
	out, err := exec.Command(bin, "inventory", "validate", "-i", f.InventoryPath()).CombinedOutput()
	if err != nil {
		data, _ := os.ReadFile(f.InventoryPath())
		t.Fatalf("fleetcert inventory validate: %v\n%s\ninventory:\n%s", err, out, data)
	}
}

// TestFactsReportsEveryNode runs the built fleetcert's `facts` on the demo
// clusters and checks what it says about every node against what the
// harness installed.
func TestFactsReportsEveryNode(t *testing.T) {
	f := smokeFleet(t)
	bin := fleetcertBinary(t)
	ctx := ctxFor(t, 2*time.Minute)

	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, "facts", "-i", f.InventoryPath(), "--cluster", "alpha", "--cluster", "beta", "--cluster", "delta", "-o", "json")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exitErr *exec.ExitError
	if err != nil && !errors.As(err, &exitErr) {
		t.Fatal(err)
	}
	if code := cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("fleetcert facts exited %d; stderr:\n%s", code, stderr.String())
	}

	var reports []struct {
		Cluster       string `json:"cluster"`
		Node          string `json:"node"`
		InventoryRole string `json:"inventoryRole"`
		Reachable     bool   `json:"reachable"`
		Error         string `json:"error"`
		Facts         *struct {
			Role         string `json:"role"`
			Version      string `json:"version"`
			Unit         string `json:"unit"`
			UnitState    string `json:"unitState"`
			DataDir      string `json:"dataDir"`
			EmbeddedEtcd bool   `json:"embeddedEtcd"`
			CAHash       string `json:"caHash"`
			Init         string `json:"init"`
		} `json:"facts"`
		Tokens []struct {
			File      string `json:"file"`
			Class     string `json:"class"`
			Value     string `json:"value"`
			MatchesCA *bool  `json:"matchesCA"`
		} `json:"tokens"`
	}
	if err := json.Unmarshal(envelope(t, stdout.Bytes(), "nodes"), &reports); err != nil {
		t.Fatalf("facts -o json: %v\n%s", err, stdout.String())
	}
	seen := map[string]bool{}
	for _, r := range reports {
		seen[r.Node] = true
		n := f.Node(r.Node)
		if n == nil {
			t.Errorf("facts reports unknown node %s/%s", r.Cluster, r.Node)
			continue
		}
		c := f.Cluster(n.Cluster)
		if !r.Reachable || r.Facts == nil {
			t.Errorf("%s: not reachable: %s", n.Name, r.Error)
			continue
		}
		fa := r.Facts
		wantVersion := n.Version()
		if wantVersion == "" {
			wantVersion = "v1.33.5+k3s1"
		}
		wantHash := strings.TrimPrefix(strings.SplitN(c.SecureToken, "::", 2)[0], "K10")
		wantEtcd := n.Role == harness.Server && len(c.Servers) > 1
		checks := []struct {
			what      string
			got, want any
		}{
			{"cluster", r.Cluster, n.Cluster},
			{"role", fa.Role, string(n.Role)},
			{"version", fa.Version, wantVersion},
			{"unit", fa.Unit, n.Unit},
			{"unit state", fa.UnitState, "active"},
			{"data dir", fa.DataDir, n.DataDir},
			{"embedded etcd", fa.EmbeddedEtcd, wantEtcd},
			{"CA hash", fa.CAHash, wantHash},
			{"init", fa.Init, "systemd"},
		}
		for _, ch := range checks {
			if ch.got != ch.want {
				t.Errorf("%s: %s = %v, want %v", n.Name, ch.what, ch.got, ch.want)
			}
		}
		wantClass := "short"
		if strings.HasPrefix(n.Token, "K10") {
			wantClass = "secure"
		}
		for _, p := range n.TokenPlaces() {
			file := n.TokenFile(p)
			found := false
			for _, tok := range r.Tokens {
				if tok.File != file || tok.Class != wantClass {
					continue
				}
				found = true
				secret := n.Token[strings.LastIndex(n.Token, ":")+1:]
				if strings.Contains(tok.Value, secret) {
					t.Errorf("%s: facts shows the token secret from %s unredacted", n.Name, file)
				}
				if wantClass == "secure" && (tok.MatchesCA == nil || !*tok.MatchesCA) {
					t.Errorf("%s: the secure token in %s should match the CA", n.Name, file)
				}
			}
			if !found {
				t.Errorf("%s: facts does not report the %s token in %s (%s); tokens: %+v", n.Name, wantClass, file, p, r.Tokens)
			}
		}
	}
	for _, c := range []string{"alpha", "beta", "delta"} {
		for _, n := range f.Cluster(c).Nodes() {
			if !seen[n.Name] {
				t.Errorf("facts does not report node %s", n.Name)
			}
		}
	}
}

// fleetcertBinary builds fleetcert from this checkout once per test binary,
// or returns $FLEETCERT_BIN when set (a binary built beforehand).
var fleetcertBin struct {
	once  sync.Once
	path  string
	err   error
	owned bool
}

func fleetcertBinary(t *testing.T) string {
	t.Helper()
	if bin := os.Getenv("FLEETCERT_BIN"); bin != "" {
		return bin
	}
	fleetcertBin.once.Do(func() {
		fleetcertBin.owned = true
		root, err := build.FindRepoRoot()
		if err != nil {
			fleetcertBin.err = err
			return
		}
		dir, err := os.MkdirTemp("", "fleetcert-e2e-bin-")
		if err != nil {
			fleetcertBin.err = err
			return
		}
		fleetcertBin.path = filepath.Join(dir, "fleetcert")
		cmd := exec.Command("go", "build", "-o", fleetcertBin.path, ".")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			fleetcertBin.err = fmt.Errorf("go build fleetcert: %v\n%s", err, out)
		}
	})
	if fleetcertBin.err != nil {
		t.Fatal(fleetcertBin.err)
	}
	return fleetcertBin.path
}

// TestNodeControls exercises the harness's fault helpers that later e2e
// tests rely on: a node cut off the network is unreachable over SSH and
// comes back on Reconnect; a stopped container keeps its SSH port, host
// keys and enabled k3s unit when started again.
func TestNodeControls(t *testing.T) {
	f := smokeFleet(t)
	ctx := ctxFor(t, 3*time.Minute)
	n := f.Cluster("beta").Agents[0]

	if err := f.Disconnect(ctx, n.Name); err != nil {
		t.Fatal(err)
	}
	if _, err := sshRun(f, n, "true"); err == nil {
		t.Errorf("ssh to disconnected %s succeeded", n.Name)
	}
	if err := f.Reconnect(ctx, n.Name); err != nil {
		t.Fatal(err)
	}
	if out, err := sshRun(f, n, "hostname"); err != nil || strings.TrimSpace(out) != n.Name {
		t.Errorf("ssh after Reconnect: %q, %v", out, err)
	}

	if err := f.RestartNode(ctx, n.Name); err != nil {
		t.Fatal(err)
	}
	if out, err := sshRun(f, n, "hostname"); err != nil || strings.TrimSpace(out) != n.Name {
		t.Errorf("ssh after RestartNode (same port, same host key): %q, %v", out, err)
	}
	// The unit is enabled, so systemd starts k3s-agent at boot.
	deadline := time.Now().Add(time.Minute)
	for {
		r, err := f.Exec(ctx, n.Name, "systemctl is-active "+n.Unit)
		if err != nil {
			t.Fatal(err)
		}
		if strings.TrimSpace(r.Stdout) == "active" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s after restart: %s is %q", n.Name, n.Unit, r.Stdout)
		}
		time.Sleep(250 * time.Millisecond)
	}
	if err := f.WaitReady(ctx, "beta"); err != nil {
		t.Fatal(err)
	}
}

// TestFaultSwitch: a fleet started with the test's own *testing.T (removed
// by t.Cleanup) with a server told to fail at start (/etc/k3semu/fault): the
// rest of the cluster comes up, the faulty server never becomes active, and
// systemd keeps restarting it (Restart=always).
func TestFaultSwitch(t *testing.T) {
	requireEngine(t)
	ctx := ctxFor(t, 3*time.Minute)
	f, err := harness.Start(ctx, t, harness.Spec{Clusters: []harness.ClusterSpec{{
		Name:    "faulty",
		Servers: []harness.NodeSpec{{}, {Fault: "fail-start", ExpectUnready: true}},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	bad := f.Cluster("faulty").Servers[1]
	time.Sleep(6 * time.Second) // more than RestartSec=5s
	r, err := f.Exec(ctx, bad.Name, "systemctl show -p ActiveState -p NRestarts "+bad.Unit+"; k3s kubectl get --raw /readyz")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(r.Stdout, "ActiveState=active\n") || r.ExitCode == 0 {
		t.Errorf("server with fault fail-start looks healthy:\n%s%s", r.Stdout, r.Stderr)
	}
	if strings.Contains(r.Stdout, "NRestarts=0\n") {
		t.Errorf("systemd did not restart the failing server:\n%s", r.Stdout)
	}
}
