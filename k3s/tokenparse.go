package k3s

import (
	"bytes"
	"errors"
	"fmt"
	"path"
	"strings"
	"unicode"

	"github.com/fleetcert/fleetcert/pki"
)

// span is a value as its reader decodes it, with for each decoded byte the
// offset in the file of the raw byte it is, or -1 when it was produced by
// an escape sequence, a doubled quote or an expansion. Rewrites only touch
// bytes whose offsets are known, so what they change is exactly what was
// decoded.
type span struct {
	b    []byte
	offs []int
}

func (s *span) lit(c byte, off int) { s.b = append(s.b, c); s.offs = append(s.offs, off) }
func (s *span) esc(c byte)          { s.b = append(s.b, c); s.offs = append(s.offs, -1) }
func (s span) String() string       { return string(s.b) }
func (s span) from(i int) span      { return span{b: s.b[i:], offs: s.offs[i:]} }
func (s *span) truncate(n int)      { s.b, s.offs = s.b[:n], s.offs[:n] }

// firstOff is the file offset of the first literal byte, or -1.
func (s span) firstOff() int {
	for _, o := range s.offs {
		if o >= 0 {
			return o
		}
	}
	return -1
}

// trimSpace drops leading and trailing blanks (space, tab, CR, LF).
func (s span) trimSpace() span {
	i, j := 0, len(s.b)
	for i < j && isBlank(s.b[i]) {
		i++
	}
	for j > i && isBlank(s.b[j-1]) {
		j--
	}
	return span{b: s.b[i:j], offs: s.offs[i:j]}
}

func isBlank(c byte) bool { return c == ' ' || c == '\t' || c == '\r' || c == '\n' }

// hashOffset is the file offset of the 64 hash bytes of a secure token
// when "K10<hash>" is written as one literal run of bytes, else -1.
func (s span) hashOffset() int {
	const n = 3 + 64
	if len(s.b) < n || string(s.b[:3]) != "K10" || s.offs[0] < 0 {
		return -1
	}
	for i := 1; i < n; i++ {
		if s.offs[i] != s.offs[0]+i {
			return -1
		}
	}
	return s.offs[3]
}

func isHex(h string) bool {
	for i := 0; i < len(h); i++ {
		c := h[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return h != ""
}

// lineAt is the 1-based line of byte offset off.
func lineAt(b []byte, off int) int {
	if off < 0 {
		return 0
	}
	if off > len(b) {
		off = len(b)
	}
	return 1 + bytes.Count(b[:off], []byte{'\n'})
}

// classOf is the precedence class of a kind (see effectiveToken).
func classOf(k SourceKind) int {
	switch k {
	case kindManagerEnv:
		return clsManagerEnv
	case kindUnitEnvironment:
		return clsEnvironment
	case kindEnvFile, kindDistroEnvFile, kindOpenRCEnvFile, kindEtcEnvironment:
		return clsEnvFile
	case kindConfigFile:
		return clsConfig
	case kindConfigDropIn:
		return clsConfigDropIn
	case kindUnitExecStart, kindUnitDropIn, kindCommandArgs:
		return clsExecStart
	}
	return 0
}

// newSource makes the source for one definition of setting, parsing the
// token and locating its hash.
func newSource(file string, kind SourceKind, key, setting string, v span, content []byte, keyOff int) TokenSource {
	s := TokenSource{
		File: file, Kind: kind, Key: key, Value: v.String(),
		Agent:   setting == settingAgentToken || setting == settingAgentTokenFile,
		FileRef: setting == settingTokenFile || setting == settingAgentTokenFile,
		hashOff: -1, cls: classOf(kind),
	}
	if setting == settingConfig || setting == settingServer {
		s.ref = setting
	}
	s.Line = lineAt(content, v.firstOff())
	if s.Line == 0 {
		s.Line = lineAt(content, keyOff)
	}
	s.keyLine = lineAt(content, keyOff)
	if s.ref != "" {
		return s
	}
	if s.FileRef {
		if s.Value != "" && !path.IsAbs(s.Value) {
			s.Err = errors.New("token file path is not absolute: where k3s looks for it depends on its working directory")
		}
		return s
	}
	if s.Value == "" {
		return s
	}
	t, err := pki.ParseToken(s.Value)
	if err != nil {
		s.Err = fmt.Errorf("unparseable token: %w", err)
		return s
	}
	s.Token = t
	if !t.Secure() {
		return s
	}
	switch s.hashOff = v.hashOffset(); {
	case s.hashOff < 0:
		s.Err = errors.New("the K10<hash> part is not written as plain characters (quotes or escapes inside it): cannot rewrite it safely")
	case !isHex(t.CAHash):
		s.Err = errors.New("the CA hash is not hexadecimal")
	}
	return s
}

// problem is a whole-file finding: the file cannot be read or rewritten
// safely as a whole.
func problem(file string, kind SourceKind, line int, format string, args ...any) TokenSource {
	return TokenSource{File: file, Kind: kind, Line: line, Err: fmt.Errorf(format, args...), hashOff: -1}
}

// ---- environment files (systemd EnvironmentFile=) ----

// envEntry is one assignment of an environment file.
type envEntry struct {
	key                   string
	keyOff                int
	val                   span
	segments              int  // quoted or unquoted pieces the value is made of
	escaped               bool // a backslash escape was used
	quote                 byte // quote opening the first piece, 0 for a plain one
	afterCommentBackslash bool
	// oldQuoteEscape: a backslash inside quotes that systemd before v241
	// read as an escape ('a\b' was ab, "a\b" was ab); since v241 a
	// backslash is literal in '…' and escapes only " \ ` $ and newline in
	// "…".
	oldQuoteEscape bool
}

// scanEnv reads an environment file exactly as systemd's
// parse_env_file_internal (src/basic/env-file.c) does: a key runs to "=";
// a comment starts with # or ; where a key could; the value is
// unquoted (backslash escapes the next character, backslash-newline is
// eaten, trailing blanks dropped), '…' (verbatim, may span lines) or "…"
// (\" \\ \` \$ unescaped, backslash-newline eaten, other backslashes kept);
// pieces may follow one another and are joined, and a closing quote does
// not end the value: K='a'\”b' is a”b' to systemd, not the shell's a'b.
// CR counts as a line end, as in systemd.
//
// refused, when set, says why systemd loads nothing from the file: it
// reads the file as one C string, so nothing after a NUL byte is ever
// parsed, and since v240 a NUL byte anywhere makes it refuse the whole
// file; a key or value (as decoded) that is not valid UTF-8 also fails the
// whole file. Entries are still returned, so that they are rewritten
// alike.
func scanEnv(b []byte) (entries []envEntry, refused string) {
	const (
		preKey = iota
		inKey
		preValue
		inValue
		valueEscape
		single
		double
		doubleEscape
		comment
		commentEscape
	)
	var (
		e                envEntry
		key              []byte
		lastKeyWS        = -1
		lastValWS        = -1
		st               = preKey
		commentBackslash bool
	)
	push := func(chomp bool) {
		if lastKeyWS >= 0 {
			key = key[:lastKeyWS]
		}
		if chomp && lastValWS >= 0 {
			e.val.truncate(lastValWS)
		}
		e.key = string(key)
		if refused == "" && (!systemdUTF8(key) || !systemdUTF8(e.val.b)) {
			refused = "systemd refuses the whole file: a key or value in it is not valid UTF-8"
		}
		entries = append(entries, e)
		e, key = envEntry{}, nil
	}
	isNL := func(c byte) bool { return c == '\n' || c == '\r' }
	for i := 0; i < len(b); i++ {
		c := b[i]
		if c == 0 {
			refused = "systemd refuses the whole file: it holds a NUL byte (before v240 systemd read it up to the NUL)"
			break
		}
		switch st {
		case preKey:
			// A comment or an empty line after a comment ending in a
			// backslash is where systemd before v254 ended that comment.
			if c == '#' || c == ';' {
				st = comment
				commentBackslash = false
			} else if !isBlank(c) {
				st, key, lastKeyWS = inKey, []byte{c}, -1
				e = envEntry{keyOff: i, afterCommentBackslash: commentBackslash}
				commentBackslash = false
			} else if isNL(c) {
				commentBackslash = false
			}
		case inKey:
			switch {
			case isNL(c):
				st, key = preKey, nil
			case c == '=':
				st, lastValWS = preValue, -1
			default:
				if !isBlank(c) {
					lastKeyWS = -1
				} else if lastKeyWS < 0 {
					lastKeyWS = len(key)
				}
				key = append(key, c)
			}
		case preValue:
			switch {
			case isNL(c):
				st = preKey
				push(false)
			case c == '\'':
				st = single
				e.segments++
				if e.segments == 1 {
					e.quote = c
				}
			case c == '"':
				st = double
				e.segments++
				if e.segments == 1 {
					e.quote = c
				}
			case c == '\\':
				st = valueEscape
				e.segments++
			case !isBlank(c):
				st = inValue
				e.segments++
				e.val.lit(c, i)
			}
		case inValue:
			switch {
			case isNL(c):
				st = preKey
				push(true)
			case c == '\\':
				st, lastValWS = valueEscape, -1
			default:
				if !isBlank(c) {
					lastValWS = -1
				} else if lastValWS < 0 {
					lastValWS = len(e.val.b)
				}
				e.val.lit(c, i)
			}
		case valueEscape:
			st = inValue
			e.escaped = true
			if !isNL(c) {
				e.val.esc(c)
			}
		case single:
			if c == '\'' {
				st = preValue
			} else {
				e.oldQuoteEscape = e.oldQuoteEscape || c == '\\'
				e.val.lit(c, i)
			}
		case double:
			if c == '"' {
				st = preValue
			} else if c == '\\' {
				st = doubleEscape
			} else {
				e.val.lit(c, i)
			}
		case doubleEscape:
			st = double
			e.escaped = true
			if strings.IndexByte("\"\\`$", c) >= 0 {
				e.val.esc(c)
			} else if c != '\n' {
				e.oldQuoteEscape = true
				e.val.lit('\\', i-1)
				e.val.lit(c, i)
			}
		case comment:
			if c == '\\' {
				st = commentEscape
			} else if isNL(c) {
				st = preKey
			}
		case commentEscape:
			// systemd >= v254: a comment ending in a backslash ends at
			// the line end; older versions took the backslash as escaping
			// the next character, CR and LF alike, so the comment went on
			// to the next line end (for CR LF, the LF ended it).
			if isNL(c) {
				st = preKey
				commentBackslash = true
			} else {
				st = comment
			}
		}
	}
	switch st {
	case preValue, valueEscape, single, double, doubleEscape:
		push(false)
	case inValue:
		push(true)
	}
	return entries, refused
}

// parseEnvFile finds K3S_TOKEN, K3S_TOKEN_FILE, K3S_AGENT_TOKEN and
// K3S_AGENT_TOKEN_FILE in a systemd environment file. ignored, when set,
// marks every definition as one k3s does not see (file not loaded).
func parseEnvFile(file string, kind SourceKind, content []byte, ignored string) []TokenSource {
	var out []TokenSource
	entries, refused := scanEnv(content)
	if ignored == "" {
		ignored = refused
	}
	for _, d := range envDefinitions(entries) {
		e, exported := d.envEntry, d.exported
		s := newSource(file, kind, d.name, d.setting, e.val, content, e.keyOff)
		s.Ignored = ignored
		switch {
		case exported && s.Ignored == "":
			s.Ignored = `systemd ignores "export NAME=" lines in environment files`
		case e.afterCommentBackslash:
			s.Warning = "follows a comment ending in a backslash: systemd before v254 reads this line as part of that comment"
		case e.oldQuoteEscape:
			s.Warning = "a backslash inside quotes: systemd before v241 read it as an escape, so the value differs there; fleetcert follows v241 and later"
		case !shellSafeEnv(e):
			s.Warning = "systemd and a POSIX shell read this value differently (quote pieces, escapes or blanks); fleetcert follows systemd"
		}
		out = append(out, s)
	}
	return out
}

// envDefinition is an environment-file entry that sets one of the settings
// k3s reads (envSettings), with or without an "export " before its name.
type envDefinition struct {
	envEntry
	name, setting string
	exported      bool
}

func envDefinitions(entries []envEntry) []envDefinition {
	var out []envDefinition
	for _, e := range entries {
		name, exported := e.key, false
		if rest, ok := strings.CutPrefix(name, "export"); ok && rest != "" && (rest[0] == ' ' || rest[0] == '\t') {
			name, exported = strings.TrimLeft(rest, " \t"), true
		}
		if setting, ok := envSettings[name]; ok {
			out = append(out, envDefinition{e, name, setting, exported})
		}
	}
	return out
}

// shellSafeEnv reports whether sh would read the value as systemd does:
// one single-quoted piece, one double-quoted piece without $ or `, or one
// plain word of characters sh takes literally; no escapes.
func shellSafeEnv(e envEntry) bool {
	if e.segments > 1 || e.escaped {
		return false
	}
	special := ""
	switch e.quote {
	case '\'':
		return true
	case '"':
		special = "$`"
	default:
		special = " \t\r'\"`$\\;&|<>()~"
	}
	return !bytes.ContainsAny(e.val.b, special)
}

// ---- token files ----

// parseTokenFile reads a token-file target: k3s uses its content with
// surrounding white space trimmed by strings.TrimSpace, which trims
// Unicode white space too (a no-break space U+00A0, an em space...).
func parseTokenFile(file string, content []byte) TokenSource {
	text := string(content)
	lead := len(text) - len(strings.TrimLeftFunc(text, unicode.IsSpace))
	end := len(strings.TrimRightFunc(text, unicode.IsSpace))
	var v span
	for i := lead; i < end; i++ {
		v.lit(content[i], i)
	}
	off := v.firstOff()
	if off < 0 {
		off = 0
	}
	s := newSource(file, kindTokenFile, "", settingToken, v, content, off)
	if s.Value == "" {
		s.Err = errors.New("token file is empty")
	}
	return s
}
