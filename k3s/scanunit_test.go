package k3s

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// TestScanUnitRules checks scanUnit against systemd's unit file syntax,
// one rule per case; each comment states the rule.
func TestScanUnitRules(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []string // "key=value" of the [Service] settings, in order
	}{
		// A line ends at LF.
		{"LF", "[Service]\nA=1\nB=2\n", []string{"A=1", "B=2"}},
		// A line ends at a lone CR (old Mac line ends).
		{"CR", "[Service]\rA=1\rB=2\r", []string{"A=1", "B=2"}},
		// CR LF is one line end, not a line end and an empty line.
		{"CRLF is one end", "[Service]\r\nA=1 \\\r\n 2\r\n", []string{"A=1   2"}},
		// LF CR is one line end too: each end character may appear once.
		{"LFCR is one end", "[Service]\n\rA=1 \\\n\r 2\n\r", []string{"A=1   2"}},
		// A repeated end character ends an empty line, which ends a
		// continuation.
		{"LF LF ends a continuation", "[Service]\nA=1 \\\n\nB=2\n", []string{"A=1", "B=2"}},
		{"CR CR ends a continuation", "[Service]\rA=1 \\\r\rB=2\r", []string{"A=1", "B=2"}},
		// CR LF CR: the second CR starts another line end, so an empty
		// line follows.
		{"CRLFCR", "[Service]\nA=1 \\\r\n\rB=2\n", []string{"A=1", "B=2"}},
		// A NUL ends a line.
		{"NUL ends a line", "[Service]\nA=1\x00B=2\n", []string{"A=1", "B=2"}},
		// A NUL may close a run of other end characters (LF NUL, CR LF
		// NUL are one line end)...
		{"LF NUL is one end", "[Service]\nA=1 \\\n\x00 2\n", []string{"A=1   2"}},
		{"CRLF NUL is one end", "[Service]\nA=1 \\\r\n\x00 2\n", []string{"A=1   2"}},
		// ...but nothing follows a NUL in the same line end: NUL LF is a
		// line end then an empty line.
		{"NUL LF ends a continuation", "[Service]\nA=1 \\\x00\nB=2\n", []string{"A=1", "B=2"}},
		{"NUL NUL", "[Service]\nA=1 \\\x00\x00B=2\n", []string{"A=1", "B=2"}},
		// A line ending in one backslash continues on the next one; the
		// backslash becomes a space.
		{"one backslash continues", "[Service]\nA=x\\\ny\n", []string{"A=x y"}},
		// Two backslashes are an escaped backslash: the line does not
		// continue, and the next line is a line of its own.
		{"two backslashes end the line", "[Service]\nA=x\\\\\nB=y\n", []string{`A=x\\`, "B=y"}},
		// Three: an escaped backslash and then a continuation.
		{"three backslashes continue", "[Service]\nA=x\\\\\\\ny\n", []string{`A=x\\ y`}},
		{"four backslashes end the line", "[Service]\nA=x\\\\\\\\\nB=y\n", []string{`A=x\\\\`, "B=y"}},
		// Only the trailing run counts: an escape earlier in the line
		// does not change it.
		{"escape earlier in the line", "[Service]\nA=\\x\\ \\\ny\n", []string{`A=\x\  y`}},
		// A backslash followed by a blank is not at the end of the line.
		{"backslash then blank", "[Service]\nA=x\\ \nB=y\n", []string{`A=x\`, "B=y"}},
		// Each physical line is read afresh: a continued line ending in
		// two backslashes ends the logical line.
		{"continuation then escaped backslash", "[Service]\nA=a \\\nb\\\\\nB=y\n", []string{`A=a  b\\`, "B=y"}},
		// Comment lines (# or ; after blanks) inside a continuation are
		// dropped and do not end it; a comment ending in a backslash does
		// not continue.
		{"comments inside a continuation", "[Service]\nA=a \\\n# c \\\n  ; d\nb\nB=y\n", []string{"A=a  b", "B=y"}},
		{"comment ending in a backslash", "[Service]\n# c \\\nA=1\n", []string{"A=1"}},
		// A line that starts with a comment character after a CR is a
		// comment even when an LF-only reader would see it in the middle.
		{"comment after CR", "[Service]\nA=1\r# B=2\n", []string{"A=1"}},
		// A continuation may run to the end of the file.
		{"continuation at EOF", "[Service]\nA=1 \\", []string{"A=1"}},
		// A UTF-8 byte order mark is dropped from the first line.
		{"BOM", "\xef\xbb\xbf[Service]\nA=1\n", []string{"A=1"}},
		// Only once: a second BOM is part of the line, so the key differs.
		{"second BOM kept", "\xef\xbb\xbf[Service]\n\xef\xbb\xbfA=1\nB=2\n", []string{"\xef\xbb\xbfA=1", "B=2"}},
		// Key and value are trimmed of space, tab, CR and LF only: other
		// white space such as a vertical tab or U+00A0 is part of the key.
		{"only ASCII blanks trimmed", "[Service]\nA\v=1\nB\u00a0=2\n \tC \t= \t3 \t\n", []string{"A\v=1", "B\u00a0=2", "C=3"}},
		// Lines without "=" or without a key are skipped.
		{"no key", "[Service]\n=1\nnothing\nA=1\n", []string{"A=1"}},
		// Settings count only in [Service]; section names are case
		// sensitive and must be exact.
		{"sections", "A=0\n[Unit]\nA=1\n[service]\nA=2\n[ Service ]\nA=3\n[Service]\nA=4\n", []string{"A=4"}},
		// A header must end in "]": "[Service]]" names the section
		// "Service]", not Service.
		{"header with extra ]", "[Service]]\nA=1\n[Service]\nB=2\n", []string{"B=2"}},
		// A header that does not end in "]" makes systemd stop reading
		// the file: nothing after it counts.
		{"bad header stops the file", "[Service]\nA=1\n[Service] x\nB=2\n", []string{"A=1"}},
		// So does a section name with a quote, backslash or control
		// character.
		{"unsafe header stops the file", "[Service]\nA=1\n[Ser\"vice]\nB=2\n", []string{"A=1"}},
		// And a logical line that is not valid UTF-8, even outside
		// [Service]. Comments are not checked.
		{"invalid UTF-8 stops the file", "[Service]\n# \xff\nA=1\n[Unit]\nX=\xff\n[Service]\nB=2\n", []string{"A=1"}},
		// systemd also refuses Unicode noncharacters.
		{"noncharacter stops the file", "[Service]\nA=1\nX=\uFFFE\nB=2\n", []string{"A=1"}},
		{"valid UTF-8 is fine", "[Service]\nA=é\u00a0€\n", []string{"A=é\u00a0€"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			for _, s := range scanUnit([]byte(tt.in)) {
				got = append(got, s.key+"="+s.val.String())
				checkSpan(t, []byte(tt.in), s.val)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %q\nwant %q", got, tt.want)
			}
		})
	}
}

// TestScanUnitTokens: the line rules decide which token a unit really
// passes, and so what is found and rewritten.
func TestScanUnitTokens(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    []string // Key=Value of the token sources
		refuses bool     // the rewrite must refuse (a token outside what systemd reads)
	}{
		{
			// CR-only line ends: each line is a line.
			name: "install.sh unit with CR line ends",
			in:   strings.ReplaceAll(installUnit("--token", srvTok), "\n", "\r"),
			want: []string{"--token=" + srvTok},
		},
		{
			// An escaped backslash ends ExecStart=: the token on the next
			// line is not an argument (systemd skips that line), so it is
			// not a definition and the rewrite refuses.
			name:    "even backslashes do not continue ExecStart=",
			in:      "[Service]\nExecStart=/usr/local/bin/k3s server \\\\\n\t--token " + srvTok + "\n",
			refuses: true,
		},
		{
			// A NUL ends the ExecStart= line: what follows is a line of
			// its own.
			name: "NUL ends ExecStart=",
			in:   "[Service]\nExecStart=/usr/local/bin/k3s server\x00Environment=K3S_TOKEN=" + srvTok + "\n",
			want: []string{"K3S_TOKEN=" + srvTok},
		},
		{
			// A commented-out argument line inside the continuation is
			// dropped; the next line still continues the command.
			name: "commented argument inside ExecStart=",
			in:   "[Service]\nExecStart=/usr/local/bin/k3s agent \\\n#\t--token " + srvTok + " \\\n\t--token " + nodeTok + "\n",
			want: []string{"--token=" + nodeTok},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srcs, err := parseFile(fileUnit, "/u", []byte(tt.in), "k3s")
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, s := range srcs {
				if s.Key != "" {
					got = append(got, s.Key+"="+s.Value)
				}
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %q\nwant %q", got, tt.want)
			}
			_, _, err = rewriteTokenHash(fileUnit, []byte(tt.in), newHash)
			if (err != nil) != tt.refuses {
				t.Errorf("rewrite error = %v, want refusal %v", err, tt.refuses)
			}
		})
	}
}

// checkSpan fails the test unless every byte of s that claims a file
// offset is the byte at that offset, and those offsets increase.
func checkSpan(t testing.TB, b []byte, s span) {
	t.Helper()
	if err := spanError(b, s); err != nil {
		t.Fatal(err)
	}
}

func spanError(b []byte, s span) error {
	if len(s.b) != len(s.offs) {
		return fmt.Errorf("span of %d bytes has %d offsets", len(s.b), len(s.offs))
	}
	last := -1
	for i, o := range s.offs {
		switch {
		case o < -1 || o >= len(b):
			return fmt.Errorf("offset %d out of range", o)
		case o >= 0 && b[o] != s.b[i]:
			return fmt.Errorf("byte %d of the value (%q) is not the file's byte at %d (%q)", i, s.b[i], o, b[o])
		case o >= 0 && o <= last:
			return fmt.Errorf("offsets go back: %d after %d", o, last)
		case o >= 0:
			last = o
		}
	}
	return nil
}
