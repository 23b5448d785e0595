package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func freePort(t *testing.T) string {
	t.Helper()
	return freePorts(t, 1)[0]
}

// freePorts returns n distinct free 127.0.0.1 ports, held open together
// while they are picked so that none is picked twice.
func freePorts(t *testing.T, n int) []string {
	t.Helper()
	var addrs []string
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		addrs = append(addrs, ln.Addr().String())
	}
	return addrs
}

// newTestEnv is an Env rooted in a temp dir, listening on a free 127.0.0.1
// port, with fast timers.
func newTestEnv(t *testing.T, root string, vars map[string]string) (*Env, *syncBuffer, *syncBuffer) {
	t.Helper()
	ports := freePorts(t, 2)
	addr := ports[0]
	logs, out := &syncBuffer{}, &syncBuffer{}
	return &Env{
		Getenv:            func(k string) string { return vars[k] },
		Hostname:          "testhost",
		SharedDir:         filepath.Join(root, "shared"),
		EmuDir:            filepath.Join(root, "etc-k3semu"),
		KubeconfigPath:    filepath.Join(root, "k3s.yaml"),
		ConfigFile:        filepath.Join(root, "config.yaml"),
		ListenAddr:        addr,
		LocalURL:          "https://" + addr,
		PeerListenAddr:    ports[1],
		Log:               newLogger(logs),
		Stdout:            out,
		HeartbeatInterval: 100 * time.Millisecond,
		RetryInterval:     100 * time.Millisecond,
		ReadyWindow:       2 * time.Second,
		TokenFileWait:     2 * time.Second,
	}, logs, out
}

// startServer prepares and serves a server until its API is ready (etcd
// quorum); stop it with the returned func.
func startServer(t *testing.T, e *Env, cfg *nodeConfig) (*server, func()) {
	t.Helper()
	s, stop := startServing(t, e, cfg)
	select {
	case <-s.apiReady:
	case <-time.After(5 * time.Second):
		stop()
		t.Fatal("server API not ready (etcd quorum)")
	}
	return s, stop
}

// startServing prepares a server and waits until it listens, not for its
// API to be ready.
func startServing(t *testing.T, e *Env, cfg *nodeConfig) (*server, func()) {
	t.Helper()
	s := newServer(e, cfg)
	if err := s.prepare(); err != nil {
		t.Fatalf("prepare: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.serve(ctx) }()
	select {
	case <-s.ready:
	case err := <-done:
		cancel()
		t.Fatalf("serve: %v", err)
	case <-time.After(5 * time.Second):
		cancel()
		t.Fatal("server not ready")
	}
	var once sync.Once
	return s, func() {
		once.Do(func() {
			cancel()
			<-done
		})
	}
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

// waitRegistered fails the test with why unless the agent registers with
// its server within 5 seconds.
func waitRegistered(t *testing.T, a *agent, why string) {
	t.Helper()
	select {
	case <-a.registered:
	case <-time.After(5 * time.Second):
		t.Fatal(why)
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustWrite(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func assertContains(t *testing.T, s, sub string) {
	t.Helper()
	if !strings.Contains(s, sub) {
		t.Fatalf("expected %q in:\n%s", sub, s)
	}
}

// testCA is CA material built independently of the code under test
// (crypto/x509 directly).
type testCA struct {
	Cert   *x509.Certificate
	Key    *ecdsa.PrivateKey
	PEM    []byte
	KeyPEM []byte
}

// makeCA issues a CA cert for key (new key when nil) and subject cn,
// signed by parent (self-signed when nil).
func makeCA(t *testing.T, cn string, key *ecdsa.PrivateKey, parent *testCA) *testCA {
	t.Helper()
	if key == nil {
		var err error
		if key, err = newECKey(); err != nil {
			t.Fatal(err)
		}
	}
	serial, _ := randomSerial()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(7300 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	issuer, signer := tmpl, key
	if parent != nil {
		issuer, signer = parent.Cert, parent.Key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, key.Public(), signer)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	keyPEM, _ := encodeKeyPEM(key)
	return &testCA{Cert: cert, Key: key, PEM: encodeCertPEM(der), KeyPEM: keyPEM}
}

func caFromFiles(t *testing.T, crt, key string) *testCA {
	t.Helper()
	certs, err := parseCertsPEM(mustRead(t, crt))
	if err != nil {
		t.Fatal(err)
	}
	keys, err := parsePrivateKeysPEM(mustRead(t, key))
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{Cert: certs[0], Key: keys[0].(*ecdsa.PrivateKey), PEM: encodeCertPEM(certs[0].Raw), KeyPEM: mustRead(t, key)}
}

// crossSigned is what contrib/util/rotate-default-ca-certs.sh stages for
// one CA type: bundle = intermediate + new root (self-signed) + new root
// (cross-signed by the old root) + old root; key = intermediate + new root.
type crossSigned struct {
	Bundle, Key  []byte
	SelfSigned   *testCA
	Intermediate *testCA
}

func crossSign(t *testing.T, old *testCA, typ string) crossSigned {
	t.Helper()
	newRoot := makeCA(t, "k3s-"+typ+"-root@1", nil, nil)
	xs := makeCA(t, "k3s-"+typ+"-root@1", newRoot.Key, old)
	inter := makeCA(t, "k3s-"+typ+"-ca@1", nil, newRoot)
	bundle := bytes.Join([][]byte{inter.PEM, newRoot.PEM, xs.PEM, old.PEM}, nil)
	return crossSigned{Bundle: bundle, Key: append(append([]byte{}, inter.KeyPEM...), newRoot.KeyPEM...), SelfSigned: newRoot, Intermediate: inter}
}

func rsaKeyPEM(t *testing.T) []byte {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := encodeKeyPEM(k)
	return b
}
