package cmd

import (
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/term"

	"github.com/fleetcert/fleetcert/orchestrator"
)

// liveView shows a run on a terminal: notable events scroll by as lines,
// and below them a block with one line per cluster (phase, node, elapsed)
// is redrawn in place.
type liveView struct {
	mu       sync.Mutex
	out      io.Writer
	clusters map[string]*clusterStatus
	drawn    int
	stop     chan struct{}
	done     chan struct{}
}

type clusterStatus struct {
	phase, node, last string
	started           time.Time
	finished          bool
}

// progressSink picks how a run shows progress: a live view on a terminal
// with text logs, otherwise log lines (text or JSON) with the run id.
func (a *app) progressSink() (orchestrator.Sink, func()) {
	f, ok := a.stderr.(*os.File)
	if a.g.logFormat != "text" || !ok || !term.IsTerminal(int(f.Fd())) {
		return orchestrator.LogSink{Log: a.log}, func() {}
	}
	v := &liveView{out: a.stderr, clusters: map[string]*clusterStatus{}, stop: make(chan struct{}), done: make(chan struct{})}
	go v.tick()
	return v, v.close
}

func (v *liveView) Emit(e orchestrator.Event) {
	v.mu.Lock()
	defer v.mu.Unlock()
	c := v.clusters[e.Cluster]
	if c == nil && e.Cluster != "" {
		c = &clusterStatus{started: e.Time}
		v.clusters[e.Cluster] = c
	}
	var line string
	switch e.Kind {
	case orchestrator.EventPhase:
		c.phase, c.node = e.Msg, ""
	case orchestrator.EventCluster:
		c.phase, c.node, c.finished = e.Msg, "", true
		line = fmt.Sprintf("%s: %s", e.Cluster, e.Msg)
	case orchestrator.EventWarn, orchestrator.EventFail, orchestrator.EventChange:
		line = fmt.Sprintf("%s %s %s: %s", e.Time.Format("15:04:05"), strings.ToUpper(string(e.Kind)), where(e), e.Msg)
	}
	if c != nil && e.Node != "" {
		c.node = e.Node
	}
	if c != nil && e.Kind != orchestrator.EventPhase {
		c.last = e.Msg
	}
	v.redraw(line)
}

func where(e orchestrator.Event) string {
	if e.Node == "" {
		return e.Cluster
	}
	return e.Cluster + "/" + e.Node
}

// redraw clears the status block, prints line (if any) and draws the block
// again. Callers hold v.mu.
func (v *liveView) redraw(line string) {
	if v.drawn > 0 {
		fmt.Fprintf(v.out, "\x1b[%dA\x1b[J", v.drawn)
	}
	if line != "" {
		fmt.Fprintln(v.out, line)
	}
	names := make([]string, 0, len(v.clusters))
	for n := range v.clusters {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		c := v.clusters[n]
		elapsed := time.Since(c.started).Round(time.Second)
		state := c.phase
		if c.node != "" && !c.finished {
			state += " " + c.node
		}
		fmt.Fprintf(v.out, "  %-24s %-30s %8s  %s\n", n, state, elapsed, truncate(c.last, 60))
	}
	v.drawn = len(names)
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

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-1] + "…"
}
