package k3s

import (
	"bytes"
	"fmt"
	"path"
	"slices"
	"strings"
	"unicode/utf8"
)

// unitSetting is one Key=value of a unit file's [Service] section, the
// value with continuation lines joined.
type unitSetting struct {
	key    string
	keyOff int
	val    span
}

// scanUnit reads the [Service] settings of a unit file or drop-in as
// systemd's config parser (config_parse and parse_line) does:
//
//   - a physical line ends at LF, CR or NUL; a run of different end
//     characters (CRLF, LFCR, CRLF NUL...) is one line end, a repeated one
//     (LF LF, CR CR) ends an empty line, and a NUL always ends the run;
//   - a line whose first non-blank character is # or ; is a comment and is
//     dropped, also between continuation lines (it does not end them);
//   - a line ending in an odd number of backslashes continues on the next
//     line, its last backslash becoming a space; an even number (an
//     escaped backslash) does not continue; an empty line ends a
//     continuation;
//   - a UTF-8 byte order mark is dropped from the first line that has one;
//   - the logical line is trimmed of space, tab, CR and LF; a section
//     header must end in "]" and name no control characters, quotes or
//     backslashes; key and value are split at the first "=" and trimmed of
//     the same four blanks only;
//   - a logical line that is not valid UTF-8 (systemd's rule, which also
//     refuses the noncharacters U+FDD0..U+FDEF and U+xxFFFE/U+xxFFFF) or a
//     malformed section header makes systemd stop reading the file: the
//     unit fails to load, and a drop-in keeps only the settings before
//     that line. scanUnit stops there too and returns what came before.
func scanUnit(b []byte) []unitSetting {
	var (
		out     []unitSetting
		section string
		cont    span
		inCont  bool
		bomSeen bool
	)
	// finish reads one logical line; false means systemd stops reading.
	finish := func() bool {
		line := cont.trimSpace()
		cont, inCont = span{}, false
		if len(line.b) == 0 {
			return true
		}
		if !systemdUTF8(line.b) {
			return false
		}
		if line.b[0] == '[' {
			name, ok := unitSectionName(line.b)
			if ok {
				section = name
			}
			return ok
		}
		eq := bytes.IndexByte(line.b, '=')
		// No "=" or no key name before it: systemd warns and skips the line.
		if eq <= 0 || section != "Service" {
			return true
		}
		key := strings.Trim(string(line.b[:eq]), " \t\r\n")
		out = append(out, unitSetting{key: key, keyOff: line.firstOff(), val: line.from(eq + 1).trimSpace()})
		return true
	}
	for _, ln := range unitLines(b) {
		raw := b[ln.start:ln.end]
		if t := bytes.TrimLeft(raw, " \t"); len(t) > 0 && (t[0] == '#' || t[0] == ';') {
			continue
		}
		start := ln.start
		if !bomSeen && bytes.HasPrefix(raw, utf8BOM) {
			start += len(utf8BOM)
			bomSeen = true
		}
		if !inCont {
			// One allocation per logical line instead of a doubling
			// append per byte: a fleet parses every unit file several
			// times per node.
			cont = span{b: make([]byte, 0, ln.end-start), offs: make([]int, 0, ln.end-start)}
		}
		for i := start; i < ln.end; i++ {
			cont.lit(b[i], i)
		}
		if trailingBackslashes(b[start:ln.end])%2 == 1 {
			cont.truncate(len(cont.b) - 1)
			cont.esc(' ')
			inCont = true
			continue
		}
		if !finish() {
			return out
		}
	}
	if inCont {
		finish()
	}
	return out
}

var utf8BOM = []byte("\xef\xbb\xbf")

// unitLines splits a unit file into physical lines (end excludes the line
// end) as systemd's read_line does: LF, CR and NUL end a line; following
// end characters belong to the same line end as long as each is of a kind
// not yet seen in it, and nothing follows a NUL in it.
func unitLines(b []byte) []lineSpan {
	var out []lineSpan
	for i := 0; i < len(b); {
		start := i
		for i < len(b) && eolKind(b[i]) == 0 {
			i++
		}
		end := i
		var seen byte
		for i < len(b) {
			k := eolKind(b[i])
			if k == 0 || seen&k != 0 || seen&eolNUL != 0 {
				break
			}
			seen |= k
			i++
		}
		out = append(out, lineSpan{start, end})
	}
	return out
}

const (
	eolLF = 1 << iota
	eolCR
	eolNUL
)

func eolKind(c byte) byte {
	switch c {
	case '\n':
		return eolLF
	case '\r':
		return eolCR
	case 0:
		return eolNUL
	}
	return 0
}

// trailingBackslashes counts the backslashes that end s. systemd reads a
// line left to right, a backslash escaping the next character, so the last
// one is itself escaped exactly when the run is even.
func trailingBackslashes(s []byte) int {
	n := 0
	for n < len(s) && s[len(s)-1-n] == '\\' {
		n++
	}
	return n
}

// unitSectionName is the name of a section header line (already trimmed,
// starting with "["), and false when systemd refuses the header: it does
// not end in "]", or the name holds a control character, a quote, a
// backslash or DEL.
func unitSectionName(line []byte) (string, bool) {
	if len(line) < 2 || line[len(line)-1] != ']' {
		return "", false
	}
	name := line[1 : len(line)-1]
	for _, c := range name {
		if c > 0 && c < ' ' || c == '"' || c == '\'' || c == '\\' || c == 0x7f {
			return "", false
		}
	}
	return string(name), true
}

// systemdUTF8 reports whether s is valid UTF-8 by systemd's utf8_is_valid:
// Go's rules (no overlong forms, surrogates or values past U+10FFFF) and
// also no noncharacters U+FDD0..U+FDEF or U+xxFFFE/U+xxFFFF.
func systemdUTF8(s []byte) bool {
	for len(s) > 0 {
		r, n := utf8.DecodeRune(s)
		if r == utf8.RuneError && n <= 1 || r >= 0xFDD0 && r <= 0xFDEF || r&0xFFFE == 0xFFFE {
			return false
		}
		s = s[n:]
	}
	return true
}

// expandSpecifiers resolves the unit specifiers fleetcert can know: %% %n
// %N %p (unit name with and without .service; prefix = name for a unit that
// is not a template). Any other specifier is kept verbatim and the offset
// of its "%" is put in unknown.
func expandSpecifiers(v span, unit string) (out span, unknown map[int]bool) {
	unknown = map[int]bool{}
	for i := 0; i < len(v.b); i++ {
		if v.b[i] != '%' || i+1 == len(v.b) {
			out.lit(v.b[i], v.offs[i])
			continue
		}
		i++
		var rep string
		switch v.b[i] {
		case '%':
			rep = "%"
		case 'n':
			rep = unit + ".service"
		case 'N', 'p':
			rep = unit
		default:
			unknown[v.offs[i-1]] = true
			out.lit('%', v.offs[i-1])
			out.lit(v.b[i], v.offs[i])
			continue
		}
		for j := 0; j < len(rep); j++ {
			out.esc(rep[j])
		}
	}
	return out, unknown
}

// usesAny reports whether any byte of s sits at one of offs.
func (s span) usesAny(offs map[int]bool) bool {
	for _, o := range s.offs {
		if offs[o] {
			return true
		}
	}
	return false
}

// word is one argument of a command line.
type word struct {
	span
	dollar bool // contains $: systemd may substitute a variable
	odd    bool // uses an escape fleetcert keeps verbatim (\x, \u, octal)
}

// splitWords splits a command line or Environment= value as systemd's
// extract_first_word with EXTRACT_UNQUOTE|EXTRACT_CUNESCAPE (relaxed):
// blanks separate words; '…' and "…" may appear anywhere in a word and
// are removed; a backslash escapes the next character, in quotes too, with
// C escapes (\n \t \s …). An unbalanced quote makes systemd ignore the
// whole setting: that is an error.
func splitWords(v span) ([]word, error) {
	var (
		words []word
		cur   word
		in    bool
		quote byte
	)
	for i := 0; i < len(v.b); i++ {
		c := v.b[i]
		if quote == 0 && isBlank(c) {
			if in {
				words = append(words, cur)
				cur, in = word{}, false
			}
			continue
		}
		in = true
		switch {
		case c == '\\':
			if i+1 == len(v.b) {
				cur.lit(c, v.offs[i])
				continue
			}
			i++
			e := v.b[i]
			if r, ok := cEscapes[e]; ok {
				cur.esc(r)
			} else {
				cur.odd = true
				cur.lit('\\', v.offs[i-1])
				cur.lit(e, v.offs[i])
			}
		case quote != 0 && c == quote:
			quote = 0
		case quote == 0 && (c == '\'' || c == '"'):
			quote = c
		default:
			if c == '$' {
				cur.dollar = true
			}
			cur.lit(c, v.offs[i])
		}
	}
	if quote != 0 {
		return nil, fmt.Errorf("unbalanced %c quote: systemd ignores this setting", quote)
	}
	if in {
		words = append(words, cur)
	}
	return words, nil
}

// cEscapes are the backslash escapes systemd's cunescape_one turns into one
// byte.
var cEscapes = map[byte]byte{
	'\\': '\\', '\'': '\'', '"': '"', ' ': ' ', 's': ' ',
	'a': '\a', 'b': '\b', 'f': '\f', 'n': '\n', 'r': '\r', 't': '\t', 'v': '\v',
}

// envFileRef is an environment file the unit loads (or would, by default).
type envFileRef struct {
	path    string
	kind    SourceKind
	extra   bool   // named by the unit, not a candidate file
	ignored string // set when the unit does not load it
}

// unitChain is what the unit and its drop-ins say about tokens.
type unitChain struct {
	environment, execStarts, problems []TokenSource
	envFiles                          []envFileRef
	files                             []string // unit file and drop-ins, in order
	binary                            string   // the program the effective ExecStart= runs
}

// readUnitChain reads the unit file and then its drop-ins in the order
// systemd applies them, as systemd merges them: an empty ExecStart=,
// Environment= or EnvironmentFile= resets the list built so far, the last
// ExecStart= is the command (k3s units are not Type=oneshot).
//
// With unit (what `systemctl show` says), the files are exactly those
// systemd loaded and the environment files those it lists, in its order.
// Without it (systemd not running the node, or a test), the files are
// install.sh's unit and <unit>.service.d/*.conf, and without the unit
// file the environment files are assumed to be install.sh's.
func readUnitChain(l Layout, unit *UnitShow, files map[string][]byte) unitChain {
	var uc unitChain
	var refs []string
	var unitFiles []string
	switch {
	case unit != nil:
		unitFiles = unit.unitFiles()
	case files[l.UnitFile()] != nil:
		unitFiles = append([]string{l.UnitFile()}, dropIns(candidateDirs(l)[0], files)...)
	default:
		unitFiles = dropIns(candidateDirs(l)[0], files)
		refs = append(l.DistroEnvFiles(), l.EnvFile())
	}
	uc.files = unitFiles
	execCount := 0
	for i, f := range unitFiles {
		content := files[f]
		kind := kindUnitExecStart
		if i > 0 || (unit == nil && f != l.UnitFile()) {
			kind = kindUnitDropIn
		}
		for _, set := range scanUnit(content) {
			switch set.key {
			case "ExecStart":
				if len(set.val.b) == 0 {
					ignore(uc.execStarts, "ExecStart= reset by "+f)
					execCount = 0
					continue
				}
				ignore(uc.execStarts, "replaced by a later ExecStart= in "+f)
				execCount++
				uc.binary = execProgram(set.val)
				srcs := parseExecStart(f, kind, set, content, l.UnitName())
				if execCount > 1 {
					for i := range srcs {
						srcs[i].Warning = "the unit has more than one ExecStart=: systemd refuses such a unit unless an empty ExecStart= resets the first"
					}
				}
				uc.execStarts = append(uc.execStarts, srcs...)
			case "Environment":
				if len(set.val.b) == 0 {
					ignore(uc.environment, "Environment= reset by "+f)
					continue
				}
				uc.environment = append(uc.environment, parseEnvironment(f, set, content, l.UnitName())...)
			case "EnvironmentFile":
				if len(set.val.b) == 0 {
					refs = nil
					continue
				}
				p, err := envFilePath(set.val, l.UnitName())
				if err != nil && unit == nil {
					uc.problems = append(uc.problems, problem(f, kindUnitEnvironment, lineAt(content, set.keyOff), "EnvironmentFile=: %v", err))
					continue
				}
				refs = append(refs, p)
			}
		}
	}
	if unit != nil {
		// systemd's own list, specifiers and wildcards already resolved.
		refs = refs[:0]
		for _, e := range unit.EnvFiles {
			refs = append(refs, e.Path)
		}
	}
	uc.envFiles = envFileRefs(l, refs, files)
	return uc
}

// execProgram is the path of the program an ExecStart= value runs.
func execProgram(v span) string {
	words, err := splitWords(v)
	if err != nil || len(words) == 0 {
		return ""
	}
	return strings.TrimLeft(words[0].String(), "-@:+!|")
}

func ignore(srcs []TokenSource, why string) {
	for i := range srcs {
		if srcs[i].Ignored == "" {
			srcs[i].Ignored = why
		}
	}
}

// envFileRefs orders the environment files as the unit loads them (a path
// named twice is loaded at its last place), then the candidate env files
// the unit does not load, so that their tokens are still found.
func envFileRefs(l Layout, refs []string, files map[string][]byte) []envFileRef {
	kindOf := func(p string) (SourceKind, bool) {
		for _, d := range l.DistroEnvFiles() {
			if p == d {
				return kindDistroEnvFile, false
			}
		}
		return kindEnvFile, p != l.EnvFile()
	}
	var out []envFileRef
	for i, p := range refs {
		last := true
		for _, q := range refs[i+1:] {
			if q == p {
				last = false
			}
		}
		if last {
			k, extra := kindOf(p)
			out = append(out, envFileRef{path: p, kind: k, extra: extra})
		}
	}
	for _, p := range append(l.DistroEnvFiles(), l.EnvFile()) {
		if files[p] == nil || slices.Contains(refs, p) {
			continue
		}
		k, _ := kindOf(p)
		out = append(out, envFileRef{path: p, kind: k, ignored: "not loaded by " + l.UnitName() + ".service (no EnvironmentFile= names it)"})
	}
	return out
}

// envFilePath resolves an EnvironmentFile= value: an optional "-" (file may
// be missing), then an absolute path. Wildcards and specifiers other than
// %% %n %N %p are refused: fleetcert could not know which files they name.
func envFilePath(v span, unit string) (string, error) {
	v, unknown := expandSpecifiers(v, unit)
	if len(unknown) > 0 {
		return "", fmt.Errorf("uses a specifier fleetcert does not resolve")
	}
	p := strings.TrimPrefix(v.String(), "-")
	switch {
	case strings.ContainsAny(p, "*?["):
		return "", fmt.Errorf("wildcards are not supported")
	case !path.IsAbs(p):
		return "", fmt.Errorf("path is not absolute (systemd ignores it)")
	}
	return path.Clean(p), nil
}

// parseEnvironment finds K3S_TOKEN and friends in an Environment= line:
// a list of KEY=VALUE words (systemd.exec; quoting as splitWords).
func parseEnvironment(file string, set unitSetting, content []byte, unit string) []TokenSource {
	v, unknown := expandSpecifiers(set.val, unit)
	words, err := splitWords(v)
	if err != nil {
		return []TokenSource{problem(file, kindUnitEnvironment, lineAt(content, set.keyOff), "Environment=: %v", err)}
	}
	var out []TokenSource
	for _, w := range words {
		name, _, ok := strings.Cut(w.String(), "=")
		setting, known := envSettings[name]
		if !ok || !known {
			continue
		}
		s := newSource(file, kindUnitEnvironment, name, setting, w.from(len(name)+1), content, set.keyOff)
		if w.usesAny(unknown) || w.odd {
			s.Warning = "uses unit specifiers or escapes fleetcert keeps verbatim"
		}
		out = append(out, s)
	}
	return out
}

// parseExecStart finds the token flags among the arguments of an
// ExecStart= command line: --token/-t, --token-file, --agent-token,
// --agent-token-file, each as "--flag value" or "--flag=value", with one or
// two dashes (Go flag syntax, which urfave/cli uses). Scanning stops at
// "--". A value that names a variable (${X}, $X) is taken literally by
// fleetcert and flagged.
func parseExecStart(file string, kind SourceKind, set unitSetting, content []byte, unit string) []TokenSource {
	v, unknown := expandSpecifiers(set.val, unit)
	line := lineAt(content, set.keyOff)
	words, err := splitWords(v)
	if err != nil {
		return []TokenSource{problem(file, kind, line, "ExecStart=: %v", err)}
	}
	if len(words) == 0 {
		return nil
	}
	// Prefixes -@:+! go before the path; with @ the next word is argv[0].
	first := words[0].String()
	prefix := len(first) - len(strings.TrimLeft(first, "-@:+!|"))
	args := words[1:]
	if strings.Contains(first[:prefix], "@") && len(args) > 0 {
		args = args[1:]
	}
	// Only k3s's own arguments are understood: a wrapper (sh -c, env, a
	// script) passes arguments fleetcert cannot see through, so it refuses.
	program := first[prefix:]
	if !isProductBinary(program) || len(args) == 0 || (args[0].String() != "server" && args[0].String() != "agent") {
		return []TokenSource{problem(file, kind, line,
			"ExecStart= runs %q, not k3s server or k3s agent (nor rke2's): fleetcert cannot tell which settings reach k3s through it", program)}
	}
	args = args[1:]
	for i := range args {
		// A specifier fleetcert does not resolve is read verbatim.
		args[i].odd = args[i].odd || args[i].usesAny(unknown)
	}
	return flagSources(file, kind, args, content, line, false)
}

// flagSources finds the token flags among k3s's arguments after the role:
// --token/-t, --token-file, --agent-token, --agent-token-file, each as
// "--flag value" or "--flag=value", with one or two dashes (Go flag syntax,
// which urfave/cli uses). Scanning stops at "--". line is where the command
// line starts. A value that takes part of itself from a variable is taken
// literally and flagged; strict makes that an error, for a shell that
// certainly expands it (OpenRC's command_args).
func flagSources(file string, kind SourceKind, args []word, content []byte, line int, strict bool) []TokenSource {
	var out []TokenSource
	for i := 0; i < len(args); i++ {
		a := args[i].String()
		if a == "--" {
			break
		}
		if !strings.HasPrefix(a, "-") {
			continue
		}
		name, _, hasEq := strings.Cut(strings.TrimPrefix(strings.TrimPrefix(a, "-"), "-"), "=")
		setting, ok := flagSettings[name]
		if !ok || strings.HasPrefix(a, "---") {
			continue
		}
		key := a[:len(a)-len(strings.TrimLeft(a, "-"))] + name
		keyOff := args[i].firstOff()
		var val word
		if hasEq {
			val = word{span: args[i].from(len(key) + 1), dollar: args[i].dollar, odd: args[i].odd}
		} else if i+1 < len(args) {
			i++
			val = args[i]
		} else {
			out = append(out, problem(file, kind, lineAt(content, keyOff), "%s has no value", key))
			continue
		}
		s := newSource(file, kind, key, setting, val.span, content, keyOff)
		if s.Line == 0 {
			s.Line = line
		}
		switch {
		case val.dollar && (strict || s.Value != "" && s.Value[0] == '$'):
			s.Err = fmt.Errorf("%s takes its value from a variable: define the token there instead", key)
		case val.odd || val.dollar:
			s.Warning = "uses unit specifiers, $ or escapes that systemd may expand; fleetcert reads them verbatim"
		}
		out = append(out, s)
	}
	return out
}
