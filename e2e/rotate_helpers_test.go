package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
	"golang.org/x/sync/semaphore"

	"github.com/fleetcert/fleetcert/e2e/harness"
)

// Helpers of the rotate-ca / rotate-sa-key suite (rotate_test.go). The test
// judges fleetcert from outside: its own hashCA below (docs/k3s-behaviour.md#hashca, written
// independently of fleetcert's pki package), files read through docker,
// /cacerts fetched through an SSH tunnel of the test's own.

// hashCA is k3s's CA hash of a bundle (docs/k3s-behaviour.md#hashca): one cert → sha256 of the
// raw bytes; several → verify certs[0] with the self-signed (or AKI-less)
// certs of the rest as roots and the others as intermediates, and hash the
// DER of the last cert of the first chain; on any failure, sha256 of the
// raw bytes.
func hashCA(bundle []byte) string {
	raw := sha256.Sum256(bundle)
	rawHex := hex.EncodeToString(raw[:])
	var certs []*x509.Certificate
	rest := bundle
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return rawHex
		}
		certs = append(certs, c)
	}
	if len(certs) < 2 {
		return rawHex
	}
	roots, inters := x509.NewCertPool(), x509.NewCertPool()
	for _, c := range certs[1:] {
		if len(c.AuthorityKeyId) == 0 || bytes.Equal(c.AuthorityKeyId, c.SubjectKeyId) {
			roots.AddCert(c)
		} else {
			inters.AddCert(c)
		}
	}
	chains, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inters})
	if err != nil || len(chains) == 0 {
		return rawHex
	}
	chain := chains[0]
	sum := sha256.Sum256(chain[len(chain)-1].Raw)
	return hex.EncodeToString(sum[:])
}

// sshClient dials a node as the inventory says (key, strict known_hosts).
func sshClient(f *harness.Fleet, n *harness.Node) (*ssh.Client, error) {
	keyPEM, err := os.ReadFile(f.SSHKeyPath())
	if err != nil {
		return nil, err
	}
	signer, err := ssh.ParsePrivateKey(keyPEM)
	if err != nil {
		return nil, err
	}
	hostKeys, err := knownhosts.New(f.KnownHostsPath())
	if err != nil {
		return nil, err
	}
	return ssh.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", n.Port), &ssh.ClientConfig{
		User: "fleet", Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: hostKeys, Timeout: 10 * time.Second,
	})
}

// servedCA fetches GET https://127.0.0.1:6443/cacerts on a server through an
// SSH tunnel: the bundle the running k3s process loaded.
func servedCA(ctx context.Context, f *harness.Fleet, n *harness.Node) ([]byte, error) {
	conn, err := sshClient(f, n)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	// RKE2 serves /cacerts on its supervisor port, not the apiserver's.
	addr := "127.0.0.1:6443"
	if n.Product() == harness.ProductRKE2 {
		addr = "127.0.0.1:9345"
	}
	client := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{
		DialContext: func(context.Context, string, string) (net.Conn, error) {
			return conn.Dial("tcp", addr)
		},
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true}, // judged by its hash
		DisableKeepAlives: true,
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+addr+"/cacerts", nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: GET /cacerts: %s", n.Name, resp.Status)
	}
	return body, nil
}

// servedHashes returns hashCA of what every server of the cluster serves,
// failing the test if a server cannot be asked.
func servedHashes(t *testing.T, ctx context.Context, f *harness.Fleet, cluster string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, s := range f.Cluster(cluster).Servers {
		ca, err := servedCA(ctx, f, s)
		if err != nil {
			t.Fatalf("%s: /cacerts: %v", s.Name, err)
		}
		out[s.Name] = hashCA(ca)
	}
	return out
}

// clusterHash is the one hash every server serves; it fails the test when
// the servers disagree.
func clusterHash(t *testing.T, ctx context.Context, f *harness.Fleet, cluster string) string {
	t.Helper()
	hashes := servedHashes(t, ctx, f, cluster)
	var h string
	for _, v := range hashes {
		if h == "" {
			h = v
		} else if v != h {
			t.Fatalf("cluster %s: servers serve different CAs: %v", cluster, hashes)
		}
	}
	return h
}

var secureTokenRE = regexp.MustCompile(`K10([0-9a-f]{64})::([A-Za-z0-9._-]+:[A-Za-z0-9._-]+|[a-z0-9]{6}\.[a-z0-9]{16})`)

// tokenFiles are every file where the harness may have put a node's token.
func tokenFiles(n *harness.Node) []string {
	seen := map[string]bool{}
	var out []string
	for _, p := range n.TokenPlaces() {
		if f := n.TokenFile(p); !seen[f] {
			seen[f] = true
			out = append(out, f)
		}
	}
	sort.Strings(out)
	return out
}

// secureTokensIn lists the secure tokens in a node's token files: file →
// tokens found.
func secureTokensIn(t *testing.T, ctx context.Context, f *harness.Fleet, n *harness.Node) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for _, file := range tokenFiles(n) {
		data, err := f.ReadFile(ctx, n.Name, file)
		if err != nil {
			t.Fatal(err)
		}
		out[file] = secureTokenRE.FindAllString(string(data), -1)
	}
	return out
}

// creds is the part of a token after "::" (for a short token, itself).
func creds(token string) string {
	if _, c, ok := strings.Cut(token, "::"); ok {
		return c
	}
	return token
}

// tokenHash is the CA hash a secure token pins.
func tokenHash(token string) string {
	m := secureTokenRE.FindStringSubmatch(token)
	if m == nil {
		return ""
	}
	return m[1]
}

// Report of `rotate-ca -o json` / `rotate-sa-key -o json`.
type rotateReport struct {
	RunID    string          `json:"runId"`
	Command  string          `json:"command"`
	DryRun   bool            `json:"dryRun"`
	Clusters []clusterReport `json:"clusters"`
}

type clusterReport struct {
	Cluster    string `json:"cluster"`
	Outcome    string `json:"outcome"`
	Error      string `json:"error"`
	RunID      string `json:"runId"`
	Resumed    bool   `json:"resumed"`
	Mode       string `json:"mode"`
	OldHash    string `json:"oldHash"`
	TargetHash string `json:"targetHash"`
	Snapshot   string `json:"snapshot"`
	Nodes      []struct {
		Node     string   `json:"node"`
		Role     string   `json:"role"`
		Outcome  string   `json:"outcome"`
		Files    []string `json:"filesChanged"`
		Error    string   `json:"error"`
		Duration int64    `json:"durationNs"`
	} `json:"nodes"`
	Changes []struct {
		Node  string `json:"node"`
		Phase string `json:"phase"`
		What  string `json:"what"`
	} `json:"changes"`
	Warnings []string `json:"warnings"`
}

func (c clusterReport) nodeOutcome(name string) string {
	for _, n := range c.Nodes {
		if n.Node == name {
			return n.Outcome
		}
	}
	return ""
}

// fcResult is one run of the fleetcert binary.
type fcResult struct {
	Code           int
	Stdout, Stderr string
	Args           []string
}

func (r fcResult) String() string {
	return fmt.Sprintf("fleetcert %s: exit %d\n--- stdout:\n%s\n--- stderr:\n%s", strings.Join(r.Args, " "), r.Code, r.Stdout, r.Stderr)
}

// report parses the JSON report on stdout (one cluster expected).
func (r fcResult) report(t *testing.T) clusterReport {
	t.Helper()
	var rep rotateReport
	if err := json.Unmarshal([]byte(r.Stdout), &rep); err != nil {
		t.Fatalf("report is not JSON: %v\n%s", err, r)
	}
	if len(rep.Clusters) != 1 {
		t.Fatalf("report has %d clusters, want 1\n%s", len(rep.Clusters), r)
	}
	return rep.Clusters[0]
}

// fleetcert runs the built binary to its end, stdin from /dev/null (no TTY).
func fleetcert(t *testing.T, ctx context.Context, args ...string) fcResult {
	t.Helper()
	p := startFleetcert(t, ctx, nil, args...)
	return p.wait(t)
}

// fcProcess is a running fleetcert whose stderr is read line by line.
type fcProcess struct {
	cmd    *exec.Cmd
	args   []string
	stdout bytes.Buffer
	mu     sync.Mutex
	stderr bytes.Buffer
	done   chan struct{}
}

// logLine is one slog JSON line of --log-format json.
type logLine struct {
	Run     string `json:"run"`
	Level   string `json:"level"`
	Msg     string `json:"msg"`
	Cluster string `json:"cluster"`
	Node    string `json:"node"`
	Phase   string `json:"phase"`
}

// fleetcertAsIs is fleetcert without the --yes a test run of a mutating
// command gets by default: for the tests of consent itself.
func fleetcertAsIs(t *testing.T, ctx context.Context, args ...string) fcResult {
	t.Helper()
	return startFleetcertAsIs(t, ctx, nil, args...).wait(t)
}

// startFleetcert starts the binary; onLine, when set, sees every stderr
// line (parsed when it is JSON) as it arrives. A mutating command gets
// --yes, as a scheduled job passes it (tests have no terminal to answer
// on), unless the arguments already say --yes or --dry-run.
func startFleetcert(t *testing.T, ctx context.Context, onLine func(logLine, string), args ...string) *fcProcess {
	t.Helper()
	if len(args) > 0 && (args[0] == "rotate-ca" || args[0] == "rotate-sa-key" || args[0] == "rotate") &&
		!slices.Contains(args, "--yes") && !slices.Contains(args, "--dry-run") {
		args = append(args, "--yes")
	}
	return startFleetcertAsIs(t, ctx, onLine, args...)
}

func startFleetcertAsIs(t *testing.T, ctx context.Context, onLine func(logLine, string), args ...string) *fcProcess {
	t.Helper()
	bin := fleetcertBinary(t)
	p := &fcProcess{cmd: exec.CommandContext(ctx, bin, args...), args: args, done: make(chan struct{})}
	p.cmd.Stdout = &p.stdout
	pipe, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("$ fleetcert %s", strings.Join(args, " "))
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(p.done)
		sc := bufio.NewScanner(pipe)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			p.stderr.WriteString(line + "\n")
			p.mu.Unlock()
			if onLine != nil {
				var l logLine
				_ = json.Unmarshal([]byte(line), &l)
				onLine(l, line)
			}
		}
	}()
	return p
}

func (p *fcProcess) wait(t *testing.T) fcResult {
	t.Helper()
	<-p.done
	err := p.cmd.Wait()
	var exitErr *exec.ExitError
	if err != nil && !errors.As(err, &exitErr) {
		t.Fatalf("fleetcert %s: %v", strings.Join(p.args, " "), err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return fcResult{Code: p.cmd.ProcessState.ExitCode(), Stdout: p.stdout.String(), Stderr: p.stderr.String(), Args: p.args}
}

// watched are the paths whose checksums prove "nothing changed" on a node:
// every file under its data dir and /etc.
func watched(n *harness.Node) []string { return []string{n.DataDir, "/etc"} }

// fleetChecksums takes the checksums of the watched paths of every node of
// a cluster.
func fleetChecksums(t *testing.T, ctx context.Context, f *harness.Fleet, cluster string) map[string]map[string]string {
	t.Helper()
	out := map[string]map[string]string{}
	for _, n := range f.Cluster(cluster).Nodes() {
		sums, err := f.Checksums(ctx, n.Name, watched(n)...)
		if err != nil {
			t.Fatal(err)
		}
		if len(sums) < 10 {
			t.Fatalf("%s: checksums of %v found only %d files", n.Name, watched(n), len(sums))
		}
		out[n.Name] = sums
	}
	return out
}

// assertUnchanged compares fleetChecksums before and after.
func assertUnchanged(t *testing.T, ctx context.Context, f *harness.Fleet, cluster string, before map[string]map[string]string, what string) {
	t.Helper()
	after := fleetChecksums(t, ctx, f, cluster)
	for node, b := range before {
		if diff := harness.DiffChecksums(b, after[node]); len(diff) > 0 {
			t.Errorf("%s changed %s:\n  %s", what, node, strings.Join(diff, "\n  "))
		}
	}
}

// unitStart is what identifies one run of a node's k3s process: systemd's
// InvocationID, the main PID and its start time.
func unitStart(t *testing.T, ctx context.Context, f *harness.Fleet, n *harness.Node) string {
	t.Helper()
	r, err := f.Exec(ctx, n.Name, "systemctl show -p InvocationID -p MainPID -p ExecMainStartTimestamp -p NRestarts "+n.Unit)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Err(); err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(r.Stdout)
}

// writeInventory writes an inventory for one cluster of f with the given
// servers and agents (harness nodes, possibly in the wrong list on
// purpose), in the harness's own format.
func writeInventory(t *testing.T, f *harness.Fleet, cluster string, servers, agents []*harness.Node) string {
	t.Helper()
	q := strconv.Quote
	var b strings.Builder
	fmt.Fprintf(&b, "defaults:\n  ssh:\n    user: \"fleet\"\n    identityFile: %s\n    knownHostsFile: %s\n  sudo: true\nclusters:\n  - name: %s\n",
		q(f.SSHKeyPath()), q(f.KnownHostsPath()), q(cluster))
	for _, g := range []struct {
		key   string
		nodes []*harness.Node
	}{{"servers", servers}, {"agents", agents}} {
		if len(g.nodes) == 0 {
			continue
		}
		fmt.Fprintf(&b, "    %s:\n", g.key)
		for _, n := range g.nodes {
			fmt.Fprintf(&b, "      - name: %s\n        host: \"127.0.0.1\"\n        ssh:\n          port: %d\n", q(n.Name), n.Port)
			if n.DataDir != "/var/lib/rancher/k3s" {
				fmt.Fprintf(&b, "        dataDir: %s\n", q(n.DataDir))
			}
			if n.Unit != "k3s" && n.Unit != "k3s-agent" {
				fmt.Fprintf(&b, "        service: %s\n", q(n.Unit))
			}
		}
	}
	p := filepath.Join(t.TempDir(), "hosts.yaml")
	if err := os.WriteFile(p, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// rotNodes bounds the nodes of the rotate fleets alive at once, whatever
// -parallel says. Every node container runs systemd, dbus and logind, about
// six inotify instances, and fs.inotify.max_user_instances (128 by default)
// is shared by every container on the engine: past ~20 containers, systemd
// in new ones fails to boot.
var rotNodes = semaphore.NewWeighted(8)

// startRotFleet starts a fleet for one test (removed by t.Cleanup) and logs
// how long it took. Call it after t.Parallel.
func startRotFleet(t *testing.T, ctx context.Context, clusters ...harness.ClusterSpec) *harness.Fleet {
	t.Helper()
	requireEngine(t)
	fleetcertBinary(t) // build before the fleet, not while it idles
	releaseSmokeFleet(t)
	nodes := 0
	for _, c := range clusters {
		nodes += len(c.Servers) + len(c.Agents)
	}
	if err := rotNodes.Acquire(ctx, int64(min(nodes, 8))); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rotNodes.Release(int64(min(nodes, 8))) }) // runs after the fleet's Close
	start := time.Now()
	f, err := harness.Start(ctx, t, harness.Spec{Clusters: clusters})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("fleet %s (%d nodes) up in %s", f.Name, len(f.Nodes()), time.Since(start).Round(100*time.Millisecond))
	return f
}

// assertNoMismatchLogged fails if a node's k3s ever logged a token CA hash
// mismatch.
func assertNoMismatchLogged(t *testing.T, ctx context.Context, f *harness.Fleet, nodes ...*harness.Node) {
	t.Helper()
	for _, n := range nodes {
		logs, err := f.Logs(ctx, n.Name)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(logs, "\n") {
			if strings.Contains(line, "token CA hash does not match") {
				t.Errorf("%s logged a token mismatch: %s", n.Name, line)
				break
			}
		}
	}
}

// assertTokensPin checks every secure token in every token file of the
// cluster's nodes: it pins want, and its credentials are those installed.
// A node installed with a secure token must still have one in every place.
func assertTokensPin(t *testing.T, ctx context.Context, f *harness.Fleet, cluster, want string) {
	t.Helper()
	for _, n := range f.Cluster(cluster).Nodes() {
		installedSecure := strings.HasPrefix(n.Token, "K10")
		for file, toks := range secureTokensIn(t, ctx, f, n) {
			if installedSecure && len(toks) == 0 {
				t.Errorf("%s: %s holds no secure token any more", n.Name, file)
			}
			for _, tok := range toks {
				if h := tokenHash(tok); h != want {
					t.Errorf("%s: %s: token pins %s, want %s (what the servers serve)", n.Name, file, h, want)
				}
				if creds(tok) != creds(n.Token) {
					t.Errorf("%s: %s: token credentials changed", n.Name, file)
				}
			}
		}
	}
}

// assertAllReady checks every node of the cluster is Ready as its first
// server sees it, waiting up to a minute.
func assertAllReady(t *testing.T, ctx context.Context, f *harness.Fleet, cluster string) {
	t.Helper()
	c := f.Cluster(cluster)
	deadline := time.Now().Add(time.Minute)
	for {
		ready, err := f.ReadyNodes(ctx, c.Servers[0].Name)
		var missing []string
		for _, n := range c.Nodes() {
			if !ready[n.Name] {
				missing = append(missing, n.Name)
			}
		}
		if err == nil && len(missing) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("cluster %s: not Ready after the run: %v (err %v)", cluster, missing, err)
			return
		}
		time.Sleep(time.Second)
	}
}

// releaseSmokeFleet removes the smoke fleet once the parallel tests run:
// Go starts them only after every sequential top-level test has finished,
// and only those use the smoke fleet. Its 11 idle nodes would otherwise
// hold engine resources (see rotNodes) until TestMain ends. TestMain's own
// Close is then a no-op.
func releaseSmokeFleet(t *testing.T) {
	smokeRelease.Do(func() {
		smokeReleased.Store(true)
		if smoke.fleet != nil {
			if err := smoke.fleet.Close(); err != nil {
				t.Logf("removing the smoke fleet: %v", err)
			}
		}
	})
}

var (
	smokeRelease  sync.Once
	smokeReleased atomic.Bool // smokeFleet fails once it is set
)

// readTokenFiles reads every token file of every node of the cluster:
// node → file → content.
func readTokenFiles(t *testing.T, ctx context.Context, f *harness.Fleet, cluster string) map[string]map[string]string {
	t.Helper()
	out := map[string]map[string]string{}
	for _, n := range f.Cluster(cluster).Nodes() {
		out[n.Name] = map[string]string{}
		for _, file := range tokenFiles(n) {
			data, err := f.ReadFile(ctx, n.Name, file)
			if err != nil {
				t.Fatal(err)
			}
			out[n.Name][file] = string(data)
		}
	}
	return out
}

// assertOnlyHashChanged: every token file is byte for byte what it was,
// but for the CA hash in its secure tokens (quoting, comments, order,
// other keys and lines all kept).
func assertOnlyHashChanged(t *testing.T, ctx context.Context, f *harness.Fleet, cluster string, before map[string]map[string]string, oldHash, newHash string) {
	t.Helper()
	after := readTokenFiles(t, ctx, f, cluster)
	for node, files := range before {
		for file, was := range files {
			want := strings.ReplaceAll(was, "K10"+oldHash+"::", "K10"+newHash+"::")
			if got := after[node][file]; got != want {
				t.Errorf("%s: %s: more than the CA hash changed:\n--- before:\n%s\n--- after:\n%s", node, file, was, got)
			}
		}
	}
}
