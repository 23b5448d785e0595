package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// writeFiles creates files (name -> content) under dir; a name ending in
// "/" is an empty directory.
func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if strings.HasSuffix(name, "/") {
			if err := os.MkdirAll(p, 0o700); err != nil {
				t.Fatal(err)
			}
			continue
		}
		mustWrite(t, p, []byte(content))
	}
}

// TestConfigFileChoice: k3s (pkg/configfilearg) takes the config file from
// $K3S_CONFIG_FILE when it is set, over any --config/-c flag; else from the
// first `--config X`, `--config=X`, `-c X` or `-c=X` (only these spellings:
// it looks before the CLI parser runs); else /etc/rancher/k3s/config.yaml.
// A config file that does not exist (and has no drop-ins) is no error.
func TestConfigFileChoice(t *testing.T) {
	root := t.TempDir()
	def := filepath.Join(root, "config.yaml")
	a := filepath.Join(root, "a.yaml")
	b := filepath.Join(root, "b.yaml")
	dropOnly := filepath.Join(root, "only-dropins.yaml")
	writeFiles(t, root, map[string]string{
		"config.yaml":                   "node-name: from-default\n",
		"a.yaml":                        "node-name: from-a\n",
		"b.yaml":                        "node-name: from-b\n",
		"only-dropins.yaml.d/10-x.yaml": "node-name: from-dropin\n",
	})
	cases := []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"default file", nil, nil, "from-default"},
		{"--config X", nil, []string{"--config", b}, "from-b"},
		{"--config=X", nil, []string{"--config=" + b}, "from-b"},
		{"-c X", nil, []string{"-c", b}, "from-b"},
		{"-c=X", nil, []string{"-c=" + b}, "from-b"},
		{"K3S_CONFIG_FILE beats --config", map[string]string{"K3S_CONFIG_FILE": a}, []string{"--config", b}, "from-a"},
		{"K3S_CONFIG_FILE beats -c=", map[string]string{"K3S_CONFIG_FILE": a}, []string{"-c=" + b}, "from-a"},
		{"K3S_CONFIG_FILE beats the default", map[string]string{"K3S_CONFIG_FILE": a}, nil, "from-a"},
		{"empty K3S_CONFIG_FILE is unset", map[string]string{"K3S_CONFIG_FILE": ""}, []string{"-c", b}, "from-b"},
		{"the first config flag is the one read", nil, []string{"-c", a, "--config", b}, "from-a"},
		{"-config X is not a spelling configfilearg knows", nil, []string{"-config", b}, "from-default"},
		{"missing file: no config, no error", nil, []string{"-c", filepath.Join(root, "nope.yaml")}, "testhost"},
		{"missing file with drop-ins: the drop-ins apply", nil, []string{"-c", dropOnly}, "from-dropin"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e, _, _ := newTestEnv(t, root, c.env)
			e.ConfigFile = def
			cfg, err := loadNodeConfig(context.Background(), e, true, c.args)
			if err != nil {
				t.Fatal(err)
			}
			if cfg.NodeName != c.want {
				t.Fatalf("node-name %q, want %q", cfg.NodeName, c.want)
			}
		})
	}
}

// TestConfigDropInListing: k3s reads <config>.d/ after the main file: the
// entries sorted by byte order (os.ReadDir), directories skipped, a file
// counted when its name ends in .yaml or .yml in any letter case, dotfiles
// included. A later file's value wins. A missing .d directory is none;
// a .d that is not a directory fails the start.
func TestConfigDropInListing(t *testing.T) {
	cases := []struct {
		name    string
		files   map[string]string // under config.yaml.d/; content "token: <name>" unless given
		want    []string
		wantErr bool
	}{
		{"byte order: upper case before lower case", map[string]string{"b.yaml": "", "a.yaml": "", "B.yaml": "", "10.yaml": ""},
			[]string{"10.yaml", "B.yaml", "a.yaml", "b.yaml"}, false},
		{"dotfiles count (and sort first)", map[string]string{".hidden.yaml": "", "00-first.yaml": ""},
			[]string{".hidden.yaml", "00-first.yaml"}, false},
		{"suffix in any case, .yaml or .yml", map[string]string{"a.YAML": "", "b.Yml": "", "c.yml": "", "d.yAmL": ""},
			[]string{"a.YAML", "b.Yml", "c.yml", "d.yAmL"}, false},
		{"other names are ignored", map[string]string{"a.yaml.bak": "", "b.json": "", "c.txt": "", "yaml": "", "d.yaml~": "", "e.yaml": ""},
			[]string{"e.yaml"}, false},
		{"subdirectories are skipped, even named .yaml", map[string]string{"sub.yaml/": "", "sub2.yml/inner.yaml": "", "z.yaml": ""},
			[]string{"z.yaml"}, false},
		{"no drop-in files at all", map[string]string{}, nil, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			main := filepath.Join(root, "config.yaml")
			mustWrite(t, main, []byte("token: main\n"))
			files := map[string]string{}
			for n, v := range c.files {
				if v == "" && !strings.HasSuffix(n, "/") {
					v = "token: " + n + "\n"
				}
				files["config.yaml.d/"+n] = v
			}
			if len(files) == 0 {
				files["config.yaml.d/"] = ""
			}
			writeFiles(t, root, files)
			got, err := configDropIns(main)
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, f := range got {
				if filepath.Dir(f) != main+".d" {
					t.Fatalf("drop-in %s outside %s.d", f, main)
				}
				names = append(names, filepath.Base(f))
			}
			if !slices.Equal(names, c.want) {
				t.Fatalf("drop-ins %q, want %q", names, c.want)
			}
			// The last one listed gives the value.
			e, _, _ := newTestEnv(t, root, nil)
			e.ConfigFile = main
			cfg, err := loadNodeConfig(context.Background(), e, true, nil)
			if err != nil {
				t.Fatal(err)
			}
			want := "main"
			if len(c.want) > 0 {
				want = c.want[len(c.want)-1]
			}
			if cfg.Token != want {
				t.Fatalf("token %q, want %q", cfg.Token, want)
			}
		})
	}

	t.Run("no .d directory", func(t *testing.T) {
		got, err := configDropIns(filepath.Join(t.TempDir(), "config.yaml"))
		if err != nil || got != nil {
			t.Fatalf("got %q, %v", got, err)
		}
	})
	t.Run(".d that is a file fails", func(t *testing.T) {
		root := t.TempDir()
		main := filepath.Join(root, "config.yaml")
		writeFiles(t, root, map[string]string{"config.yaml": "token: x\n", "config.yaml.d": "token: y\n"})
		e, _, _ := newTestEnv(t, root, nil)
		e.ConfigFile = main
		if _, err := loadNodeConfig(context.Background(), e, true, nil); err == nil {
			t.Fatal("a config.yaml.d that is not a directory was accepted")
		}
	})
}

// TestConfigAppend: a `key+:` value is appended to what earlier files (or
// the same file) gave key, instead of replacing it; the values then become
// one --key=value flag each (k3s's configfilearg), so a repeatable flag
// gets them all and a plain string flag like --token the last one. A later
// plain `key:` replaces everything. Flags come out in the order their key
// was first seen, which is why an alias set later can still lose.
func TestConfigAppend(t *testing.T) {
	cases := []struct {
		name      string
		main      string
		dropins   []string // 10.yaml, 20.yaml, ...
		wantArgs  []string
		wantToken string
		labels    string // what a repeatable --node-label gets
	}{
		{"append to an earlier file", "token: a\n", []string{"token+: b\n"}, []string{"--token=a", "--token=b"}, "b", ""},
		{"append within one file", "token: a\ntoken+: b\n", nil, []string{"--token=a", "--token=b"}, "b", ""},
		{"append with nothing before is a set", "", []string{"token+: b\n"}, []string{"--token=b"}, "b", ""},
		{"a later plain key replaces the appended list", "token: a\n", []string{"token+: b\n", "token: c\n"}, []string{"--token=c"}, "c", ""},
		{"lists give one flag per element", "node-label: [p, q]\n", []string{"node-label+: r\n"}, []string{"--node-label=p", "--node-label=q", "--node-label=r"}, "", "p,q,r"},
		{"append a list to a scalar", "node-label: p\n", []string{"node-label+: [q, r]\n"}, []string{"--node-label=p", "--node-label=q", "--node-label=r"}, "", "p,q,r"},
		{"non-string scalars are stringified", "max-pods: 1\n", []string{"max-pods+: 2\n"}, []string{"--max-pods=1", "--max-pods=2"}, "", ""},
		{"one-letter key, one dash", "t: a\n", nil, []string{"-t=a"}, "a", ""},
		{"first-seen key order: an alias seen second beats a later value of the first key", "token: a\n", []string{"t: b\n", "token: c\n"}, []string{"--token=c", "-t=b"}, "b", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			main := filepath.Join(root, "config.yaml")
			if c.main != "" {
				mustWrite(t, main, []byte(c.main))
			}
			for i, d := range c.dropins {
				mustWrite(t, filepath.Join(main+".d", string(rune('1'+i))+"0.yaml"), []byte(d))
			}
			args, err := configArgs(main)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(args, c.wantArgs) {
				t.Fatalf("args %q, want %q", args, c.wantArgs)
			}
			e, _, _ := newTestEnv(t, root, nil)
			if c.wantToken != "" {
				vals, err := resolveFlags(e, serverFlags, args)
				if err != nil {
					t.Fatal(err)
				}
				if vals["token"] != c.wantToken {
					t.Fatalf("token %q, want %q", vals["token"], c.wantToken)
				}
			}
			if c.labels != "" {
				// A repeatable flag keeps every value.
				defs := []flagDef{{Name: "node-label", Multi: true}}
				vals, err := resolveFlags(e, defs, args)
				if err != nil {
					t.Fatal(err)
				}
				if vals["node-label"] != c.labels {
					t.Fatalf("node-label %q", vals["node-label"])
				}
			}
		})
	}
}

// TestConfigYAMLForms: k3s parses each config file with yaml.v2 into a
// MapSlice: a top-level key given twice is no error (the last one wins), a
// "..." document end marker is accepted (anything after it is another
// document and ignored), YAML 1.1 scalars apply (unquoted yes/on are
// booleans, 0123 is octal), and each value is strings.TrimSpace'd (wrangler
// convert.ToString). An empty value still counts: it overrides $K3S_TOKEN.
func TestConfigYAMLForms(t *testing.T) {
	cases := []struct {
		name    string
		config  string
		env     map[string]string
		want    string
		wantErr bool
	}{
		{"duplicate key: last wins", "token: first\ntoken: second\n", nil, "second", false},
		{"duplicate key across other keys", "token: first\nnode-name: n\ntoken: second\n", nil, "second", false},
		{"... end marker", "token: abc\n...\n", nil, "abc", false},
		{"after ... comes another document, ignored", "token: abc\n...\ntoken: other\n", nil, "abc", false},
		{"--- starts another document, ignored", "token: abc\n---\ntoken: other\n", nil, "abc", false},
		{"unquoted yes is a boolean", "token: yes\n", nil, "true", false},
		{"unquoted y is a boolean too", "token: y\n", nil, "true", false},
		{"quoted yes is a string", "token: \"yes\"\n", nil, "yes", false},
		{"leading zero is octal", "token: 0123\n", nil, "83", false},
		{"values are trimmed, U+00A0 too", "token: \"\\u00a0 abc \\t\"\n", nil, "abc", false},
		{"empty value overrides K3S_TOKEN", "token:\n", map[string]string{"K3S_TOKEN": "from-env"}, "", false},
		{"a list gives its last element to a string flag", "token: [a, b]\n", nil, "b", false},
		{"empty file", "", map[string]string{"K3S_TOKEN": "from-env"}, "from-env", false},
		{"not a map", "- token\n", nil, "", true},
		{"invalid YAML", "token: [a\n", nil, "", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			e, _, _ := newTestEnv(t, root, c.env)
			mustWrite(t, e.ConfigFile, []byte(c.config))
			cfg, err := loadNodeConfig(context.Background(), e, true, nil)
			if c.wantErr {
				if err == nil {
					t.Fatalf("accepted, token %q", cfg.Token)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Token != c.want {
				t.Fatalf("token %q, want %q", cfg.Token, c.want)
			}
		})
	}
}

// TestTokenSourcePrecedence: k3s precedence between every pair of token
// sources. An environment variable only sets a flag's default (urfave/cli);
// config values are flags inserted before the real ones, so a real flag
// beats config.yaml.d beats config.yaml beats the environment; and
// --token-file, from wherever, beats --token (k3s reads the file after
// parsing). The same holds for --agent-token(-file) on servers and for
// the other flags (K3S_URL vs server:).
func TestTokenSourcePrecedence(t *testing.T) {
	root := t.TempDir()
	fileA := filepath.Join(root, "token-a")
	fileB := filepath.Join(root, "token-b")
	mustWrite(t, fileA, []byte("from-file-a\n"))
	mustWrite(t, fileB, []byte("from-file-b\n"))

	type setup struct {
		env     map[string]string
		main    string
		dropins map[string]string
		args    []string
	}
	cases := []struct {
		name  string
		agent bool
		s     setup
		field string // token (default), agent-token or server
		want  string
	}{
		{name: "env only", s: setup{env: map[string]string{"K3S_TOKEN": "from-env"}}, want: "from-env"},
		{name: "config.yaml beats K3S_TOKEN", s: setup{env: map[string]string{"K3S_TOKEN": "from-env"}, main: "token: from-config\n"}, want: "from-config"},
		{name: "drop-in beats config.yaml", s: setup{main: "token: from-config\n", dropins: map[string]string{"10-a.yaml": "token: from-a\n"}}, want: "from-a"},
		{name: "later drop-in beats earlier", s: setup{dropins: map[string]string{"10-a.yaml": "token: from-a\n", "20-b.yml": "token: from-b\n"}}, want: "from-b"},
		{name: "CLI beats drop-in", s: setup{dropins: map[string]string{"10-a.yaml": "token: from-a\n"}, args: []string{"--token", "from-cli"}}, want: "from-cli"},
		{name: "CLI beats config.yaml", s: setup{main: "token: from-config\n", args: []string{"-t", "from-cli"}}, want: "from-cli"},
		{name: "CLI beats K3S_TOKEN", s: setup{env: map[string]string{"K3S_TOKEN": "from-env"}, args: []string{"--token=from-cli"}}, want: "from-cli"},
		{name: "last CLI occurrence wins", s: setup{args: []string{"--token", "first", "-t=second"}}, want: "second"},
		{name: "--token-file beats --token (file first)", s: setup{args: []string{"--token-file", fileA, "--token", "from-cli"}}, want: "from-file-a"},
		{name: "--token-file beats --token (token first)", s: setup{args: []string{"--token", "from-cli", "--token-file=" + fileA}}, want: "from-file-a"},
		{name: "K3S_TOKEN_FILE beats --token", s: setup{env: map[string]string{"K3S_TOKEN_FILE": fileA}, args: []string{"--token=from-cli"}}, want: "from-file-a"},
		{name: "K3S_TOKEN_FILE beats K3S_TOKEN", s: setup{env: map[string]string{"K3S_TOKEN_FILE": fileA, "K3S_TOKEN": "from-env"}}, want: "from-file-a"},
		{name: "config token-file beats CLI --token", s: setup{main: "token-file: " + fileA + "\n", args: []string{"--token=from-cli"}}, want: "from-file-a"},
		{name: "config token-file beats K3S_TOKEN_FILE", s: setup{env: map[string]string{"K3S_TOKEN_FILE": fileA}, main: "token-file: " + fileB + "\n"}, want: "from-file-b"},
		{name: "CLI --token-file beats config token-file", s: setup{main: "token-file: " + fileA + "\n", args: []string{"--token-file", fileB}}, want: "from-file-b"},
		{name: "drop-in token-file beats config.yaml token-file", s: setup{main: "token-file: " + fileA + "\n", dropins: map[string]string{"50.yaml": "token-file: " + fileB + "\n"}}, want: "from-file-b"},
		{name: "empty config token-file cancels K3S_TOKEN_FILE", s: setup{env: map[string]string{"K3S_TOKEN_FILE": fileA, "K3S_TOKEN": "from-env"}, main: "token-file: \"\"\n"}, want: "from-env"},
		{name: "empty config token cancels K3S_TOKEN", s: setup{env: map[string]string{"K3S_TOKEN": "from-env"}, main: "token: \"\"\n"}, want: ""},

		{name: "agent-token: config beats K3S_AGENT_TOKEN", field: "agent-token", s: setup{env: map[string]string{"K3S_AGENT_TOKEN": "from-env"}, main: "agent-token: from-config\n"}, want: "from-config"},
		{name: "agent-token: CLI beats config", field: "agent-token", s: setup{main: "agent-token: from-config\n", args: []string{"--agent-token", "from-cli"}}, want: "from-cli"},
		{name: "agent-token: drop-in beats config.yaml", field: "agent-token", s: setup{main: "agent-token: from-config\n", dropins: map[string]string{"10.yaml": "agent-token: from-dropin\n"}}, want: "from-dropin"},
		{name: "agent-token-file beats --agent-token", field: "agent-token", s: setup{args: []string{"--agent-token", "from-cli", "--agent-token-file", fileA}}, want: "from-file-a"},
		{name: "K3S_AGENT_TOKEN_FILE beats --agent-token", field: "agent-token", s: setup{env: map[string]string{"K3S_AGENT_TOKEN_FILE": fileB}, args: []string{"--agent-token=from-cli"}}, want: "from-file-b"},
		{name: "config agent-token-file beats CLI --agent-token", field: "agent-token", s: setup{main: "agent-token-file: " + fileA + "\n", args: []string{"--agent-token=from-cli"}}, want: "from-file-a"},
		{name: "agent-token-file leaves token alone", s: setup{args: []string{"--token", "from-cli", "--agent-token-file", fileA}}, want: "from-cli"},

		{name: "agent: config beats K3S_TOKEN", agent: true, s: setup{env: map[string]string{"K3S_TOKEN": "from-env"}, main: "token: from-config\n"}, want: "from-config"},
		{name: "agent: CLI beats config", agent: true, s: setup{main: "token: from-config\n", args: []string{"--token=from-cli"}}, want: "from-cli"},
		{name: "agent: K3S_TOKEN_FILE beats CLI --token", agent: true, s: setup{env: map[string]string{"K3S_TOKEN_FILE": fileA}, args: []string{"--token=from-cli"}}, want: "from-file-a"},
		{name: "agent: server: in config beats K3S_URL", agent: true, field: "server", s: setup{env: map[string]string{"K3S_URL": "https://env:6443"}, main: "server: https://config:6443\n"}, want: "https://config:6443"},
		{name: "agent: -s beats server: in config", agent: true, field: "server", s: setup{main: "server: https://config:6443\n", args: []string{"-s", "https://cli:6443"}}, want: "https://cli:6443"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			main := filepath.Join(dir, "config.yaml")
			if c.s.main != "" {
				mustWrite(t, main, []byte(c.s.main))
			}
			for n, v := range c.s.dropins {
				mustWrite(t, filepath.Join(main+".d", n), []byte(v))
			}
			e, _, _ := newTestEnv(t, root, c.s.env)
			e.ConfigFile = main
			cfg, err := loadNodeConfig(context.Background(), e, !c.agent, c.s.args)
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]string{"": cfg.Token, "agent-token": cfg.AgentToken, "server": cfg.ServerURL}[c.field]
			if got != c.want {
				t.Fatalf("%s %q, want %q", c.field, got, c.want)
			}
		})
	}
}

// TestTokenFileTrimming: k3s reads a token file with strings.TrimSpace, so
// any leading or trailing Unicode white space goes (U+00A0 no-break space
// and U+2003 em space included), inner space stays, and a byte-order mark
// (not white space) stays.
func TestTokenFileTrimming(t *testing.T) {
	cases := []struct {
		name, content, want string
	}{
		{"final newline", "secret\n", "secret"},
		{"CRLF and tabs", "\t secret \r\n", "secret"},
		{"leading no-break space", "\u00a0secret\n", "secret"},
		{"no-break spaces both sides", "\u00a0\u00a0secret\u00a0", "secret"},
		{"em space and NEL", "\u2003secret\u0085", "secret"},
		{"inner space kept", "sec ret\n", "sec ret"},
		{"byte-order mark kept", "\ufeffsecret\n", "\ufeffsecret"},
		{"blank file", " \n\n", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			f := filepath.Join(root, "token")
			mustWrite(t, f, []byte(c.content))
			e, _, _ := newTestEnv(t, root, nil)
			cfg, err := loadNodeConfig(context.Background(), e, true, []string{"--token-file", f, "--agent-token-file", f})
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Token != c.want || cfg.AgentToken != c.want {
				t.Fatalf("token %q, agent token %q, want %q", cfg.Token, cfg.AgentToken, c.want)
			}
		})
	}
}

// TestTokenFileMissingRetry: while a token file does not exist k3s
// (util.ReadFile) logs and looks again every 2 s, for up to 4 minutes,
// then fails (context deadline exceeded); any other read error fails at
// once. Here the interval is RetryInterval and the limit TokenFileWait.
func TestTokenFileMissingRetry(t *testing.T) {
	cases := []struct {
		name       string
		appearAt   time.Duration // <0: never
		isDir      bool
		wantToken  string
		wantErr    error // nil: success
		wantWaits  int   // at least this many "Waiting for file" lines
		maxElapsed time.Duration
	}{
		{name: "appears after a few tries", appearAt: 350 * time.Millisecond, wantToken: "late", wantWaits: 3, maxElapsed: 1500 * time.Millisecond},
		{name: "never appears: fails after the wait", appearAt: -1, wantErr: context.DeadlineExceeded, wantWaits: 5, maxElapsed: 2 * time.Second},
		{name: "exists at once: no wait", appearAt: 0, wantToken: "late", wantWaits: 0, maxElapsed: 200 * time.Millisecond},
		{name: "other error fails at once", appearAt: -1, isDir: true, wantErr: errors.New("is a directory"), wantWaits: 0, maxElapsed: 200 * time.Millisecond},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			f := filepath.Join(root, "token")
			e, logs, _ := newTestEnv(t, root, nil)
			e.RetryInterval = 100 * time.Millisecond
			e.TokenFileWait = 700 * time.Millisecond
			if c.isDir {
				if err := os.Mkdir(f, 0o700); err != nil {
					t.Fatal(err)
				}
			}
			switch {
			case c.appearAt == 0:
				mustWrite(t, f, []byte(" late\n"))
			case c.appearAt > 0:
				timer := time.AfterFunc(c.appearAt, func() { os.WriteFile(f, []byte(" late\n"), 0o600) })
				defer timer.Stop()
			}
			start := time.Now()
			cfg, err := loadNodeConfig(context.Background(), e, false, []string{"--token-file", f})
			elapsed := time.Since(start)
			if elapsed > c.maxElapsed {
				t.Errorf("took %v, more than %v", elapsed, c.maxElapsed)
			}
			if waits := strings.Count(logs.String(), `Waiting for file \"`+f+`\" to be created`); waits < c.wantWaits || (c.wantWaits == 0 && waits > 0) {
				t.Errorf("%d waits logged, want %d:\n%s", waits, c.wantWaits, logs.String())
			}
			switch {
			case c.wantErr == nil:
				if err != nil || cfg.Token != c.wantToken {
					t.Fatalf("token %v, err %v", cfg, err)
				}
			case c.wantErr == context.DeadlineExceeded:
				if !errors.Is(err, context.DeadlineExceeded) || elapsed < e.TokenFileWait-e.RetryInterval {
					t.Fatalf("err %v after %v", err, elapsed)
				}
			default:
				if err == nil || !strings.Contains(err.Error(), c.wantErr.Error()) {
					t.Fatalf("err %v, want %v", err, c.wantErr)
				}
			}
		})
	}

	t.Run("a stop signal ends the wait", func(t *testing.T) {
		e, _, _ := newTestEnv(t, t.TempDir(), nil)
		e.TokenFileWait = time.Minute
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(300*time.Millisecond, cancel)
		if _, err := loadNodeConfig(ctx, e, true, []string{"--token-file", "/nonexistent/token"}); !errors.Is(err, context.Canceled) {
			t.Fatalf("err %v", err)
		}
	})
}

// TestConfigUnknownKeys: k3s drops config keys that are not flags of the
// subcommand, with a warning, for server (and etcd-snapshot) only; for
// agent there is no such list, so a server-only key in an agent's config
// reaches the CLI parser and the agent does not start.
func TestConfigUnknownKeys(t *testing.T) {
	cases := []struct {
		name    string
		agent   bool
		config  string
		wantErr string
		wantLog string
	}{
		{name: "server skips an unknown key", config: "token: x\nwrite-kubeconfig-mode: \"0644\"\n", wantLog: "Unknown flag --write-kubeconfig-mode found in config.yaml, skipping"},
		{name: "server skips a made-up key", config: "token: x\nnotaflag: true\n", wantLog: "Unknown flag --notaflag found in config.yaml, skipping"},
		{name: "agent fails on cluster-init", agent: true, config: "token: x\ncluster-init: true\n", wantErr: "flag provided but not defined: -cluster-init"},
		{name: "agent fails on write-kubeconfig-mode", agent: true, config: "token: x\nwrite-kubeconfig-mode: \"0644\"\n", wantErr: "flag provided but not defined: -write-kubeconfig-mode"},
		{name: "agent fails on agent-token", agent: true, config: "agent-token: x\n", wantErr: "flag provided but not defined: -agent-token"},
		{name: "agent ignores a key the emulator does not model", agent: true, config: "token: x\nnode-label: [a=b]\n", wantLog: "config key --node-label is not emulated"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			e, logs, _ := newTestEnv(t, root, nil)
			mustWrite(t, e.ConfigFile, []byte(c.config))
			_, err := loadNodeConfig(context.Background(), e, !c.agent, nil)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("err %v, want %q", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			assertContains(t, logs.String(), c.wantLog)
		})
	}
}

func TestUnknownFlagIsAnError(t *testing.T) {
	e, _, _ := newTestEnv(t, t.TempDir(), nil)
	_, err := loadNodeConfig(context.Background(), e, false, []string{"--cluster-init"})
	if err == nil || !strings.Contains(err.Error(), "flag provided but not defined: -cluster-init") {
		t.Fatalf("got %v", err)
	}
	if _, err = loadNodeConfig(context.Background(), e, true, []string{"--token"}); err == nil {
		t.Fatal("missing flag value accepted")
	}
	if _, err = loadNodeConfig(context.Background(), e, true, []string{"---token=x"}); err == nil || !strings.Contains(err.Error(), "bad flag syntax") {
		t.Fatalf("three dashes: %v", err)
	}
}

func TestNodeNameDefaultsToHostname(t *testing.T) {
	e, _, _ := newTestEnv(t, t.TempDir(), nil)
	cfg, err := loadNodeConfig(context.Background(), e, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.NodeName != "testhost" || cfg.DataDir != defaultDataDir {
		t.Fatalf("got %+v", cfg)
	}
	e.Getenv = func(k string) string { return map[string]string{"K3S_NODE_NAME": "envnode"}[k] }
	if cfg, _ = loadNodeConfig(context.Background(), e, false, nil); cfg.NodeName != "envnode" {
		t.Fatalf("K3S_NODE_NAME ignored: %+v", cfg)
	}
}
