package cmd

import (
	"strings"
	"testing"
)

// TestRotateCAComplete: rotate-ca --complete in-process: bad flag
// combinations are usage errors that change nothing; after a cross-signed
// rotate-ca, completing within --min-soak is refused and with --min-soak 0
// it is done, the table saying so.
func TestRotateCAComplete(t *testing.T) {
	fl, inv := fakeFleet(t)
	fl.Supervisor = true
	before := fleetFiles(fl)
	for _, args := range [][]string{
		{"--complete", "--force"},
		{"--complete", "--root-ca", "root.pem"},
		{"--complete", "--min-soak", "-1h"},
		{"--complete", "--export-tokens"},
		{"--min-soak", "1h"},
	} {
		code, out, stderr := runFake(fl, false, "", append([]string{"rotate-ca", "-i", inv, "--yes"}, args...)...)
		if code != ExitUsage {
			t.Errorf("%v: exit %d, want 2\n%s%s", args, code, out, stderr)
		}
	}
	if !sameFiles(before, fleetFiles(fl)) {
		t.Fatal("a usage error changed files")
	}
	if code, out, stderr := runFake(fl, false, "", "rotate-ca", "-i", inv, "--yes", "--complete", "--min-soak", "0"); code != ExitRefused ||
		!strings.Contains(out+stderr, "never went through a cross-signed rotation") {
		t.Errorf("completing a cluster never cross-signed: exit %d\n%s%s", code, out, stderr)
	}
	if code, out, stderr := runFake(fl, false, "", "rotate-ca", "-i", inv, "--yes"); code != ExitOK {
		t.Fatalf("rotate-ca: exit %d\n%s%s", code, out, stderr)
	}
	if code, out, stderr := runFake(fl, false, "", "rotate-ca", "-i", inv, "--yes", "--complete"); code != ExitRefused ||
		!strings.Contains(out+stderr, "less than --min-soak 24h0m0s") {
		t.Errorf("completing right after the rotation: exit %d, want 3\n%s%s", code, out, stderr)
	}
	code, out, stderr := runFake(fl, false, "", "rotate-ca", "-i", inv, "--yes", "--complete", "--min-soak", "0")
	if code != ExitOK || strings.Count(out, " done ") != 2 || strings.Count(out, " complete ") != 2 {
		t.Errorf("rotate-ca --complete: exit %d, want 0 and both clusters done in mode complete\n%s%s", code, out, stderr)
	}
}
