package cmd

import (
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fleetcert/fleetcert/inventory"
	"github.com/fleetcert/fleetcert/orchestrator"
	"github.com/fleetcert/fleetcert/orchestrator/fleettest"
	"github.com/fleetcert/fleetcert/pki"
)

// TestRolloutTableShapedPerCommand: leaf renewal changes no CA, so its
// summary has no mode or hash columns; rotate-ca's has them.
func TestRolloutTableShapedPerCommand(t *testing.T) {
	fl, inv := fakeFleet(t)
	_, leaf, stderr := runFake(fl, false, "", "rotate", "-i", inv, "--dry-run")
	if !strings.Contains(leaf, "CLUSTER  OUTCOME") || strings.Contains(leaf, "OLD HASH") || strings.Contains(leaf, "MODE") {
		t.Errorf("rotate summary:\n%s\n%s", leaf, stderr)
	}
	_, ca, _ := runFake(fl, false, "", "rotate-ca", "-i", inv, "--dry-run")
	if !strings.Contains(ca, "OLD HASH") || !strings.Contains(ca, "MODE") {
		t.Errorf("rotate-ca summary:\n%s", ca)
	}
}

// TestRotateCA: rotate-ca --yes rotates every cluster (exit 0): every
// token on every node pins the new CA. The table, and on a second fleet
// the JSON report, are compared with golden files.
func TestRotateCA(t *testing.T) {
	fl, inv := fakeFleet(t)
	code, out, stderr, rep := runRollout(t, fakeSystem(fl, false, ""), "rotate-ca", "-i", inv, "--yes")
	if code != ExitOK || rep == nil {
		t.Fatalf("exit %d\n%s\n%s", code, out, stderr)
	}
	if u := fl.Unknown(); len(u) > 0 {
		t.Fatalf("scripts the fake does not know: %q", u)
	}
	if got := outcomes(rep); got != "c0001=done c0002=done" {
		t.Fatalf("outcomes %s", got)
	}
	for _, c := range rep.Clusters {
		if c.TargetHash == fl.Material.Hash || c.Mode != orchestrator.ModeCrossSign {
			t.Errorf("%s: mode %s, target %s", c.Cluster, c.Mode, c.TargetHash)
		}
		for id, files := range clusterFiles(fl, c.Cluster) {
			for p, data := range files {
				if isTokenText(data) && !strings.Contains(data, "K10"+c.TargetHash+"::") && !strings.Contains(p, "/fleetcert/backup-") {
					t.Errorf("%s:%s does not pin the new CA", id, p)
				}
			}
		}
	}
	golden(t, "rotate-ca.table.golden", scrub(out, fl, rep))

	fl2, inv2 := fakeFleet(t)
	code, out, stderr = runFake(fl2, false, "", "rotate-ca", "-i", inv2, "--yes", "-o", "json")
	if code != ExitOK {
		t.Fatalf("-o json: exit %d\n%s", code, stderr)
	}
	golden(t, "rotate-ca.json.golden", scrub(out, fl2, rolloutReport(t, out)))
}

// TestRotateSAKey: rotate-sa-key puts a new key first in every server's
// service.key and keeps --keep-keys of the current ones after it; servers
// restart, agents and tokens stay as they are (exit 0).
func TestRotateSAKey(t *testing.T) {
	fl, inv := fakeFleet(t)
	_, l := primary(fl, "c0001")
	key := path.Join(l.ServerTLSDir(), pki.ServiceKeyFile)
	keys := func(id string) []string {
		f, _ := fl.Node(id).File(key)
		var out []string
		for b, rest := pem.Decode(f.Data); b != nil; b, rest = pem.Decode(rest) {
			out = append(out, string(b.Bytes))
		}
		return out
	}
	before := fleetFiles(fl)
	original := keys("c0001/c0001-s1")
	var reps []*orchestrator.FleetReport
	var out string
	for range 2 {
		code, stdout, stderr, rep := runRollout(t, fakeSystem(fl, false, ""), "rotate-sa-key", "-i", inv, "--yes", "--keep-keys", "1")
		if code != ExitOK || rep == nil || outcomes(rep) != "c0001=done c0002=done" {
			t.Fatalf("exit %d\n%s\n%s", code, stdout, stderr)
		}
		reps, out = append(reps, rep), stdout
	}
	after := fleetFiles(fl)
	for _, n := range fl.Nodes() {
		if n.Role == inventory.Agent {
			if !sameFiles(map[string]map[string]string{"": before[n.ID()]}, map[string]map[string]string{"": after[n.ID()]}) {
				t.Errorf("%s: an agent changed", n.ID())
			}
			continue
		}
		// Two runs with --keep-keys 1: the second's key, then the first's.
		if k := keys(n.ID()); len(k) != 2 || slices.Contains(k, original[0]) {
			t.Errorf("%s: service.key holds %d keys (the original among them: %v); want 2 new ones", n.ID(), len(k), slices.Contains(k, original[0]))
		}
		if after[n.ID()][l.EnvFile()] != before[n.ID()][l.EnvFile()] {
			t.Errorf("%s: the token changed", n.ID())
		}
	}
	for _, c := range reps[1].Clusters {
		if c.Mode != orchestrator.ModeServiceKey || c.OldHash != fl.Material.Hash || c.TargetHash != c.OldHash {
			t.Errorf("%s: %s, hash %s -> %s, want unchanged", c.Cluster, c.Mode, c.OldHash, c.TargetHash)
		}
	}
	golden(t, "rotate-sa-key.table.golden", scrub(out, fl, reps...))
}

var errNoRoute = errors.New("dial tcp: no route to host")

// loadFails makes k3s certificate rotate-ca fail on c0001's primary: the
// run has begun changing the cluster (backups, staged material).
func loadFails(fl *fleettest.Fleet) {
	failAt(fl.Node("c0001/c0001-s1"), " certificate rotate-ca ", `level=fatal msg="etcd unavailable"`)
}

// TestRotateExitCodes: a cluster refused by a safety check exits 3 and
// is left as it was; one that fails after changes began exits 1 with its
// run state saved for a rerun; the other cluster is rotated either way.
func TestRotateExitCodes(t *testing.T) {
	for _, tc := range []struct {
		name    string
		command string
		fault   func(fl *fleettest.Fleet)
		code    int
		outcome string
		saved   bool   // run state left on c0001 for a rerun
		why     string // in c0001's error
	}{
		{"clock behind", "rotate-ca", func(fl *fleettest.Fleet) { fl.Node("c0001/c0001-a1").ClockOffset = -2 * time.Hour }, ExitRefused, "refused", false,
			"behind the controller's, more than the 1h0m0s new certificates are backdated"},
		{"agent unreachable", "rotate-ca", func(fl *fleettest.Fleet) { fl.Node("c0001/c0001-a1").DialErr = errNoRoute }, ExitRefused, "refused", false,
			"c0001-a1: not reachable: connect: dial tcp: no route to host (rotation needs every node of the cluster)"},
		{"agent unreachable", "rotate-sa-key", func(fl *fleettest.Fleet) { fl.Node("c0001/c0001-a1").DialErr = errNoRoute }, ExitRefused, "refused", false,
			"c0001-a1: not reachable"},
		{"load fails", "rotate-ca", loadFails, ExitFailed, "failed", true, "etcd unavailable"},
		{"load fails", "rotate-sa-key", loadFails, ExitFailed, "failed", true, "etcd unavailable"},
	} {
		t.Run(tc.command+" "+tc.name, func(t *testing.T) {
			fl, inv := fakeFleet(t)
			tc.fault(fl)
			before := clusterFiles(fl, "c0001")
			code, out, stderr, rep := runRollout(t, fakeSystem(fl, false, ""), tc.command, "-i", inv, "--yes")
			if code != tc.code || rep == nil {
				t.Fatalf("exit %d, want %d\n%s\n%s", code, tc.code, out, stderr)
			}
			if got, want := outcomes(rep), "c0001="+tc.outcome+" c0002=done"; got != want {
				t.Errorf("outcomes %s, want %s", got, want)
			}
			if !strings.Contains(rep.Clusters[0].Error, tc.why) || !strings.Contains(out, "c0001: ") {
				t.Errorf("c0001's error %q lacks %q (table:\n%s)", rep.Clusters[0].Error, tc.why, out)
			}
			if tc.outcome == "refused" && !sameFiles(before, clusterFiles(fl, "c0001")) {
				t.Error("a refused cluster was changed")
			}
			if st := runState(t, fl, "c0001", false); (st != nil) != tc.saved || (st != nil && st.RunID != rep.RunID) {
				t.Errorf("run state on c0001: %+v, want saved: %v", st, tc.saved)
			}
		})
	}
}

// TestRotateCAInterrupted: SIGTERM while c0001's server restarts: the
// cluster finishes its current step, saves its run state and releases its
// lock, is reported interrupted, no further cluster starts, and the exit
// code is 143. status then shows the unfinished run (exit 1), and the same
// command again resumes it under its run id and finishes it (exit 0).
func TestRotateCAInterrupted(t *testing.T) {
	fl, inv := fakeFleet(t)
	untouched := clusterFiles(fl, "c0002")
	s := fakeSystem(fl, false, "")
	interruptAt(t, &s, fl.Node("c0001/c0001-s1"), "systemctl --no-block restart", syscall.SIGTERM)
	code, out, stderr, rep := runRollout(t, s, "rotate-ca", "-i", inv, "--yes", "--concurrency", "1")
	if code != ExitSIGTERM || rep == nil {
		t.Fatalf("exit %d, want %d\n%s\n%s", code, ExitSIGTERM, out, stderr)
	}
	if !strings.Contains(stderr, "terminated: finishing the current step and saving state") {
		t.Errorf("the interrupt was not acknowledged:\n%s", stderr)
	}
	if got := outcomes(rep); got != "c0001=interrupted c0002=not-started" || rep.Stopped != "interrupted" {
		t.Fatalf("outcomes %s, stopped %q", got, rep.Stopped)
	}
	if !sameFiles(untouched, clusterFiles(fl, "c0002")) {
		t.Error("c0002 changed after the interrupt")
	}
	st := runState(t, fl, "c0001", false)
	if st == nil || st.RunID != rep.RunID || !st.Loaded || st.TargetHash != rep.Clusters[0].TargetHash || st.Error == "" {
		t.Fatalf("run state saved on c0001: %+v", st)
	}
	n, l := primary(fl, "c0001")
	if _, locked := n.File(path.Join(l.FleetcertDir(), "lock")); locked {
		t.Error("the cluster lock was not released")
	}

	code, table, _ := runFake(fl, false, "", "status", "-i", inv)
	if code != ExitFailed {
		t.Errorf("status after the interrupt: exit %d, want %d", code, ExitFailed)
	}
	golden(t, "status-interrupted.table.golden", scrub(table, fl, rep))
	_, js, _ := runFake(fl, false, "", "status", "-i", inv, "-o", "json")
	golden(t, "status-interrupted.json.golden", scrub(js, fl, rep))

	code, out, stderr, again := runRollout(t, fakeSystem(fl, false, ""), "rotate-ca", "-i", inv, "--yes")
	if code != ExitOK || again == nil || outcomes(again) != "c0001=done c0002=done" {
		t.Fatalf("rerun: exit %d\n%s\n%s", code, out, stderr)
	}
	if c := again.Clusters[0]; !c.Resumed || c.RunID != rep.RunID || c.TargetHash != st.TargetHash {
		t.Errorf("c0001 was not resumed: resumed %v, run %s (want %s), target %s (want %s)", c.Resumed, c.RunID, rep.RunID, c.TargetHash, st.TargetHash)
	}
	if code, out, _ := runFake(fl, false, "", "status", "-i", inv); code != ExitOK {
		t.Errorf("status after the resumed run: exit %d\n%s", code, out)
	}
}

// TestRotateCAExport: --export writes each cluster's new server CA bundle
// and its hash under DIR/<cluster>/ (the directory 0700); the tokens only
// with --export-tokens, 0600, as the servers now hold them.
func TestRotateCAExport(t *testing.T) {
	for _, tokens := range []bool{false, true} {
		t.Run(fmt.Sprintf("tokens=%v", tokens), func(t *testing.T) {
			fl, inv := fakeFleet(t)
			dir := filepath.Join(t.TempDir(), "export")
			args := []string{"rotate-ca", "-i", inv, "--yes", "--export", dir}
			if tokens {
				args = append(args, "--export-tokens")
			}
			code, out, stderr, rep := runRollout(t, fakeSystem(fl, false, ""), args...)
			if code != ExitOK || rep == nil {
				t.Fatalf("exit %d\n%s\n%s", code, out, stderr)
			}
			for _, c := range rep.Clusters {
				d := filepath.Join(dir, c.Cluster)
				n, l := primary(fl, c.Cluster)
				served, _ := n.File(l.AgentServerCA())
				token, _ := n.File(l.ServerToken())
				want := map[string]string{"server-ca.crt": string(served.Data), "ca-hash": c.TargetHash + "\n"}
				if tokens {
					want["token"], want["agent-token"] = string(token.Data), string(token.Data)
				}
				entries, _ := os.ReadDir(d)
				if len(entries) != len(want) {
					t.Errorf("%s holds %d files, want %d", d, len(entries), len(want))
				}
				for name, data := range want {
					got, err := os.ReadFile(filepath.Join(d, name))
					if err != nil || string(got) != data {
						t.Errorf("%s/%s: %v; content as on the server: %v", c.Cluster, name, err, string(got) == data)
					}
					st, _ := os.Stat(filepath.Join(d, name))
					if secret := strings.Contains(name, "token"); st != nil && secret && st.Mode().Perm() != 0o600 {
						t.Errorf("%s/%s: mode %v", c.Cluster, name, st.Mode().Perm())
					}
				}
				if st, err := os.Stat(d); err != nil || st.Mode().Perm() != 0o700 {
					t.Errorf("%s: %v, mode %v", d, err, st.Mode().Perm())
				}
			}
		})
	}
}

// TestRolloutUsageErrors: a flag out of range is bad usage (exit 2),
// found before anything connects: no node changes.
func TestRolloutUsageErrors(t *testing.T) {
	fl, inv := fakeFleet(t)
	before := fleetFiles(fl)
	for _, tc := range []struct {
		args []string
		says string
	}{
		{[]string{"rotate-ca", "--waves", "0"}, "--waves"},
		{[]string{"rotate-ca", "--order", "size"}, "--order must be inventory, name or label:KEY"},
		{[]string{"rotate-ca", "--shard", "2/2"}, "--shard must be I/N"},
		{[]string{"rotate-ca", "--max-failures", "some"}, "--max-failures"},
		{[]string{"rotate-ca", "--maintenance-window", "Funday 02:00-04:00"}, "--maintenance-window"},
		{[]string{"rotate-ca", "--canary-selector", "=x"}, "--canary-selector"},
		{[]string{"rotate-ca", "--report", "/nonexistent/dir/report.json"}, "--report /nonexistent/dir/report.json: its directory does not exist"},
		{[]string{"rotate-ca", "--agent-batch", "0"}, "--agent-batch"},
		{[]string{"rotate-ca", "--agent-batch", "150%"}, "--agent-batch"},
		{[]string{"rotate-ca", "--health-timeout", "0s"}, "--health-timeout must be positive"},
		{[]string{"rotate-ca", "-o", "yaml"}, "-o/--output must be table or json"},
		{[]string{"rotate-ca", "--export-tokens"}, "--export-tokens needs --export DIR"},
		{[]string{"rotate-ca", "--root-ca", "/nonexistent/root.pem"}, "root"},
		{[]string{"rotate-sa-key", "--keep-keys", "-1"}, "--keep-keys must be 0"},
		{[]string{"rotate", "--keep-backups", "-1"}, "--keep-backups must be 0"},
		{[]string{"rotate", "--service", "kubelet,etcd-proxy"}, "--service"},
		{[]string{"rotate", "--agent-batch", "x"}, "--agent-batch"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			code, out, stderr := runFake(fl, false, "", append(tc.args, "-i", inv, "--yes")...)
			if code != ExitUsage || !strings.Contains(stderr, tc.says) {
				t.Errorf("exit %d, want %d and an error naming %q\n%s%s", code, ExitUsage, tc.says, out, stderr)
			}
		})
	}
	if !sameFiles(before, fleetFiles(fl)) {
		t.Error("bad usage changed nodes")
	}
}

// TestRolloutDryRun: --dry-run of every rollout command plans every
// cluster (exit 0), prints the plan and its table, and changes nothing on
// any node; --export writes nothing in a dry run.
func TestRolloutDryRun(t *testing.T) {
	for _, command := range []string{"rotate-ca", "rotate-sa-key", "rotate"} {
		t.Run(command, func(t *testing.T) {
			fl, inv := fakeFleet(t)
			before := fleetFiles(fl)
			args := []string{command, "-i", inv, "--dry-run"}
			export := filepath.Join(t.TempDir(), "export")
			if command == "rotate-ca" {
				args = append(args, "--export", export)
			}
			code, out, stderr, rep := runRollout(t, fakeSystem(fl, false, ""), args...)
			if code != ExitOK || rep == nil || !rep.DryRun || outcomes(rep) != "c0001=planned c0002=planned" {
				t.Fatalf("exit %d\n%s\n%s", code, out, stderr)
			}
			if !strings.Contains(out, "Plan: "+command+" on 2 cluster(s), 4 node(s)") || !strings.Contains(out, "c0001    planned") {
				t.Errorf("no plan and table:\n%s", out)
			}
			if !sameFiles(before, fleetFiles(fl)) {
				t.Error("--dry-run changed nodes")
			}
			if _, err := os.Stat(export); !os.IsNotExist(err) {
				t.Errorf("--dry-run exported: %v", err)
			}
		})
	}
}

// TestRolloutConsent: rotate-sa-key and rotate ask as rotate-ca does
// (TestConsent): no terminal and no --yes is refused (exit 3) with nothing
// changed; on a terminal the plan is shown and only y goes on.
func TestRolloutConsent(t *testing.T) {
	for _, command := range []string{"rotate-sa-key", "rotate"} {
		for _, tc := range []struct {
			tty    bool
			answer string
			code   int
		}{
			{false, "y\n", ExitRefused},
			{true, "n\n", ExitRefused},
			{true, "y\n", ExitOK},
		} {
			t.Run(fmt.Sprintf("%s tty=%v %q", command, tc.tty, tc.answer), func(t *testing.T) {
				fl, inv := fakeFleet(t)
				before := fleetFiles(fl)
				code, out, stderr := runFake(fl, tc.tty, tc.answer, command, "-i", inv)
				if code != tc.code {
					t.Fatalf("exit %d, want %d\n%s\n%s", code, tc.code, out, stderr)
				}
				if changed := !sameFiles(before, fleetFiles(fl)); changed != (code == ExitOK) {
					t.Errorf("nodes changed: %v", changed)
				}
				asked := strings.Contains(stderr, "Plan: "+command+" on 2 cluster(s), 4 node(s)") && strings.Contains(stderr, "Proceed? [y/N] ")
				if asked != tc.tty {
					t.Errorf("plan shown and asked: %v\n%s", asked, stderr)
				}
				if !tc.tty && !strings.Contains(stderr, command+" changes nodes and there is no terminal to ask on") {
					t.Errorf("the refusal does not say why:\n%s", stderr)
				}
			})
		}
	}
}

// TestRotateCACustomRoot: the operator's root and intermediate (made here
// with ca generate) are checked on the controller before anything
// connects (a key that is not the intermediate's is exit 2); a cluster
// running k3s's own CAs refuses them without --force (exit 3), and with
// --force the plan carries a warning before the operator is asked. (The
// intermediate is given, so no RSA key is made for it.)
func TestRotateCACustomRoot(t *testing.T) {
	fl, inv := fakeFleet(t)
	before := fleetFiles(fl)
	dir := t.TempDir()
	issuers := filepath.Join(dir, "issuers")
	if code, out, stderr := runFake(fl, false, "", "ca", "generate", "--out", filepath.Join(dir, "out"), "--issuers-out", issuers, "--key-type", "ecdsa-p256"); code != ExitOK {
		t.Fatalf("ca generate: exit %d\n%s\n%s", code, out, stderr)
	}
	file := func(name string) string { return filepath.Join(issuers, name) }
	custom := []string{"--root-ca", file("root-ca.pem"), "--intermediate-ca", file("intermediate-ca.pem"), "--intermediate-key", file("intermediate-ca.key")}

	code, _, stderr := runFake(fl, false, "", "rotate-ca", "-i", inv, "--yes", "--root-ca", file("root-ca.pem"),
		"--intermediate-ca", file("intermediate-ca.pem"), "--intermediate-key", file("root-ca.key"))
	if code != ExitUsage || !strings.Contains(stderr, "CA files:") {
		t.Errorf("a key that is not the intermediate's: exit %d, want %d\n%s", code, ExitUsage, stderr)
	}
	code, out, stderr, rep := runRollout(t, fakeSystem(fl, false, ""), append([]string{"rotate-ca", "-i", inv, "--yes"}, custom...)...)
	if code != ExitRefused || rep == nil || outcomes(rep) != "c0001=refused c0002=refused" || !strings.Contains(out, "does not chain to them: use --force") {
		t.Errorf("without --force: exit %d, want %d\n%s\n%s", code, ExitRefused, out, stderr)
	}
	code, _, stderr = runFake(fl, true, "n\n", append([]string{"rotate-ca", "-i", inv, "--force"}, custom...)...)
	warning := "warning: --force loads a CA that does not chain to the current one: every secure token changes and pods must be restarted to trust the new root."
	if code != ExitRefused || !strings.Contains(stderr, "c0001: new-root") || !strings.Contains(stderr, warning+"\nProceed? [y/N]") {
		t.Errorf("--force on a terminal: exit %d, want the plan, the warning, then the question\n%s", code, stderr)
	}
	if !sameFiles(before, fleetFiles(fl)) {
		t.Error("nodes changed")
	}
}
