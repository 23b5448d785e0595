package k3s

import (
	"reflect"
	"strings"
	"testing"
)

// TestScanEnvRules checks scanEnv against systemd's EnvironmentFile=
// syntax, one rule per case; each comment states the rule.
func TestScanEnvRules(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    []string // "key=value" as systemd pushes them, in order
		refused bool     // systemd refuses the whole file
	}{
		// An assignment ends at LF, CR or CR LF.
		{"line ends", "A=1\nB=2\rC=3\r\nD=4", []string{"A=1", "B=2", "C=3", "D=4"}, false},
		// Blanks around the key and before the value are dropped, and
		// trailing blanks of an unquoted value.
		{"blanks", "  A \t= \t1 x \t\n", []string{"A=1 x"}, false},
		// A line without "=" is dropped.
		{"no =", "JUNK\nA=1\n", []string{"A=1"}, false},
		// A comment starts with # or ; where a key could start; it runs
		// to the line end.
		{"comments", "# A=0\n  ; B=0\nA=1\n", []string{"A=1"}, false},
		// Elsewhere # and ; are plain characters: there is no trailing
		// comment.
		{"no trailing comment", "A=1 # not a comment\nB=x;y\n", []string{"A=1 # not a comment", "B=x;y"}, false},
		// Since v254 a comment ending in a backslash ends at its line
		// end; the next line is an assignment.
		{"comment ending in backslash", "# c \\\nA=1\n", []string{"A=1"}, false},
		// An unquoted backslash escapes the next character; before a
		// line end (LF or CR) it joins the lines.
		{"unquoted escapes", "A=a\\ b\\\\c\\\nd\nB=e\\\rf\n", []string{`A=a b\cd`, "B=ef"}, false},
		// Backslash CR LF: the CR is eaten, the LF then ends the value.
		{"backslash CRLF ends the value", "A=a\\\r\nB=b\n", []string{"A=a", "B=b"}, false},
		// Single quotes keep everything verbatim, line ends and
		// backslashes included.
		{"single quotes", "A='a \\b\n#c'\nB=2\n", []string{"A=a \\b\n#c", "B=2"}, false},
		// Double quotes: \" \\ \` \$ lose the backslash, backslash LF is
		// eaten, any other backslash stays.
		{"double quotes", "A=\"q\\\"b\\\\c\\`d\\$e\\\nf\\n\\\rg\"\n", []string{"A=q\"b\\c`d$ef\\n\\\rg"}, false},
		// Quoted and unquoted pieces are joined; blanks after a closing
		// quote are dropped; a quote inside an unquoted piece is a plain
		// character.
		{"pieces", "A='a' 'b'c \"d\"\nB=x'y'\n", []string{"A=abc \"d\"", "B=x'y'"}, false},
		// An unterminated quote runs to the end of the file.
		{"unterminated quote", "A='a\nB=2\n", []string{"A=a\nB=2\n"}, false},
		// "export NAME=" is not special: the key is "export NAME".
		{"export", "export A=1\n", []string{"export A=1"}, false},
		// systemd reads the file as a C string: nothing after a NUL is
		// parsed, and since v240 a NUL makes it refuse the file.
		{"NUL", "A=1\nB=2\x00C=3\n", []string{"A=1", "B=2"}, true},
		// A key or value that is not valid UTF-8 fails the whole file...
		{"invalid UTF-8 value", "A=1\nB=\xff\nC=3\n", []string{"A=1", "B=\xff", "C=3"}, true},
		{"invalid UTF-8 key", "\xffB=1\n", []string{"\xffB=1"}, true},
		// ...and so does a Unicode noncharacter.
		{"noncharacter", "A=\uFDD0\n", []string{"A=\uFDD0"}, true},
		// Only what is pushed is checked: comments and lines without "="
		// may hold anything.
		{"invalid UTF-8 in a comment", "# \xff\n\xff\nA=1\n", []string{"A=1"}, false},
		// An escape decodes to a byte that is then checked.
		{"valid UTF-8", "A=é€\\é\n", []string{"A=é€é"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			entries, refused := scanEnv([]byte(tt.in))
			var got []string
			for _, e := range entries {
				got = append(got, e.key+"="+e.val.String())
				checkSpan(t, []byte(tt.in), e.val)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %q\nwant %q", got, tt.want)
			}
			if (refused != "") != tt.refused {
				t.Errorf("refused = %q, want %v", refused, tt.refused)
			}
		})
	}
}

// TestParseEnvFileRules: what systemd's rules mean for the token
// definitions found (ignored by systemd, or read differently by versions).
func TestParseEnvFileRules(t *testing.T) {
	tok := "K3S_TOKEN='" + srvTok + "'\n"
	tests := []struct {
		name    string
		in      string
		ignored string // part of the Ignored reason, "" for none
		warning string // part of the Warning, "" for none
	}{
		// "export K3S_TOKEN" is not a valid variable name: systemd drops it.
		{"export", "export " + tok, "export", ""},
		// systemd (v240+) loads nothing from a file holding a NUL byte.
		{"NUL after the token", tok + "\x00", "NUL", ""},
		// Nor from a file with a key or value that is not valid UTF-8,
		// wherever it is.
		{"invalid UTF-8 elsewhere", tok + "OTHER=\xc3\n", "UTF-8", ""},
		// systemd before v254 continued a comment ending in a backslash
		// past an LF or a lone CR...
		{"after comment backslash LF", "# c \\\n" + tok, "", "v254"},
		{"after comment backslash CR", "# c \\\r" + tok, "", "v254"},
		// ...but with CR LF the backslash escaped the CR and the LF ended
		// the comment.
		{"after comment backslash CRLF", "# c \\\r\n" + tok, "", ""},
		// A comment line after it was swallowed into that comment, which
		// ended at the comment line's own end: the next line was read.
		{"comment between", "# c \\\n# d\n" + tok, "", ""},
		// An empty line after it ended that comment.
		{"empty line between", "# c \\\n\n" + tok, "", ""},
		// Before v241 a backslash in single quotes was an escape, and in
		// double quotes escaped any character.
		{"backslash in single quotes", "K3S_TOKEN='K10" + oldHash + "::server:a\\b'\n", "", "v241"},
		{"other escape in double quotes", "K3S_TOKEN=\"K10" + oldHash + "::server:a\\b\"\n", "", "v241"},
		// \" \\ \` \$ in double quotes read the same in every version.
		{"shell escapes in double quotes", "K3S_TOKEN=\"K10" + oldHash + "::server:a\\$b\"\n", "", "POSIX shell"},
		{"install.sh format", tok, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srcs := parseEnvFile("/e", kindEnvFile, []byte(tt.in), "")
			if len(srcs) != 1 {
				t.Fatalf("%d definitions, want 1", len(srcs))
			}
			s := srcs[0]
			if s.Err != nil {
				t.Fatal(s.Err)
			}
			if tt.ignored == "" && s.Ignored != "" || !strings.Contains(s.Ignored, tt.ignored) {
				t.Errorf("Ignored = %q, want %q", s.Ignored, tt.ignored)
			}
			if tt.warning == "" && s.Warning != "" || !strings.Contains(s.Warning, tt.warning) {
				t.Errorf("Warning = %q, want %q", s.Warning, tt.warning)
			}
			// Ignored or not, every definition is still rewritten.
			if _, n, err := rewriteTokenHash(fileEnv, []byte(tt.in), newHash); err != nil || n != 1 {
				t.Errorf("rewrite: n=%d err=%v", n, err)
			}
		})
	}
}
