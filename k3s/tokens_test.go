package k3s

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/fleetcert/fleetcert/internal/installsh"
)

// Hashes and secrets the tests build files from. The passwords carry the
// characters that break naive parsers: ':' (k3s splits user:password on the
// first one only), quotes, '$', '#', '=', '\' and '%'.
var (
	oldHash   = hexSum("old CA")
	newHash   = hexSum("new CA")
	otherHash = hexSum("unrelated CA")
	pwColon   = `s3cr:et:x$y#z=1%`
	pwUnit    = `s3cr:et:x#z="1"`
	srvTokU   = "K10" + oldHash + "::server:" + pwUnit
	srvTok    = "K10" + oldHash + "::server:" + pwColon
	nodeTok   = "K10" + oldHash + "::node:agentpw"
	bootTok   = "K10" + oldHash + "::abcdef.0123456789abcdef"
	shortTok  = "justashortsecret"
)

// FindTokenSources is ScanTokens for a node known only by its files, as
// install.sh lays them out (no systemd view): what most tests here need.
func FindTokenSources(l Layout, files map[string][]byte) ([]TokenSource, []string) {
	sc := scanTokens(l, NodeFiles{Files: files})
	return sc.Sources, sc.Pending
}

func hexSum(s string) string { return fmt.Sprintf("%x", sha256.Sum256([]byte(s))) }

// installUnit is the server unit install.sh writes (docs/k3s-behaviour.md#install-sh),
// with the given arguments after "server".
func installUnit(args ...string) string {
	return installsh.Unit{Role: "server", EnvFile: "/etc/systemd/system/k3s.service.env", Args: args}.Text()
}

// want is the part of a TokenSource a test checks.
type want struct {
	Kind    SourceKind
	Key     string
	Value   string
	Line    int
	Class   string
	Agent   bool
	Ignored bool
	Warning bool
	Err     bool
}

func got(s TokenSource) want {
	return want{Kind: s.Kind, Key: s.Key, Value: s.Value, Line: s.Line, Class: s.TokenClass(),
		Agent: s.Agent, Ignored: s.Ignored != "", Warning: s.Warning != "", Err: s.Err != nil}
}

func TestParseFileFormats(t *testing.T) {
	tests := []struct {
		name    string
		kind    FileKind
		content string
		want    []want
	}{
		{
			name:    "install.sh env file, dash single quotes",
			kind:    fileEnv,
			content: "K3S_TOKEN='" + srvTok + "'\nK3S_URL='https://10.0.0.1:6443'\nK3S_KUBECONFIG_MODE='644'\n",
			want:    []want{{Kind: kindEnvFile, Key: "K3S_TOKEN", Value: srvTok, Line: 1, Class: "secure"}},
		},
		{
			name:    "bash double quotes with escapes",
			kind:    fileEnv,
			content: `K3S_TOKEN="K10` + oldHash + `::server:q\"d\\b\$x"` + "\n",
			want:    []want{{Kind: kindEnvFile, Key: "K3S_TOKEN", Value: "K10" + oldHash + `::server:q"d\b$x`, Line: 1, Class: "secure", Warning: true}},
		},
		{
			name: "unquoted, comments, blanks, CRLF, agent token, token file",
			kind: fileDistroEnv,
			content: "# written by hand\r\n; another comment\r\n\r\n  K3S_TOKEN = " + srvTok + "  \r\n" +
				"K3S_AGENT_TOKEN=" + nodeTok + "\r\nK3S_TOKEN_FILE=/etc/k3s/token\r\n",
			want: []want{
				{Kind: kindDistroEnvFile, Key: "K3S_TOKEN", Value: srvTok, Line: 4, Class: "secure", Warning: true},
				{Kind: kindDistroEnvFile, Key: "K3S_AGENT_TOKEN", Value: nodeTok, Line: 5, Class: "secure", Agent: true},
				{Kind: kindDistroEnvFile, Key: "K3S_TOKEN_FILE", Value: "/etc/k3s/token", Line: 6, Class: "file"},
			},
		},
		{
			// systemd does not strip "export": the key "export K3S_TOKEN"
			// is not a valid name and the line is dropped.
			name:    "export prefix is ignored by systemd",
			kind:    fileEnv,
			content: "export K3S_TOKEN='" + srvTok + "'\n",
			want:    []want{{Kind: kindEnvFile, Key: "K3S_TOKEN", Value: srvTok, Line: 1, Class: "secure", Ignored: true}},
		},
		{
			// sh reads 'a'\''b' as a'b; systemd as a''b' (a quote ends a
			// piece, then \' and the rest are plain characters).
			name:    "quote written as '\\'' in an env file: systemd's reading",
			kind:    fileEnv,
			content: "K3S_TOKEN='" + "K10" + oldHash + "::server:it'\\''s'\n",
			want:    []want{{Kind: kindEnvFile, Key: "K3S_TOKEN", Value: "K10" + oldHash + "::server:it''s'", Line: 1, Class: "secure", Warning: true}},
		},
		{
			// systemd < v254 continued a comment ending in a backslash.
			name:    "after a comment ending in a backslash",
			kind:    fileEnv,
			content: "# old note \\\nK3S_TOKEN=" + srvTok + "\n",
			want:    []want{{Kind: kindEnvFile, Key: "K3S_TOKEN", Value: srvTok, Line: 2, Class: "secure", Warning: true}},
		},
		{
			name:    "multi-line single-quoted value of another key hides nothing",
			kind:    fileEnv,
			content: "OTHER='line1\nK3S_TOKEN=not-a-definition'\nK3S_TOKEN=" + shortTok + "\n",
			want:    []want{{Kind: kindEnvFile, Key: "K3S_TOKEN", Value: shortTok, Line: 3, Class: "short"}},
		},
		{
			name:    "install.sh ExecStart, flag and value on their own quoted lines",
			kind:    fileUnit,
			content: installUnit("--token", srvTokU, "--disable=traefik"),
			want:    []want{{Kind: kindUnitExecStart, Key: "--token", Value: srvTokU, Line: 33, Class: "secure"}},
		},
		{
			name:    "install.sh ExecStart, --token=value in one quoted word",
			kind:    fileUnit,
			content: installUnit("--token="+srvTok, "--agent-token="+nodeTok),
			want: []want{
				// % starts a unit specifier: systemd would expand it.
				{Kind: kindUnitExecStart, Key: "--token", Value: srvTok, Line: 32, Class: "secure", Warning: true},
				{Kind: kindUnitExecStart, Key: "--agent-token", Value: nodeTok, Line: 33, Class: "secure", Agent: true},
			},
		},
		{
			name:    "install.sh ExecStart, a quote inside the value as '\\''",
			kind:    fileUnit,
			content: installUnit("-t", "K10"+oldHash+"::server:it's"),
			want:    []want{{Kind: kindUnitExecStart, Key: "-t", Value: "K10" + oldHash + "::server:it's", Line: 33, Class: "secure"}},
		},
		{
			name:    "unquoted flags on one line, -t=, --token-file",
			kind:    fileUnit,
			content: "[Service]\nExecStart=/usr/local/bin/k3s agent --server https://s:6443 -t=" + nodeTok + " --token-file /run/k3s-token\n",
			want: []want{
				{Kind: kindUnitExecStart, Key: "-t", Value: nodeTok, Line: 2, Class: "secure"},
				{Kind: kindUnitExecStart, Key: "--token-file", Value: "/run/k3s-token", Line: 2, Class: "file"},
			},
		},
		{
			name: "drop-in: Environment= forms and an ExecStart override",
			kind: fileUnitDropIn,
			content: "[Service]\nEnvironment=\"K3S_TOKEN=" + strings.ReplaceAll(srvTokU, `"`, `\"`) + "\" \"OTHER=1\"\nEnvironment=K3S_AGENT_TOKEN=" + nodeTok +
				"\nExecStart=\nExecStart=/usr/local/bin/k3s server --token " + bootTok + "\n",
			want: []want{
				{Kind: kindUnitEnvironment, Key: "K3S_TOKEN", Value: srvTokU, Line: 2, Class: "secure"},
				{Kind: kindUnitEnvironment, Key: "K3S_AGENT_TOKEN", Value: nodeTok, Line: 3, Class: "secure", Agent: true},
				{Kind: kindUnitDropIn, Key: "--token", Value: bootTok, Line: 5, Class: "secure"},
			},
		},
		{
			name:    "settings outside [Service] and commented lines do not count",
			kind:    fileUnit,
			content: "[Unit]\nExecStart=/usr/local/bin/k3s server --token " + shortTok + "\n[Service]\n# ExecStart=/usr/local/bin/k3s server --token " + srvTok + "\nExecStart=/usr/local/bin/k3s server\n",
		},
		{
			name: "config.yaml: plain, quoted, comments, other keys, CRLF",
			kind: fileConfig,
			content: "# cluster config\r\nwrite-kubeconfig-mode: \"0644\"\r\ntoken: " + srvTok + "   # the join token\r\n" +
				"tls-san:\r\n  - a.example.com\r\nagent-token: '" + strings.ReplaceAll(nodeTok, "agentpw", "it''s") + "'\r\n" +
				"token-file: \"/etc/k3s/token\" # unused\r\nnode-label:\r\n  - token=not-this\r\n",
			want: []want{
				{Kind: kindConfigFile, Key: "token", Value: srvTok, Line: 3, Class: "secure"},
				{Kind: kindConfigFile, Key: "agent-token", Value: strings.ReplaceAll(nodeTok, "agentpw", "it's"), Line: 6, Class: "secure", Agent: true},
				{Kind: kindConfigFile, Key: "token-file", Value: "/etc/k3s/token", Line: 7, Class: "file"},
			},
		},
		{
			name:    "config drop-in: append form, short token, document marker",
			kind:    fileConfigDropIn,
			content: "---\ntoken+: " + shortTok + "\nagent-token-file: /etc/k3s/agent-token\n",
			want: []want{
				{Kind: kindConfigDropIn, Key: "token+", Value: shortTok, Line: 2, Class: "short"},
				{Kind: kindConfigDropIn, Key: "agent-token-file", Value: "/etc/k3s/agent-token", Line: 3, Class: "file", Agent: true},
			},
		},
		{
			name:    "token file with trailing newline",
			kind:    fileToken,
			content: srvTok + "\n",
			want:    []want{{Kind: kindTokenFile, Value: srvTok, Line: 1, Class: "secure"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srcs, err := parseFile(tt.kind, "/f", []byte(tt.content), "k3s")
			if err != nil {
				t.Fatal(err)
			}
			var gotw []want
			for _, s := range srcs {
				gotw = append(gotw, got(s))
			}
			if !reflect.DeepEqual(gotw, tt.want) {
				t.Errorf("got\n%+v\nwant\n%+v", gotw, tt.want)
				for _, s := range srcs {
					t.Logf("%s ignored=%q warning=%q", s, s.Ignored, s.Warning)
				}
			}
		})
	}
}

// TestParseRefuses: definitions fleetcert cannot read unambiguously are
// errors (never guesses), and errors never carry the secret.
func TestParseRefuses(t *testing.T) {
	tests := []struct {
		name    string
		kind    FileKind
		content string
		errText string
	}{
		{"token inside sh -c", fileUnit, "[Service]\nExecStart=/bin/sh -c '/usr/local/bin/k3s server --token " + srvTok + "'\n", "outside any definition"},
		// Only k3s's own arguments are understood: a wrapper is refused.
		{"token-file inside sh -c", fileUnit, "[Service]\nExecStart=/bin/sh -c 'k3s server --token-file=/x'\n", "not k3s server"},
		{"env wrapper", fileUnit, "[Service]\nExecStart=/usr/bin/env K3S_TOKEN=" + srvTok + " /usr/local/bin/k3s server\n", "not k3s server"},
		{"wrapper script", fileUnit, "[Service]\nExecStart=/usr/local/bin/start-k3s.sh\n", "not k3s server"},
		{"k3s without a subcommand", fileUnit, "[Service]\nExecStart=/usr/local/bin/k3s --debug server\n", "not k3s server"},
		{"unbalanced quote", fileUnit, "[Service]\nExecStart=/usr/local/bin/k3s server '--token=" + srvTok + "\n", "unbalanced"},
		{"flag without value", fileUnit, "[Service]\nExecStart=/usr/local/bin/k3s server --token\n", "has no value"},
		{"value from a variable", fileUnit, "[Service]\nExecStart=/usr/local/bin/k3s server --token ${K3S_TOKEN}\n", "variable"},
		{"hash written with an escape", fileUnit, "[Service]\nExecStart=/usr/local/bin/k3s server --token K10\\x61" + oldHash[1:] + "::server:x\n", "unparseable"},
		{"bad hash length", fileEnv, "K3S_TOKEN=K10abc::server:" + pwColon + "\n", "invalid token CA hash length"},
		{"hash not hex", fileEnv, "K3S_TOKEN=K10" + strings.Repeat("z", 64) + "::server:" + pwColon + "\n", "not hexadecimal"},
		{"hash split by quotes", fileEnv, "K3S_TOKEN='K10'\"" + oldHash + "::server:" + pwColon + "\"\n", "not written as plain"},
		{"quote inside the hash", fileEnv, "K3S_TOKEN=K10'" + oldHash + "'::server:" + pwColon + "\n", "invalid token CA hash length"},
		{"block scalar", fileConfig, "token: |\n  " + srvTok + "\n", "YAML form"},
		{"multi-line plain scalar", fileConfig, "token: K10" + oldHash + "::server:\n  " + pwColon + "\n", "YAML form"},
		{"flow mapping", fileConfig, "{token: " + srvTok + "}\n", "outside any definition"},
		{"anchor", fileConfig, "token: &t " + srvTok + "\n", "YAML form"},
		{"unknown double-quote escape", fileConfig, "token: \"K10" + oldHash + "::server:\\x41" + pwColon + "\"\n", "escape"},
		{"nested token key", fileConfig, "other:\n  token: " + srvTok + "\n", "outside any definition"},
		{"not YAML", fileConfig, "token: [" + srvTok + "\n", "not valid YAML"},
		{"merge key", fileConfig, "base: &b {x: 1}\n<<: *b\ntoken: " + shortTok + "\n", "merge key"},
		{"second document", fileConfigDropIn, "a: 1\n---\ntoken: " + srvTok + "\n", "second YAML document"},
		{"relative token file", fileConfig, "token-file: token.txt\n", "not absolute"},
		{"empty token file", fileToken, "\n", "empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, n, err := rewriteTokenHash(tt.kind, []byte(tt.content), newHash)
			if err == nil {
				t.Fatalf("no error; changed %d", n)
			}
			if !strings.Contains(err.Error(), tt.errText) {
				t.Errorf("error %q does not mention %q", err, tt.errText)
			}
			if strings.Contains(err.Error(), pwColon) || strings.Contains(err.Error(), "agentpw") {
				t.Errorf("error leaks the secret: %v", err)
			}
			if string(out) != tt.content || n != 0 {
				t.Errorf("content changed on error")
			}
		})
	}
}

func TestRedactionNeverShowsSecrets(t *testing.T) {
	content := "K3S_TOKEN='" + srvTok + "'\nK3S_AGENT_TOKEN=" + shortTok + "\nK3S_TOKEN_FILE=/etc/t\n"
	srcs, _ := parseFile(fileEnv, "/e", []byte(content), "k3s")
	for _, s := range srcs {
		js, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		for _, text := range []string{s.String(), s.Redacted(), fmt.Sprint(s.Err), fmt.Sprintf("%v %+v %#v", s, s, s),
			fmt.Sprintf("%+v", Skipped{Source: s}), string(js)} {
			if strings.Contains(text, pwColon) || strings.Contains(text, shortTok) {
				t.Errorf("%q shows a secret", text)
			}
		}
	}
	if r := srcs[0].Redacted(); r != "K10"+oldHash+"::server:****" {
		t.Errorf("Redacted = %q", r)
	}
}

func TestCandidates(t *testing.T) {
	l := Layout{Role: RoleAgent}
	wantFiles := []string{"/etc/default/k3s-agent", "/etc/sysconfig/k3s-agent", "/etc/systemd/system/k3s-agent.service.env",
		"/etc/systemd/system/k3s-agent.service", "/etc/rancher/k3s/config.yaml",
		"/etc/conf.d/k3s-agent", "/etc/environment", "/etc/rancher/k3s/k3s-agent.env", "/etc/init.d/k3s-agent"}
	if got := candidateFiles(l); !reflect.DeepEqual(got, wantFiles) {
		t.Errorf("candidateFiles = %q", got)
	}
	dirs := candidateDirs(l)
	if dirs[0].Path != "/etc/systemd/system/k3s-agent.service.d" || dirs[1].Path != "/etc/rancher/k3s/config.yaml.d" {
		t.Errorf("candidateDirs = %+v", dirs)
	}
	for _, tt := range []struct {
		dir  int
		name string
		want bool
	}{
		{0, "10-token.conf", true}, {0, "x.CONF", false}, {0, ".conf", false}, {0, "a.conf.bak", false},
		{1, "10.yaml", true}, {1, "20.YML", true}, {1, "x.Yaml", true}, {1, "x.json", false}, {1, "yaml", false},
	} {
		if got := dirs[tt.dir].matches(tt.name); got != tt.want {
			t.Errorf("dir %d matches(%q) = %v", tt.dir, tt.name, got)
		}
	}
}

// TestFindTokenSourcesTwoRounds: token-file targets are asked for, then
// read; drop-in directories are filtered and ordered.
func TestFindTokenSourcesTwoRounds(t *testing.T) {
	l := Layout{}
	files := map[string][]byte{
		l.UnitFile():                           []byte(installUnit("--token-file", "/etc/k3s/token")),
		l.configDropInDir() + "/20-agent.YAML": []byte("agent-token-file: /etc/k3s/agent-token\n"),
		l.configDropInDir() + "/notes.txt":     []byte("token: " + srvTok + "\n"),
		l.UnitDropInDir() + "/override.conf":   []byte("[Service]\nEnvironment=K3S_TOKEN=" + shortTok + "\n"),
	}
	srcs, pending := FindTokenSources(l, files)
	if want := []string{"/etc/k3s/agent-token", "/etc/k3s/token"}; !reflect.DeepEqual(pending, want) {
		t.Fatalf("pending = %q, want %q", pending, want)
	}
	if len(srcs) != 3 {
		t.Fatalf("got %d sources: %v", len(srcs), srcs)
	}
	files["/etc/k3s/token"] = []byte(srvTok)
	files["/etc/k3s/agent-token"] = nil // read, absent
	srcs, pending = FindTokenSources(l, files)
	if len(pending) != 0 {
		t.Errorf("pending after round two = %q", pending)
	}
	last := srcs[len(srcs)-1]
	if last.Kind != kindTokenFile || last.File != "/etc/k3s/token" || last.Value != srvTok || last.Key != "--token-file" {
		t.Errorf("token file source = %s", last)
	}
	if _, err := effectiveAgentToken(srcs, RoleServer); err == nil || !strings.Contains(err.Error(), "not read or does not exist") {
		t.Errorf("agent token from a missing file: %v", err)
	}
}

// TestUnitEnvironmentFiles: the unit's EnvironmentFile= lines decide which
// env files count and in what order; extra ones are asked for.
func TestUnitEnvironmentFiles(t *testing.T) {
	l := Layout{}
	unit := "[Service]\nEnvironmentFile=-/etc/sysconfig/%N\nEnvironmentFile=/opt/k3s/%n.env\nExecStart=/usr/local/bin/k3s server\n"
	files := map[string][]byte{
		l.UnitFile(): []byte(unit),
		l.EnvFile():  []byte("K3S_TOKEN=" + srvTok + "\n"),
	}
	srcs, pending := FindTokenSources(l, files)
	if !reflect.DeepEqual(pending, []string{"/opt/k3s/k3s.service.env"}) {
		t.Errorf("pending = %q", pending)
	}
	if len(srcs) != 1 || srcs[0].Ignored == "" {
		t.Fatalf("the .env the unit does not load must be found and marked ignored: %v", srcs)
	}
	files["/opt/k3s/k3s.service.env"] = []byte("K3S_TOKEN=" + shortTok + "\n")
	srcs, _ = FindTokenSources(l, files)
	eff, err := effectiveToken(srcs, RoleServer)
	if err != nil || eff.File != "/opt/k3s/k3s.service.env" {
		t.Errorf("effective = %s, %v", eff, err)
	}

	files[l.UnitFile()] = []byte("[Service]\nEnvironmentFile=/etc/k3s/*.env\n")
	srcs, _ = FindTokenSources(l, files)
	if !hasProblem(srcs, "wildcards") {
		t.Errorf("a wildcard EnvironmentFile= must be a problem: %v", srcs)
	}
}

func hasProblem(srcs []TokenSource, text string) bool {
	for _, s := range srcs {
		if s.Err != nil && strings.Contains(s.Err.Error(), text) {
			return true
		}
	}
	return false
}
