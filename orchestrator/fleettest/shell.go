package fleettest

import "strings"

// word is one shell word: its text with quotes removed, and whether it
// holds a glob character outside quotes.
type word struct {
	s    string
	glob bool
}

// shellWords splits s as a POSIX shell splits a simple command's words
// (blanks, single quotes, backslash escapes; what remote.Quote produces).
// It stops at an unquoted ; or &.
func shellWords(s string) []word {
	var out []word
	var cur strings.Builder
	in, glob := false, false
	flush := func() {
		if in {
			out = append(out, word{cur.String(), glob})
		}
		cur.Reset()
		in, glob = false, false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n':
			flush()
		case c == ';' || c == '&':
			flush()
			return out
		case c == '\'':
			in = true
			end := strings.IndexByte(s[i+1:], '\'')
			if end < 0 {
				end = len(s) - i - 1
			}
			cur.WriteString(s[i+1 : i+1+end])
			i += end + 1
		case c == '\\' && i+1 < len(s):
			in = true
			i++
			cur.WriteByte(s[i])
		default:
			in = true
			if c == '*' || c == '?' || c == '[' {
				glob = true
			}
			cur.WriteByte(c)
		}
	}
	flush()
	return out
}

// unquote is the first word of s, unquoted ("" for none).
func unquote(s string) string {
	w := shellWords(s)
	if len(w) == 0 {
		return ""
	}
	return w[0].s
}
