package k3s

import (
	"reflect"
	"strings"
	"testing"
)

// TestParseConfigRules checks parseConfig against how k3s reads a config
// file: it unmarshals the first YAML document only, into an ordered list
// of key/value pairs. Each comment states the rule.
func TestParseConfigRules(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    []string // "key=value" of the definitions found, in order
		errText string   // part of the refusal, "" when the file is read
	}{
		// "..." ends the first document; only comments and blank lines
		// follow: nothing is lost, nothing to refuse.
		{"document end marker", "token: " + srvTok + "\n...\n", []string{"token=" + srvTok}, ""},
		{"document end marker, comments after", "token: " + srvTok + "\n... # end\n\n# more\n", []string{"token=" + srvTok}, ""},
		// An explicit start marker, then an end marker.
		{"start and end markers", "---\ntoken: " + srvTok + "\n...\n", []string{"token=" + srvTok}, ""},
		// A start marker after the document with nothing in the next
		// document is no content either.
		{"empty second document", "token: " + srvTok + "\n---\n# nothing\n", []string{"token=" + srvTok}, ""},
		{"end then empty document", "token: " + srvTok + "\n...\n---\n...\n", []string{"token=" + srvTok}, ""},
		// A directive may precede the first document's start.
		{"directive", "%YAML 1.1\n---\ntoken: " + srvTok + "\n", []string{"token=" + srvTok}, ""},
		// "---" or "..." only mark documents at the start of a line and
		// followed by a blank or the line end.
		{"not a marker", "a: ---x\nb: ...\ntoken: " + srvTok + "\n", []string{"token=" + srvTok}, ""},
		// k3s never reads a later document: content there is refused,
		// whether it follows "...", "---" or an empty first document.
		{"content after the end", "token: " + srvTok + "\n...\nfoo: bar\n", nil, "second YAML document"},
		{"content after end on the marker line", "token: " + srvTok + "\n... foo\n", nil, "second YAML document"},
		{"token in a second document", "a: 1\n---\ntoken: " + srvTok + "\n", nil, "second YAML document"},
		{"token after an empty first document", "---\n---\ntoken: " + srvTok + "\n", nil, "second YAML document"},
		{"token after an empty ended document", "---\n...\ntoken: " + srvTok + "\n", nil, "second YAML document"},
		// A key given twice is no error to k3s: both definitions are
		// found, in file order (the last one is the value k3s uses).
		{"duplicate key", "token: " + shortTok + "\nother: 1\ntoken: " + srvTok + "\n", []string{"token=" + shortTok, "token=" + srvTok}, ""},
		{"duplicate key, both secure", "token: " + srvTok + "\ntoken: '" + nodeTok + "'\n", []string{"token=" + srvTok, "token=" + nodeTok}, ""},
		{"key and key+", "token: " + srvTok + "\ntoken+: " + nodeTok + "\n", []string{"token=" + srvTok, "token+=" + nodeTok}, ""},
		// k3s turns a one-letter key k into the flag -k, and "t" is the
		// token flag's alias: "t:" and "t+:" set the token.
		{"t alias", "t: " + srvTok + "\nt+: " + shortTok + "\n", []string{"t=" + srvTok, "t+=" + shortTok}, ""},
		// YAML ends a line at CR too: after a comment ended by a CR, "t:"
		// is a top-level key k3s reads, and the line-based reading must
		// not pass it by.
		{"key after a CR", "# c\rt: " + srvTok + "\n", nil, "YAML form"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srcs := parseConfig("/c", kindConfigFile, []byte(tt.in))
			var got, errs []string
			for _, s := range srcs {
				if s.Err != nil {
					errs = append(errs, s.Err.Error())
					continue
				}
				got = append(got, s.Key+"="+s.Value)
			}
			if tt.errText == "" {
				if len(errs) > 0 {
					t.Fatalf("refused: %q", errs)
				}
				if !reflect.DeepEqual(got, tt.want) {
					t.Errorf("got  %q\nwant %q", got, tt.want)
				}
				return
			}
			if !strings.Contains(strings.Join(errs, "; "), tt.errText) {
				t.Errorf("errors %q do not mention %q", errs, tt.errText)
			}
		})
	}
}

// TestConfigDuplicateKeyEffectiveAndRewritten: with a key given twice k3s
// uses the last value; both definitions are rewritten.
func TestConfigDuplicateKeyEffectiveAndRewritten(t *testing.T) {
	l := Layout{}
	first := "K10" + oldHash + "::server:first"
	last := "K10" + oldHash + "::server:last"
	content := "token: " + first + "\nwrite-kubeconfig-mode: \"0644\"\ntoken: \"" + last + "\"\n"
	srcs, pending := FindTokenSources(l, map[string][]byte{l.Config(): []byte(content)})
	if len(pending) > 0 {
		t.Fatalf("pending %v", pending)
	}
	eff, err := effectiveToken(srcs, RoleServer)
	if err != nil {
		t.Fatal(err)
	}
	if eff.Value != last || eff.Line != 3 {
		t.Errorf("effective %s, want the last definition (line 3)", eff)
	}
	out, n, err := rewriteTokenHash(fileConfig, []byte(content), newHash)
	if err != nil || n != 2 {
		t.Fatalf("rewrite: n=%d err=%v", n, err)
	}
	if want := strings.ReplaceAll(content, oldHash, newHash); string(out) != want {
		t.Errorf("output\n%s\nwant\n%s", out, want)
	}
}

// TestConfigTokenAlias: "t:" in config.yaml is the token (k3s passes it as
// -t, the alias of --token); a later "t:" beats an earlier "token:".
func TestConfigTokenAlias(t *testing.T) {
	l := Layout{}
	content := "token: " + shortTok + "\nt: " + srvTok + "\n"
	srcs, _ := FindTokenSources(l, map[string][]byte{l.Config(): []byte(content)})
	eff, err := effectiveToken(srcs, RoleServer)
	if err != nil {
		t.Fatal(err)
	}
	if eff.Key != "t" || eff.Value != srvTok {
		t.Errorf("effective %s, want the t: definition", eff)
	}
	out, n, err := rewriteTokenHash(fileConfig, []byte(content), newHash)
	if err != nil || n != 1 || string(out) != strings.ReplaceAll(content, oldHash, newHash) {
		t.Errorf("rewrite: n=%d err=%v\n%s", n, err, out)
	}
}
