package inventory

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
)

// Problem is one thing wrong with an inventory file.
type Problem struct {
	File  string // as given to Load or Parse
	Line  int    // 1-based; 0 when the problem concerns the whole file
	Field string // path such as clusters[0].servers[1].ssh.port; empty for the whole document
	Msg   string
}

// String formats the problem as "file:line: field: message", the form
// editors and CI annotations recognise, leaving out what is unknown.
func (p Problem) String() string {
	var b strings.Builder
	b.WriteString(p.File)
	if p.Line > 0 {
		fmt.Fprintf(&b, ":%d", p.Line)
	}
	b.WriteString(": ")
	if p.Field != "" {
		b.WriteString(p.Field)
		b.WriteString(": ")
	}
	b.WriteString(p.Msg)
	return b.String()
}

// Errors is every problem found in an inventory, in line order. Load and
// Parse return it (as *Errors) rather than stopping at the first problem, so
// one run of `fleetcert inventory validate` shows everything to fix.
type Errors struct {
	Problems []Problem
}

// Error lists the problems one per line.
func (e *Errors) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

// problems collects Problems for one file while it is decoded and checked.
type problems struct {
	file string
	list []Problem
}

func (ps *problems) add(line int, field, format string, args ...any) {
	ps.list = append(ps.list, Problem{File: ps.file, Line: line, Field: field, Msg: fmt.Sprintf(format, args...)})
}

// err returns the collected problems sorted by line (stable, so problems on
// one line keep the order they were found in), or nil when there are none.
func (ps *problems) err() error {
	if len(ps.list) == 0 {
		return nil
	}
	list := slices.Clone(ps.list)
	slices.SortStableFunc(list, func(a, b Problem) int { return cmp.Compare(a.Line, b.Line) })
	return &Errors{Problems: list}
}
