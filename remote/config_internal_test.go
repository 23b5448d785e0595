package remote

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

func TestParseJump(t *testing.T) {
	tests := []struct {
		in         string
		user, host string
		port       int
		bad        bool
	}{
		{in: "jump", host: "jump"},
		{in: "ops@jump.example.com:2222", user: "ops", host: "jump.example.com", port: 2222},
		{in: "10.0.0.1:22", host: "10.0.0.1", port: 22},
		{in: "[::1]:2200", host: "::1", port: 2200},
		{in: "u@[fe80::1]", user: "u", host: "fe80::1"},
		{in: "a@b@host", user: "a@b", host: "host"},
		{in: "", bad: true},
		{in: "@host", bad: true},
		{in: "host:99999", bad: true},
		{in: "host:x", bad: true},
		{in: "ssh://host", bad: true},
		{in: "ho st", bad: true},
	}
	for _, tt := range tests {
		u, h, p, err := parseJump(tt.in)
		if (err != nil) != tt.bad {
			t.Errorf("parseJump(%q) err = %v", tt.in, err)
			continue
		}
		if !tt.bad && (u != tt.user || h != tt.host || p != tt.port) {
			t.Errorf("parseJump(%q) = %q %q %d", tt.in, u, h, p)
		}
	}
}

func TestResolveDefaults(t *testing.T) {
	home := t.TempDir()
	s, err := resolve(Config{Host: "node", HomeDir: home, SSHConfigFile: None, AgentSocket: None})
	if err != nil {
		t.Fatal(err)
	}
	if s.target.port != 22 || s.target.user != localUser() || s.target.host != "node" {
		t.Fatalf("target %+v", s.target)
	}
	if s.knownHosts != filepath.Join(home, ".ssh", "known_hosts") || s.systemKnown != "/etc/ssh/ssh_known_hosts" {
		t.Fatalf("known hosts %q %q", s.knownHosts, s.systemKnown)
	}
	if s.policy != PolicyStrict || s.connectTimeout != defaultConnectTimeout || s.keepAlive != defaultKeepAlive || s.maxOutput != defaultMaxOutput {
		t.Fatalf("defaults %+v", s)
	}
	if len(s.target.identityFiles) != 0 || len(s.hops) != 0 {
		t.Fatalf("identities %q hops %v", s.target.identityFiles, s.hops)
	}
}

func TestResolveSSHConfig(t *testing.T) {
	home := t.TempDir()
	conf := `
Host web-*
  HostName %h.internal
  User deploy
  Port 2200
  IdentityFile ~/.ssh/first
  IdentityFile %d/second
  ProxyJump ops@jump1:2201,jump2
Host jump2
  HostName 192.0.2.7
  User j2
`
	p := filepath.Join(home, "cfg")
	if err := os.WriteFile(p, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := resolve(Config{Host: "web-1", SSHConfigFile: p, HomeDir: home, AgentSocket: None})
	if err != nil {
		t.Fatal(err)
	}
	want := endpoint{alias: "web-1", host: "web-1.internal", port: 2200, user: "deploy",
		identityFiles: []string{home + "/.ssh/first", home + "/second"}, identityFixed: true}
	if !reflect.DeepEqual(s.target, want) {
		t.Fatalf("target\n got %+v\nwant %+v", s.target, want)
	}
	if len(s.hops) != 2 || s.hops[0].String() != "ops@jump1:2201" || s.hops[1].String() != "j2@192.0.2.7:22" {
		t.Fatalf("hops %v", s.hops)
	}

	// An explicitly named config file must exist; the default one may not.
	if _, err := resolve(Config{Host: "x", SSHConfigFile: filepath.Join(home, "missing"), HomeDir: home}); err == nil {
		t.Fatal("missing explicit ssh config accepted")
	}
	if _, err := resolve(Config{Host: "x", HomeDir: home}); err != nil {
		t.Fatal(err)
	}
	if _, err := resolve(Config{Host: "x", HomeDir: home, HostKeyPolicy: "yolo"}); err == nil ||
		!strings.Contains(err.Error(), "accept-new") {
		t.Fatalf("bad policy: %v", err)
	}
}

func TestAlgorithmsForRecordedKeys(t *testing.T) {
	if got := algorithmsForKeyType(ssh.KeyAlgoRSA); !reflect.DeepEqual(got, []string{"rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"}) {
		t.Fatalf("rsa -> %q", got)
	}
}

func TestCommandLine(t *testing.T) {
	for mode, prefix := range map[sudoMode]string{
		noSudo:       "exec sh -c ",
		sudoNoPrompt: "exec sudo -n -- sh -c ",
		sudoStdin:    "exec sudo -k -S -p '' -- sh -c ",
	} {
		got := command(mode, "echo 'hi'")
		if !strings.HasPrefix(got, prefix) || !strings.HasSuffix(got, ` fleetcert 'echo '\''hi'\'''`) {
			t.Errorf("mode %d: %s", mode, got)
		}
		if got := quickCommand(mode, "echo 'hi'"); got != prefix+`'echo '\''hi'\''' fleetcert` {
			t.Errorf("quick, mode %d: %s", mode, got)
		}
	}
}

func TestKeepAliveDefaultsAndDisable(t *testing.T) {
	s, err := resolve(Config{Host: "n", HomeDir: t.TempDir(), SSHConfigFile: None, KeepAlive: -1, ConnectTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if s.keepAlive >= 0 || s.connectTimeout != time.Second {
		t.Fatalf("%v %v", s.keepAlive, s.connectTimeout)
	}
}
