package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"maps"
	"path"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/fleetcert/fleetcert/e2e/harness"
)

// caBundles are the five CA bundles of a k3s server, under server/tls.
var caBundles = []string{"server-ca.crt", "client-ca.crt", "request-header-ca.crt", "etcd/server-ca.crt", "etcd/peer-ca.crt"}

// TestRotateCAComplete: an HA cluster is cross-signed with rotate-ca, then
// completed with rotate-ca --complete, which retires the old roots.
//   - Completing a cluster never cross-signed, or within --min-soak of the
//     rotation, is refused with nothing changed.
//   - A completing run killed after its first server resumes and finishes.
//   - Afterwards every bundle on every node holds exactly intermediate + new
//     root, the token hash and every token file are as after the rotation,
//     check is clean and reports the new root's expiry (about 20 years).
//   - In a live TLS handshake the kubeconfig k3s writes verifies the
//     server, and a client that trusts only the old root does not: nothing
//     served chains to it any more.
func TestRotateCAComplete(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t, 14*time.Minute)
	f := startRotFleet(t, ctx, harness.ClusterSpec{
		Name: "done",
		Servers: []harness.NodeSpec{
			{Token: harness.SecureToken, TokenIn: []harness.TokenPlace{harness.InEnvFile}},
			{TokenIn: []harness.TokenPlace{harness.InConfig}},
		},
		Agents: []harness.NodeSpec{{TokenIn: []harness.TokenPlace{harness.InExecStart}}},
	})
	c := f.Cluster("done")
	s1, s2 := c.Servers[0], c.Servers[1]
	base := []string{"rotate-ca", "-i", f.InventoryPath(), "-o", "json", "--log-format", "json", "--health-timeout", "3m"}
	complete := append(append([]string(nil), base...), "--complete")
	oldRoots := parseCerts(t, mustRead(t, ctx, f, s1.Name, path.Join(s1.DataDir, "server/tls/server-ca.crt")))

	refused := func(t *testing.T, want string, args ...string) {
		t.Helper()
		before := fleetChecksums(t, ctx, f, "done")
		res := fleetcert(t, ctx, args...)
		if res.Code != 3 || !strings.Contains(res.Stdout+res.Stderr, want) {
			t.Errorf("want exit 3 and %q\n%s", want, res)
		}
		assertUnchanged(t, ctx, f, "done", before, "a refused completion")
	}
	t.Run("never cross-signed", func(t *testing.T) {
		refused(t, "never went through a cross-signed rotation", append(complete, "--min-soak", "0")...)
	})

	if res := fleetcert(t, ctx, base...); res.Code != 0 {
		t.Fatalf("rotate-ca failed:\n%s", res)
	}
	hash := clusterHash(t, ctx, f, "done")
	tokens := readTokenFiles(t, ctx, f, "done")
	if n := len(parseCerts(t, mustRead(t, ctx, f, s1.Name, path.Join(s1.DataDir, "server/tls/server-ca.crt")))); n != 4 {
		t.Fatalf("after rotate-ca the server CA bundle holds %d certificates, want 4 (cross-signed)", n)
	}

	t.Run("within --min-soak", func(t *testing.T) {
		refused(t, "less than --min-soak 24h0m0s", complete...)
	})

	// Killed once the first server passed its gates: the second server's
	// stop is the next change.
	runKilled(t, ctx, afterNode("servers", s1.Name, s2.Name), append(complete, "--min-soak", "0")...)
	res := fleetcert(t, ctx, append(complete, "--min-soak", "0")...)
	if res.Code != 0 {
		t.Fatalf("the resumed completion failed:\n%s", res)
	}
	t.Logf("resumed rotate-ca --complete took %s", durationOf(res))
	rep := res.report(t)
	if !rep.Resumed || rep.Mode != "complete" || rep.OldHash != hash || rep.TargetHash != hash {
		t.Errorf("report: resumed=%v mode %q hashes %s -> %s; want resumed, complete, %s unchanged", rep.Resumed, rep.Mode, rep.OldHash, rep.TargetHash, hash)
	}
	if o := rep.nodeOutcome(s1.Name); o != "already-done" {
		t.Errorf("%s: outcome %q on resume, want already-done", s1.Name, o)
	}

	// Every bundle completed, on every node.
	for _, s := range c.Servers {
		for _, b := range caBundles {
			if n := len(parseCerts(t, mustRead(t, ctx, f, s.Name, path.Join(s.DataDir, "server/tls", b)))); n != 2 {
				t.Errorf("%s: %s holds %d certificates, want 2", s.Name, b, n)
			}
		}
	}
	for _, a := range c.Agents {
		if n := len(parseCerts(t, mustRead(t, ctx, f, a.Name, path.Join(a.DataDir, "agent/server-ca.crt")))); n != 2 {
			t.Errorf("%s: agent/server-ca.crt holds %d certificates, want 2", a.Name, n)
		}
	}
	if h := clusterHash(t, ctx, f, "done"); h != hash {
		t.Errorf("the served hash changed: %s -> %s", hash, h)
	}
	if after := readTokenFiles(t, ctx, f, "done"); !maps.EqualFunc(tokens, after, maps.Equal) {
		t.Error("a token file changed; completing must not rewrite tokens")
	}
	assertTokensPin(t, ctx, f, "done", hash)
	assertAllReady(t, ctx, f, "done")
	assertNoMismatchLogged(t, ctx, f, c.Nodes()...)

	// A second completion has nothing to do.
	if res := fleetcert(t, ctx, append(complete, "--min-soak", "0")...); res.Code != 0 || res.report(t).Outcome != "done" {
		t.Errorf("completing a completed cluster: want exit 0, outcome done\n%s", res)
	}

	// check: clean, and the earliest CA expiry is the new root's.
	var caExpiry struct {
		Clusters []struct {
			CAExpiry struct {
				NotAfter time.Time `json:"notAfter"`
			} `json:"caExpiry"`
		} `json:"clusters"`
	}
	code, out, stderr := chkRun(t, ctx, f, "-o", "json")
	if code != 0 {
		t.Errorf("check exited %d after completing, want 0:\n%s\n%s", code, stderr, out)
	}
	if err := json.Unmarshal([]byte(out), &caExpiry); err != nil || len(caExpiry.Clusters) != 1 {
		t.Fatalf("check -o json: %v\n%s", err, out)
	}
	if left := time.Until(caExpiry.Clusters[0].CAExpiry.NotAfter); left < 19*365*24*time.Hour {
		t.Errorf("check reports the earliest CA expiry in %s; the new roots last about 20 years", left.Round(24*time.Hour))
	}

	// Live TLS: the kubeconfig verifies the server; the old root alone no
	// longer does.
	kubeCA := kubeconfigCA(t, mustRead(t, ctx, f, s1.Name, "/etc/rancher/k3s/k3s.yaml"))
	if err := handshake(ctx, f, s1, kubeCA); err != nil {
		t.Errorf("a client with the kubeconfig's CA does not trust %s: %v", s1.Name, err)
	}
	old := x509.NewCertPool()
	old.AddCert(oldRoots[len(oldRoots)-1])
	for _, s := range c.Servers {
		if err := handshake(ctx, f, s, old); err == nil {
			t.Errorf("%s still presents a chain to the old root", s.Name)
		}
	}
}

var caDataLine = regexp.MustCompile(`certificate-authority-data:\s*(\S+)`)

// kubeconfigCA is the pool of the CA certificates a kubeconfig trusts.
func kubeconfigCA(t *testing.T, kubeconfig []byte) *x509.CertPool {
	t.Helper()
	m := caDataLine.FindSubmatch(kubeconfig)
	if m == nil {
		t.Fatalf("no certificate-authority-data in the kubeconfig:\n%s", kubeconfig)
	}
	data, err := base64.StdEncoding.DecodeString(string(m[1]))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	for _, c := range parseCerts(t, data) {
		pool.AddCert(c)
	}
	return pool
}

// handshake makes a TLS handshake with the server's :6443 through an SSH
// tunnel, verifying the chain it presents against roots.
func handshake(ctx context.Context, f *harness.Fleet, n *harness.Node, roots *x509.CertPool) error {
	conn, err := sshClient(f, n)
	if err != nil {
		return err
	}
	defer conn.Close()
	raw, err := conn.Dial("tcp", "127.0.0.1:6443")
	if err != nil {
		return err
	}
	defer raw.Close()
	tc := tls.Client(raw, &tls.Config{RootCAs: roots, ServerName: "127.0.0.1"})
	if err := tc.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("handshake: %w", err)
	}
	return nil
}
