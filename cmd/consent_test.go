package cmd

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestConsent: a mutating command shows its plan on the terminal and asks;
// anything but y/yes (or end of input) exits 3 with nothing changed; with
// no terminal and no --yes it refuses; --yes and "y" go on.
func TestConsent(t *testing.T) {
	for _, tc := range []struct {
		name     string
		tty      bool
		answer   string
		args     []string
		wantCode int
		changed  bool
	}{
		{"terminal, answer n", true, "n\n", nil, ExitRefused, false},
		{"terminal, end of input", true, "", nil, ExitRefused, false},
		{"terminal, anything else", true, "sure\n", nil, ExitRefused, false},
		{"no terminal, no --yes", false, "y\n", nil, ExitRefused, false},
		{"dry run never asks", false, "", []string{"--dry-run"}, ExitOK, false},
		{"terminal, answer Y", true, "Y\n", nil, ExitOK, true},
		{"no terminal, --yes", false, "", []string{"--yes"}, ExitOK, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fl, inv := fakeFleet(t)
			before := fleetFiles(fl)
			args := append([]string{"rotate-ca", "-i", inv, "-o", "json", "--health-timeout", "20s"}, tc.args...)
			code, stdout, stderr := runFake(fl, tc.tty, tc.answer, args...)
			if code != tc.wantCode {
				t.Fatalf("exit %d, want %d\nstderr:\n%s", code, tc.wantCode, stderr)
			}
			if got := !sameFiles(before, fleetFiles(fl)); got != tc.changed {
				t.Errorf("nodes changed: %v, want %v", got, tc.changed)
			}
			asked := strings.Contains(stderr, "Proceed? [y/N]")
			if asked != (tc.tty && !slices.Contains(tc.args, "--yes") && !slices.Contains(tc.args, "--dry-run")) {
				t.Errorf("asked: %v\nstderr:\n%s", asked, stderr)
			}
			if asked && !strings.Contains(stderr, "Plan: rotate-ca on 2 cluster(s), 4 node(s)") {
				t.Errorf("no plan before the question:\n%s", stderr)
			}
			if !tc.tty && !slices.Contains(tc.args, "--yes") && !slices.Contains(tc.args, "--dry-run") && !strings.Contains(stderr, "pass --yes for unattended runs") {
				t.Errorf("the refusal does not say how to go on:\n%s", stderr)
			}
			// With -o json, stdout is the JSON document alone.
			if code == ExitOK && !strings.HasPrefix(strings.TrimSpace(stdout), "{") {
				t.Errorf("stdout is not only JSON:\n%s", stdout)
			}
			if strings.Contains(stdout, "Proceed?") || strings.Contains(stdout, "Plan:") {
				t.Errorf("the plan or question reached stdout:\n%s", stdout)
			}
		})
	}
}

// TestPlanSummary: the plan names the waves, each cluster's mode and hash
// change, what restarts, how many files change and the gates; -v lists the
// files. The same plan is what --dry-run prints.
func TestPlanSummary(t *testing.T) {
	fl, inv := fakeFleet(t)
	_, _, stderr := runFake(fl, true, "n\n", "rotate-ca", "-i", inv, "--waves", "1,100%")
	for _, want := range []string{
		"wave 1: 1 cluster(s)", "wave 2: 1 cluster(s)",
		"c0001: cross-sign, token hash " + fl.Material.Hash[:12] + " -> a new one",
		"restarts 1 server(s) one at a time, then 1 agent(s); 2 file(s) change",
		"gates after each restart: servers: restarted, serve the new CA",
	} {
		if !strings.Contains(stderr, want) {
			t.Errorf("plan lacks %q:\n%s", want, stderr)
		}
	}
	if strings.Contains(stderr, "file c0001-a1:/etc/systemd/system/k3s-agent.service.env") {
		t.Errorf("files listed without -v:\n%s", stderr)
	}
	// The whole plan, compared with its golden file (the fleet's random
	// CA hash replaced).
	plan := strings.ReplaceAll(stderr, fl.Material.Hash[:12], "<old-hash>")
	golden := filepath.Join("testdata", "plan-rotate-ca.golden")
	if *update {
		if err := os.WriteFile(golden, []byte(plan), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if want, err := os.ReadFile(golden); err != nil || string(want) != plan {
		t.Errorf("plan differs from %s (%v; -update rewrites it):\n%s", golden, err, plan)
	}
	_, _, stderr = runFake(fl, true, "n\n", "rotate-ca", "-i", inv, "-v")
	if !strings.Contains(stderr, "file c0001-a1:/etc/systemd/system/k3s-agent.service.env") {
		t.Errorf("-v does not list the files:\n%s", stderr)
	}
	code, stdout, _ := runFake(fl, false, "", "rotate-ca", "-i", inv, "--dry-run")
	if code != ExitOK || !strings.Contains(stdout, "Plan: rotate-ca on 2 cluster(s), 4 node(s)") ||
		!strings.Contains(stdout, "file c0002-s1:/etc/systemd/system/k3s.service.env") {
		t.Errorf("--dry-run (exit %d) does not print the plan:\n%s", code, stdout)
	}
}
