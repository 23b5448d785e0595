package inventory

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// This file walks a yaml.Node tree by hand instead of unmarshalling into
// structs, because yaml's struct decoding stops at the first error, ignores
// unknown keys and loses line numbers; here every value is seen with its
// line and its field path, and every problem is recorded.

// opt is an inventory value that may be absent: set tells "written in the
// file" apart from the zero value, which inheritance needs.
type opt[T any] struct {
	v    T
	set  bool
	line int
}

func some[T any](v T, line int) opt[T] { return opt[T]{v: v, set: true, line: line} }

// first returns the first of the layers that is set, most specific first.
func first[T any](layers ...opt[T]) opt[T] {
	for _, l := range layers {
		if l.set {
			return l
		}
	}
	return opt[T]{}
}

// errTooComplex aborts decoding of a document whose aliases expand beyond
// reason (a "billion laughs" document); Parse recovers it.
type errTooComplex struct{}

// decoder walks one document, recording problems.
type decoder struct {
	problems
	budget int // node visits left before the document counts as too complex
}

// deref follows an alias to the node it names and charges the visit to the
// budget, so that aliases cannot make decoding time explode.
func (d *decoder) deref(n *yaml.Node) *yaml.Node {
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	d.budget--
	if d.budget < 0 {
		panic(errTooComplex{})
	}
	return n
}

// kindName describes a node for "expected X, got Y" messages.
func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!null":
			return "nothing"
		case "!!bool":
			return "boolean " + n.Value
		case "!!int", "!!float":
			return "number " + n.Value
		}
		v := n.Value
		if len(v) > 60 {
			v = v[:57] + "..."
		}
		return strconv.Quote(v)
	}
	return "an unexpected node"
}

func isNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" }

// pair is one key of a mapping with its key and value nodes.
type pair struct {
	key  string
	k, v *yaml.Node
}

// maxMergeDepth bounds nested `<<` merges; real files use one or two levels.
const maxMergeDepth = 8

// pairs returns the entries of mapping n. YAML merge keys (`<<: *anchor`)
// are expanded, explicit keys winning over merged ones as the YAML merge
// spec says, because anchors are the natural way to share settings in a
// large inventory. Duplicate keys are problems: yaml.v3 keeps both silently
// when decoding into a Node, and which one wins would be a guess.
func (d *decoder) pairs(n *yaml.Node, field string, depth int) []pair {
	seen := map[string]int{}
	var out, merged []pair
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := d.deref(n.Content[i]), n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			d.add(k.Line, field, "keys must be plain words, not %s", kindName(k))
			continue
		}
		if k.ShortTag() == "!!merge" {
			merged = append(merged, d.merge(v, field, depth)...)
			continue
		}
		if line, dup := seen[k.Value]; dup {
			d.add(k.Line, join(field, k.Value), "duplicate key (first at line %d)", line)
			continue
		}
		seen[k.Value] = k.Line
		out = append(out, pair{k.Value, k, v})
	}
	for _, p := range merged {
		if _, ok := seen[p.key]; !ok {
			seen[p.key] = p.k.Line
			out = append(out, p)
		}
	}
	return out
}

// merge returns the entries a `<<` key brings in: one mapping, or a list of
// mappings where earlier ones win.
func (d *decoder) merge(v *yaml.Node, field string, depth int) []pair {
	if depth >= maxMergeDepth {
		d.add(v.Line, field, "merge keys (<<) nested too deep")
		return nil
	}
	v = d.deref(v)
	var maps []*yaml.Node
	switch v.Kind {
	case yaml.MappingNode:
		maps = []*yaml.Node{v}
	case yaml.SequenceNode:
		for _, m := range v.Content {
			maps = append(maps, d.deref(m))
		}
	}
	var out []pair
	seen := map[string]bool{}
	for _, m := range maps {
		if m.Kind != yaml.MappingNode {
			d.add(m.Line, field, "<< must merge a mapping or a list of mappings, not %s", kindName(m))
			continue
		}
		for _, p := range d.pairs(m, field, depth+1) {
			if !seen[p.key] {
				seen[p.key] = true
				out = append(out, p)
			}
		}
	}
	return out
}

// object decodes mapping n whose allowed keys are known, calling set for
// each entry. Unknown keys are problems with a suggestion. It reports
// whether n was a mapping at all.
func (d *decoder) object(n *yaml.Node, field string, known []string, set func(p pair, field string)) bool {
	n = d.deref(n)
	if n.Kind != yaml.MappingNode {
		d.add(n.Line, field, "expected a mapping, got %s", kindName(n))
		return false
	}
	for _, p := range d.pairs(n, field, 0) {
		f := join(field, p.key)
		if !slices.Contains(known, p.key) {
			d.add(p.k.Line, f, "unknown key%s", suggest(p.key, known))
			continue
		}
		set(p, f)
	}
	return true
}

// list decodes sequence n, calling each for every element with its field
// path. A null value is an empty list. It reports whether n was a list.
func (d *decoder) list(n *yaml.Node, field string, each func(i int, el *yaml.Node, field string)) bool {
	n = d.deref(n)
	if isNull(n) {
		return true
	}
	if n.Kind != yaml.SequenceNode {
		d.add(n.Line, field, "expected a list, got %s", kindName(n))
		return false
	}
	for i, el := range n.Content {
		each(i, el, fmt.Sprintf("%s[%d]", field, i))
	}
	return true
}

// str decodes a string. Numbers are taken as written ("01" stays "01"),
// since names and hosts are often numeric; booleans, lists and mappings are
// type errors. A null value is the empty string, which the caller judges.
func (d *decoder) str(n *yaml.Node, field string) (opt[string], bool) {
	n = d.deref(n)
	if n.Kind == yaml.ScalarNode {
		switch n.ShortTag() {
		case "!!null":
			return some("", n.Line), true
		case "!!str", "!!int", "!!float":
			return some(n.Value, n.Line), true
		}
	}
	d.add(n.Line, field, "expected a string, got %s", kindName(n))
	return opt[string]{}, false
}

// boolean decodes true or false. YAML 1.1 spellings such as yes/no are
// strings in yaml.v3 and so a type error here, which is the point: a
// quietly misread `sudo: yes` would be worse.
func (d *decoder) boolean(n *yaml.Node, field string) (opt[bool], bool) {
	n = d.deref(n)
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!bool" {
		if b, err := strconv.ParseBool(strings.ToLower(n.Value)); err == nil {
			return some(b, n.Line), true
		}
	}
	d.add(n.Line, field, "expected true or false, got %s", kindName(n))
	return opt[bool]{}, false
}

// integer decodes a whole number written without quotes that lies within
// [lo, hi]; null gives a set zero, which callers use as "explicitly unset".
func (d *decoder) integer(n *yaml.Node, field string, lo, hi int) (opt[int], bool) {
	n = d.deref(n)
	if n.Kind == yaml.ScalarNode {
		switch n.ShortTag() {
		case "!!null":
			return some(0, n.Line), true
		case "!!int":
			v, err := strconv.ParseInt(n.Value, 0, 64)
			if err != nil || v < int64(lo) || v > int64(hi) {
				d.add(n.Line, field, "%s is out of range %d-%d", n.Value, lo, hi)
				return opt[int]{}, false
			}
			return some(int(v), n.Line), true
		case "!!float":
			// yaml.v3 tags integers too large for int64 as floats.
			if strings.Trim(n.Value, "+-0123456789") == "" {
				d.add(n.Line, field, "%s is out of range %d-%d", n.Value, lo, hi)
				return opt[int]{}, false
			}
		}
	}
	d.add(n.Line, field, "expected a whole number, got %s", kindName(n))
	return opt[int]{}, false
}

// join appends a key to a field path.
func join(field, key string) string {
	if field == "" {
		return key
	}
	return field + "." + key
}
