package orchestrator

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"path"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fleetcert/fleetcert/inventory"
	"github.com/fleetcert/fleetcert/k3s"
	"github.com/fleetcert/fleetcert/orchestrator/fleettest"
	"github.com/fleetcert/fleetcert/pki"
)

// TestCompleteCAOverFakeFleet walks a cluster through the CA lifecycle on
// the fake fleet, whose servers answer on :6443 (/cacerts and a serving
// chain issued with the bundle of its time):
//   - completing a cluster never cross-signed is refused;
//   - after rotate-ca, completing within --min-soak is refused;
//   - with --min-soak 0 every bundle becomes intermediate + new root, the
//     hash stays, no token file changes and no server presents a retired
//     root; a second completion has nothing to do.
func TestCompleteCAOverFakeFleet(t *testing.T) {
	ctx := context.Background()
	fl, _, opts, _ := fakeRotation(t, fleettest.Spec{Clusters: 1, Servers: 2, Agents: 1}, 1)
	fl.Supervisor = true
	complete := func(soak time.Duration) *ClusterReport {
		t.Helper()
		run := *opts.RunOptions
		run.RunID = NewRunID(time.Now())
		rep := RunFleet(ctx, fl.Dial, &CompleteCA{MinSoak: soak}, oneWave(fl), &run)
		if u := fl.Unknown(); len(u) > 0 {
			t.Fatalf("scripts the fake does not know: %q", u)
		}
		return rep.Clusters[0]
	}
	refused := func(cr *ClusterReport, want string) {
		t.Helper()
		if cr.Outcome != OutcomeRefused || !strings.Contains(cr.Error, want) || len(cr.Changes) != 0 {
			t.Errorf("outcome %s, %d changes, error %q; want refused with %q and nothing changed", cr.Outcome, len(cr.Changes), cr.Error, want)
		}
	}

	refused(complete(0), "never went through a cross-signed rotation")

	if rep := RunFleet(ctx, fl.Dial, opts.op, oneWave(fl), opts.RunOptions); rep.Clusters[0].Outcome != OutcomeDone {
		t.Fatalf("rotate-ca: %s %s", rep.Clusters[0].Outcome, rep.Clusters[0].Error)
	}
	server := fl.Node("c0001/c0001-s1")
	lay := k3s.Layout{Role: k3s.RoleServer}
	crossSigned := fileOf(t, server, lay.ServerCA())
	hash := pki.HashCA(crossSigned)
	tokens := tokenFilesOf(fl)

	refused(complete(24*time.Hour), "less than --min-soak 24h0m0s")

	cr := complete(0)
	if cr.Outcome != OutcomeDone || cr.Mode != ModeComplete || cr.OldHash != hash || cr.TargetHash != hash {
		t.Fatalf("outcome %s mode %s hash %s -> %s (%s); want done, complete, %s unchanged", cr.Outcome, cr.Mode,
			short(cr.OldHash), short(cr.TargetHash), cr.Error, short(hash))
	}
	retired := pemCerts(t, crossSigned)[2:]
	for _, n := range fl.Nodes() {
		fn := fl.Node(n.ID())
		bundles := []string{path.Join("/var/lib/rancher/k3s/agent", "server-ca.crt")}
		if n.Role == inventory.Server {
			for _, ct := range pki.CATypes {
				bundles = append(bundles, path.Join(lay.ServerTLSDir(), ct.CertFile))
			}
		}
		for _, b := range bundles {
			if got := len(pemCerts(t, fileOf(t, fn, b))); got != 2 {
				t.Errorf("%s: %s holds %d certificates, want 2", n.ID(), b, got)
			}
		}
		if n.Role != inventory.Server {
			continue
		}
		h, err := fl.Dial(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		chain, err := servingChain(ctx, &Node{Node: n, Conn: h})
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range chain {
			for _, r := range retired {
				if c.Equal(r) {
					t.Errorf("%s still presents retired %s", n.ID(), r.Subject.CommonName)
				}
			}
		}
	}
	if after := tokenFilesOf(fl); !slices.Equal(tokens, after) {
		t.Errorf("a token file changed; completing must not rewrite tokens:\n  %v\n  %v", tokens, after)
	}
	var rec CARecord
	if err := json.Unmarshal(fileOf(t, server, path.Join(lay.FleetcertDir(), caRecordFile)), &rec); err != nil || rec.Completed.IsZero() {
		t.Errorf("the CA rotation record does not note the completion: %+v (%v)", rec, err)
	}

	again := complete(0)
	if again.Outcome != OutcomeDone || len(again.Changes) != 0 {
		t.Errorf("a second completion: %s with %d changes, want done with none", again.Outcome, len(again.Changes))
	}
}

// TestCompleteGateCatchesAStaleServingChain: a server restarted onto the
// completed bundles without renewing its certificates serves the new
// /cacerts but still presents the chain its serving certificate was issued
// with, retired roots included. The gate fails on it, naming what it saw:
// renewing is what completing needs.
func TestCompleteGateCatchesAStaleServingChain(t *testing.T) {
	ctx := context.Background()
	fl, nodes, opts, _ := fakeRotation(t, fleettest.Spec{Clusters: 1, Servers: 1}, 1)
	fl.Supervisor = true
	if rep := RunFleet(ctx, fl.Dial, opts.op, oneWave(fl), opts.RunOptions); rep.Clusters[0].Outcome != OutcomeDone {
		t.Fatalf("rotate-ca: %s", rep.Clusters[0].Error)
	}
	h, err := fl.Dial(ctx, nodes[0].Node)
	if err != nil {
		t.Fatal(err)
	}
	n := &Node{Node: nodes[0].Node, Conn: h, Layout: nodes[0].Layout}
	current, err := readCASet(ctx, n)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := servingChain(ctx, n); err != nil { // the serving certificate of the cross-signed era
		t.Fatal(err)
	}
	c, err := pki.Complete(current)
	if err != nil {
		t.Fatal(err)
	}
	dir := n.Layout.StageDir("stale")
	if err := stageFiles(ctx, n, dir, c.Set); err != nil {
		t.Fatal(err)
	}
	if err := loadCA(ctx, n, dir, false); err != nil {
		t.Fatal(err)
	}
	t0, err := restartUnit(ctx, n) // a plain restart: nothing renewed
	if err != nil {
		t.Fatal(err)
	}
	run := *opts.RunOptions
	run.HealthTimeout = 300 * time.Millisecond
	r := &completion{loadRotation: newLoadRotation(CmdCompleteCA, fl.Inventory[0], []*Node{n}, &run, RotationOptions{})}
	r.want, r.staged = completedBundles(current, c), c.Set
	for _, cert := range c.Retired {
		r.retired = append(r.retired, fingerprint(cert.Raw))
	}
	err = r.completedServer(ctx, n, t0)
	if err == nil || !strings.Contains(err.Error(), `"serving chain holds no retired root"`) || !strings.Contains(err.Error(), "still holds") {
		t.Errorf("err = %v, want the serving-chain gate to fail", err)
	}
}

func fileOf(t *testing.T, n *fleettest.Node, p string) []byte {
	t.Helper()
	f, ok := n.File(p)
	if !ok {
		t.Fatalf("%s: no %s", n.Inventory().ID(), p)
	}
	return f.Data
}

func pemCerts(t *testing.T, data []byte) []*x509.Certificate {
	t.Helper()
	certs, err := pki.ParseCerts(data)
	if err != nil {
		t.Fatal(err)
	}
	return certs
}

// tokenFilesOf fingerprints every env and config file of the fleet,
// fleetcert's backups left out.
func tokenFilesOf(fl *fleettest.Fleet) []string {
	var out []string
	for _, n := range fl.Nodes() {
		for p, f := range fl.Node(n.ID()).Files() {
			if !strings.Contains(p, "/fleetcert/") && (strings.HasSuffix(p, ".env") || strings.HasSuffix(p, "config.yaml")) {
				sum := sha256.Sum256(f.Data)
				out = append(out, n.ID()+p+hex.EncodeToString(sum[:]))
			}
		}
	}
	slices.Sort(out)
	return out
}
