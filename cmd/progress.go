package cmd

import (
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/fleetcert/fleetcert/orchestrator"
)

// maxInFlightLines bounds the live view's per-cluster lines, so the screen
// stays readable whatever the concurrency.
const maxInFlightLines = 20

// logEvery is how often, at most, a run without a terminal logs its counts
// (besides at every wave boundary).
const logEvery = 30 * time.Second

// tally is a run's progress as its events tell it: the counts the live
// view's status area and the periodic log line show.
type tally struct {
	clusters, nodes int // the run's totals
	started         time.Time
	wave            string
	inFlight        map[string]*clusterStatus
	done, failed    int
	finished        int
	restarted       int
}

type clusterStatus struct {
	phase, node, last string
	started           time.Time
}

func newTally(clusters, nodes int, now time.Time) *tally {
	return &tally{clusters: clusters, nodes: nodes, started: now, inFlight: map[string]*clusterStatus{}}
}

// add counts one event. It returns the cluster's status, nil for events of
// no cluster or of one that has finished.
func (t *tally) add(e orchestrator.Event) *clusterStatus {
	switch e.Kind {
	case orchestrator.EventWave:
		t.wave = e.Msg
		return nil
	case orchestrator.EventCluster:
		delete(t.inFlight, e.Cluster)
		t.finished++
		switch e.Msg {
		case orchestrator.OutcomeDone, orchestrator.OutcomePlanned:
			t.done++
		case orchestrator.OutcomeFailed, orchestrator.OutcomeRefused:
			t.failed++
		}
		return nil
	case orchestrator.EventChange:
		// A restart (rotate-ca, rotate-sa-key) or a stop/renew/start (rotate).
		msg := strings.TrimPrefix(e.Msg, "would ")
		if strings.HasPrefix(msg, "restart ") || strings.HasPrefix(msg, "stop ") {
			t.restarted++
		}
	}
	if e.Cluster == "" || (e.Kind == orchestrator.EventWarn && strings.HasPrefix(e.Msg, "not started")) {
		return nil
	}
	c := t.inFlight[e.Cluster]
	if c == nil {
		c = &clusterStatus{started: e.Time}
		t.inFlight[e.Cluster] = c
	}
	switch {
	case e.Kind == orchestrator.EventPhase:
		c.phase, c.node = e.Msg, ""
	case e.Node != "":
		c.node = e.Node
	}
	if e.Kind != orchestrator.EventPhase {
		c.last = e.Msg
	}
	return c
}

// summary is the counts in one line, with an ETA from the clusters
// finished so far.
func (t *tally) summary(now time.Time) string {
	elapsed := now.Sub(t.started)
	notStarted := max(0, t.clusters-t.finished-len(t.inFlight))
	s := fmt.Sprintf("clusters: %d done, %d failed, %d in flight, %d not started · nodes restarted: %d/%d · %s elapsed",
		t.done, t.failed, len(t.inFlight), notStarted, t.restarted, t.nodes, elapsed.Round(time.Second))
	if t.finished > 0 && t.finished < t.clusters {
		eta := time.Duration(float64(elapsed) / float64(t.finished) * float64(t.clusters-t.finished))
		s += " · ETA " + eta.Round(time.Second).String()
	}
	if t.wave != "" {
		s = t.wave + " · " + s
	}
	return s
}

// liveView shows a run on a terminal: changes, warnings and finished
// clusters scroll by as lines, and below them a status area is redrawn in
// place: the counts, then one line per cluster in flight (phase, node,
// time in phase), never one per cluster of the fleet.
type liveView struct {
	mu    sync.Mutex
	out   io.Writer
	t     *tally
	drawn int
	now   func() time.Time
	stop  chan struct{}
	done  chan struct{}
}

// progressSink picks how a run shows progress: a live view on a terminal
// with text logs, otherwise log lines (text or JSON) with the run id and,
// at every wave and at most every 30 s, the counts.
func (a *app) progressSink(clusters, nodes int) (orchestrator.Sink, func()) {
	t := newTally(clusters, nodes, time.Now())
	if a.g.logFormat != "text" || !a.stderrTTY {
		return &progressLog{log: a.log, t: t, now: time.Now}, func() {}
	}
	v := &liveView{out: a.stderr, t: t, now: time.Now, stop: make(chan struct{}), done: make(chan struct{})}
	go v.tick()
	return v, v.close
}

func (v *liveView) Emit(e orchestrator.Event) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.t.add(e)
	var line string
	switch e.Kind {
	case orchestrator.EventCluster:
		line = fmt.Sprintf("%s: %s", e.Cluster, e.Msg)
	case orchestrator.EventWarn, orchestrator.EventFail, orchestrator.EventChange:
		line = fmt.Sprintf("%s %s %s: %s", e.Time.Format("15:04:05"), strings.ToUpper(string(e.Kind)), where(e), e.Msg)
	case orchestrator.EventWave:
		line = e.Msg
	}
	v.redraw(line)
}

func where(e orchestrator.Event) string {
	if e.Node == "" {
		return e.Cluster
	}
	return e.Cluster + "/" + e.Node
}

// redraw clears the status area, prints line (if any) and draws the area
// again. Callers hold v.mu.
func (v *liveView) redraw(line string) {
	if v.drawn > 0 {
		fmt.Fprintf(v.out, "\x1b[%dA\x1b[J", v.drawn)
	}
	if line != "" {
		fmt.Fprintln(v.out, line)
	}
	now := v.now()
	fmt.Fprintln(v.out, v.t.summary(now))
	names := make([]string, 0, len(v.t.inFlight))
	for n := range v.t.inFlight {
		names = append(names, n)
	}
	sort.Strings(names)
	shown := names[:min(len(names), maxInFlightLines)]
	for _, n := range shown {
		c := v.t.inFlight[n]
		state := c.phase
		if c.node != "" {
			state += " " + c.node
		}
		fmt.Fprintf(v.out, "  %-24s %-30s %8s  %s\n", n, state, now.Sub(c.started).Round(time.Second), truncate(c.last, 60))
	}
	v.drawn = 1 + len(shown)
	if more := len(names) - len(shown); more > 0 {
		fmt.Fprintf(v.out, "  … and %d more in flight\n", more)
		v.drawn++
	}
}

func (v *liveView) tick() {
	defer close(v.done)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-v.stop:
			return
		case <-t.C:
			v.mu.Lock()
			v.redraw("")
			v.mu.Unlock()
		}
	}
}

func (v *liveView) close() {
	close(v.stop)
	<-v.done
}

// progressLog is progress without a terminal: every event as a log line
// (as orchestrator.LogSink writes it), and the counts at each wave
// boundary and at most every logEvery.
type progressLog struct {
	log  *slog.Logger
	t    *tally
	now  func() time.Time
	mu   sync.Mutex
	last time.Time
}

func (p *progressLog) Emit(e orchestrator.Event) {
	orchestrator.LogSink{Log: p.log}.Emit(e)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.t.add(e)
	now := p.now()
	if e.Kind != orchestrator.EventWave && now.Sub(p.last) < logEvery {
		return
	}
	p.last = now
	p.log.Info("progress", "run", e.RunID, "summary", p.t.summary(now))
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-1] + "…"
}
