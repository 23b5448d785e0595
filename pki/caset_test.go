package pki

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestFilesAndFields(t *testing.T) {
	want := []string{"etcd/server-ca.crt", "etcd/server-ca.key", "etcd/peer-ca.crt", "etcd/peer-ca.key",
		"server-ca.crt", "server-ca.key", "client-ca.crt", "client-ca.key",
		"request-header-ca.crt", "request-header-ca.key", "service.key"}
	if got := Files(); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("Files() = %v", got)
	}
	for file, field := range map[string]string{"etcd/peer-ca.key": "ETCDPeerCAKey", "server-ca.crt": "ServerCA",
		"request-header-ca.key": "RequestHeaderCAKey", "service.key": "ServiceKey", "server-ca.pem": ""} {
		if got := fieldOf(file); got != field {
			t.Errorf("fieldOf(%s) = %q, want %q", file, got, field)
		}
	}
	names := map[string][2]string{"etcd/peer": {"k3s-etcd-peer-ca", "k3s-etcd-peer-root"}, "request-header": {"k3s-request-header-ca", "k3s-request-header-root"}}
	for n, want := range names {
		ct, ok := CATypeByName(n)
		if !ok || ct.caName() != want[0] || ct.rootName() != want[1] {
			t.Errorf("%s: %q %q", n, ct.caName(), ct.rootName())
		}
	}
	if _, ok := CATypeByName("etcd-peer"); ok {
		t.Error("CATypeByName accepted etcd-peer")
	}
}

func TestNewCASet(t *testing.T) {
	s, err := NewCASet(map[string][]byte{"server-ca.crt": []byte("x"), "client-ca.crt": {}})
	if err != nil {
		t.Fatal(err)
	}
	if names := s.Names(); len(names) != 1 || names[0] != "server-ca.crt" {
		t.Errorf("empty files must be dropped, as k3s ignores them: %v", names)
	}
	if _, err := NewCASet(map[string][]byte{"tls/server-ca.crt": []byte("x")}); err == nil {
		t.Error("unknown file name accepted")
	}
}

func TestChangedAndOverlay(t *testing.T) {
	cur := CASet{"server-ca.crt": []byte("a"), "server-ca.key": []byte("k"), ServiceKeyFile: []byte("s")}
	next := CASet{"server-ca.crt": []byte("b"), "server-ca.key": []byte("k"), "client-ca.crt": []byte("c")}
	ch := next.Changed(cur)
	if got := strings.Join(ch.Names(), " "); got != "server-ca.crt client-ca.crt" {
		t.Errorf("Changed = %s", got)
	}
	ov := next.Overlay(cur)
	if string(ov["server-ca.crt"]) != "b" || string(ov[ServiceKeyFile]) != "s" || string(ov["client-ca.crt"]) != "c" {
		t.Errorf("Overlay = %v", ov)
	}
	if string(cur["server-ca.crt"]) != "a" {
		t.Error("Overlay changed current")
	}
}

func TestWriteReadDir(t *testing.T) {
	set := k3sDefaultSet()
	dir := filepath.Join(t.TempDir(), "stage")
	if err := set.WriteDir(dir, false); err != nil {
		t.Fatal(err)
	}
	modes := map[string]os.FileMode{"": 0o700, "tls": 0o700, "tls/etcd": 0o700,
		"tls/server-ca.crt": 0o644, "tls/server-ca.key": 0o600, "tls/etcd/peer-ca.key": 0o600, "tls/service.key": 0o600}
	for p, want := range modes {
		fi, err := os.Stat(filepath.Join(dir, p))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", p, fi.Mode().Perm(), want)
		}
	}
	back, err := ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(back) != len(set) || len(back.Changed(set)) != 0 {
		t.Errorf("read back %v", back.Names())
	}
	if err := set.WriteDir(dir, false); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Errorf("writing into a non-empty dir: %v", err)
	}
	if err := (CASet{"server-ca.crt": []byte("new")}).WriteDir(dir, true); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "tls", "server-ca.crt")); string(b) != "new" {
		t.Error("overwrite did not replace the file")
	}
	entries, _ := os.ReadDir(filepath.Join(dir, "tls"))
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".tmp") {
			t.Errorf("left %s behind", e.Name())
		}
	}
}

func TestReadDirEdgeCases(t *testing.T) {
	dir := t.TempDir()
	if _, err := ReadDir(dir); err == nil || !strings.Contains(err.Error(), "no CA files") {
		t.Errorf("empty dir: %v", err)
	}
	// Files directly in DIR are ignored, as rotate-ca ignores them.
	os.WriteFile(filepath.Join(dir, "server-ca.crt"), []byte("x"), 0o644)
	if _, err := ReadDir(dir); err == nil {
		t.Error("files outside tls/ were read")
	}
	os.MkdirAll(filepath.Join(dir, "tls"), 0o700)
	os.WriteFile(filepath.Join(dir, "tls", "service.key"), []byte("k"), 0o600)
	os.WriteFile(filepath.Join(dir, "tls", "client-ca.crt"), nil, 0o644)
	s, err := ReadDir(dir)
	if err != nil || strings.Join(s.Names(), ",") != "service.key" {
		t.Errorf("ReadDir = %v, %v; want service.key only (empty files skipped)", s.Names(), err)
	}
	if _, err := ReadDir(filepath.Join(dir, "missing")); err == nil {
		t.Error("missing dir accepted")
	}
	if _, err := ReadDir(filepath.Join(dir, "server-ca.crt")); err == nil {
		t.Error("a file accepted as dir")
	}
}

func TestKinds(t *testing.T) {
	def := k3sDefaultSet()
	crossed, err := Env{}.CrossSign(def)
	if err != nil {
		t.Fatal(err)
	}
	custom := fastCustom(t, CustomInput{})
	server, _ := CATypeByName("server")
	onlyServer, _ := Env{}.CrossSign(def, server)
	mixed := clone(def)
	mixed["client-ca.crt"], mixed["client-ca.key"] = custom.Set["client-ca.crt"], custom.Set["client-ca.key"]
	missing := clone(def)
	delete(missing, "etcd/peer-ca.crt")
	for _, tc := range []struct {
		name string
		set  CASet
		want Kind
	}{
		{"default", def, KindDefault},
		{"cross-signed", crossed.Overlay(def), KindCrossSigned},
		{"default and cross-signed", onlyServer.Overlay(def), KindCrossSigned},
		{"custom", custom.Set, KindCustom},
		{"custom and default", mixed, KindMixed},
		{"missing", missing, KindMissing},
	} {
		if got := tc.set.Kind(); got != tc.want {
			t.Errorf("%s: Kind() = %s, want %s (%v)", tc.name, got, tc.want, tc.set.Kinds())
		}
	}
	if !KindDefault.CrossSignable() || !KindCrossSigned.CrossSignable() || KindCustom.CrossSignable() {
		t.Error("CrossSignable")
	}
}

func TestInspect(t *testing.T) {
	c := defaultCustom(t)
	infos := c.Set.Inspect()
	if len(infos) != len(Files()) {
		t.Fatalf("%d files", len(infos))
	}
	var server FileInfo
	for _, fi := range infos {
		if fi.File == "server-ca.crt" {
			server = fi
		}
		if fi.Error != "" {
			t.Errorf("%s: %s", fi.File, fi.Error)
		}
	}
	if len(server.Certs) != 3 || server.Kind != KindCustom || server.CAHash != Fingerprint(c.Root) || server.Field != "ServerCA" {
		t.Fatalf("server-ca.crt: %+v", server)
	}
	root := server.Certs[2]
	if !root.IsCA || !root.SelfSigned || root.KeyType != "RSA 4096" || root.SHA256 != Fingerprint(c.Root) || !strings.HasPrefix(root.Subject, "CN=k3s-root-ca@") {
		t.Errorf("root: %+v", root)
	}
	if server.Certs[0].SelfSigned || server.Certs[0].KeyType != "ECDSA P-256" {
		t.Errorf("cluster CA: %+v", server.Certs[0])
	}
	js, err := json.Marshal(infos)
	if err != nil {
		t.Fatal(err)
	}
	for _, secretish := range [][]byte{[]byte("PRIVATE KEY"), []byte("MII")} {
		if bytes.Contains(js, secretish) {
			t.Errorf("inspect output contains %q", secretish)
		}
	}
	bad := CASet{"server-ca.crt": []byte("junk"), "server-ca.key": []byte("junk")}.Inspect()
	if bad[0].Error == "" || bad[1].Error == "" {
		t.Errorf("junk files: %+v", bad)
	}
}

func TestParseHelpers(t *testing.T) {
	c := defaultCustom(t)
	bundle := c.Set["server-ca.crt"]
	// Non-certificate blocks and blocks with headers are skipped, as
	// client-go's ParseCertsPEM does.
	withJunk := append([]byte("-----BEGIN FOO-----\nAAAA\n-----END FOO-----\n"), bundle...)
	if certs, err := ParseCerts(withJunk); err != nil || len(certs) != 3 {
		t.Errorf("ParseCerts with other blocks: %d, %v", len(certs), err)
	}
	broken := []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
	if _, err := ParseCerts(broken); err == nil {
		t.Error("a broken certificate block parsed")
	}
	if _, err := ParseCerts(c.Set["server-ca.key"]); err == nil || err.Error() != errNoCerts.Error() {
		t.Errorf("key file as bundle: %v", err)
	}
	rootPEM, _ := encodeKey(c.RootKey)
	pkcs8 := pkcs8PEM(t, c.IntermediateKey)
	keys, err := ParseKeys(append(append(bytes.Clone(c.Set["server-ca.key"]), rootPEM...), pkcs8...))
	if err != nil || len(keys) != 3 {
		t.Fatalf("ParseKeys: %d, %v", len(keys), err)
	}
	if describeKey(keys[0].Public()) != "ECDSA P-256" || describeKey(keys[1].Public()) != "RSA 4096" || !samePublicKey(keys[2].Public(), c.IntermediateKey.Public()) {
		t.Error("ParseKeys order or types wrong")
	}
	if _, err := ParseKeys(bundle); err == nil {
		t.Error("a bundle without keys parsed as keys")
	}
}
