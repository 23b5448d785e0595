package cmd

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestStatusReportsUnfinishedRunsAndStaleLocks(t *testing.T) {
	fleet := newSSHFleet(t)
	clean := newFactsNode(t, filepath.Join(fleet.dir, "clean"), func(h string) string { return h })
	busy := newFactsNode(t, filepath.Join(fleet.dir, "busy"), func(h string) string { return h })
	state := filepath.Join(busy.dataDir, "server", "fleetcert")
	os.MkdirAll(state, 0o700)
	os.WriteFile(filepath.Join(state, "run.json"), []byte(`{"runId":"r1","command":"rotate-ca","mode":"cross-sign",
		"targetHash":"`+strings.Repeat("cd", 32)+`","loaded":true,"nodes":{"s1":"done","s2":"restarted"}}`), 0o600)
	expired := time.Now().Add(-10 * time.Minute).UTC().Format(time.RFC3339)
	os.WriteFile(filepath.Join(state, "lock"), []byte(`{"owner":"ctl","pid":7,"runId":"r1","expires":"`+expired+`"}`), 0o600)
	os.WriteFile(filepath.Join(state, "last-run.json"), []byte(`{"runId":"r0","command":"rotate-sa-key","outcome":"done"}`), 0o600)

	s1, s2 := fleet.serve(t), fleet.serve(t)
	inv := fleet.inventoryHeader() + fmt.Sprintf(`  - name: clean
    servers: [{host: 127.0.0.1, name: s1, ssh: {port: %d}, dataDir: %s}]
  - name: busy
    servers: [{host: 127.0.0.1, name: s1, ssh: {port: %d}, dataDir: %s}]
    agents: [{host: 127.0.0.1, name: a1, ssh: {port: 1}}]
`, s1.Port(), clean.dataDir, s2.Port(), busy.dataDir)
	invPath := filepath.Join(fleet.dir, "hosts.yaml")
	os.WriteFile(invPath, []byte(inv), 0o600)

	var out, errb bytes.Buffer
	if code := run([]string{"status", "-i", invPath, "-o", "json"}, nil, &out, &errb); code != ExitFailed {
		t.Fatalf("exit %d, want %d; %s", code, ExitFailed, errb.String())
	}
	var st []struct {
		Cluster    string
		Reachable  bool
		LockStale  bool
		Unfinished *struct{ RunID string }
		LastRun    *struct{ Outcome string }
	}
	if err := json.Unmarshal(envelope(t, out.Bytes(), "clusters"), &st); err != nil {
		t.Fatal(err)
	}
	if len(st) != 2 || st[0].Unfinished != nil || st[0].LockStale || !st[0].Reachable {
		t.Fatalf("clean cluster: %+v", st)
	}
	if st[1].Unfinished == nil || st[1].Unfinished.RunID != "r1" || !st[1].LockStale || st[1].LastRun == nil || st[1].LastRun.Outcome != "done" {
		t.Fatalf("busy cluster: %+v", st[1])
	}

	out.Reset()
	run([]string{"status", "-i", invPath}, nil, &out, &errb)
	for _, want := range []string{"FLEET: 2 cluster(s), 0 unreachable, 1 locked, 1 needing attention", "STALE", "r1 rotate-ca (cross-sign)", "loaded", "done: 1", "restarted: 1", "r0 rotate-sa-key: done"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, out.String())
		}
	}
	if code := run([]string{"status", "-i", invPath, "--cluster", "clean"}, nil, &out, &errb); code != ExitOK {
		t.Errorf("clean cluster alone: exit %d", code)
	}
}

// TestStatusOverFakeFleet: status exits 0 for a quiet fleet, 4 when a
// primary cannot be reached (the rest still reported), and 1 when a
// cluster also has an unfinished run, which outranks unreachable.
func TestStatusOverFakeFleet(t *testing.T) {
	fl, inv := fakeFleet(t)
	if code, out, stderr := runFake(fl, false, "", "status", "-i", inv); code != ExitOK || !strings.Contains(out, "FLEET: 2 cluster(s), 0 unreachable, 0 locked, 0 needing attention") {
		t.Fatalf("quiet fleet: exit %d\n%s\n%s", code, out, stderr)
	}
	fl.Node("c0002/c0002-s1").DialErr = errNoRoute
	code, out, _ := runFake(fl, false, "", "status", "-i", inv)
	if code != ExitUnreachable || !strings.Contains(out, "FLEET: 2 cluster(s), 1 unreachable") || !strings.Contains(out, "c0002    c0002-s1  UNREACHABLE") {
		t.Errorf("primary unreachable: exit %d, want %d\n%s", code, ExitUnreachable, out)
	}
	loadFails(fl)
	if code, out, stderr := runFake(fl, false, "", "rotate-ca", "-i", inv, "--yes", "--cluster", "c0001"); code != ExitFailed {
		t.Fatalf("the failing run: exit %d\n%s\n%s", code, out, stderr)
	}
	code, js, _ := runFake(fl, false, "", "status", "-i", inv, "-o", "json")
	var st []struct {
		Cluster    string
		Reachable  bool
		Unfinished *struct{ RunID string }
	}
	if err := json.Unmarshal(envelope(t, []byte(js), "clusters"), &st); err != nil {
		t.Fatal(err)
	}
	if code != ExitFailed || len(st) != 2 || st[0].Unfinished == nil || st[1].Reachable {
		t.Errorf("unfinished run and an unreachable primary: exit %d, want %d; %+v", code, ExitFailed, st)
	}
}
