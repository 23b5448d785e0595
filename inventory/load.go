package inventory

import (
	"bytes"
	"errors"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Load reads and parses the inventory file at path. A file that cannot be
// read gives the *fs.PathError; an invalid one gives *Errors listing every
// problem, each naming path, line and field.
func Load(path string) (*Inventory, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(path, data)
}

// Parse parses an inventory from data; name is what problems call the file
// ("<stdin>" for standard input). It returns either a fully resolved and
// valid inventory or *Errors, never both.
func Parse(name string, data []byte) (inv *Inventory, err error) {
	d := &decoder{problems: problems{file: name}}
	doc, ok := d.parseYAML(data)
	if !ok {
		return nil, d.err()
	}
	d.budget = 10*countNodes(doc) + 10000
	defer func() {
		if r := recover(); r != nil {
			if _, ok := r.(errTooComplex); !ok {
				panic(r)
			}
			d.add(0, "", "aliases expand to too many values; simplify the anchors")
			inv, err = nil, d.err()
		}
	}()
	inv = d.resolve(d.document(doc))
	if err := d.err(); err != nil {
		return nil, err
	}
	return inv, nil
}

// parseYAML parses the one YAML document an inventory is. A second
// document is refused rather than silently ignored: part of the fleet would
// otherwise vanish from every run.
func (d *decoder) parseYAML(data []byte) (*yaml.Node, bool) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil && !errors.Is(err, io.EOF) {
		d.yamlError(err)
		return nil, false
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case err == nil && len(extra.Content) > 0:
		d.add(extra.Line, "", "a second YAML document (---); an inventory is one document")
		return nil, false
	case err != nil && !errors.Is(err, io.EOF):
		d.yamlError(err)
		return nil, false
	}
	return &doc, true
}

var yamlLine = regexp.MustCompile(`^yaml: line (\d+): `)

// yamlError records a YAML syntax error with the line the parser gives in
// its message, so that it reads like every other problem.
func (d *decoder) yamlError(err error) {
	msg := err.Error()
	line := 0
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = msg[len(m[0]):]
	}
	d.add(line, "", "invalid YAML: %s", strings.TrimPrefix(msg, "yaml: "))
}

// countNodes counts the nodes of a document without following aliases: the
// size of what was written, which bounds the work decoding may do.
func countNodes(n *yaml.Node) int {
	count := 1
	for _, c := range n.Content {
		count += countNodes(c)
	}
	return count
}
