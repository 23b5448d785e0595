package inventory

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// errNoMatch is wrapped by Select's error when the names and selectors are
// valid but no cluster satisfies them.
var errNoMatch = errors.New("no cluster matches")

// op is how a selector requirement compares a label.
type op int

// The requirement forms a selector accepts.
const (
	opEquals    op = iota // key=value (or key==value): the label is present with that value
	opNotEquals           // key!=value: the label is absent or has another value
	opExists              // key: the label is present, with any value
	opNotExists           // !key: the label is absent
)

// requirement is one term of a Selector.
type requirement struct {
	Key   string
	Op    op
	Value string // for opEquals and opNotEquals
}

// Selector selects clusters by label; every requirement must hold (AND).
// The empty Selector matches every cluster.
type Selector []requirement

// ParseSelector parses label selector expressions, as given to --selector.
// Each expression holds one or more comma-separated requirements:
// key=value, key==value, key!=value, key (label present), !key (label
// absent). The semantics are those of Kubernetes equality-based selectors,
// so `ring!=canary` also selects clusters without a ring label.
func ParseSelector(exprs ...string) (Selector, error) {
	var sel Selector
	for _, expr := range exprs {
		for _, term := range strings.Split(expr, ",") {
			r, err := parseRequirement(strings.TrimSpace(term))
			if err != nil {
				return nil, fmt.Errorf("selector %q: %w", expr, err)
			}
			sel = append(sel, r)
		}
	}
	return sel, nil
}

func parseRequirement(term string) (requirement, error) {
	var r requirement
	switch {
	case term == "":
		return r, errors.New("empty requirement; write key=value, key!=value, key or !key")
	case strings.HasPrefix(term, "!") && !strings.Contains(term, "="):
		r.Key, r.Op = term[1:], opNotExists
	case strings.Contains(term, "!="):
		r.Key, r.Value, _ = strings.Cut(term, "!=")
		r.Op = opNotEquals
	case strings.Contains(term, "=="):
		r.Key, r.Value, _ = strings.Cut(term, "==")
	case strings.Contains(term, "="):
		r.Key, r.Value, _ = strings.Cut(term, "=")
	default:
		r.Key, r.Op = term, opExists
	}
	r.Key = strings.TrimSpace(r.Key)
	r.Value = strings.TrimSpace(r.Value)
	if err := checkLabelKey(r.Key); err != nil {
		return r, err
	}
	if err := checkLabelValue(r.Value); err != nil {
		return r, err
	}
	return r, nil
}

// Matches tells whether labels satisfy every requirement.
func (s Selector) Matches(labels map[string]string) bool {
	for _, r := range s {
		v, ok := labels[r.Key]
		switch r.Op {
		case opEquals:
			ok = ok && v == r.Value
		case opNotEquals:
			ok = !ok || v != r.Value
		case opNotExists:
			ok = !ok
		}
		if !ok {
			return false
		}
	}
	return true
}

// String formats the selector as ParseSelector reads it.
func (s Selector) String() string {
	terms := make([]string, len(s))
	for i, r := range s {
		switch r.Op {
		case opEquals:
			terms[i] = r.Key + "=" + r.Value
		case opNotEquals:
			terms[i] = r.Key + "!=" + r.Value
		case opExists:
			terms[i] = r.Key
		case opNotExists:
			terms[i] = "!" + r.Key
		}
	}
	return strings.Join(terms, ",")
}

// Select returns the clusters named in names (all when names is empty) whose
// labels match every selector, in file order. Names may also be given
// comma-separated. An unknown name, a malformed selector, or an empty result
// is an error: an operation on "nothing" is almost always a typo, and
// silently doing nothing would hide it.
func (inv *Inventory) Select(names []string, selectors []string) ([]Cluster, error) {
	sel, err := ParseSelector(selectors...)
	if err != nil {
		return nil, err
	}
	want, err := inv.wanted(names)
	if err != nil {
		return nil, err
	}
	var out []Cluster
	for _, c := range inv.Clusters {
		if (want == nil || want[c.Name]) && sel.Matches(c.Labels) {
			out = append(out, c)
		}
	}
	if len(out) == 0 {
		return nil, noMatch(names, sel)
	}
	return out, nil
}

// wanted returns the set of cluster names asked for, nil for all, or an
// error naming every unknown one with the closest known name.
func (inv *Inventory) wanted(names []string) (map[string]bool, error) {
	if len(names) == 0 {
		return nil, nil
	}
	known := inv.names()
	want := map[string]bool{}
	var unknown []string
	for _, arg := range names {
		for _, name := range strings.Split(arg, ",") {
			name = strings.TrimSpace(name)
			if !slices.Contains(known, name) {
				msg := fmt.Sprintf("%q", name)
				if c := closest(name, known); c != "" {
					msg += fmt.Sprintf(" (did you mean %q?)", c)
				}
				unknown = append(unknown, msg)
				continue
			}
			want[name] = true
		}
	}
	if len(unknown) > 0 {
		return nil, fmt.Errorf("unknown cluster %s; the inventory has %s", strings.Join(unknown, ", "), listNames(known, 20))
	}
	return want, nil
}

// listNames lists names for an error message, cut short after max so that a
// fleet of thousands does not flood the terminal.
func listNames(names []string, max int) string {
	if len(names) <= max {
		return strings.Join(names, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(names[:max], ", "), len(names)-max)
}

func noMatch(names []string, sel Selector) error {
	var what []string
	if len(names) > 0 {
		what = append(what, "name "+strings.Join(names, ","))
	}
	if len(sel) > 0 {
		what = append(what, "selector "+sel.String())
	}
	return fmt.Errorf("%w %s", errNoMatch, strings.Join(what, " and "))
}
