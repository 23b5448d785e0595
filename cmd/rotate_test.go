package cmd

import (
	"strings"
	"testing"
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
