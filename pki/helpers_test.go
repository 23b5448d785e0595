package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// k3sDefaultCA makes a CA the way k3s does for itself (dynamiclistener
// NewSelfSignedCACert): ECDSA P-256, CN <prefix>@<unix>, serial 0, 10 years,
// CA:true, digitalSignature|keyEncipherment|certSign, Go's automatic SKI and
// no AKI.
func k3sDefaultCA(t testing.TB, cn string, now time.Time) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(0),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             now.UTC(),
		NotAfter:              now.Add(3650 * 24 * time.Hour).UTC(),
		KeyUsage:              x509.KeyUsageKeyEncipherment | x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err = EncodeKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return encodeCerts(c), keyPEM
}

var (
	defaultOnce sync.Once
	defaultSet  CASet
	saKeyOnce   sync.Once
	saKey       []byte
)

// serviceKey is an RSA 2048 service.key, made once per test binary.
func serviceKey(t testing.TB) []byte {
	saKeyOnce.Do(func() {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			t.Fatal(err)
		}
		saKey, _ = EncodeKey(k)
	})
	return bytes.Clone(saKey)
}

// k3sDefaultSet is the CA material of a fresh k3s server with default CAs,
// made a year ago, once per test binary.
func k3sDefaultSet(t testing.TB) CASet {
	t.Helper()
	defaultOnce.Do(func() {
		s := CASet{}
		made := time.Now().AddDate(-1, 0, 0)
		for _, ct := range CATypes {
			s[ct.CertFile], s[ct.KeyFile] = k3sDefaultCA(t, ct.DefaultCN+"@1700000000", made)
		}
		s[ServiceKeyFile] = serviceKey(t)
		defaultSet = s
	})
	return clone(defaultSet)
}

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
