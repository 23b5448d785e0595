package main

import (
	"path/filepath"
	"strings"
	"testing"
)

func TestTokenPrecedence(t *testing.T) {
	root := t.TempDir()
	tokenFile := filepath.Join(root, "token-file")
	mustWrite(t, tokenFile, []byte("from-token-file\n"))

	type setup struct {
		env     map[string]string
		main    string
		dropins map[string]string
		args    []string
	}
	cases := []struct {
		name string
		s    setup
		want string
	}{
		{"env only", setup{env: map[string]string{"K3S_TOKEN": "from-env"}}, "from-env"},
		{"config.yaml beats env", setup{env: map[string]string{"K3S_TOKEN": "from-env"}, main: "token: from-config\n"}, "from-config"},
		{"drop-in beats config.yaml", setup{main: "token: from-config\n", dropins: map[string]string{"10-a.yaml": "token: from-a\n"}}, "from-a"},
		{"later drop-in wins", setup{main: "token: from-config\n", dropins: map[string]string{"10-a.yaml": "token: from-a\n", "20-b.yml": "token: from-b\n", "30-c.txt": "token: ignored\n"}}, "from-b"},
		{"argv beats drop-ins", setup{dropins: map[string]string{"10-a.yaml": "token: from-a\n"}, args: []string{"--token", "from-argv"}}, "from-argv"},
		{"-t and = forms", setup{args: []string{"-t=from-short"}}, "from-short"},
		{"token-file beats argv", setup{args: []string{"--token", "from-argv", "--token-file", tokenFile}}, "from-token-file"},
		{"token-file from env beats argv token", setup{env: map[string]string{"K3S_TOKEN_FILE": tokenFile}, args: []string{"--token=from-argv"}}, "from-token-file"},
		{"token-file in config beats argv token", setup{main: "token-file: " + tokenFile + "\n", args: []string{"--token=from-argv"}}, "from-token-file"},
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
			cfg, err := loadNodeConfig(e, serverFlags, c.s.args)
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Token != c.want {
				t.Fatalf("token %q, want %q", cfg.Token, c.want)
			}
		})
	}
}

func TestConfigFileFlagAndUnknownKeys(t *testing.T) {
	root := t.TempDir()
	other := filepath.Join(root, "other.yaml")
	mustWrite(t, other, []byte("token: x\ndata-dir: /srv/k3s\nnode-name: n1\ncluster-init: true\nwrite-kubeconfig-mode: \"0644\"\n"))
	e, logs, _ := newTestEnv(t, root, map[string]string{"K3S_URL": "https://s:6443"})
	cfg, err := loadNodeConfig(e, serverFlags, []string{"-c", other})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.DataDir != "/srv/k3s" || cfg.NodeName != "n1" || !cfg.ClusterInit || cfg.ServerURL != "https://s:6443" {
		t.Fatalf("got %+v", cfg)
	}
	assertContains(t, logs.String(), "Unknown flag --write-kubeconfig-mode found in config.yaml, skipping")

	// Agents do not know server-only keys either.
	cfg, err = loadNodeConfig(e, agentFlags, []string{"--config=" + other})
	if err != nil {
		t.Fatal(err)
	}
	assertContains(t, logs.String(), "Unknown flag --cluster-init found in config.yaml, skipping")
	if cfg.NodeName != "n1" {
		t.Fatalf("agent node name %q", cfg.NodeName)
	}
}

func TestUnknownFlagIsAnError(t *testing.T) {
	e, _, _ := newTestEnv(t, t.TempDir(), nil)
	_, err := loadNodeConfig(e, agentFlags, []string{"--cluster-init"})
	if err == nil || !strings.Contains(err.Error(), "flag provided but not defined: -cluster-init") {
		t.Fatalf("got %v", err)
	}
	_, err = loadNodeConfig(e, serverFlags, []string{"--token"})
	if err == nil {
		t.Fatal("missing flag value accepted")
	}
}

func TestNodeNameDefaultsToHostname(t *testing.T) {
	e, _, _ := newTestEnv(t, t.TempDir(), nil)
	cfg, err := loadNodeConfig(e, agentFlags, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.NodeName != "testhost" || cfg.DataDir != defaultDataDir {
		t.Fatalf("got %+v", cfg)
	}
	e.Getenv = func(k string) string { return map[string]string{"K3S_NODE_NAME": "envnode"}[k] }
	if cfg, _ = loadNodeConfig(e, agentFlags, nil); cfg.NodeName != "envnode" {
		t.Fatalf("K3S_NODE_NAME ignored: %+v", cfg)
	}
}
