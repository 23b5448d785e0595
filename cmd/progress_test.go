package cmd

import (
	"bytes"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/fleetcert/fleetcert/orchestrator"
)

// lastArea is the status area of the live view's last redraw: what
// follows the clear, less the one line that scrolled above it.
func lastArea(s string) []string {
	last := s[strings.LastIndex(s, "\x1b[J")+len("\x1b[J"):]
	lines := strings.Split(strings.TrimRight(last, "\n"), "\n")
	if len(lines) > 0 && !strings.Contains(lines[0], "clusters: ") {
		lines = lines[1:]
	}
	return lines
}

// TestLiveViewRedrawsInPlace: changes and finished clusters scroll above
// a status area that is redrawn in place: the counts, then one line per
// cluster in flight.
func TestLiveViewRedrawsInPlace(t *testing.T) {
	var out bytes.Buffer
	now := time.Now()
	v := &liveView{out: &out, t: newTally(2, 4, now), now: func() time.Time { return now }}
	for _, e := range []orchestrator.Event{
		{Time: now, Kind: orchestrator.EventWave, Msg: "wave 1 of 1, 2 clusters"},
		{Time: now, Cluster: "a", Kind: orchestrator.EventPhase, Msg: "servers"},
		{Time: now, Cluster: "b", Kind: orchestrator.EventPhase, Msg: "preflight"},
		{Time: now, Cluster: "a", Node: "a-s1", Kind: orchestrator.EventChange, Msg: "restart k3s.service"},
		{Time: now, Cluster: "b", Kind: orchestrator.EventCluster, Msg: "refused"},
	} {
		v.Emit(e)
	}
	s := out.String()
	for _, want := range []string{"CHANGE a/a-s1: restart k3s.service", "b: refused", "\x1b[3A\x1b[J"} {
		if !strings.Contains(s, want) {
			t.Errorf("output lacks %q:\n%q", want, s)
		}
	}
	area := lastArea(s)
	if len(area) != 2 || !strings.Contains(area[0], "wave 1 of 1, 2 clusters · clusters: 0 done, 1 failed, 1 in flight, 0 not started · nodes restarted: 1/4") ||
		!strings.Contains(area[1], "servers a-s1") {
		t.Errorf("last status area:\n%s", strings.Join(area, "\n"))
	}
}

// TestLiveViewHeightBoundedAt1000Clusters: however many clusters are in
// flight, the status area is the counts plus at most maxInFlightLines
// lines and one "and N more"; finished clusters leave it.
func TestLiveViewHeightBoundedAt1000Clusters(t *testing.T) {
	var out bytes.Buffer
	start := time.Now()
	now := start
	v := &liveView{out: &out, t: newTally(1000, 3000, start), now: func() time.Time { return now }}
	for i := range 1000 {
		v.Emit(orchestrator.Event{Time: now, Cluster: fmt.Sprintf("c%04d", i), Kind: orchestrator.EventPhase, Msg: "servers"})
	}
	if area := lastArea(out.String()); len(area) != 1+maxInFlightLines+1 || !strings.Contains(area[len(area)-1], "and 980 more in flight") {
		t.Errorf("status area of %d lines:\n%s", len(area), strings.Join(area, "\n"))
	}
	now = start.Add(10 * time.Minute)
	for i := range 500 {
		v.Emit(orchestrator.Event{Time: now, Cluster: fmt.Sprintf("c%04d", i), Kind: orchestrator.EventCluster, Msg: "done"})
	}
	area := lastArea(out.String())
	if len(area) != 1+maxInFlightLines+1 || !strings.Contains(area[0], "clusters: 500 done, 0 failed, 500 in flight, 0 not started") ||
		!strings.Contains(area[0], "ETA 10m0s") {
		t.Errorf("status area after 500 done in 10m:\n%s", strings.Join(area, "\n"))
	}
}

// TestProgressLogWithoutTerminal: without a terminal the counts are
// logged at each wave boundary and at most every 30 s.
func TestProgressLogWithoutTerminal(t *testing.T) {
	var buf bytes.Buffer
	now := time.Now()
	p := &progressLog{log: slog.New(slog.NewTextHandler(&buf, nil)), t: newTally(3, 3, now), now: func() time.Time { return now }}
	p.Emit(orchestrator.Event{Time: now, Kind: orchestrator.EventWave, Msg: "wave 1 of 2, 1 clusters"})
	for i := range 10 {
		now = now.Add(time.Second)
		p.Emit(orchestrator.Event{Time: now, Cluster: "c1", Kind: orchestrator.EventInfo, Msg: fmt.Sprintf("step %d", i)})
	}
	if n := strings.Count(buf.String(), "msg=progress"); n != 1 {
		t.Errorf("%d progress lines in 10 s after a wave line, want 1:\n%s", n, buf.String())
	}
	now = now.Add(30 * time.Second)
	p.Emit(orchestrator.Event{Time: now, Cluster: "c1", Kind: orchestrator.EventCluster, Msg: "done"})
	p.Emit(orchestrator.Event{Time: now, Kind: orchestrator.EventWave, Msg: "wave 2 of 2, 2 clusters"})
	if n := strings.Count(buf.String(), "msg=progress"); n != 3 || !strings.Contains(buf.String(), "wave 2 of 2, 2 clusters · clusters: 1 done") {
		t.Errorf("%d progress lines, want 3 (30 s later, and the next wave):\n%s", n, buf.String())
	}
}
