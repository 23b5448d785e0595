package k3s

import (
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/fleetcert/fleetcert/pki"
	"go.yaml.in/yaml/v3"
)

// configKeyRE matches a top-level token key of config.yaml (or server,
// which says the node joins a cluster) at the start of a line, with k3s's
// optional "+" (append) suffix. k3s passes a key k as the flag --k, or -k
// when k is one letter, and the flags are named "token,t" and "server,s":
// so "t:" sets the token as "token:" does, and "s:" the server.
var configKeyRE = regexp.MustCompile(`^(token|token-file|agent-token|agent-token-file|t|server|s)(\+?)[ \t]*:(?:[ \t]|$)`)

// errConfigForm is the reason fleetcert refuses a config value it cannot
// locate byte for byte.
var errConfigForm = errors.New("written in a YAML form fleetcert does not edit (multi-line, block, flow, anchor, alias or tag)")

// parseConfig finds token (or its alias t), token-file, agent-token and
// agent-token-file (and their key+ forms) at the top level of a k3s config
// file. Values may
// be plain, '…' or "…" scalars on the key's line, followed by a comment.
// The findings are checked against what a YAML parser reads from the same
// file; anything that does not agree is an error, never a guess.
//
// k3s reads only the first YAML document of a file. It ends at a "..."
// line (document end) or at a "---" line after it began (the next
// document's start); comments, blank lines and further markers may
// follow. Content after the first document is refused: k3s ignores it, so
// a token there would be left behind unnoticed.
func parseConfig(file string, kind SourceKind, content []byte) []TokenSource {
	var out []TokenSource
	lines := splitLines(content)
	started, ended := false, false // the first document has begun, has ended
	for n, ln := range lines {
		text := string(content[ln.start:ln.end])
		if marker, rest, ok := yamlDocMarker(text); ok {
			switch {
			case ended || started:
				ended = true
				if yamlContent(rest) {
					out = append(out, problem(file, kind, n+1, "a second YAML document: k3s reads only the first"))
					return crossCheckYAML(file, kind, content, out)
				}
			case marker == "---":
				// The explicit start of the first document. Anything on
				// the marker line is left to the YAML cross-check.
				started = true
			}
			continue
		}
		switch {
		case !yamlContent(text):
			continue
		case ended:
			out = append(out, problem(file, kind, n+1, "a second YAML document: k3s reads only the first"))
			return crossCheckYAML(file, kind, content, out)
		case !started && text[0] == '%':
			continue // a directive (%YAML, %TAG) before the document
		}
		started = true
		m := configKeyRE.FindStringSubmatchIndex(text)
		if m == nil {
			continue
		}
		key := text[m[2]:m[5]]
		setting := text[m[2]:m[3]]
		colon := strings.IndexByte(text[m[3]:], ':') + m[3]
		pos := colon + 1
		for pos < len(text) && (text[pos] == ' ' || text[pos] == '\t') {
			pos++
		}
		v, plainOrEmpty, err := yamlScalar(content, ln.start+pos, ln.end)
		if err == nil && plainOrEmpty && continues(content, lines[n+1:]) {
			err = errConfigForm
		}
		s := newSource(file, kind, key, setting, v, content, ln.start)
		if err != nil {
			s.Err = err
		}
		out = append(out, s)
	}
	return crossCheckYAML(file, kind, content, out)
}

// yamlDocMarker reports whether a line is a YAML document marker: "---"
// (start) or "..." (end) at the start of the line, followed by a blank or
// the line end; rest is what follows it.
func yamlDocMarker(text string) (marker, rest string, ok bool) {
	if len(text) < 3 || (text[:3] != "---" && text[:3] != "...") {
		return "", "", false
	}
	if len(text) > 3 && text[3] != ' ' && text[3] != '\t' {
		return "", "", false
	}
	return text[:3], text[3:], true
}

// yamlContent reports whether text holds more than blanks and a comment.
func yamlContent(text string) bool {
	t := strings.TrimLeft(text, " \t")
	return t != "" && t[0] != '#'
}

type lineSpan struct{ start, end int } // end excludes "\n" and a CR before it

func splitLines(b []byte) []lineSpan {
	var out []lineSpan
	for start := 0; start < len(b); {
		end := start
		for end < len(b) && b[end] != '\n' {
			end++
		}
		e := end
		if e > start && b[e-1] == '\r' {
			e--
		}
		out = append(out, lineSpan{start, e})
		start = end + 1
	}
	return out
}

// continues reports whether a plain or empty value goes on in the next
// lines: the next line that is not blank or a comment is indented.
func continues(b []byte, rest []lineSpan) bool {
	for _, ln := range rest {
		text := string(b[ln.start:ln.end])
		t := strings.TrimLeft(text, " \t")
		if t == "" || t[0] == '#' {
			continue
		}
		return t != text
	}
	return false
}

// yamlScalar decodes the scalar starting at b[pos] and ending before end
// (the line end). plainOrEmpty is set for plain and empty values, which a
// YAML parser continues on indented lines.
func yamlScalar(b []byte, pos, end int) (v span, plainOrEmpty bool, err error) {
	if pos >= end || b[pos] == '#' {
		return v, true, nil
	}
	switch c := b[pos]; {
	case c == '\'':
		i := pos + 1
		for ; i < end; i++ {
			if b[i] != '\'' {
				v.lit(b[i], i)
				continue
			}
			if i+1 < end && b[i+1] == '\'' {
				v.esc('\'')
				i++
				continue
			}
			break
		}
		if i >= end {
			return v, false, errConfigForm
		}
		return v, false, trailer(b, i+1, end)
	case c == '"':
		i := pos + 1
		for ; i < end && b[i] != '"'; i++ {
			if b[i] != '\\' {
				v.lit(b[i], i)
				continue
			}
			if i+1 >= end {
				return v, false, errConfigForm
			}
			i++
			r, ok := yamlEscapes[b[i]]
			if !ok {
				return v, false, errors.New(`uses a "\` + string(b[i]) + `" escape fleetcert does not decode`)
			}
			v.esc(r)
		}
		if i >= end {
			return v, false, errConfigForm
		}
		return v, false, trailer(b, i+1, end)
	case strings.IndexByte("|>&*!{[%@`", c) >= 0:
		return v, false, errConfigForm
	}
	i := pos
	for ; i < end; i++ {
		if b[i] == '#' && (b[i-1] == ' ' || b[i-1] == '\t') {
			break
		}
		v.lit(b[i], i)
	}
	n := len(v.b)
	for n > 0 && (v.b[n-1] == ' ' || v.b[n-1] == '\t') {
		n--
	}
	v.truncate(n)
	return v, true, nil
}

var yamlEscapes = map[byte]byte{'\\': '\\', '"': '"', '/': '/', 't': '\t', 'n': '\n', 'r': '\r', '0': 0, ' ': ' '}

// trailer checks that only blanks and a comment follow a quoted scalar.
func trailer(b []byte, i, end int) error {
	rest := strings.TrimLeft(string(b[i:end]), " \t")
	if rest == "" || (rest[0] == '#' && i < end && (b[i] == ' ' || b[i] == '\t')) {
		return nil
	}
	return errors.New("unexpected text after the quoted value")
}

// crossCheckYAML parses the file as YAML and makes sure the token keys it
// finds at the top level are exactly the ones found textually, with the
// same values. k3s reads config files with a YAML parser; where fleetcert's
// line-based reading could differ, it refuses.
//
// k3s (pkg/configfilearg) unmarshals the first document into an ordered
// list of key/value pairs: a key given twice is no error, both pairs are
// kept and the later value wins. So every definition of a key is a
// finding (each is rewritten), and effectiveToken takes the last one.
func crossCheckYAML(file string, kind SourceKind, content []byte, srcs []TokenSource) []TokenSource {
	var doc yaml.Node
	if err := yaml.Unmarshal(content, &doc); err != nil {
		return append(srcs, problem(file, kind, 0, "not valid YAML: %s", redactYAMLError(err)))
	}
	var top *yaml.Node
	if len(doc.Content) > 0 {
		top = doc.Content[0]
	}
	if top != nil && top.Kind != yaml.MappingNode && (top.Kind != yaml.ScalarNode || top.Tag != "!!null") {
		return append(srcs, problem(file, kind, top.Line, "the top level is not a mapping"))
	}
	matched := make([]bool, len(srcs))
	for i := 0; top != nil && i+1 < len(top.Content); i += 2 {
		k, v := top.Content[i], top.Content[i+1]
		name := strings.TrimSuffix(k.Value, "+")
		if k.Value == "<<" {
			srcs = append(srcs, problem(file, kind, k.Line, "a YAML merge key (<<) at the top level: not supported"))
			continue
		}
		if !configKeyRE.MatchString(name + ":") {
			continue
		}
		j := findSource(srcs, k.Value, k.Line)
		if j < 0 {
			srcs = append(srcs, problem(file, kind, k.Line, "%s: %v", k.Value, errConfigForm))
			continue
		}
		matched[j] = true
		if srcs[j].Err != nil {
			continue
		}
		want := v.Value
		if v.Kind == yaml.ScalarNode && v.Tag == "!!null" && isYAMLNull(srcs[j].Value) {
			// token: (empty), ~ or null: the setting is not given.
			want, srcs[j].Value, srcs[j].Token = "", "", pki.Token{}
		}
		if v.Kind != yaml.ScalarNode || v.Alias != nil || want != srcs[j].Value {
			srcs[j].Err = fmt.Errorf("fleetcert's reading of this value differs from YAML's: %w", errConfigForm)
		}
	}
	for j, s := range srcs {
		if s.Key != "" && !matched[j] && s.Err == nil {
			srcs[j].Err = errors.New("not a top-level key to a YAML parser (inside a block scalar or another document?)")
		}
	}
	return srcs
}

func isYAMLNull(s string) bool {
	switch s {
	case "", "~", "null", "Null", "NULL":
		return true
	}
	return false
}

func findSource(srcs []TokenSource, key string, line int) int {
	for i, s := range srcs {
		if s.Key == key && s.keyLine == line {
			return i
		}
	}
	return -1
}

var redactRE = regexp.MustCompile("`[^`]*`|\"[^\"]*\"|'[^']*'|K10\\S*")

// redactYAMLError keeps a YAML error's line and reason but not any value
// it quotes, which could be a secret.
func redactYAMLError(err error) string {
	return redactRE.ReplaceAllString(err.Error(), "****")
}
