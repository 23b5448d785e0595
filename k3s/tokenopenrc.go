package k3s

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"path"
	"regexp"
	"slices"
	"sort"
	"strings"
)

// Token places on an OpenRC node (docs/k3s-behaviour.md#openrc). install.sh
// writes a service script whose command_args holds the install arguments
// and which sources /etc/environment and then the env file under
// `set -o allexport`; OpenRC sources /etc/conf.d/<service> before the
// script. Both levels are shell: the script is sourced by openrc-run, and
// supervise-daemon.sh evals command_args once more.

// serviceScript is what a service script says about tokens.
type serviceScript struct {
	args     []TokenSource // flags in command_args
	sourced  []sourcedFile // files the script sources, in order
	binary   string        // command=
	problems []TokenSource
}

// sourcedFile is a file the script sources with `.` or `source`.
type sourcedFile struct {
	path      string
	allexport bool // under set -a: its plain assignments reach k3s
}

var (
	// A command that sources a file: after a line start, ; & | { ( or the
	// keywords then/else/do.
	sourceRE = regexp.MustCompile(`(?m)(?:^|[;&|{(]|\bthen\b|\belse\b|\bdo\b)[ \t]*(?:\.|source)[ \t]+([^ \t;&|)]+)`)
	// The assignments and uses of the names fleetcert reads; command_args
	// and command must be assigned exactly once, at the start of a line.
	commandArgsRE = regexp.MustCompile(`\bcommand_args\b`)
	commandRE     = regexp.MustCompile(`(?m)^[ \t]*command=`)
	allexportRE   = regexp.MustCompile(`(?m)(?:^|[;&|{(]|\bthen\b)[ \t]*set[ \t]+(-a\b|\+a\b|-o[ \t]+allexport\b|\+o[ \t]+allexport\b)`)
)

// parseServiceScript reads an install.sh service script, or a hand-edited
// one, as far as fleetcert can follow it with certainty: one command_args
// assignment at the top level, one command=, the files it sources. The
// script setting K3S_* variables itself, or using command_args in any
// other way, is a problem: fleetcert could not tell what reaches k3s.
func parseServiceScript(file string, content []byte) serviceScript {
	var sc serviceScript
	bad := func(off int, format string, args ...any) {
		sc.problems = append(sc.problems, problem(file, kindCommandArgs, lineAt(content, off), format, args...))
	}
	if bytes.IndexByte(content, 0) >= 0 {
		bad(0, "the service script holds a NUL byte")
		return sc
	}
	code := shellCode(content)
	assigned, misused := -1, -1
	for _, m := range commandArgsRE.FindAllIndex(code, -1) {
		start, end := m[0], m[1]
		if end < len(code) && code[end] == '=' && lineStartsAt(code, start) && assigned < 0 {
			assigned = end + 1
		} else if misused < 0 {
			misused = start
		}
	}
	if misused >= 0 {
		bad(misused, "command_args is set more than once or used as a variable: fleetcert cannot tell what k3s is given")
	}
	for _, name := range slices.Sorted(maps.Keys(envSettings)) {
		if i := bytes.Index(code, []byte(name)); i >= 0 {
			bad(i, "the service script sets or uses %s itself: define it in the env file or config.yaml instead", name)
			break
		}
	}
	if assigned < 0 {
		bad(0, "the service script has no command_args assignment fleetcert can read")
	} else {
		sc.readCommandArgs(file, content, assigned)
	}
	sc.readCommand(file, content, code)
	sc.readSourced(file, content, code)
	return sc
}

// shellCode is content with comment text blanked out (same length, so
// offsets hold): a # that starts a word outside quotes comments out the
// rest of the line. Quotes are followed only to find where comments start.
func shellCode(content []byte) []byte {
	code := bytes.Clone(content)
	var quote byte
	for i := 0; i < len(code); i++ {
		c := code[i]
		switch {
		case quote == '\'':
			if c == '\'' {
				quote = 0
			}
		case c == '\\':
			i++
		case quote == '"':
			if c == '"' {
				quote = 0
			}
		case c == '\'' || c == '"':
			quote = c
		case c == '#' && (i == 0 || isBlank(code[i-1]) || code[i-1] == ';'):
			for ; i < len(code) && code[i] != '\n'; i++ {
				code[i] = ' '
			}
		}
	}
	return code
}

// lineStartsAt reports whether only blanks precede off on its line.
func lineStartsAt(b []byte, off int) bool {
	for i := off - 1; i >= 0 && b[i] != '\n'; i-- {
		if b[i] != ' ' && b[i] != '\t' {
			return false
		}
	}
	return true
}

// readCommandArgs parses the value assigned at off: the first level is
// the assignment's own quoting, as openrc-run sources the script; the
// second is the eval supervise-daemon.sh runs on it.
func (sc *serviceScript) readCommandArgs(file string, content []byte, off int) {
	line := lineAt(content, off)
	v, end, err := assignedValue(content, off)
	if err == nil {
		err = onlyBlanksToLineEnd(content, end)
	}
	if err != nil {
		sc.problems = append(sc.problems, problem(file, kindCommandArgs, line, "command_args: %v", err))
		return
	}
	words, err := evalWords(v)
	if err != nil {
		sc.problems = append(sc.problems, problem(file, kindCommandArgs, line, "command_args: %v", err))
		return
	}
	if len(words) == 0 || (words[0].String() != "server" && words[0].String() != "agent") {
		sc.problems = append(sc.problems, problem(file, kindCommandArgs, line,
			"command_args does not start with server or agent: fleetcert cannot tell which settings reach k3s"))
		return
	}
	sc.args = flagSources(file, kindCommandArgs, words[1:], content, line, true)
}

// readCommand takes the program from command=; it must be k3s.
func (sc *serviceScript) readCommand(file string, content, code []byte) {
	ms := commandRE.FindAllIndex(code, -1)
	if len(ms) != 1 {
		sc.problems = append(sc.problems, problem(file, kindCommandArgs, 0, "the service script sets command= %d times, want once", len(ms)))
		return
	}
	v, end, err := assignedValue(content, ms[0][1])
	if err == nil {
		err = onlyBlanksToLineEnd(content, end)
	}
	if err == nil && bytes.IndexByte(v.b, expansionMark) >= 0 {
		err = errors.New("takes its value from a variable")
	}
	if err != nil {
		sc.problems = append(sc.problems, problem(file, kindCommandArgs, lineAt(content, ms[0][0]), "command=: %v", err))
		return
	}
	sc.binary = v.String()
	if !isProductBinary(sc.binary) {
		sc.problems = append(sc.problems, problem(file, kindCommandArgs, lineAt(content, ms[0][0]),
			"command= runs %q, not k3s or rke2: fleetcert cannot tell which settings reach k3s through it", sc.binary))
	}
}

// readSourced lists the files the script sources and whether allexport
// is on for each (set -a / set -o allexport, in file order).
func (sc *serviceScript) readSourced(file string, content, code []byte) {
	// In file order: a set switches allexport, a source (src set) reads a
	// file under the current setting.
	type event struct {
		off       int
		src       string
		allexport bool
	}
	var events []event
	for _, m := range allexportRE.FindAllSubmatchIndex(code, -1) {
		events = append(events, event{off: m[0], allexport: code[m[2]] == '-'})
	}
	for _, m := range sourceRE.FindAllSubmatchIndex(code, -1) {
		events = append(events, event{off: m[2], src: string(code[m[2]:m[3]])})
	}
	sort.Slice(events, func(i, j int) bool { return events[i].off < events[j].off })
	allexport := false
	for _, e := range events {
		if e.src == "" {
			allexport = e.allexport
			continue
		}
		p := e.src
		if !path.IsAbs(p) || strings.ContainsAny(p, "$`'\"\\*?[") {
			sc.problems = append(sc.problems, problem(file, kindCommandArgs, lineAt(content, e.off),
				"the service script sources %q: fleetcert can only follow a plain absolute path", p))
			return
		}
		sc.sourced = append(sc.sourced, sourcedFile{path: path.Clean(p), allexport: allexport})
	}
}

// expansionMark stands for what a $ expansion or command substitution
// inserts at the first level: fleetcert cannot know it. No shell script
// holds this byte (parseServiceScript refuses a NUL).
const expansionMark = 0

// assignedValue reads the value of a shell assignment starting at off as
// sh does: "…" (backslash escapes $ ` " \ and newline, which is removed;
// $ expands), '…' (literal) or a plain word. An expansion is kept as
// expansionMark. end is where the value ends.
func assignedValue(b []byte, off int) (v span, end int, err error) {
	var w word
	i := off
	for i < len(b) && !isBlank(b[i]) && b[i] != ';' {
		c := b[i]
		switch {
		case c == '\'' || c == '"':
			if i, err = quoted(b, nil, i, &w, true); err != nil {
				return w.span, 0, err
			}
			i++
		case c == '\\':
			if i+1 < len(b) && b[i+1] != '\n' {
				w.esc(b[i+1])
			}
			i += 2
		case c == '`':
			return w.span, 0, errCommandSubstitution
		case c == '$' && i+1 < len(b) && isExpansionStart(b[i+1]):
			w.esc(expansionMark)
			i = skipExpansion(b, i) + 1
		default:
			w.lit(c, i)
			i++
		}
	}
	return w.span, i, nil
}

var errCommandSubstitution = errors.New("uses command substitution (`…`)")

// quoted reads the '…' or "…" piece of b that opens at b[i] into w, as sh
// reads quotes, and returns the offset of its closing quote. offs are the
// file offsets of b's bytes (nil: b is the file). In double quotes a
// backslash escapes $ ` " \ and newline (which goes), and a backtick is
// command substitution. expand is what a $ does there: at the first level
// it expands (expansionMark stands for the value, which fleetcert cannot
// know); for eval the word keeps it and is marked. A first-level expansion
// already inside the piece marks the word as well.
func quoted(b []byte, offs []int, i int, w *word, expand bool) (int, error) {
	off := func(k int) int {
		if offs == nil {
			return k
		}
		return offs[k]
	}
	q := b[i]
	for i++; i < len(b) && b[i] != q; i++ {
		switch c := b[i]; {
		case q == '\'':
			w.dollar = w.dollar || c == expansionMark
			w.lit(c, off(i))
		case c == '\\' && i+1 < len(b) && strings.IndexByte("$`\"\\\n", b[i+1]) >= 0:
			i++
			if b[i] != '\n' {
				w.esc(b[i])
			}
		case c == '`':
			return 0, errCommandSubstitution
		case expand && c == '$' && i+1 < len(b) && isExpansionStart(b[i+1]):
			w.esc(expansionMark)
			i = skipExpansion(b, i)
		case !expand && (c == '$' || c == expansionMark):
			w.dollar = true
			w.lit(c, off(i))
		default:
			w.lit(c, off(i))
		}
	}
	if i >= len(b) {
		return 0, fmt.Errorf("unbalanced %c quote", q)
	}
	return i, nil
}

func isExpansionStart(c byte) bool {
	return c == '{' || c == '(' || c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' ||
		c >= '0' && c <= '9' || strings.IndexByte("@*#?$!-", c) >= 0
}

// skipExpansion returns the offset of the last byte of the expansion
// starting with the $ at i: ${…}, $(…) (nesting counted), a name, or one
// special character.
func skipExpansion(b []byte, i int) int {
	switch b[i+1] {
	case '{', '(':
		open, closing := b[i+1], byte('}')
		if open == '(' {
			closing = ')'
		}
		depth := 0
		for j := i + 1; j < len(b); j++ {
			switch b[j] {
			case open:
				depth++
			case closing:
				if depth--; depth == 0 {
					return j
				}
			}
		}
		return len(b) - 1
	}
	j := i + 1
	if c := b[j]; c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' {
		for j+1 < len(b) && (b[j+1] == '_' || b[j+1] >= 'a' && b[j+1] <= 'z' || b[j+1] >= 'A' && b[j+1] <= 'Z' || b[j+1] >= '0' && b[j+1] <= '9') {
			j++
		}
	}
	return j
}

// onlyBlanksToLineEnd checks that nothing but blanks or a comment follows
// an assignment on its line.
func onlyBlanksToLineEnd(b []byte, off int) error {
	for i := off; i < len(b) && b[i] != '\n'; i++ {
		switch {
		case b[i] == '#' && (i == off || isBlank(b[i-1])):
			return nil
		case !isBlank(b[i]):
			return fmt.Errorf("%q follows the value on its line", strings.TrimSpace(string(b[i:min(len(b), i+20)])))
		}
	}
	return nil
}

// evalWords splits the first-level value into the words eval makes of it:
// blanks separate, '…' and "…" quote, a backslash escapes, and
// redirections (>>/var/log/k3s.log 2>&1, as install.sh ends command_args
// with) are taken out. A $ left for eval, or a first-level expansion,
// marks its word (dollar). Syntax that makes eval do more than run one
// command (; & | ( ) `, a comment) is an error.
func evalWords(v span) ([]word, error) {
	var (
		words   []word
		cur     word
		in      bool
		redir   bool // cur is a redirection operator with its target
		needArg bool // the last word was an operator without a target
	)
	flush := func() {
		if in {
			switch {
			case redir && !redirTargetMissing(cur.String()):
			case redir:
				needArg = true
			case needArg:
				needArg = false
			default:
				words = append(words, cur)
			}
		}
		cur, in, redir = word{}, false, false
	}
	for i := 0; i < len(v.b); i++ {
		c := v.b[i]
		switch {
		case isBlank(c):
			flush()
		case c == expansionMark:
			// The shell put the value of a variable here, as code for
			// eval: it could be any number of words, flags among them.
			return nil, errors.New("a variable or command expands outside quotes: eval could make any flags of it")
		case c == '\'' || c == '"':
			in = true
			var err error
			if i, err = quoted(v.b, v.offs, i, &cur, false); err != nil {
				return nil, err
			}
		case c == '\\':
			in = true
			if i+1 < len(v.b) {
				i++
				if v.b[i] != '\n' {
					cur.esc(v.b[i])
				}
			}
		case c == '>' || c == '<':
			if in && !redir && !allDigits(cur.String()) {
				flush()
			}
			in, redir = true, true
			cur.lit(c, v.offs[i])
		case strings.IndexByte(";&|()`", c) >= 0 && !(c == '&' && redir && strings.HasSuffix(cur.String(), ">")):
			return nil, fmt.Errorf("holds %q, which makes eval run more than k3s: fleetcert cannot follow it", c)
		case c == '#' && !in:
			return nil, errors.New("holds a comment (#) where eval would cut the arguments")
		default:
			in = true
			if c == '$' {
				cur.dollar = true
			}
			if strings.IndexByte("*?[~", c) >= 0 {
				cur.odd = true
			}
			cur.lit(c, v.offs[i])
		}
	}
	flush()
	if needArg {
		return nil, errors.New("ends in a redirection without a target")
	}
	return words, nil
}

// redirTargetMissing reports whether a redirection word is only its
// operator (">>", "2>"), its target being the next word.
func redirTargetMissing(w string) bool {
	w = strings.TrimLeft(w, "0123456789")
	return strings.Trim(w, "<>|&") == "" && !strings.HasSuffix(w, "&")
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// parseShellEnv finds token settings in a file sh sources: NAME=value and
// export NAME=value lines. The value is read with systemd's
// environment-file rules (which locate the hash) and again as sh reads an
// assignment; a definition is accepted only where both agree and nothing
// but a comment follows it, so anything else defining a token is a
// problem. allexport says whether plain assignments are exported (set -a);
// an export line always is.
func parseShellEnv(file string, kind SourceKind, content []byte, allexport bool, ignored string) []TokenSource {
	var out []TokenSource
	entries, _ := scanEnv(content)
	for _, d := range envDefinitions(entries) {
		e := d.envEntry
		s := newSource(file, kind, d.name, d.setting, e.val, content, e.keyOff)
		s.Ignored = ignored
		if s.Ignored == "" && !d.exported && !allexport {
			s.Ignored = "assigned but not exported (no export, no set -a): k3s does not see it"
		}
		if err := shellAgrees(content, e); err != nil {
			s.Err = fmt.Errorf("sh reads this line otherwise than fleetcert can follow (%v): write NAME='value'", err)
		}
		out = append(out, s)
	}
	return out
}

// shellAgrees checks that sh assigns e's value as the environment-file
// reading found it: "=" right after the name, the value one shell word
// without expansions, nothing after it but blanks or a comment.
func shellAgrees(content []byte, e envEntry) error {
	eq := e.keyOff + len(e.key)
	if eq >= len(content) || content[eq] != '=' || e.afterCommentBackslash {
		return errors.New("not a plain assignment")
	}
	v, end, err := assignedValue(content, eq+1)
	switch {
	case err != nil:
		return err
	case bytes.IndexByte(v.b, expansionMark) >= 0:
		return errors.New("an expansion")
	case !bytes.Equal(v.b, e.val.b):
		return errors.New("quotes or escapes read differently")
	}
	return onlyBlanksToLineEnd(content, end)
}

// shellEnvKind is the kind of a file sh sources for an OpenRC service.
func shellEnvKind(p string) SourceKind {
	if p == (Layout{}).EtcEnvironment() {
		return kindEtcEnvironment
	}
	return kindOpenRCEnvFile
}

// openrcSources reads the token places of an OpenRC node in the order sh
// sees them: /etc/conf.d/<service> (sourced by openrc-run, without
// allexport), then what the service script sources (install.sh's:
// /etc/environment, then the env file), then command_args. install.sh's
// env file and /etc/environment are read even when the script does not
// source them, and their tokens rewritten too, marked ignored.
func (sc *TokenScan) openrcSources(l Layout, in NodeFiles) (env, exec, problems []TokenSource) {
	script := l.ServiceScript()
	sc.need(in, script, fileServiceScript)
	content := in.Files[script]
	if content == nil {
		if !in.Unreadable[script] {
			problems = append(problems, problem(script, kindCommandArgs, 0, "OpenRC runs the node but it has no service script %s", script))
		}
		return nil, nil, problems
	}
	parsed := parseServiceScript(script, content)
	sc.Binary = parsed.binary
	readEnv := func(p string, kind SourceKind, allexport bool, ignored string) {
		sc.need(in, p, fileShellEnv)
		if c := in.Files[p]; c != nil {
			env = append(env, parseShellEnv(p, kind, c, allexport, ignored)...)
		}
	}
	readEnv(l.OpenRCConfD(), shellEnvKind(l.OpenRCConfD()), false, "")
	sourced := map[string]bool{}
	for _, f := range parsed.sourced {
		sourced[f.path] = true
		readEnv(f.path, shellEnvKind(f.path), f.allexport, "")
	}
	for _, p := range []string{l.EtcEnvironment(), l.OpenRCEnvFile()} {
		if !sourced[p] && in.Files[p] != nil {
			readEnv(p, shellEnvKind(p), true, "not sourced by "+script)
		}
	}
	return env, parsed.args, parsed.problems
}
