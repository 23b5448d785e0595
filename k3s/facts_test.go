package k3s

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

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
		l.configDropInDir() + "/20-extra.yaml": "node-name: x\n",
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
	// The node's clock comes from stat's own /proc entry.
	if d := time.Since(s.Now); d < -2*time.Second || d > 5*time.Second {
		t.Errorf("node clock %v, %v from the local clock", s.Now, d)
	}
}

func TestParseSnapshotRejectsForeignOutput(t *testing.T) {
	for _, out := range []string{"", "hello\n", factsVersion + "\n@hostname\nx\n"} {
		if _, err := parseSnapshot([]byte(out)); err == nil {
			t.Errorf("parseSnapshot(%q) accepted", out)
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

func TestSnapshotListsKeysWithoutReadingThem(t *testing.T) {
	root := t.TempDir()
	l := Layout{Role: RoleServer, DataDir: root + "/data", ConfigFile: root + "/etc/config.yaml", SystemdDir: root + "/systemd"}
	writeTree(t, root, map[string]string{
		"data/server/tls/client-ca.key":      "SECRET-CLIENT-CA",
		"data/server/tls/root-ca.key":        "SECRET-ROOT",
		"data/server/tls/etcd/peer-ca.key":   "SECRET-PEER",
		"data/agent/client-kubelet.key":      "SECRET-KUBELET",
		"data/server/tls/server-ca.crt":      "CA\n",
		"data/server/tls/not-a-key.key.crt":  "x\n",
		"data/server/tls/temporary-certs/x":  "y\n",
		"data/server/tls/dir.key/inside.key": "SECRET-DEEPER",
	})
	if err := os.Chmod(root+"/data/agent/client-kubelet.key", 0o644); err != nil {
		t.Fatal(err)
	}
	script := factsScript(l)
	s, err := TakeSnapshot(context.Background(), &remotetest.Local{}, l)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]uint32{
		l.ServerTLSDir() + "/client-ca.key":    0o600,
		l.ServerTLSDir() + "/root-ca.key":      0o600,
		l.ServerTLSDir() + "/etcd/peer-ca.key": 0o600,
		l.AgentDir() + "/client-kubelet.key":   0o644,
	}
	if len(s.Keys) != len(want) {
		t.Errorf("keys listed: %v, want %v", s.Keys, want)
	}
	for p, mode := range want {
		k, ok := s.Keys[p]
		if !ok || k.Mode != mode || k.UID != os.Getuid() || k.Data != nil {
			t.Errorf("%s: %+v (listed %v), want mode %o and no data", p, k, ok, mode)
		}
	}
	for p, f := range s.Files {
		if strings.Contains(string(f.Data), "SECRET") {
			t.Errorf("key contents read into the snapshot: %s", p)
		}
	}
	_, batch, _ := strings.Cut(script, "\ng ")
	if keys, _, _ := strings.Cut(batch, " -- "); !strings.Contains(keys, "/*.key") {
		t.Error("the facts script does not list keys ahead of the files it reads")
	}
}

func TestParseSnapshotBatch(t *testing.T) {
	// One key (listed, not read), then two files: "abc" and "de", the
	// second without a final newline, then the end marker.
	head := factsVersion + "\n@batch 1 3\n@fsz 600 0 1700000000 9 /k.key\n@fsz 600 0 1700000000 3 /a b\n@fsz 644 0 1700000000 2 /c\n@data\n"
	s, err := parseSnapshot([]byte(head + "abcde\n@data-end\n@end\n"))
	if err != nil {
		t.Fatal(err)
	}
	if string(s.Files["/a b"].Data) != "abc" || string(s.Files["/c"].Data) != "de" || s.Files["/a b"].Mode != 0o600 {
		t.Errorf("batch split: %+v", s.Files)
	}
	if k, ok := s.Keys["/k.key"]; !ok || k.Data != nil || k.Mode != 0o600 || len(s.Files) != 2 {
		t.Errorf("keys %+v, files %d", s.Keys, len(s.Files))
	}
	// The clock line: stat's /proc/self, or date's where /proc is absent.
	for _, clock := range []string{"@fsz 555 0 1800000000 0 /proc/self\n", "@now 1800000000\n"} {
		out := factsVersion + "\n@batch 0 1\n" + clock + "@fsz 644 0 1700000000 2 /c\n@data\nde\n@data-end\n@end\n"
		if s, err := parseSnapshot([]byte(out)); err != nil || s.Now.Unix() != 1800000000 || len(s.Files) != 1 || len(s.Keys) != 0 {
			t.Errorf("clock %q: %v %+v", clock, err, s)
		}
	}
	// Bytes are bytes: NUL, newlines and framing look-alikes inside files.
	raw := factsVersion + "\n@batch 0 2\n@fsz 600 0 1700000000 15 /x\n@fsz 600 0 1700000000 1 /y\n@data\n" +
		"\x00\n@data-end\n@e\n" + "\n" + "\n@data-end\n@end\n"
	if s, err := parseSnapshot([]byte(raw)); err != nil || string(s.Files["/x"].Data) != "\x00\n@data-end\n@e\n" || string(s.Files["/y"].Data) != "\n" {
		t.Errorf("raw bytes: %v %+v", err, s)
	}
	// A file that grew or shrank between stat and cat, or went away: the
	// batch cannot be split.
	for _, torn := range []string{
		head + "abcdef\n@data-end\n@end\n",
		head + "abcd\n@data-end\n@end\n",
		factsVersion + "\n@batch 0 2\n@fsz 600 0 1700000000 3 /a\n@data\nabc\n@data-end\n@end\n",
	} {
		if _, err := parseSnapshot([]byte(torn)); !errors.Is(err, errFilesChanged) {
			t.Errorf("torn batch %q: %v, want errFilesChanged", torn, err)
		}
	}
	if _, err := parseSnapshot([]byte(head)); err == nil {
		t.Error("batch without data accepted")
	}
}

func TestOSRelease(t *testing.T) {
	for in, want := range map[string]string{
		`PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"`: "Debian GNU/Linux 12 (bookworm)",
		`PRETTY_NAME='Alpine Linux v3.20'`:             "Alpine Linux v3.20",
		`PRETTY_NAME=Fedora`:                           "Fedora",
		`PRETTY_NAME="say \"hi\" \$x \\ \n"`:           `say "hi" $x \ \n`,
		"Ubuntu 24.04.1 LTS":                           "Ubuntu 24.04.1 LTS",
	} {
		if got := osRelease(in); got != want {
			t.Errorf("osRelease(%q) = %q, want %q", in, got, want)
		}
	}
}
