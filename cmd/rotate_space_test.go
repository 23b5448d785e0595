package cmd

import (
	"strings"
	"testing"
)

// TestRotateCARefusesAFullPrimary: a primary without room for the backup
// and the staged material refuses the cluster before anything is written
// (exit 3), naming the node and the space.
func TestRotateCARefusesAFullPrimary(t *testing.T) {
	fl, inv := fakeFleet(t)
	fl.Node("c0001/c0001-s1").FreeKiB = 12
	before := fleetFiles(fl)
	code, out, stderr := runFake(fl, false, "", "rotate-ca", "-i", inv, "--cluster", "c0001", "--yes")
	if code != ExitRefused || !strings.Contains(out+stderr, "c0001-s1: 12 KiB free where fleetcert keeps its files") {
		t.Errorf("exit %d, want 3 naming the node and its free space\n%s%s", code, out, stderr)
	}
	if !sameFiles(before, fleetFiles(fl)) {
		t.Error("a refused run changed files")
	}
}
