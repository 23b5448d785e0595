// Package rollout decides how a run moves across a fleet: which clusters
// belong to this controller (shards), in which order and waves they start,
// how many failures stop new starts (the budget) and when starts are
// allowed (the maintenance window). It only plans and judges; the engine
// that runs clusters is orchestrator.RunFleet.
package rollout

import (
	"errors"
	"fmt"
	"hash/fnv"
	"sort"
	"strconv"
	"strings"
	"time"
	_ "time/tzdata" // maintenance windows name IANA zones; a static binary carries them

	"github.com/fleetcert/fleetcert/inventory"
)

// Plan is how a run moves across the fleet.
type Plan struct {
	// Waves are the clusters in rollout order (see Waves); one wave with
	// every cluster when nil.
	Waves [][]inventory.Cluster
	// Budget: once exceeded, no new cluster starts.
	Budget FailureBudget
	// WavePause is the soak time between waves; a health pass over the
	// finished clusters ends it.
	WavePause time.Duration
	// Window, when set: no cluster starts outside it.
	Window *Window
}

// Clusters counts the clusters and nodes the plan holds.
func (p Plan) Clusters() (clusters, nodes int) {
	for _, w := range p.Waves {
		for _, c := range w {
			clusters, nodes = clusters+1, nodes+len(c.Nodes)
		}
	}
	return clusters, nodes
}

// WaveStep is one entry of --waves: a count, or a percentage of all
// selected clusters.
type WaveStep struct {
	N       int
	Percent bool
}

// ParseWaves reads --waves as Ansible reads `serial`: "1,10%,100%".
func ParseWaves(s string) ([]WaveStep, error) {
	if strings.TrimSpace(s) == "" {
		return nil, errors.New("--waves is empty")
	}
	var steps []WaveStep
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		p, pct := strings.CutSuffix(part, "%")
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || (pct && n > 100) {
			return nil, fmt.Errorf("--waves: %q is not a positive count or a percentage from 1%% to 100%%", part)
		}
		steps = append(steps, WaveStep{N: n, Percent: pct})
	}
	return steps, nil
}

// size is how many clusters a step takes out of total: a percentage is
// rounded down but at least 1.
func (w WaveStep) size(total int) int {
	if !w.Percent {
		return w.N
	}
	return max(1, total*w.N/100)
}

// Order names how clusters are sorted before they are cut into waves.
type Order struct {
	By    string // inventory, name or label
	Label string // with By == "label"
}

// ParseOrder reads --order: inventory, name or label:KEY.
func ParseOrder(s string) (Order, error) {
	switch {
	case s == "" || s == "inventory":
		return Order{By: "inventory"}, nil
	case s == "name":
		return Order{By: "name"}, nil
	case strings.HasPrefix(s, "label:") && len(s) > len("label:"):
		return Order{By: "label", Label: strings.TrimPrefix(s, "label:")}, nil
	}
	return Order{}, fmt.Errorf("--order must be inventory, name or label:KEY, not %q", s)
}

// sort orders clusters in place; stable, so ties keep inventory order.
func (o Order) sort(cs []inventory.Cluster) {
	switch o.By {
	case "name":
		sort.SliceStable(cs, func(i, j int) bool { return cs[i].Name < cs[j].Name })
	case "label":
		sort.SliceStable(cs, func(i, j int) bool { return cs[i].Labels[o.Label] < cs[j].Labels[o.Label] })
	}
}

// Waves cuts clusters into rollout waves: those matching canary (when not
// nil) first, as wave 1, then the rest in order, the i-th wave taking
// steps[i] clusters and the last step repeating. Every cluster lands in
// exactly one wave.
func Waves(clusters []inventory.Cluster, steps []WaveStep, order Order, canary inventory.Selector) [][]inventory.Cluster {
	rest := append([]inventory.Cluster(nil), clusters...)
	order.sort(rest)
	var waves [][]inventory.Cluster
	if canary != nil {
		var first, others []inventory.Cluster
		for _, c := range rest {
			if canary.Matches(c.Labels) {
				first = append(first, c)
			} else {
				others = append(others, c)
			}
		}
		if len(first) > 0 {
			waves = append(waves, first)
		}
		rest = others
	}
	if len(steps) == 0 {
		steps = []WaveStep{{N: 100, Percent: true}}
	}
	total := len(clusters)
	for i := 0; len(rest) > 0; i++ {
		n := min(steps[min(i, len(steps)-1)].size(total), len(rest))
		waves = append(waves, rest[:n])
		rest = rest[n:]
	}
	return waves
}

// ParseShard reads --shard I/N (0-based I < N, as a Kubernetes indexed
// Job's JOB_COMPLETION_INDEX).
func ParseShard(s string) (index, count int, err error) {
	i, n, ok := strings.Cut(s, "/")
	index, err1 := strconv.Atoi(i)
	count, err2 := strconv.Atoi(n)
	if !ok || err1 != nil || err2 != nil || count < 1 || index < 0 || index >= count {
		return 0, 0, fmt.Errorf("--shard must be I/N with 0 <= I < N, not %q", s)
	}
	return index, count, nil
}

// Shard keeps the clusters of shard index of count: a stable partition by
// cluster name (FNV-1a), so a cluster always lands in the same shard
// whatever else the inventory holds, and N controllers split a fleet.
func Shard(clusters []inventory.Cluster, index, count int) []inventory.Cluster {
	var out []inventory.Cluster
	for _, c := range clusters {
		if shardOf(c.Name, count) == index {
			out = append(out, c)
		}
	}
	return out
}

// shardOf is the shard a cluster name belongs to.
func shardOf(name string, count int) int {
	h := fnv.New64a()
	h.Write([]byte(name))
	return int(h.Sum64() % uint64(count))
}

// FailureBudget is --max-failures: how many clusters may fail before no
// new cluster starts. Like Ansible's max_fail_percentage it must be
// exceeded, so 0 stops at the first failure.
type FailureBudget struct {
	N       int
	Percent bool
}

// ParseFailureBudget reads N or P%.
func ParseFailureBudget(s string) (FailureBudget, error) {
	p, pct := strings.CutSuffix(strings.TrimSpace(s), "%")
	n, err := strconv.Atoi(p)
	if err != nil || n < 0 || (pct && n > 100) {
		return FailureBudget{}, fmt.Errorf("--max-failures must be a count or a percentage, not %q", s)
	}
	return FailureBudget{N: n, Percent: pct}, nil
}

// Exceeded reports whether failed clusters out of total break the budget.
func (b FailureBudget) Exceeded(failed, total int) bool {
	if b.Percent {
		return failed*100 > b.N*total
	}
	return failed > b.N
}

// Window is a recurring maintenance window: days of the week and a time
// range in a zone, e.g. "Sat 02:00-06:00 Europe/Berlin" or
// "Mon-Fri 22:00-04:00 UTC" (a range past midnight ends the next day).
type Window struct {
	Days       [7]bool // by time.Weekday
	Start, End time.Duration
	Loc        *time.Location
	text       string
}

func (w Window) String() string { return w.text }

var weekdays = map[string]time.Weekday{"sun": time.Sunday, "mon": time.Monday, "tue": time.Tuesday,
	"wed": time.Wednesday, "thu": time.Thursday, "fri": time.Friday, "sat": time.Saturday}

// ParseWindow reads "DAYS HH:MM-HH:MM [ZONE]": DAYS is a day, a range
// (Mon-Fri), a comma list of those, or * for every day; ZONE an IANA name
// (default UTC).
func ParseWindow(s string) (Window, error) {
	w := Window{Loc: time.UTC, text: s}
	f := strings.Fields(s)
	if len(f) < 2 || len(f) > 3 {
		return w, fmt.Errorf("maintenance window %q: want DAYS HH:MM-HH:MM [ZONE], e.g. \"Sat 02:00-06:00 Europe/Berlin\"", s)
	}
	if err := w.parseDays(f[0]); err != nil {
		return w, fmt.Errorf("maintenance window %q: %w", s, err)
	}
	from, to, ok := strings.Cut(f[1], "-")
	var err1, err2 error
	w.Start, err1 = clock(from)
	w.End, err2 = clock(to)
	if !ok || err1 != nil || err2 != nil || w.Start == w.End {
		return w, fmt.Errorf("maintenance window %q: bad time range %q", s, f[1])
	}
	if len(f) == 3 {
		loc, err := time.LoadLocation(f[2])
		if err != nil {
			return w, fmt.Errorf("maintenance window %q: unknown time zone %q", s, f[2])
		}
		w.Loc = loc
	}
	return w, nil
}

func (w *Window) parseDays(s string) error {
	if s == "*" {
		w.Days = [7]bool{true, true, true, true, true, true, true}
		return nil
	}
	for _, part := range strings.Split(strings.ToLower(s), ",") {
		a, b, isRange := strings.Cut(part, "-")
		from, ok1 := weekdays[a]
		to, ok2 := weekdays[b]
		if !ok1 || (isRange && !ok2) {
			return fmt.Errorf("bad day %q (use Mon..Sun, ranges like Mon-Fri, or *)", part)
		}
		if !isRange {
			to = from
		}
		for d := from; ; d = (d + 1) % 7 {
			w.Days[d] = true
			if d == to {
				break
			}
		}
	}
	return nil
}

func clock(s string) (time.Duration, error) {
	t, err := time.Parse("15:04", s)
	if err != nil {
		return 0, err
	}
	return time.Duration(t.Hour())*time.Hour + time.Duration(t.Minute())*time.Minute, nil
}

// Contains reports whether t falls in the window. A window past midnight
// belongs to the day it starts on.
func (w Window) Contains(t time.Time) bool {
	t = t.In(w.Loc)
	since := time.Duration(t.Hour())*time.Hour + time.Duration(t.Minute())*time.Minute + time.Duration(t.Second())*time.Second
	if w.Start < w.End {
		return w.Days[t.Weekday()] && since >= w.Start && since < w.End
	}
	yesterday := (t.Weekday() + 6) % 7
	return (w.Days[t.Weekday()] && since >= w.Start) || (w.Days[yesterday] && since < w.End)
}
