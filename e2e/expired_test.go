package e2e

import (
	"encoding/json"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fleetcert/fleetcert/e2e/harness"
)

// Time going wrong (issue 15): a cluster whose leaf certificates have all
// expired, and nodes whose clocks are off.

// yearAgo is k3s's clock for a cluster brought up "a year and a day ago":
// every leaf it issues then has expired a day ago once the clock is back.
const yearAgo = -366 * 24 * time.Hour

// TestExpiredClusterRotate: an HA cluster (two servers on embedded etcd,
// one agent) brought up a year and a day ago; then the year passes (k3s's
// clock back to the real time, the node clocks never wrong): every leaf has
// expired, and k3s's own kubectl gets the x509 error. check exits 1 and
// marks the cluster EXPIRED with the command that fixes it; rotate-ca
// refuses (exit 3, nothing changed) pointing to fleetcert rotate; rotate
// renews the servers together (etcd members with expired peer certificates
// give a lone renewed server no quorum, the emulator's etcd.go), then the
// agent, and check exits 0 with the same CA as before.
func TestExpiredClusterRotate(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t, 12*time.Minute)
	f := startRotFleet(t, ctx, harness.ClusterSpec{
		Name: "exp",
		Servers: []harness.NodeSpec{
			{Token: harness.SecureToken, K3sClock: yearAgo},
			{K3sClock: yearAgo, TokenIn: []harness.TokenPlace{harness.InConfig}},
		},
		Agents: []harness.NodeSpec{{K3sClock: yearAgo}},
	})
	c := f.Cluster("exp")
	s1, s2 := c.Servers[0], c.Servers[1]
	inv := f.InventoryPath()
	hash := clusterHash(t, ctx, f, "exp")
	assertTokensPin(t, ctx, f, "exp", hash)

	// The year passes.
	for _, n := range c.Nodes() {
		if err := f.SetK3sClock(ctx, n.Name, 0); err != nil {
			t.Fatal(err)
		}
	}
	r, err := f.Exec(ctx, s1.Name, "k3s kubectl get --raw=/readyz")
	if err != nil {
		t.Fatal(err)
	}
	if r.ExitCode == 0 || !strings.Contains(r.Stderr, "x509: certificate has expired or is not yet valid") {
		t.Fatalf("k3s kubectl on the expired cluster: exit %d\n%s%s", r.ExitCode, r.Stdout, r.Stderr)
	}
	t.Logf("%s: k3s kubectl get --raw=/readyz: %s", s1.Name, strings.TrimSpace(r.Stderr))

	t.Run("check says EXPIRED", func(t *testing.T) {
		code, out, stderr := chkRun(t, ctx, f, "-o", "json")
		if code != 1 {
			t.Fatalf("check on the expired cluster exited %d, want 1\n%s\n%s", code, out, stderr)
		}
		var rep struct {
			Clusters []struct {
				Name    string
				Expired *struct {
					Servers []string
					Fix     string
				}
				Findings []struct{ Node, Kind, Message string }
				Counts   struct{ Expired int }
				Nodes    []struct {
					Node         string
					Certificates []struct {
						File, Status string
						Index        int
						CA, Bundle   bool
						NotAfter     time.Time
					}
				}
			}
		}
		if err := json.Unmarshal([]byte(out), &rep); err != nil || len(rep.Clusters) != 1 {
			t.Fatalf("check -o json: %v\n%s", err, out)
		}
		cr := rep.Clusters[0]
		if cr.Expired == nil || strings.Join(cr.Expired.Servers, ",") != s1.Name+","+s2.Name {
			t.Errorf("expired: %+v, want servers %s and %s", cr.Expired, s1.Name, s2.Name)
		} else if want := "fleetcert rotate -i " + f.InventoryPath() + " --cluster exp"; cr.Expired.Fix != want {
			t.Errorf("fix %q, want %q: the command as it can be run", cr.Expired.Fix, want)
		}
		// Every leaf on every node, agents included, expired about a day
		// ago; the CAs (made a year ago, for ten years) did not.
		leafs := 0
		for _, nr := range cr.Nodes {
			for _, cert := range nr.Certificates {
				if cert.Index != 0 || cert.CA || cert.Bundle {
					if cert.Status != "OK" {
						t.Errorf("%s: %s[%d] (CA) is %s", nr.Node, cert.File, cert.Index, cert.Status)
					}
					continue
				}
				leafs++
				if ago := time.Since(cert.NotAfter); cert.Status != "EXPIRED" || ago < 23*time.Hour || ago > 25*time.Hour {
					t.Errorf("%s: %s is %s, expired %s ago; want EXPIRED a day ago", nr.Node, cert.File, cert.Status, ago.Round(time.Minute))
				}
			}
		}
		if len(cr.Nodes) != 3 || leafs == 0 || cr.Counts.Expired < leafs {
			t.Errorf("%d nodes, %d leafs, %d counted EXPIRED", len(cr.Nodes), leafs, cr.Counts.Expired)
		}
		t.Logf("%d leaf certificates on 3 nodes, all EXPIRED", leafs)
		for _, fd := range cr.Findings {
			if fd.Kind == "clockSkew" {
				t.Errorf("the node clocks are right, yet: %+v", fd)
			}
		}
		code, out, _ = chkRun(t, ctx, f)
		want := "EXPIRED: the certificates of server(s) " + s1.Name + ", " + s2.Name + " have expired"
		if code != 1 || !strings.Contains(out, want) || !strings.Contains(out, "run: fleetcert rotate") {
			t.Errorf("check (table) exited %d, want 1 and %q with the command:\n%s", code, want, out)
		}
	})

	t.Run("rotate-ca refused", func(t *testing.T) {
		before := fleetChecksums(t, ctx, f, "exp")
		res := fleetcert(t, ctx, "rotate-ca", "-i", inv, "--health-timeout", "1m")
		out := res.Stdout + res.Stderr
		if res.Code != 3 || !strings.Contains(out, "the servers' certificates have expired") || !strings.Contains(out, "fleetcert rotate") {
			t.Errorf("rotate-ca on the expired cluster: want exit 3 pointing to fleetcert rotate\n%s", res)
		}
		for _, line := range strings.Split(out, "\n") {
			if strings.Contains(line, "certificates have expired") {
				t.Logf("rotate-ca: exit %d: %s", res.Code, strings.TrimSpace(line))
			}
		}
		assertUnchanged(t, ctx, f, "exp", before, "a refused rotate-ca")
	})

	res := fleetcert(t, ctx, "rotate", "-i", inv, "--cluster", "exp", "-o", "json", "--log-format", "json", "--health-timeout", "3m")
	if res.Code != 0 {
		t.Fatalf("rotate on the expired cluster:\n%s", res)
	}
	t.Logf("rotate took %s", durationOf(res))
	rep := res.report(t)
	together := false
	for _, w := range rep.Warnings {
		if strings.Contains(w, "the servers' certificates have expired") && strings.Contains(w, "stopped, renewed and started before any is waited for") {
			together = true
		}
	}
	if !together {
		t.Errorf("the report does not say the servers were renewed together: %q", rep.Warnings)
	}
	for _, n := range c.Nodes() {
		if o := rep.nodeOutcome(n.Name); o != "restarted" {
			t.Errorf("%s: outcome %q, want restarted", n.Name, o)
		}
	}
	// Both servers were renewed and started before either was waited for:
	// in the servers phase, both renewals come before the first gate.
	var renewedFirst []string
	for _, line := range strings.Split(res.Stderr, "\n") {
		var l logLine
		if json.Unmarshal([]byte(line), &l) != nil || l.Phase != "servers" {
			continue
		}
		if l.Msg == "renewed certificates written" || l.Msg == "apiserver ready" || l.Msg == "node Ready" {
			break
		}
		if strings.HasPrefix(l.Msg, "stop ") && strings.Contains(l.Msg, "k3s certificate rotate") {
			renewedFirst = append(renewedFirst, l.Node)
		}
	}
	if strings.Join(renewedFirst, ",") != s1.Name+","+s2.Name {
		t.Errorf("servers renewed before the first gate: %v, want both\n%s", renewedFirst, res.Stderr)
	}
	for _, n := range []*harness.Node{s1, s2} {
		logs, err := f.Logs(ctx, n.Name)
		if err == nil && strings.Contains(logs, "Waiting for etcd quorum") {
			t.Logf("%s waited for etcd quorum while its peer was not renewed yet", n.Name)
		}
	}

	if code, out, stderr := chkRun(t, ctx, f); code != 0 {
		t.Errorf("check after rotate exited %d:\n%s\n%s", code, out, stderr)
	}
	if got := clusterHash(t, ctx, f, "exp"); got != hash {
		t.Errorf("the served CA changed: %s, was %s", got, hash)
	}
	assertTokensPin(t, ctx, f, "exp", hash)
	assertAllReady(t, ctx, f, "exp")
}

// TestClockSkew: a node whose clock is 2 hours behind (more than the hour
// new certificates are backdated) makes rotate-ca refuse (exit 3) naming it
// and the offset, with nothing changed; a server 10 minutes ahead is a
// clockSkew finding of check (exit 1), and rotate-ca proceeds with a
// warning and completes.
func TestClockSkew(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t, 10*time.Minute)
	f := startRotFleet(t, ctx, harness.ClusterSpec{
		Name:    "skew",
		Servers: []harness.NodeSpec{{Token: harness.SecureToken}},
		Agents:  []harness.NodeSpec{{}},
	})
	c := f.Cluster("skew")
	s, a := c.Servers[0], c.Agents[0]
	inv := f.InventoryPath()
	setOffset := func(n *harness.Node, d time.Duration) {
		t.Helper()
		if err := f.SetClockOffset(ctx, n.Name, d); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("2h behind refused", func(t *testing.T) {
		setOffset(a, -2*time.Hour)
		defer setOffset(a, 0)
		if r, _ := f.Exec(ctx, a.Name, "date +%s"); r.ExitCode != 0 {
			t.Fatalf("date on %s: %+v", a.Name, r)
		} else if d := time.Until(parseUnixLine(t, r.Stdout)); d > -119*time.Minute || d < -121*time.Minute {
			t.Fatalf("date on %s is %s off, want -2h", a.Name, d.Round(time.Second))
		}
		before := fleetChecksums(t, ctx, f, "skew")
		res := fleetcert(t, ctx, "rotate-ca", "-i", inv, "--health-timeout", "1m")
		want := regexp.MustCompile(regexp.QuoteMeta(a.Name) + `: its clock is (1h59m5\ds|2h0m[0-2]s) behind the controller's, more than the 1h0m0s new certificates are backdated`)
		if res.Code != 3 || !want.MatchString(res.Stdout+res.Stderr) {
			t.Errorf("want exit 3 and %s\n%s", want, res)
		} else {
			t.Logf("refused: %s", want.FindString(res.Stdout+res.Stderr))
		}
		assertUnchanged(t, ctx, f, "skew", before, "a refused rotate-ca")
	})

	// The agent's k3s followed its clock: it comes back with it.
	if err := f.WaitReady(ctx, "skew"); err != nil {
		t.Fatal(err)
	}
	setOffset(s, 10*time.Minute)
	defer setOffset(s, 0)

	t.Run("10m ahead reported by check", func(t *testing.T) {
		rep := chkJSON(t, ctx, f, 1)
		found := false
		for _, fd := range rep.Clusters[0].Findings {
			if fd.Kind == "clockSkew" && fd.Node == s.Name && strings.Contains(fd.Message, "ahead of the controller's") {
				found = true
			} else if fd.Kind == "clockSkew" {
				t.Errorf("unexpected finding: %+v", fd)
			}
		}
		if !found {
			t.Errorf("no clockSkew finding for %s: %+v", s.Name, rep.Clusters[0].Findings)
		}
	})

	t.Run("10m ahead: rotate-ca warns and proceeds", func(t *testing.T) {
		oldHash := clusterHash(t, ctx, f, "skew")
		res := fleetcert(t, ctx, "rotate-ca", "-i", inv, "-o", "json", "--health-timeout", "3m")
		if res.Code != 0 {
			t.Fatalf("rotate-ca with a server 10 minutes ahead:\n%s", res)
		}
		t.Logf("rotate-ca took %s", durationOf(res))
		rep := res.report(t)
		warned := regexp.MustCompile(regexp.QuoteMeta(s.Name) + `: its clock is (9m5\ds|10m[0-2]s) ahead of the controller's`)
		if w := warned.FindString(strings.Join(rep.Warnings, "\n")); w == "" {
			t.Errorf("no clock warning for %s in %q", s.Name, rep.Warnings)
		} else {
			t.Logf("warned: %s", w)
		}
		newHash := clusterHash(t, ctx, f, "skew")
		if newHash == oldHash || rep.TargetHash != newHash {
			t.Errorf("served %s, old %s, target %s", newHash, oldHash, rep.TargetHash)
		}
		assertTokensPin(t, ctx, f, "skew", newHash)
		assertAllReady(t, ctx, f, "skew")
	})

	setOffset(s, 0)
	if code, out, stderr := chkRun(t, ctx, f); code != 0 {
		t.Errorf("check with the clocks right again exited %d:\n%s\n%s", code, out, stderr)
	}
}

// parseUnixLine reads a `date +%s` line.
func parseUnixLine(t *testing.T, s string) time.Time {
	t.Helper()
	sec, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil {
		t.Fatalf("date +%%s: %q: %v", s, err)
	}
	return time.Unix(sec, 0)
}
