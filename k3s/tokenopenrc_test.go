package k3s

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fleetcert/fleetcert/internal/installsh"
)

func installScript(role string, args ...string) string {
	svc := "k3s"
	if role == "agent" {
		svc = "k3s-agent"
	}
	return installsh.OpenRC{Role: role, Service: svc, EnvFile: "/etc/rancher/k3s/" + svc + ".env", Args: args}.Text()
}

// shellArgs is what sh makes of a script's command_args: it sources the
// script (install.sh's defines functions and variables only; the files it
// sources are absent in dir) and evals command_args as supervise-daemon.sh
// does, printing one argument per NUL. The redirection is taken by eval.
func shellArgs(t *testing.T, script string) []string {
	t.Helper()
	dir := t.TempDir()
	f := filepath.Join(dir, "svc")
	script = strings.ReplaceAll(script, "/etc/environment", filepath.Join(dir, "none"))
	script = strings.ReplaceAll(script, "/var/log/", dir+"/")
	if err := os.WriteFile(f, []byte(script), 0o600); err != nil {
		t.Fatal(err)
	}
	// p writes to fd 3: eval's redirections take stdout and stderr.
	out, err := exec.Command("sh", "-c", `p() { printf "%s\0" "$@" >&3; }; . "$1"; eval p $command_args 3>&1`, "sh", f).Output()
	if err != nil {
		t.Fatalf("sh: %v", err)
	}
	return strings.Split(strings.TrimSuffix(string(out), "\x00"), "\x00")
}

// TestCommandArgsAsShellReadsThem: on install.sh's exact text, and on
// hand-edited forms, the scanner's words are sh's, but for words with an
// expansion, which it marks instead of guessing.
func TestCommandArgsAsShellReadsThem(t *testing.T) {
	cases := map[string]string{
		"install.sh": installScript("agent", "--server", "https://10.0.0.1:6443", "--token", nodeTok,
			"--node-label", `say="it's so"`, "--node-name", "edge 1", "--kubelet-arg", "a=$HOME", "--with-node-id"),
		"install.sh, no args":  installScript("server"),
		"one long line":        "command=/usr/local/bin/k3s\ncommand_args=\"server --token " + nodeTok + " --cluster-init >>/var/log/k3s.log 2>&1\"\n",
		"double quotes inside": "command=\"/usr/local/bin/k3s\"\ncommand_args=\"server --token \\\"" + nodeTok + "\\\" --node-label \\\"a=b c\\\"\"\n",
		"single-quoted":        "command=/usr/local/bin/k3s\ncommand_args='agent -t " + nodeTok + " --server=https://s:6443 > /var/log/k3s.log'\n",
		"escaped dollar":       "command=/usr/local/bin/k3s\ncommand_args=\"agent --token=" + nodeTok + " --node-label=x=\\$HOME\"  # comment\n",
	}
	for name, script := range cases {
		t.Run(name, func(t *testing.T) {
			content := []byte(script)
			v, _, err := assignedValue(content, bytes.Index(content, []byte("command_args="))+len("command_args="))
			if err != nil {
				t.Fatal(err)
			}
			words, err := evalWords(v)
			if err != nil {
				t.Fatal(err)
			}
			want := shellArgs(t, script)
			if len(words) != len(want) {
				t.Fatalf("scanner read %d words, sh %d: %q", len(words), len(want), want)
			}
			for i, w := range words {
				if !w.dollar && w.String() != want[i] {
					t.Errorf("word %d: scanner %q, sh %q", i, w.String(), want[i])
				}
			}
			if err := errorsOf(parseServiceScript("/etc/init.d/k3s", content)); err != "" {
				t.Errorf("problems: %s", err)
			}
		})
	}
}

func errorsOf(sc serviceScript) string {
	var msgs []string
	for _, s := range append(sc.args, sc.problems...) {
		if s.Err != nil {
			msgs = append(msgs, s.Err.Error())
		}
	}
	return strings.Join(msgs, "; ")
}

func TestServiceScriptTokens(t *testing.T) {
	script := installScript("agent", "--server", "https://10.0.0.1:6443", "--token", nodeTok, "--node-label", "a=$HOME")
	sc := parseServiceScript("/etc/init.d/k3s-agent", []byte(script))
	if sc.binary != "/usr/local/bin/k3s" {
		t.Errorf("binary = %q", sc.binary)
	}
	var tok TokenSource
	for _, s := range sc.args {
		if s.Key == "--token" {
			tok = s
		}
	}
	if tok.Value != nodeTok || tok.Err != nil || tok.Kind != kindCommandArgs {
		t.Fatalf("token source = %v (err %v)", tok, tok.Err)
	}
	if line := strings.Split(script, "\n")[tok.Line-1]; !strings.Contains(line, nodeTok) {
		t.Errorf("line %d is %q", tok.Line, line)
	}
	want := []sourcedFile{{"/etc/environment", true}, {"/etc/rancher/k3s/k3s-agent.env", true}}
	if len(sc.sourced) != 2 || sc.sourced[0] != want[0] || sc.sourced[1] != want[1] {
		t.Errorf("sourced = %+v, want %+v", sc.sourced, want)
	}
}

// TestServiceScriptRefusals: what fleetcert cannot follow is a problem
// naming why, never a guess.
func TestServiceScriptRefusals(t *testing.T) {
	base := installScript("server", "--token", srvTok)
	for name, tc := range map[string]struct{ script, want string }{
		"dollar in the token":  {installScript("server", "--token", "K10"+oldHash+"::server:pa$word"), "takes its value from a variable"},
		"appended":             {base + "command_args=\"$command_args --debug\"\n", "command_args"},
		"set in a function":    {strings.Replace(base, "rm -f /tmp/k3s.*", "rm -f /tmp/k3s.*; command_args=x", 1), "more than once"},
		"a second command":     {strings.Replace(base, ">>/var/log", "; rm -rf / >>/var/log", 1), `';'`},
		"wrapper":              {strings.Replace(base, `command="/usr/local/bin/k3s"`, `command="/bin/sh"`, 1), "not k3s"},
		"exports a token":      {base + "export K3S_TOKEN=" + srvTok + "\n", "K3S_TOKEN"},
		"sources a variable":   {base + ". $HOME/k3s.env\n", "plain absolute path"},
		"no command_args":      {strings.Replace(base, "command_args=", "args=", 1), "no command_args"},
		"command substitution": {strings.Replace(base, "'--token'", "$(cat /etc/k3s-token-flag)", 1), "outside quotes"},
	} {
		t.Run(name, func(t *testing.T) {
			sc := parseServiceScript("/etc/init.d/k3s", []byte(tc.script))
			got := errorsOf(sc)
			if !strings.Contains(got, tc.want) {
				t.Errorf("problems %q, want one containing %q", got, tc.want)
			}
		})
	}
}

// openrcNode is an install.sh OpenRC agent: token in command_args, the
// env file and /etc/environment as given.
func openrcNode(script, envFile, etcEnv string) NodeFiles {
	files := map[string][]byte{"/etc/init.d/k3s-agent": []byte(script)}
	if envFile != "" {
		files["/etc/rancher/k3s/k3s-agent.env"] = []byte(envFile)
	}
	if etcEnv != "" {
		files["/etc/environment"] = []byte(etcEnv)
	}
	return NodeFiles{Init: InitOpenRC, Files: files}
}

func TestOpenRCEffectiveToken(t *testing.T) {
	l := Layout{Role: RoleAgent, Init: InitOpenRC}
	envTok := "K10" + oldHash + "::node:fromenv"
	etcTok := "K10" + oldHash + "::node:frometc"
	cases := []struct {
		name string
		in   NodeFiles
		want string // Key of the effective definition
		kind SourceKind
	}{
		{"command_args beats the env file", openrcNode(installScript("agent", "--token", nodeTok), "K3S_TOKEN='"+envTok+"'\n", ""), "--token", kindCommandArgs},
		{"env file beats /etc/environment", openrcNode(installScript("agent"), "K3S_TOKEN='"+envTok+"'\n", "K3S_TOKEN="+etcTok+"\n"), "K3S_TOKEN", kindOpenRCEnvFile},
		{"/etc/environment alone", openrcNode(installScript("agent"), "", "export K3S_TOKEN="+etcTok+"\n"), "K3S_TOKEN", kindEtcEnvironment},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			sc := scanTokens(l, tc.in)
			if len(sc.Pending) > 0 {
				t.Fatalf("pending %v", sc.Pending)
			}
			for _, s := range sc.Sources {
				if s.Err != nil {
					t.Fatalf("problem: %v", s)
				}
			}
			got, err := effectiveToken(sc.Sources, RoleAgent)
			if err != nil || got.Key != tc.want || got.Kind != tc.kind {
				t.Errorf("effective = %v %s (err %v), want %s %s", got, got.Kind, err, tc.want, tc.kind)
			}
		})
	}
}

func TestOpenRCEnvFileNotSourced(t *testing.T) {
	script := strings.Replace(installScript("agent"), "if [ -f /etc/rancher/k3s/k3s-agent.env ]; then . /etc/rancher/k3s/k3s-agent.env; fi\n", "", 1)
	sc := scanTokens(Layout{Role: RoleAgent, Init: InitOpenRC}, openrcNode(script, "K3S_TOKEN='"+nodeTok+"'\n", ""))
	var found bool
	for _, s := range sc.Sources {
		if s.File == "/etc/rancher/k3s/k3s-agent.env" {
			found = true
			if !strings.Contains(s.Ignored, "not sourced") {
				t.Errorf("env file source not marked ignored: %q", s.Ignored)
			}
		}
	}
	if !found {
		t.Fatal("the env file's token was not found")
	}
}

func TestOpenRCShellEnvRefusesWhatShReadsOtherwise(t *testing.T) {
	for _, line := range []string{
		"K3S_TOKEN=$(cat /etc/token)\n",
		"K3S_TOKEN=" + nodeTok + "; echo hi\n",
		`K3S_TOKEN="` + nodeTok + `$x"` + "\n",
	} {
		srcs := parseShellEnv("/etc/rancher/k3s/k3s.env", kindOpenRCEnvFile, []byte(line), true, "")
		if len(srcs) == 0 || srcs[0].Err == nil {
			t.Errorf("%q: accepted %v", line, srcs)
		}
	}
	srcs := parseShellEnv("/etc/conf.d/k3s", kindOpenRCEnvFile, []byte("K3S_TOKEN='"+nodeTok+"'\n"), false, "")
	if len(srcs) != 1 || srcs[0].Ignored == "" {
		t.Errorf("an unexported assignment counts: %v", srcs)
	}
}

// TestOpenRCRewriteChangesOnlyHashes: the whole node, as install.sh left
// it with tokens in command_args and the env file, is rewritten byte for
// byte but for the hashes, and sh then reads the new token.
func TestOpenRCRewriteChangesOnlyHashes(t *testing.T) {
	script := installScript("agent", "--server", "https://10.0.0.1:6443", "--token", nodeTok, "--node-label", `q="x y"`)
	env := installsh.EnvFile(map[string]string{"K3S_TOKEN": "K10" + oldHash + "::node:it's", "K3S_URL": "https://10.0.0.1:6443"})
	in := openrcNode(script, env, "")
	plan, err := PlanTokenRewrites(Layout{Role: RoleAgent, Init: InitOpenRC}, in, RewriteOptions{NewHash: newHash, OldHashes: []string{oldHash}})
	if err != nil {
		t.Fatal(err)
	}
	if len(plan) != 2 {
		t.Fatalf("%d files rewritten, want 2", len(plan))
	}
	for _, r := range plan {
		old := in.Files[r.Path]
		if want := bytes.ReplaceAll(old, []byte(oldHash), []byte(newHash)); !bytes.Equal(r.New, want) {
			t.Errorf("%s: rewrite differs from replacing the hash:\n%s", r.Path, r.New)
		}
		if r.Path == "/etc/init.d/k3s-agent" {
			args := shellArgs(t, string(r.New))
			if args[4] != strings.Replace(nodeTok, oldHash, newHash, 1) {
				t.Errorf("sh reads the token as %q", args[4])
			}
		}
	}
}

// FuzzServiceScript and FuzzShellEnv hold the OpenRC readers to the
// promise of the other scanners (see checkOldHashRewrite): no panic, and
// rewriteFile either refuses or changes exactly the hash characters of
// the tokens pinning the old hash. The reference reader is deliberately
// blunt: after a rewrite, no line that is not a comment may still hold
// K10<old hash>:: anywhere.
func FuzzServiceScript(f *testing.F) {
	for _, s := range []string{
		installScript("agent", "--server", "https://10.0.0.1:6443", "--token", nodeTok, "--node-label", `a="b c"`),
		installScript("server", "--token="+srvTok, "--agent-token", nodeTok),
		installScript("server", "-t", "K10"+oldHash+"::server:it's"),
		"command=/usr/local/bin/k3s\ncommand_args=\"server --token " + nodeTok + " >>/var/log/k3s.log 2>&1\"\n",
		"command=/usr/local/bin/k3s\ncommand_args='agent -t " + nodeTok + "'\n# command_args=\"agent -t " + nodeTok + "\"\n",
		"command=/usr/local/bin/k3s\ncommand_args=\"agent $X --token " + nodeTok + "\"\n",
		"command=/usr/local/bin/k3s\ncommand_args=\"agent '--token' '" + nodeTok + "' ; true\"\n",
		"",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		sc := parseServiceScript("/etc/init.d/k3s", in)
		for _, s := range sc.args {
			if s.Err == nil && s.hashOff >= 0 && (s.hashOff+64 > len(in) || !isHex(string(in[s.hashOff:s.hashOff+64]))) {
				t.Fatalf("hash offset %d does not hold a hash", s.hashOff)
			}
		}
		checkOldHashRewrite(t, fileServiceScript, in, secureTokensOutsideComments)
	})
}

func FuzzShellEnv(f *testing.F) {
	for _, s := range []string{
		installsh.EnvFile(map[string]string{"K3S_TOKEN": "K10" + oldHash + "::node:it's", "K3S_URL": "https://s:6443"}),
		"export K3S_TOKEN=" + nodeTok + "\nPATH=/usr/bin\n",
		"K3S_TOKEN=\"" + nodeTok + "\" # set by hand\n",
		"K3S_TOKEN=" + nodeTok + "; K3S_AGENT_TOKEN=" + nodeTok + "\n",
		"K3S_TOKEN=$(cat /etc/t)\nK3S_TOKEN_FILE=/etc/t\n",
		"",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		parseShellEnv("/etc/rancher/k3s/k3s.env", kindOpenRCEnvFile, in, true, "")
		checkOldHashRewrite(t, fileShellEnv, in, secureTokensOutsideComments)
	})
}

// secureTokensOutsideComments returns, for every line not starting with
// #, the text from each K10 on.
func secureTokensOutsideComments(b []byte) []string {
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(strings.TrimLeft(line, " \t"), "#") {
			continue
		}
		for i := strings.Index(line, "K10"); i >= 0; {
			out = append(out, line[i:])
			j := strings.Index(line[i+3:], "K10")
			if j < 0 {
				break
			}
			i += 3 + j
		}
	}
	return out
}
