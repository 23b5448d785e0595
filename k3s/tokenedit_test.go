package k3s

import (
	"bytes"
	"strings"
	"testing"
)

// rewriteTokenHash is rewriteFile for tests about the content alone: the
// new content, with the CA hash of every secure token replaced by newHash,
// and how many it changed.
func rewriteTokenHash(kind FileKind, content []byte, newHash string) ([]byte, int, error) {
	r, err := rewriteFile(kind, "", content, RewriteOptions{NewHash: newHash})
	if err != nil {
		return content, 0, err
	}
	return r.New, len(r.Rewritten), nil
}

// TestRewriteFormats rewrites every supported format and checks that the
// result is the input with each pinned old hash replaced and nothing else:
// exactly 64 changed bytes per secure token, credentials, quoting, comments
// and line endings untouched.
func TestRewriteFormats(t *testing.T) {
	tests := []struct {
		name    string
		kind    FileKind
		content string
		changed int
		skipped int
	}{
		{"install.sh env file", fileEnv, "K3S_TOKEN='" + srvTok + "'\nK3S_URL='https://10.0.0.1:6443'\n", 1, 0},
		{"bash double quotes", fileEnv, `K3S_TOKEN="K10` + oldHash + `::server:q\"d\\b\$x"` + "\n", 1, 0},
		{"env quote written as '\\''", fileEnv, "K3S_TOKEN='K10" + oldHash + "::server:it'\\''s'\n", 1, 0},
		{"env CRLF, comments, no final newline", fileDistroEnv, "# K3S_TOKEN=K10" + oldHash + "::server:old\r\nK3S_TOKEN=" + srvTok + "\r\nK3S_AGENT_TOKEN=" + nodeTok, 2, 0},
		{"env export line (ignored by systemd, kept consistent)", fileEnv, "export K3S_TOKEN=\"" + srvTok + "\"\n", 1, 0},
		{"env short token untouched", fileEnv, "K3S_TOKEN=" + shortTok + "\n", 0, 1},
		{"unit flag and value lines", fileUnit, installUnit("--token", srvTokU, "--agent-token", nodeTok), 2, 0},
		{"unit --token=", fileUnit, installUnit("--token=" + srvTok), 1, 0},
		{"unit '\\'' in value", fileUnit, installUnit("-t", "K10"+oldHash+"::server:it's"), 1, 0},
		{"unit unquoted, CRLF", fileUnit, "[Service]\r\nExecStart=/usr/local/bin/k3s agent \\\r\n  --token " + nodeTok + " \\\r\n  --server https://s:6443\r\n", 1, 0},
		{"drop-in Environment= and ExecStart override", fileUnitDropIn, "[Service]\nEnvironment=\"K3S_TOKEN=" + srvTok + "\"\nExecStart=\nExecStart=/usr/local/bin/k3s server -t " + bootTok + "\n", 2, 0},
		{"config plain, quoted, comments, CRLF", fileConfig, "# token: K10" + oldHash + "::server:commented\r\nwrite-kubeconfig-mode: \"0644\"\r\ntoken: " + srvTok + " # join\r\nagent-token: \"" + nodeTok + "\"\r\ncluster-init: true\r\n", 2, 0},
		{"config single quotes with doubled quote", fileConfigDropIn, "agent-token: 'K10" + oldHash + "::node:it''s'\n", 1, 0},
		{"config bootstrap token", fileConfigDropIn, "token: " + bootTok + "\n", 1, 0},
		{"config short token untouched", fileConfig, "token: " + shortTok + "\n", 0, 1},
		{"token file with newline", fileToken, srvTok + "\n", 1, 0},
		{"token file without newline", fileToken, srvTok, 1, 0},
		{"token file CRLF and blanks", fileToken, "  " + srvTok + "\r\n\r\n", 1, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := rewriteFile(tt.kind, "/f", []byte(tt.content), RewriteOptions{NewHash: newHash})
			if err != nil {
				t.Fatal(err)
			}
			if len(r.Rewritten) != tt.changed || len(r.Skipped) != tt.skipped {
				t.Fatalf("rewritten %d skipped %d, want %d and %d", len(r.Rewritten), len(r.Skipped), tt.changed, tt.skipped)
			}
			want := replaceDefinedHashes(tt.content, tt.changed)
			if string(r.New) != want {
				t.Errorf("output\n%q\nwant\n%q", r.New, want)
			}
			// Exactly the 64 hash bytes of each token may differ (hex
			// digits the two hashes share stay equal).
			hashes := 0
			for i := 0; i < len(r.Old); i++ {
				if r.Old[i] != r.New[i] {
					s := hashStart(r.Old, r.New, i)
					if s < 0 {
						t.Fatalf("byte %d changed outside a CA hash", i)
					}
					hashes++
					i = s + 63
				}
			}
			if hashes != tt.changed {
				t.Errorf("%d hash runs changed, want %d", hashes, tt.changed)
			}
			// Idempotent: the same hash again changes nothing.
			again, n, err := rewriteTokenHash(tt.kind, r.New, newHash)
			if err != nil || n != 0 || !bytes.Equal(again, r.New) {
				t.Errorf("second rewrite: n=%d err=%v changed=%v", n, err, !bytes.Equal(again, r.New))
			}
		})
	}
}

// replaceDefinedHashes is content with the old hash replaced in the last
// n definitions, i.e. not in comments, which the tests put first.
func replaceDefinedHashes(content string, n int) string {
	if n == 0 {
		return content
	}
	total := strings.Count(content, oldHash)
	skip := total - n
	var b strings.Builder
	for i := 0; ; i++ {
		j := strings.Index(content, oldHash)
		if j < 0 {
			b.WriteString(content)
			return b.String()
		}
		b.WriteString(content[:j])
		if i < skip {
			b.WriteString(oldHash)
		} else {
			b.WriteString(newHash)
		}
		content = content[j+len(oldHash):]
	}
}

// TestRewriteOldHashesGuard: with OldHashes only tokens pinning one of them
// change; a token pinning an unrelated CA is reported, not rewritten.
func TestRewriteOldHashesGuard(t *testing.T) {
	foreign := "K10" + otherHash + "::server:" + pwColon
	content := "K3S_TOKEN='" + srvTok + "'\nK3S_AGENT_TOKEN='" + foreign + "'\nK3S_TOKEN_FILE=/x\n"
	r, err := rewriteFile(fileEnv, "/e", []byte(content), RewriteOptions{NewHash: newHash, OldHashes: []string{oldHash}})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Rewritten) != 1 || r.Rewritten[0].Key != "K3S_TOKEN" {
		t.Errorf("rewritten = %v", r.Rewritten)
	}
	if len(r.Skipped) != 1 || r.Skipped[0].Reason != SkipForeign || r.Skipped[0].Source.Key != "K3S_AGENT_TOKEN" {
		t.Errorf("skipped = %+v", r.Skipped)
	}
	if !strings.Contains(string(r.New), foreign) || strings.Contains(string(r.New), srvTok) {
		t.Errorf("wrong token rewritten:\n%s", r.New)
	}
	r2, err := rewriteFile(fileEnv, "/e", r.New, RewriteOptions{NewHash: newHash, OldHashes: []string{oldHash}})
	if err != nil || r2.Changed() || r2.Skipped[0].Reason != SkipCurrent {
		t.Errorf("rerun: %v %+v", err, r2.Skipped)
	}
}

func TestRewriteRejectsBadNewHash(t *testing.T) {
	for _, h := range []string{"", "abc", strings.ToUpper(newHash), strings.Repeat("g", 64)} {
		if _, _, err := rewriteTokenHash(fileEnv, []byte("K3S_TOKEN="+srvTok), h); err == nil {
			t.Errorf("hash %q accepted", h)
		}
	}
}

// TestPlanTokenRewrites: a whole node, every place at once; a problem in
// any file refuses the whole plan.
func TestPlanTokenRewrites(t *testing.T) {
	l := Layout{}
	files := map[string][]byte{
		l.UnitFile():                        []byte(installUnit("--token", srvTokU, "--token-file=/etc/k3s/token")),
		l.EnvFile():                         []byte("K3S_TOKEN='" + srvTok + "'\n"),
		"/etc/default/k3s":                  []byte("K3S_AGENT_TOKEN=" + shortTok + "\n"),
		l.Config():                          []byte("token: " + srvTok + "\n"),
		l.configDropInDir() + "/50-a.yaml":  []byte("agent-token: " + nodeTok + "\n"),
		l.UnitDropInDir() + "/10-env.conf":  []byte("[Service]\nEnvironment=K3S_TOKEN=" + srvTok + "\n"),
		l.UnitDropInDir() + "/README":       []byte("token " + srvTok + "\n"),
		"/etc/k3s/token":                    []byte(srvTok + "\n"),
		l.ServerToken():                     []byte(srvTok + "\n"),
		"/etc/rancher/k3s/config.yaml.d/x":  []byte("token: " + srvTok + "\n"),
		"/etc/rancher/k3s/config.yaml.d/.y": nil,
	}
	plan, err := PlanTokenRewrites(l, NodeFiles{Files: files}, RewriteOptions{NewHash: newHash, OldHashes: []string{oldHash}})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for _, p := range plan {
		got[p.Path] = len(p.Rewritten)
		if p.Kind.ReloadsUnit() != (p.Path == l.UnitFile() || strings.HasPrefix(p.Path, l.UnitDropInDir())) {
			t.Errorf("%s: ReloadsUnit wrong", p.Path)
		}
	}
	want := map[string]int{
		l.UnitFile(): 1, l.EnvFile(): 1, "/etc/default/k3s": 0, l.Config(): 1,
		l.configDropInDir() + "/50-a.yaml": 1, l.UnitDropInDir() + "/10-env.conf": 1, "/etc/k3s/token": 1,
	}
	if len(got) != len(want) {
		t.Errorf("plan covers %v, want %v", got, want)
	}
	for p, n := range want {
		if got[p] != n {
			t.Errorf("%s: %d rewritten, want %d", p, got[p], n)
		}
	}

	files[l.configDropInDir()+"/90-bad.yml"] = []byte("token: |\n  " + srvTok + "\n")
	if _, err := PlanTokenRewrites(l, NodeFiles{Files: files}, RewriteOptions{NewHash: newHash}); err == nil || !strings.Contains(err.Error(), "90-bad.yml") {
		t.Errorf("a bad drop-in must refuse the plan: %v", err)
	}
}

// FuzzRewriteEnvFile: whatever the file, a rewrite either refuses and
// returns the input, or changes only CA hashes (64-byte runs right after a
// K10, now holding the new hash) and is idempotent.
func FuzzRewriteEnvFile(f *testing.F) {
	seeds := []string{
		"K3S_TOKEN='" + srvTok + "'\n",
		"K3S_TOKEN=\"" + srvTok + "\"\r\nK3S_AGENT_TOKEN=" + nodeTok + "\n",
		"export K3S_TOKEN=" + srvTok + "\n# K3S_TOKEN=K10" + oldHash + "::x:y\n",
		"K3S_TOKEN='K10" + oldHash + "::server:it'\\''s'\n",
		"K3S_TOKEN=K10" + oldHash + "::server:a\\\nb\n",
		"A='multi\nK3S_TOKEN=" + srvTok + "'\nK3S_TOKEN=" + srvTok,
		"K3S_TOKEN='K10'\"" + oldHash + "::server:x\"\n",
		"#comment \\\nK3S_TOKEN=" + srvTok + "\n",
		"K3S_TOKEN_FILE=/etc/k3s/token\nK3S_TOKEN=" + shortTok + "\n",
		"K3S_TOKEN=" + srvTok + " trailing words # not a comment\n",
		"",
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) { checkRewriteOnlyHashes(t, fileEnv, in) })
}

// FuzzRewriteUnit and FuzzRewriteConfig hold the unit and config parsers
// to the same promise.
func FuzzRewriteUnit(f *testing.F) {
	for _, s := range []string{
		installUnit("--token", srvTokU),
		installUnit("--token="+srvTok, "-t", "K10"+oldHash+"::server:it's"),
		"[Service]\r\nEnvironment=\"K3S_TOKEN=" + srvTok + "\" X=1\r\nExecStart=\r\nExecStart=/k3s agent \\\r\n# c\r\n -t " + nodeTok + "\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) { checkRewriteOnlyHashes(t, fileUnit, in) })
}

func FuzzRewriteConfig(f *testing.F) {
	for _, s := range []string{
		"# c\ntoken: " + srvTok + " # x\nagent-token: '" + nodeTok + "'\n",
		"token: \"" + srvTok + "\"\r\ntoken-file: /x\r\n",
		"a:\n  - b\ntoken+: " + bootTok + "\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) { checkRewriteOnlyHashes(t, fileConfig, in) })
}

// checkRewriteOnlyHashes: a rewrite either refuses and returns the input,
// or changes only CA hashes (64-byte runs right after a K10 and before a
// "::", now holding the new hash), and a second rewrite changes nothing.
func checkRewriteOnlyHashes(t *testing.T, kind FileKind, in []byte) {
	orig := bytes.Clone(in)
	out, n, err := rewriteTokenHash(kind, in, newHash)
	if !bytes.Equal(in, orig) {
		t.Fatal("input modified")
	}
	if err != nil {
		if !bytes.Equal(out, in) || n != 0 {
			t.Fatal("refused but changed")
		}
		return
	}
	if len(out) != len(in) {
		t.Fatal("length changed")
	}
	runs := 0
	for i := 0; i < len(in); i++ {
		if in[i] == out[i] {
			continue
		}
		s := hashStart(in, out, i)
		if s < 0 {
			t.Fatalf("byte %d changed outside a CA hash", i)
		}
		runs++
		i = s + 63
	}
	if runs > n {
		t.Fatalf("%d hashes changed, %d reported", runs, n)
	}
	again, n2, err := rewriteTokenHash(kind, out, newHash)
	if err != nil || n2 != 0 || !bytes.Equal(again, out) {
		t.Fatalf("not idempotent: n=%d err=%v", n2, err)
	}
}

// hashStart finds the start of the rewritten hash covering byte i: a
// position s <= i < s+64 with "K10" before it in the input, the new hash
// there in the output and "::" after it.
func hashStart(in, out []byte, i int) int {
	for s := i; s >= 3 && s > i-64; s-- {
		if s+66 <= len(in) && string(in[s-3:s]) == "K10" && string(out[s:s+64]) == newHash && string(in[s+64:s+66]) == "::" {
			return s
		}
	}
	return -1
}
