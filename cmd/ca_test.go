package cmd

import (
	"bytes"
	"crypto"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fleetcert/fleetcert/internal/certtest"
	"github.com/fleetcert/fleetcert/pki"
)

// runCACmd runs fleetcert with args and returns exit code, stdout, stderr.
func runCACmd(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	t.Setenv("HOME", t.TempDir()) // no user config file
	var out, errb bytes.Buffer
	code := run(args, strings.NewReader(stdin), &out, &errb)
	return code, out.String(), errb.String()
}

// defaultFiles is the CA material of a k3s server with default self-signed
// CAs, made once: an RSA service.key takes long to generate.
var defaultFiles = sync.OnceValue(func() pki.CASet {
	return pki.CASet(certtest.NewK3sCAs(time.Now().AddDate(-1, 0, 0)).Files(certtest.NewRSAKey(2048)))
})

// k3sServerDir writes the CA files of a k3s server with default self-signed
// CAs and returns its directory.
func k3sServerDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "server")
	if err := defaultFiles().WriteDir(dir, false); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestCAGenerateAndVerifySameRoot(t *testing.T) {
	tmp := t.TempDir()
	out1, issuers := filepath.Join(tmp, "out1"), filepath.Join(tmp, "issuers")

	code, _, stderr := runCACmd(t, "", "ca", "generate", "--out", out1, "--key-type", "ecdsa-p256")
	if code != ExitUsage || !strings.Contains(stderr, "--issuers-out") {
		t.Fatalf("generating a root without --issuers-out: exit %d %s", code, stderr)
	}
	code, _, stderr = runCACmd(t, "", "ca", "generate", "--out", out1, "--issuers-out", filepath.Join(out1, "keys"), "--key-type", "ecdsa-p256")
	if code != ExitUsage || !strings.Contains(stderr, "overlap") {
		t.Fatalf("--issuers-out inside --out: exit %d %s", code, stderr)
	}
	code, stdout, stderr := runCACmd(t, "", "ca", "generate", "--out", out1, "--issuers-out", issuers, "--key-type", "ecdsa-p256")
	if code != ExitOK {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	rootPEM, err := os.ReadFile(filepath.Join(issuers, "root-ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	roots, _ := pki.ParseCerts(rootPEM)
	wantHash := pki.Fingerprint(roots[0])
	if !strings.Contains(stdout, "server CA hash (K10<hash>:: in join tokens): "+wantHash) {
		t.Errorf("generate output lacks the root's hash %s:\n%s", wantHash, stdout)
	}
	assertNoIssuerKeys(t, out1, issuers)
	for f, mode := range map[string]os.FileMode{"root-ca.key": 0o600, "intermediate-ca.key": 0o600, "root-ca.pem": 0o644} {
		if fi, err := os.Stat(filepath.Join(issuers, f)); err != nil || fi.Mode().Perm() != mode {
			t.Errorf("%s: %v %v", f, fi, err)
		}
	}

	// Refuses to write into a non-empty directory.
	code, _, stderr = runCACmd(t, "", "ca", "generate", "--out", out1, "--issuers-out", filepath.Join(tmp, "x"), "--key-type", "ecdsa-p256")
	if code == ExitOK || !strings.Contains(stderr, "not empty") {
		t.Errorf("non-empty --out: exit %d %s", code, stderr)
	}

	// A new intermediate under the same root: k3s accepts it, hash unchanged.
	out2 := filepath.Join(tmp, "out2")
	code, _, stderr = runCACmd(t, "", "ca", "generate", "--out", out2, "--root-ca", filepath.Join(issuers, "root-ca.pem"),
		"--root-key", filepath.Join(issuers, "root-ca.key"), "--service-key", filepath.Join(out1, "tls", "service.key"))
	if code != ExitOK {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	code, stdout, stderr = runCACmd(t, "", "ca", "verify", "--current", out1, "--new", out2)
	if code != ExitOK || !strings.Contains(stdout, "accepts this material without --force") || !strings.Contains(stdout, "hash unchanged ("+wantHash+")") {
		t.Errorf("verify same root: exit %d\n%s%s", code, stdout, stderr)
	}

	// Cluster CAs under the operator's intermediate.
	out3 := filepath.Join(tmp, "out3")
	code, _, stderr = runCACmd(t, "", "ca", "generate", "--out", out3, "--root-ca", filepath.Join(issuers, "root-ca.pem"),
		"--intermediate-ca", filepath.Join(issuers, "intermediate-ca.pem"), "--intermediate-key", filepath.Join(issuers, "intermediate-ca.key"),
		"--service-key", filepath.Join(out1, "tls", "service.key"))
	if code != ExitOK {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if code, stdout, _ := runCACmd(t, "", "ca", "verify", "--current", out1, "--new", out3); code != ExitOK {
		t.Errorf("verify via intermediate: exit %d\n%s", code, stdout)
	}
}

// assertNoIssuerKeys checks that no key of the issuers dir is in out.
func assertNoIssuerKeys(t *testing.T, out, issuers string) {
	t.Helper()
	set, err := pki.ReadDir(out)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"root-ca.key", "intermediate-ca.key"} {
		data, err := os.ReadFile(filepath.Join(issuers, n))
		if err != nil {
			t.Fatal(err)
		}
		secret, _ := pki.ParseKeys(data)
		for _, f := range set.Names() {
			keys, _ := pki.ParseKeys(set[f])
			for _, k := range keys {
				if k.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(secret[0].Public()) {
					t.Errorf("%s of the issuers is in %s", n, f)
				}
			}
		}
	}
	entries, _ := os.ReadDir(out)
	for _, e := range entries {
		if e.Name() != "tls" {
			t.Errorf("unexpected %s in --out", e.Name())
		}
	}
}

func TestCAGenerateUsage(t *testing.T) {
	dir := t.TempDir()
	junk := filepath.Join(dir, "junk.pem")
	os.WriteFile(junk, []byte("junk"), 0o600)
	for _, args := range [][]string{
		{"ca", "generate"},
		{"ca", "generate", "--out", filepath.Join(dir, "o"), "--root-key", junk},
		{"ca", "generate", "--out", filepath.Join(dir, "o"), "--root-ca", junk},
		{"ca", "generate", "--out", filepath.Join(dir, "o"), "--root-ca", junk, "--root-key", junk},
		{"ca", "generate", "--out", filepath.Join(dir, "o"), "--root-ca", junk, "--intermediate-ca", junk},
		{"ca", "generate", "--out", filepath.Join(dir, "o"), "--issuers-out", filepath.Join(dir, "i"), "--key-type", "dsa"},
		{"ca", "generate", "--out", filepath.Join(dir, "o"), "--root-ca", filepath.Join(dir, "missing"), "--root-key", junk},
		{"ca", "inspect", dir, "-o", "yaml"},
	} {
		if code, _, stderr := runCACmd(t, "", args...); code != ExitUsage {
			t.Errorf("%v: exit %d, want 2 (%s)", args, code, stderr)
		}
	}
}

func TestCACrossSignTwiceAndVerify(t *testing.T) {
	server := k3sServerDir(t)
	tmp := t.TempDir()
	r1, r2 := filepath.Join(tmp, "r1"), filepath.Join(tmp, "r2")
	code, stdout, stderr := runCACmd(t, "", "ca", "cross-sign", "--from", server, "--out", r1)
	if code != ExitOK {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	staged, err := pki.ReadDir(r1)
	if err != nil {
		t.Fatal(err)
	}
	if len(staged.Names()) != len(pki.Files()) {
		t.Errorf("staged %v", staged.Names())
	}
	certs, _ := pki.ParseCerts(staged["server-ca.crt"])
	if !strings.Contains(stdout, pki.Fingerprint(certs[1])) {
		t.Errorf("cross-sign must print the new self-signed root's hash %s:\n%s", pki.Fingerprint(certs[1]), stdout)
	}
	code, stdout, _ = runCACmd(t, "", "ca", "verify", "--current", server, "--new", r1)
	if code != ExitOK || !strings.Contains(stdout, "every secure join token must be rewritten") {
		t.Fatalf("first rotation: exit %d\n%s", code, stdout)
	}

	// Apply it (as k3s does at the next start) and rotate again.
	applied := staged.Overlay(defaultFiles())
	now := filepath.Join(tmp, "server2")
	if err := applied.WriteDir(now, false); err != nil {
		t.Fatal(err)
	}
	if code, _, stderr := runCACmd(t, "", "ca", "cross-sign", "--from", now, "--out", r2, "--keep-service-keys", "1"); code != ExitOK {
		t.Fatalf("second rotation: exit %d %s", code, stderr)
	}
	if code, stdout, _ := runCACmd(t, "", "ca", "verify", "--current", now, "--new", r2, "-o", "json"); code != ExitOK {
		t.Fatalf("second rotation refused: %s", stdout)
	}
	second, _ := pki.ReadDir(r2)
	if keys, _ := pki.ParseKeys(second[pki.ServiceKeyFile]); len(keys) != 2 {
		t.Errorf("--keep-service-keys 1: %d keys, want new + current signing key", len(keys))
	}

	// Only some CAs, no service key.
	r3 := filepath.Join(tmp, "r3")
	if code, _, stderr := runCACmd(t, "", "ca", "cross-sign", "--from", server, "--out", r3, "--types", "client,etcd/peer", "--service-key=false"); code != ExitOK {
		t.Fatalf("exit %d %s", code, stderr)
	}
	part, _ := pki.ReadDir(r3)
	if got := strings.Join(part.Names(), " "); got != "etcd/peer-ca.crt etcd/peer-ca.key client-ca.crt client-ca.key" {
		t.Errorf("--types client,etcd/peer wrote %s", got)
	}
	if code, _, _ := runCACmd(t, "", "ca", "cross-sign", "--from", server, "--out", filepath.Join(tmp, "r4"), "--types", "etcd"); code != ExitUsage {
		t.Errorf("unknown type: exit %d", code)
	}
}

func TestCAVerifyRefusesUnrelatedRoot(t *testing.T) {
	server := k3sServerDir(t)
	tmp := t.TempDir()
	custom := filepath.Join(tmp, "custom")
	if code, _, stderr := runCACmd(t, "", "ca", "generate", "--out", custom, "--issuers-out", filepath.Join(tmp, "i"),
		"--key-type", "ecdsa-p256", "--service-key", filepath.Join(server, "tls", "service.key")); code != ExitOK {
		t.Fatalf("exit %d %s", code, stderr)
	}
	code, stdout, stderr := runCACmd(t, "", "ca", "verify", "--current", server, "--new", custom)
	if code != ExitRefused {
		t.Fatalf("exit %d, want 3\n%s", code, stdout)
	}
	for _, ct := range pki.CATypes {
		want := "ERROR    " + ct.CertFile + ": " + ct.Field + ": new CA cert cannot be verified using old CA chain: x509: certificate signed by unknown authority"
		if !strings.Contains(stdout, want) {
			t.Errorf("missing %q in\n%s", want, stdout)
		}
	}
	if !strings.Contains(stderr, "would refuse this material without --force (5 problem(s))") {
		t.Errorf("stderr: %s", stderr)
	}

	code, stdout, _ = runCACmd(t, "", "ca", "verify", "--current", server, "--new", custom, "--force")
	if code != ExitOK || !strings.Contains(stdout, "with --force it saves it anyway") || !strings.Contains(stdout, "ERROR") {
		t.Errorf("--force: exit %d\n%s", code, stdout)
	}

	code, stdout, _ = runCACmd(t, "", "ca", "verify", "--current", server, "--new", custom, "-o", "json")
	var rep verifyReport
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("json: %v\n%s", err, stdout)
	}
	if code != ExitRefused || rep.Accepted || len(rep.Errors) != 5 || rep.CurrentCAHash == rep.NewCAHash || len(rep.Staged) != len(pki.Files()) {
		t.Errorf("json report: exit %d %+v", code, rep)
	}

	if code, _, _ := runCACmd(t, "", "ca", "verify", "--current", server, "--new", filepath.Join(tmp, "nope")); code != ExitUsage {
		t.Errorf("unreadable --new: exit %d, want 2", code)
	}
	if code, _, _ := runCACmd(t, "", "ca", "verify", "--new", custom); code != ExitUsage {
		t.Errorf("missing --current: exit %d, want 2", code)
	}
}

func TestCAServiceKey(t *testing.T) {
	server := k3sServerDir(t)
	out := filepath.Join(t.TempDir(), "sa")
	if code, _, stderr := runCACmd(t, "", "ca", "service-key", "--from", server, "--out", out); code != ExitOK {
		t.Fatalf("exit %d %s", code, stderr)
	}
	set, _ := pki.ReadDir(out)
	if got := strings.Join(set.Names(), " "); got != "service.key" {
		t.Errorf("wrote %s, want service.key alone", got)
	}
	if code, stdout, _ := runCACmd(t, "", "ca", "verify", "--current", server, "--new", out); code != ExitOK || !strings.Contains(stdout, "hash unchanged") {
		t.Errorf("verify: exit %d\n%s", code, stdout)
	}
}

func TestCAInspect(t *testing.T) {
	server := k3sServerDir(t)
	code, stdout, stderr := runCACmd(t, "", "ca", "inspect", server)
	if code != ExitOK {
		t.Fatalf("exit %d %s", code, stderr)
	}
	for _, want := range []string{"FILE", "server-ca.crt", "CN=k3s-server-ca@", "ECDSA P-256", "service.key", "RSA 2048", "server-ca.crt: default CA, join token hash "} {
		if !strings.Contains(stdout, want) {
			t.Errorf("missing %q in\n%s", want, stdout)
		}
	}
	if strings.Contains(stdout, "PRIVATE KEY-----") {
		t.Error("inspect printed a key")
	}
	code, stdout, _ = runCACmd(t, "", "ca", "inspect", server, "-o", "json")
	var rep struct {
		Files []pki.FileInfo `json:"files"`
	}
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil || code != ExitOK || len(rep.Files) != len(pki.Files()) {
		t.Fatalf("json: exit %d %v\n%s", code, err, stdout)
	}
	if code, _, _ := runCACmd(t, "", "ca", "inspect", t.TempDir()); code != ExitUsage {
		t.Errorf("empty dir: exit %d", code)
	}
}
