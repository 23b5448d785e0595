package pki

import (
	"bytes"
	"crypto"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fleetcert/fleetcert/internal/certtest"
)

// Made once per test binary: an RSA key takes long to generate.
var (
	saKey      = sync.OnceValue(func() *rsa.PrivateKey { return certtest.NewRSAKey(2048) })
	defaultSet = sync.OnceValue(func() CASet {
		return CASet(certtest.NewK3sCAs(time.Now().AddDate(-1, 0, 0)).Files(saKey()))
	})
)

// serviceKey is an RSA 2048 service.key.
func serviceKey() []byte { return certtest.KeyPEM(saKey()) }

// k3sDefaultSet is the CA material of a fresh k3s server with default CAs,
// made a year ago.
func k3sDefaultSet() CASet { return clone(defaultSet()) }

func clone(s CASet) CASet {
	out := CASet{}
	for k, v := range s {
		out[k] = bytes.Clone(v)
	}
	return out
}

// fastCustom is GenerateCustom with small, fast keys for tests not about
// key size.
func fastCustom(t testing.TB, in CustomInput) *Custom {
	t.Helper()
	if in.KeyType == "" {
		in.KeyType = ECDSAP256
	}
	c, err := Env{}.GenerateCustom(in)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func mustCerts(t testing.TB, data []byte) []*x509.Certificate {
	t.Helper()
	certs, err := ParseCerts(data)
	if err != nil {
		t.Fatal(err)
	}
	return certs
}

func mustKeys(t testing.TB, data []byte) []crypto.Signer {
	t.Helper()
	keys, err := ParseKeys(data)
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

// haveOpenSSL skips the test when openssl is not installed; CI installs it.
func haveOpenSSL(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl not installed")
	}
	return p
}

// opensslVerify has openssl judge that leaf chains to trusted through the
// untrusted certificates, with RFC 5280 strictness.
func opensslVerify(t *testing.T, trusted *x509.Certificate, leaf *x509.Certificate, untrusted ...*x509.Certificate) {
	t.Helper()
	bin := haveOpenSSL(t)
	dir := t.TempDir()
	write := func(name string, certs ...*x509.Certificate) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, encodeCerts(certs...), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	args := []string{"verify", "-x509_strict", "-no-CApath", "-no-CAstore", "-CAfile", write("trusted.pem", trusted)}
	if len(untrusted) > 0 {
		args = append(args, "-untrusted", write("untrusted.pem", untrusted...))
	}
	args = append(args, write("leaf.pem", leaf))
	out, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil || !strings.Contains(string(out), ": OK") {
		t.Errorf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// opensslFingerprint is openssl's SHA-256 fingerprint of a certificate,
// lower-cased without colons: what k3s's docs say a custom CA's hash is.
func opensslFingerprint(t *testing.T, c *x509.Certificate) string {
	t.Helper()
	bin := haveOpenSSL(t)
	cmd := exec.Command(bin, "x509", "-noout", "-fingerprint", "-sha256")
	cmd.Stdin = bytes.NewReader(encodeCerts(c))
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	_, fp, _ := strings.Cut(strings.TrimSpace(string(out)), "=")
	return strings.ToLower(strings.ReplaceAll(fp, ":", ""))
}

func pkcs8PEM(t testing.TB, k crypto.Signer) []byte {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}
