package cmd

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/fleetcert/fleetcert/orchestrator"
)

// TestLiveViewRedrawsOneLinePerCluster: notable events scroll above a
// status block that is redrawn in place with a line per cluster.
func TestLiveViewRedrawsOneLinePerCluster(t *testing.T) {
	var out bytes.Buffer
	v := &liveView{out: &out, clusters: map[string]*clusterStatus{}}
	now := time.Now()
	for _, e := range []orchestrator.Event{
		{Time: now, Cluster: "a", Kind: orchestrator.EventPhase, Msg: "servers"},
		{Time: now, Cluster: "b", Kind: orchestrator.EventPhase, Msg: "preflight"},
		{Time: now, Cluster: "a", Node: "a-s1", Kind: orchestrator.EventChange, Msg: "restart k3s.service"},
		{Time: now, Cluster: "b", Kind: orchestrator.EventCluster, Msg: "refused"},
	} {
		v.Emit(e)
	}
	s := out.String()
	for _, want := range []string{"CHANGE a/a-s1: restart k3s.service", "b: refused", "servers a-s1", "\x1b[2A\x1b[J"} {
		if !strings.Contains(s, want) {
			t.Errorf("output lacks %q:\n%q", want, s)
		}
	}
	// The last block drawn has exactly one line per cluster.
	last := s[strings.LastIndex(s, "\x1b[J")+len("\x1b[J"):]
	lines := strings.Split(strings.TrimRight(last, "\n"), "\n")
	if len(lines) != 3 || !strings.HasPrefix(strings.TrimSpace(lines[1]), "a ") || !strings.HasPrefix(strings.TrimSpace(lines[2]), "b ") {
		t.Errorf("last redraw:\n%s", last)
	}
}
