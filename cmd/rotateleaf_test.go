package cmd

import (
	"path"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/fleetcert/fleetcert/inventory"
	"github.com/fleetcert/fleetcert/k3s"
	"github.com/fleetcert/fleetcert/orchestrator/fleettest"
)

// leafFile is a leaf certificate on the fake node id: client-admin.crt on
// servers, the kubelet's client certificate on agents.
func leafFile(fl *fleettest.Fleet, id string) string {
	in := fl.Node(id).Inventory()
	if in.Role == inventory.Server {
		_, l := primary(fl, in.Cluster)
		return path.Join(l.ServerTLSDir(), "client-admin.crt")
	}
	return path.Join(in.DataDir, "agent", "client-kubelet.crt")
}

// backupDir is where k3s keeps its tls-<unix> copies on the node.
func backupDir(fl *fleettest.Fleet, id string) string {
	in := fl.Node(id).Inventory()
	if in.Role == inventory.Server {
		return path.Join(in.DataDir, "server")
	}
	return path.Join(in.DataDir, "agent")
}

// backups lists the tls-<unix> directories k3s left on the node.
func backups(fl *fleettest.Fleet, id string) []string {
	var out []string
	dir := backupDir(fl, id) + "/"
	for p := range fl.Node(id).Files() {
		rel, ok := strings.CutPrefix(p, dir)
		name, _, _ := strings.Cut(rel, "/")
		if ok && strings.HasPrefix(name, "tls-") && !slices.Contains(out, name) {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// renewed reports whether the node's leaf certificate was written again
// since the fleet was made.
func renewed(fl *fleettest.Fleet, id string) bool {
	f, ok := fl.Node(id).File(leafFile(fl, id))
	return ok && f.MTime.After(fl.Material.Made)
}

// TestRotateRenewsLeafs: rotate renews the leaf certificates of every
// node (exit 0) and leaves CAs and tokens alone; --keep-backups 1 leaves
// only the copy k3s just made. Table and JSON report against golden files.
func TestRotateRenewsLeafs(t *testing.T) {
	fl, inv := fakeFleet(t)
	before := fleetFiles(fl)
	for _, n := range fl.Nodes() {
		fl.Node(n.ID()).Put(path.Join(backupDir(fl, n.ID()), "tls-1000", "client-admin.crt"), []byte("old"), 0o644)
	}
	code, out, stderr, rep := runRollout(t, fakeSystem(fl, false, ""), "rotate", "-i", inv, "--yes", "--keep-backups", "1")
	if code != ExitOK || rep == nil || outcomes(rep) != "c0001=done c0002=done" {
		t.Fatalf("exit %d\n%s\n%s", code, out, stderr)
	}
	if u := fl.Unknown(); len(u) > 0 {
		t.Fatalf("scripts the fake does not know: %q", u)
	}
	for _, n := range fl.Nodes() {
		id := n.ID()
		if !renewed(fl, id) {
			t.Errorf("%s: %s not renewed", id, leafFile(fl, id))
		}
		l := k3s.Layout{Role: k3s.RoleAgent, DataDir: n.DataDir, Unit: n.Service}
		after := nodeFiles(fl, id)
		if after[l.EnvFile()] != before[id][l.EnvFile()] || after[l.AgentServerCA()] != before[id][l.AgentServerCA()] {
			t.Errorf("%s: token or CA bundle changed", id)
		}
		if b := backups(fl, id); len(b) != 1 || b[0] == "tls-1000" {
			t.Errorf("%s: backups %v, want only the one just made", id, b)
		}
	}
	for _, c := range rep.Clusters {
		for _, nr := range c.Nodes {
			if nr.Outcome != "restarted" || len(nr.Files) != 1 || !strings.Contains(nr.Files[0], "/tls-") {
				t.Errorf("%s/%s: %s, files %v; want restarted with its backup reported", c.Cluster, nr.Node, nr.Outcome, nr.Files)
			}
		}
	}
	golden(t, "rotate.table.golden", scrub(out, fl, rep))

	fl2, inv2 := fakeFleet(t)
	code, out, stderr = runFake(fl2, false, "", "rotate", "-i", inv2, "--yes", "-o", "json")
	if code != ExitOK {
		t.Fatalf("-o json: exit %d\n%s", code, stderr)
	}
	golden(t, "rotate.json.golden", scrub(out, fl2, rolloutReport(t, out)))
}

// TestRotateOnlyExpiring: --only-expiring-within renews only nodes holding
// a leaf certificate that expires within it; the fake's expire in about a
// year.
func TestRotateOnlyExpiring(t *testing.T) {
	for within, want := range map[string]bool{"30d": false, "400d": true} {
		t.Run(within, func(t *testing.T) {
			fl, inv := fakeFleet(t)
			code, out, stderr, rep := runRollout(t, fakeSystem(fl, false, ""), "rotate", "-i", inv, "--yes", "--only-expiring-within", within)
			if code != ExitOK || rep == nil || outcomes(rep) != "c0001=done c0002=done" {
				t.Fatalf("exit %d\n%s\n%s", code, out, stderr)
			}
			for _, n := range fl.Nodes() {
				if renewed(fl, n.ID()) != want {
					t.Errorf("%s: renewed %v, want %v", n.ID(), !want, want)
				}
			}
			if !want && !strings.Contains(out, "2 untouched") {
				t.Errorf("the table does not show the nodes untouched:\n%s", out)
			}
		})
	}
}

// TestRotateServices: --service is passed to k3s certificate rotate on
// every node that runs the service.
func TestRotateServices(t *testing.T) {
	fl, inv := fakeFleet(t)
	code, out, stderr := runFake(fl, false, "", "rotate", "-i", inv, "--yes", "--service", "kubelet")
	if code != ExitOK {
		t.Fatalf("exit %d\n%s\n%s", code, out, stderr)
	}
	for _, n := range fl.Nodes() {
		if j := strings.Join(fl.Node(n.ID()).Journal(), "\n"); !strings.Contains(j, "Rotating certificates for kubelet") {
			t.Errorf("%s: k3s was not asked for kubelet alone: %q", n.ID(), j)
		}
	}
}

// TestRotateExitCodes covers leaf renewal's outcomes: an unreachable
// agent is skipped and reported while the rest is renewed (exit 1); an
// unreachable primary, which holds the lock, refuses its cluster (exit 3);
// a failing k3s certificate rotate fails its cluster (exit 1).
func TestRotateLeafExitCodes(t *testing.T) {
	for _, tc := range []struct {
		name     string
		fault    func(fl *fleettest.Fleet)
		code     int
		outcome  string
		why      string
		renewedS bool // c0001-s1 renewed
	}{
		{"agent unreachable", func(fl *fleettest.Fleet) { fl.Node("c0001/c0001-a1").DialErr = errNoRoute }, ExitFailed, "failed",
			"1 node(s) unreachable and not renewed: c0001-a1", true},
		{"primary unreachable", func(fl *fleettest.Fleet) { fl.Node("c0001/c0001-s1").DialErr = errNoRoute }, ExitRefused, "refused",
			"c0001-s1 (primary, holds the cluster lock): not reachable", false},
		{"certificate rotate fails", func(fl *fleettest.Fleet) {
			failAt(fl.Node("c0001/c0001-a1"), " certificate rotate -d ", "level=fatal msg=\"data directory locked\"")
		}, ExitFailed, "failed", "k3s certificate rotate failed", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fl, inv := fakeFleet(t)
			tc.fault(fl)
			code, out, stderr, rep := runRollout(t, fakeSystem(fl, false, ""), "rotate", "-i", inv, "--yes")
			if code != tc.code || rep == nil {
				t.Fatalf("exit %d, want %d\n%s\n%s", code, tc.code, out, stderr)
			}
			if got, want := outcomes(rep), "c0001="+tc.outcome+" c0002=done"; got != want {
				t.Errorf("outcomes %s, want %s", got, want)
			}
			if !strings.Contains(rep.Clusters[0].Error, tc.why) {
				t.Errorf("c0001's error %q lacks %q", rep.Clusters[0].Error, tc.why)
			}
			if renewed(fl, "c0001/c0001-s1") != tc.renewedS || renewed(fl, "c0001/c0001-a1") {
				t.Errorf("renewed: c0001-s1 %v (want %v), c0001-a1 %v (want false)", renewed(fl, "c0001/c0001-s1"), tc.renewedS, renewed(fl, "c0001/c0001-a1"))
			}
		})
	}
}

// TestRotateInterrupted: SIGINT while c0001's server passes its gates:
// the run stops there (exit 130), saves its run state, and starts no
// further cluster; a rerun resumes it and finishes.
func TestRotateInterrupted(t *testing.T) {
	fl, inv := fakeFleet(t)
	s := fakeSystem(fl, false, "")
	interruptAt(t, &s, fl.Node("c0001/c0001-s1"), k3s.Layout{Binary: "/usr/local/bin/k3s"}.ReadyzCmd(), syscall.SIGINT)
	code, out, stderr, rep := runRollout(t, s, "rotate", "-i", inv, "--yes", "--concurrency", "1")
	if code != ExitSIGINT || rep == nil {
		t.Fatalf("exit %d, want %d\n%s\n%s", code, ExitSIGINT, out, stderr)
	}
	if got := outcomes(rep); got != "c0001=interrupted c0002=not-started" {
		t.Errorf("outcomes %s", got)
	}
	st := runState(t, fl, "c0001", false)
	if st == nil || st.RunID != rep.RunID || st.Command != "rotate" || st.Nodes["c0001-s1"] != "restarted" {
		t.Fatalf("run state saved on c0001: %+v", st)
	}
	if renewed(fl, "c0001/c0001-a1") || renewed(fl, "c0002/c0002-s1") {
		t.Error("nodes after the interrupted one were renewed")
	}
	code, out, stderr, again := runRollout(t, fakeSystem(fl, false, ""), "rotate", "-i", inv, "--yes")
	if code != ExitOK || again == nil || outcomes(again) != "c0001=done c0002=done" || again.Clusters[0].RunID != rep.RunID {
		t.Fatalf("rerun: exit %d\n%s\n%s", code, out, stderr)
	}
	for _, n := range fl.Nodes() {
		if !renewed(fl, n.ID()) {
			t.Errorf("%s not renewed by the resumed run", n.ID())
		}
	}
}
