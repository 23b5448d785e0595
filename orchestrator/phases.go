package orchestrator

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/fleetcert/fleetcert/inventory"
)

// phase is one step of an operation on a cluster. Run must look at the
// actual state before acting, so that a rerun after a failure or an
// interruption continues where the last one stopped. Phases change nodes
// only through clusterRun.Wet, which is what makes --dry-run safe.
type phase interface {
	Title() string
	Run(ctx context.Context, r *clusterRun) error
}

// skipper is a phase that may decide, from what earlier phases found, that
// it has nothing to do.
type skipper interface {
	ShouldRun(r *clusterRun) bool
}

// cleaner is a phase that must undo or release something when a later
// phase fails (e.g. the lock).
type cleaner interface {
	CleanUp(ctx context.Context, r *clusterRun)
}

// clusterRun is one cluster going through an operation's phases.
type clusterRun struct {
	Cluster inventory.Cluster
	Nodes   []*Node // servers first (primary first), then agents
	RunID   string
	DryRun  bool
	Sink    Sink
	Now     func() time.Time

	phase string
	// finished is set by a phase that found the cluster already as the
	// operation would leave it: the phases after it do not run.
	finished bool
	mu       sync.Mutex
	changes  []Change
	spans    []PhaseSpan
}

// Primary is the server that loads new material and keeps the run state.
func (r *clusterRun) Primary() *Node {
	for _, n := range r.Nodes {
		if n.Primary {
			return n
		}
	}
	return r.Nodes[0]
}

// Servers and Agents return the cluster's nodes by role, primary first.
func (r *clusterRun) Servers() []*Node { return r.byRole(inventory.Server) }
func (r *clusterRun) Agents() []*Node  { return r.byRole(inventory.Agent) }

func (r *clusterRun) byRole(role inventory.Role) []*Node {
	var out []*Node
	if role == inventory.Server {
		out = append(out, r.Primary())
	}
	for _, n := range r.Nodes {
		if n.Role == role && !(role == inventory.Server && n == r.Primary()) {
			out = append(out, n)
		}
	}
	return out
}

// Wet makes one change to a node, or with dry-run only records that it
// would. Every mutation fleetcert makes passes through here, so a dry-run
// plan lists exactly what a real run does.
func (r *clusterRun) Wet(n *Node, what string, fn func() error) error {
	if r.DryRun {
		r.record(n, what)
		r.emit(n, EventChange, "would "+what)
		return nil
	}
	r.emit(n, EventChange, what)
	if err := fn(); err != nil {
		return fmt.Errorf("%s: %s: %w", n.Name, what, err)
	}
	r.record(n, what)
	return nil
}

// record lists a change made (or, with dry-run, planned).
func (r *clusterRun) record(n *Node, what string) {
	r.mu.Lock()
	r.changes = append(r.changes, Change{Node: n.Name, Phase: r.phase, What: what})
	r.mu.Unlock()
}

// Phases lists the phases run so far, with their times.
func (r *clusterRun) Phases() []PhaseSpan {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]PhaseSpan(nil), r.spans...)
}

// Changes lists the changes made (or planned, with dry-run) so far.
func (r *clusterRun) Changes() []Change {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Change(nil), r.changes...)
}

// Info, Warn: progress an operator should see.
func (r *clusterRun) Info(n *Node, format string, args ...any) {
	r.emit(n, EventInfo, fmt.Sprintf(format, args...))
}

func (r *clusterRun) Warn(n *Node, format string, args ...any) {
	r.emit(n, EventWarn, fmt.Sprintf(format, args...))
}

func (r *clusterRun) emit(n *Node, kind EventKind, msg string) {
	if r.Sink == nil {
		return
	}
	e := Event{Time: r.now(), RunID: r.RunID, Cluster: r.Cluster.Name, Phase: r.phase, Kind: kind, Msg: msg}
	if n != nil {
		e.Node = n.Name
	}
	r.Sink.Emit(e)
}

func (r *clusterRun) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// runPhases drives r through phases in order. On the first failure every
// phase that already ran gets its CleanUp, newest first, and the error is
// returned naming the phase. Cancellation is checked between phases, so an
// interrupt finishes the current step and stops cleanly.
func runPhases(ctx context.Context, r *clusterRun, phases []phase) error {
	var ran []phase
	fail := func(err error) error {
		for i := len(ran) - 1; i >= 0; i-- {
			if c, ok := ran[i].(cleaner); ok {
				c.CleanUp(context.WithoutCancel(ctx), r)
			}
		}
		return err
	}
	for _, p := range phases {
		if err := ctx.Err(); err != nil {
			return fail(err)
		}
		if s, ok := p.(skipper); ok && !s.ShouldRun(r) {
			continue
		}
		r.phase = p.Title()
		r.emit(nil, EventPhase, p.Title())
		ran = append(ran, p)
		span := PhaseSpan{Phase: p.Title(), Started: r.now()}
		err := p.Run(ctx, r)
		span.Finished = r.now()
		r.mu.Lock()
		r.spans = append(r.spans, span)
		r.mu.Unlock()
		if err != nil {
			r.emit(nil, EventFail, err.Error())
			return fail(fmt.Errorf("%s: %w", p.Title(), err))
		}
		if r.finished {
			break
		}
	}
	r.phase = ""
	return nil
}

// nothingToDo ends the run after the current phase: the cluster already is
// as the operation would leave it.
func (r *clusterRun) nothingToDo(why string) {
	r.Info(nil, "%s", why)
	r.finished = true
}
