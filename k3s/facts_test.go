package k3s

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/fleetcert/fleetcert/remote/remotetest"
)

func writeTree(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for name, body := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func TestSnapshotReadsLayoutInOneScript(t *testing.T) {
	root := t.TempDir()
	l := Layout{Role: RoleServer, DataDir: root + "/data dir", ConfigFile: root + "/etc/config.yaml", SystemdDir: root + "/systemd"}
	weird := "K3S_TOKEN='K10x::server:p$(id)`w`\n'\n\x00binary"
	writeTree(t, root, map[string]string{
		"systemd/k3s.service":                  "[Service]\nExecStart=/usr/local/bin/k3s server\n",
		"systemd/k3s.service.env":              weird,
		"systemd/k3s.service.d/10-token.conf":  "[Service]\nEnvironment=K3S_TOKEN=abc\n",
		"etc/config.yaml":                      "token: abc\n",
		"etc/config.yaml.d/20-extra.yaml":      "node-name: x\n",
		"data dir/server/tls/server-ca.crt":    "CA\n",
		"data dir/server/tls/etcd/peer-ca.crt": "PEER\n",
		"data dir/server/tls/client-ca.key":    "private keys are not gathered",
		"data dir/agent/server-ca.crt":         "AGENT CA\n",
	})
	s, err := TakeSnapshot(context.Background(), &remotetest.Local{}, l)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		l.EnvFile():                            weird,
		l.UnitFile():                           "[Service]\nExecStart=/usr/local/bin/k3s server\n",
		l.UnitDropInDir() + "/10-token.conf":   "[Service]\nEnvironment=K3S_TOKEN=abc\n",
		l.Config():                             "token: abc\n",
		l.ConfigDropInDir() + "/20-extra.yaml": "node-name: x\n",
		l.ServerCA():                           "CA\n",
		l.ServerTLSDir() + "/etcd/peer-ca.crt": "PEER\n",
		l.AgentServerCA():                      "AGENT CA\n",
	}
	for p, body := range want {
		f, ok := s.Files[p]
		if !ok {
			t.Errorf("%s not in snapshot", p)
			continue
		}
		if string(f.Data) != body {
			t.Errorf("%s: got %q, want %q", p, f.Data, body)
		}
	}
	if _, ok := s.Files[l.ServerTLSDir()+"/client-ca.key"]; ok {
		t.Error("a CA private key was gathered with the facts")
	}
	if f := s.Files[l.EnvFile()]; f.Mode != 0o600 || f.UID != os.Getuid() || f.MTime.IsZero() {
		t.Errorf("env file metadata: %+v", f)
	}
	if !s.Dirs[l.ServerDir()] || !s.Dirs[l.AgentDir()] || s.Dirs[l.EtcdDBDir()] {
		t.Errorf("dirs: %v", s.Dirs)
	}
	if s.Hostname == "" || s.Now.IsZero() || s.Init == "" {
		t.Errorf("system facts missing: %+v", s)
	}
}

func TestParseSnapshotRejectsForeignOutput(t *testing.T) {
	for _, out := range []string{"", "hello\n", factsVersion + "\n@hostname\nx\n"} {
		if _, err := ParseSnapshot([]byte(out)); err == nil {
			t.Errorf("ParseSnapshot(%q) accepted", out)
		}
	}
}

func TestVersionWord(t *testing.T) {
	for in, want := range map[string]string{
		"k3s version v1.33.5+k3s1 (abc1234)\ngo version go1.24.4": "v1.33.5+k3s1",
		"k3s version v1.26.2+k3s1 (f0ec6a4c)":                     "v1.26.2+k3s1",
		"":                                                        "",
		"k3s version unknown":                                     "",
	} {
		if got := versionWord(in); got != want {
			t.Errorf("versionWord(%q) = %q, want %q", in, got, want)
		}
	}
}
