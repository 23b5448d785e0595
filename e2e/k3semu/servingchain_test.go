package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// What chains a server presents and what its files hold across a
// cross-signed rotation and its completion, as k3s and dynamiclistener do
// (docs/k3s-behaviour.md#complete-cross-signed): the :6443 handshake
// presents dynamic-cert.json's tls.crt as it was issued, leaf files keep the
// bundle they were issued with, and only a re-issue (certificate rotate, or
// expiry) brings the current bundle.

// servedChain is the chain the server presents in a real TLS handshake.
func servedChain(t *testing.T, addr string) []*x509.Certificate {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates
}

// handshakeTrusting dials addr verifying the server against roots only.
func handshakeTrusting(addr string, roots ...*x509.Certificate) error {
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool})
	if err != nil {
		return err
	}
	return conn.Close()
}

// completing is what completes a cross-signed rotation: the intermediate
// and the new self-signed root, same keys; the cross-signed and old roots
// dropped.
func completing(cs crossSigned) []byte {
	return append(append([]byte{}, cs.Intermediate.PEM...), cs.SelfSigned.PEM...)
}

func raws(certs []*x509.Certificate) [][]byte {
	out := make([][]byte, len(certs))
	for i, c := range certs {
		out[i] = c.Raw
	}
	return out
}

func equalChains(a [][]byte, b [][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !bytes.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}

func pemCerts(t *testing.T, b []byte) [][]byte {
	t.Helper()
	certs, err := parseCertsPEM(b)
	if err != nil {
		t.Fatal(err)
	}
	return raws(certs)
}

// The completing load passes k3s's validation against the cross-signed set,
// once and twice cross-signed; what does not chain to a current root, or is
// a single certificate, is refused.
func TestValidateCompletingLoad(t *testing.T) {
	old := makeCA(t, "k3s-server-ca@0", nil, nil)
	once := crossSign(t, old, "server")
	// A second cross-signed rotation starts from the first one's self-signed
	// root and key (the script's "2nd certificate and 2nd key").
	twice := crossSign(t, once.SelfSigned, "server")
	for name, cs := range map[string]crossSigned{"once": once, "twice": twice} {
		cur := bootstrapData{
			"ServerCA":    {time.Now(), cs.Bundle},
			"ServerCAKey": {time.Now(), cs.Key},
			"ServiceKey":  {time.Now(), rsaKeyPEM(t)},
		}
		if err := validateBootstrap(cur, map[string][]byte{"ServerCA": completing(cs), "ServerCAKey": cs.Key}, false); err != nil {
			t.Errorf("%s cross-signed: completing load refused: %v", name, err)
		}
		// The key file may stay as it is: only its first key must match.
		if err := validateBootstrap(cur, map[string][]byte{"ServerCA": completing(cs)}, false); err != nil {
			t.Errorf("%s cross-signed: completing load with the current key refused: %v", name, err)
		}
		// Loading the completed set again (against itself) is accepted too.
		done := bootstrapData{"ServerCA": {time.Now(), completing(cs)}, "ServerCAKey": {time.Now(), cs.Key}, "ServiceKey": cur["ServiceKey"]}
		if err := validateBootstrap(done, map[string][]byte{"ServerCA": completing(cs), "ServerCAKey": cs.Key}, false); err != nil {
			t.Errorf("%s cross-signed: re-loading the completed set refused: %v", name, err)
		}

		// A new intermediate under a new, unrelated root does not chain.
		otherRoot := makeCA(t, "k3s-server-root@9", nil, nil)
		otherInter := makeCA(t, "k3s-server-ca@9", nil, otherRoot)
		err := validateBootstrap(cur, map[string][]byte{
			"ServerCA":    append(append([]byte{}, otherInter.PEM...), otherRoot.PEM...),
			"ServerCAKey": otherInter.KeyPEM,
		}, false)
		if err == nil || !strings.HasPrefix(err.Error(), "ServerCA: new CA cert cannot be verified using old CA chain: x509: certificate signed by unknown authority") {
			t.Errorf("%s cross-signed: non-chaining load: %v", name, err)
		}
		// Dropping the root too leaves a single certificate.
		err = validateBootstrap(cur, map[string][]byte{"ServerCA": cs.Intermediate.PEM, "ServerCAKey": cs.Key}, false)
		if err == nil || err.Error() != "ServerCA: new CA bundle contains only a single certificate but should include root or intermediate CA certificates" {
			t.Errorf("%s cross-signed: intermediate alone: %v", name, err)
		}
	}
	// Before any cross-signed rotation there is nothing to complete: the
	// would-be completed set does not chain to the default root.
	cur := bootstrapData{"ServerCA": {time.Now(), old.PEM}, "ServerCAKey": {time.Now(), old.KeyPEM}, "ServiceKey": {time.Now(), rsaKeyPEM(t)}}
	if err := validateBootstrap(cur, map[string][]byte{"ServerCA": completing(once), "ServerCAKey": once.Key}, false); err == nil {
		t.Error("a completed set was accepted against a default CA that never cross-signed it")
	}
}

// The whole course on a running server, default version (v1.33.5): a
// cross-signed rotation, the completing load through the CLI, a plain
// restart (the old chain is still served and still in the leaf files), then
// certificate rotate and a start (leaf + the 2-certificate bundle).
func TestServingChainAcrossCompletingLoad(t *testing.T) {
	root := t.TempDir()
	e, logs, _ := newTestEnv(t, root, nil)
	dataDir := root + "/s1"
	cfg := &nodeConfig{Token: "secret", DataDir: dataDir, NodeName: "s1"}
	s, stop := startServer(t, e, cfg)
	defer func() { stop() }()
	cli := func(args ...string) error {
		return cmdRotateCA(e, append([]string{"-d", dataDir, "-s", e.LocalURL}, args...))
	}
	old := caFromFiles(t, s.tlsDir+"/server-ca.crt", s.tlsDir+"/server-ca.key")

	// Cross-signed rotation; the serving cert is re-issued only because
	// certificate rotate asks for it.
	cs := crossSign(t, old, "server")
	stage := root + "/stage"
	mustWrite(t, stage+"/tls/server-ca.crt", cs.Bundle)
	mustWrite(t, stage+"/tls/server-ca.key", cs.Key)
	if err := cli("--path", stage); err != nil {
		t.Fatal(err)
	}
	stop()
	if err := cmdCertRotate(e, []string{"-d", dataDir, "--service", "k3s-server"}, time.Now()); err != nil {
		t.Fatal(err)
	}
	s, stop = startServer(t, e, cfg)
	crossChain := servedChain(t, e.ListenAddr)
	bundle := pemCerts(t, cs.Bundle)
	if len(crossChain) != 5 || !equalChains(raws(crossChain[1:]), bundle) ||
		!bytes.Equal(crossChain[0].AuthorityKeyId, cs.Intermediate.Cert.SubjectKeyId) {
		t.Fatalf("after the cross-signed rotation the handshake presents %d certs, want leaf + the 4-certificate bundle", len(crossChain))
	}
	if err := handshakeTrusting(e.ListenAddr, old.Cert); err != nil {
		t.Fatalf("a client trusting only the old root fails before completing: %v", err)
	}
	token := string(mustRead(t, s.dir+"/token"))
	apiLeaf := mustRead(t, s.tlsDir+"/serving-kube-apiserver.crt")
	if !equalChains(pemCerts(t, apiLeaf)[1:], bundle) {
		t.Fatal("serving-kube-apiserver.crt does not hold leaf + the cross-signed bundle")
	}

	// A completing set that does not chain to a current root is refused.
	bad := root + "/bad"
	otherRoot := makeCA(t, "k3s-server-root@9", nil, nil)
	otherInter := makeCA(t, "k3s-server-ca@9", nil, otherRoot)
	mustWrite(t, bad+"/tls/server-ca.crt", append(append([]byte{}, otherInter.PEM...), otherRoot.PEM...))
	mustWrite(t, bad+"/tls/server-ca.key", otherInter.KeyPEM)
	if err := cli("--path", bad); err == nil || !strings.Contains(err.Error(), "certificate error ID") {
		t.Fatalf("non-chaining completing set: %v", err)
	}
	assertContains(t, logs.String(), "failed to validate new CA certificates and keys: ServerCA: new CA cert cannot be verified using old CA chain")

	// The completing load is accepted.
	done := root + "/complete"
	mustWrite(t, done+"/tls/server-ca.crt", completing(cs))
	mustWrite(t, done+"/tls/server-ca.key", cs.Key)
	if err := cli("--path", done); err != nil {
		t.Fatalf("completing load refused: %v", err)
	}
	if fileExists(filepath.Join(s.tlsDir, servingCertTrigger)) {
		t.Fatal("v1.33.5 predates #12978: rotate-ca must not ask for a new serving cert")
	}

	// A plain restart: /cacerts and the agent copies take the 2-certificate
	// bundle, the token is unchanged, but the handshake and the server's
	// leaf files still carry the cross-signed and old roots.
	stop()
	s, stop = startServer(t, e, cfg)
	two := pemCerts(t, completing(cs))
	if !bytes.Equal(getCACerts(t, e.LocalURL), completing(cs)) {
		t.Fatal("/cacerts is not the completed bundle")
	}
	if got := string(mustRead(t, s.dir+"/token")); got != token {
		t.Fatalf("token changed by completing: %s -> %s", token, got)
	}
	if !equalChains(raws(servedChain(t, e.ListenAddr)), raws(crossChain)) {
		t.Fatal("a restart without a new serving cert must present the chain it was issued with")
	}
	if err := handshakeTrusting(e.ListenAddr, old.Cert); err != nil {
		t.Fatalf("the old root no longer verifies the unrenewed serving cert: %v", err)
	}
	if !bytes.Equal(mustRead(t, s.tlsDir+"/serving-kube-apiserver.crt"), apiLeaf) {
		t.Fatal("serving-kube-apiserver.crt re-issued though its issuer did not change")
	}
	if !equalChains(pemCerts(t, mustRead(t, s.agentDir+"/server-ca.crt")), two) ||
		!equalChains(pemCerts(t, mustRead(t, s.agentDir+"/serving-kubelet.crt"))[1:], two) {
		t.Fatal("the server's agent files do not hold the completed bundle")
	}
	// An agent joins through the stale chain (its leaf is the intermediate's)
	// and gets the completed bundle and a leaf with the completed chain.
	a, _, stopAgent := startAgent(t, e, &nodeConfig{Token: strings.TrimSpace(token), ServerURL: e.LocalURL, DataDir: root + "/a1", NodeName: "a1"})
	waitRegistered(t, a, "agent did not register")
	stopAgent()
	if !equalChains(pemCerts(t, mustRead(t, root+"/a1/agent/server-ca.crt")), two) ||
		!equalChains(pemCerts(t, mustRead(t, root+"/a1/agent/serving-kubelet.crt"))[1:], two) {
		t.Fatal("the agent's files do not hold the completed bundle")
	}

	// certificate rotate and a start: leaf + exactly the 2-certificate bundle,
	// a new key, and nothing served chains to the old root any more.
	stop()
	_, oldKey, err := readDynamicSecret(s.tlsDir + "/dynamic-cert.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := cmdCertRotate(e, []string{"-d", dataDir}, time.Now()); err != nil {
		t.Fatal(err)
	}
	s, stop = startServer(t, e, cfg)
	final := servedChain(t, e.ListenAddr)
	if len(final) != 3 || !equalChains(raws(final[1:]), two) || !bytes.Equal(final[0].AuthorityKeyId, cs.Intermediate.Cert.SubjectKeyId) {
		t.Fatalf("after certificate rotate the handshake presents %d certs, want leaf + intermediate + new root", len(final))
	}
	if publicKeysEqual(final[0].PublicKey, oldKey.Public()) {
		t.Fatal("a requested regeneration must use a new key")
	}
	if err := handshakeTrusting(e.ListenAddr, old.Cert); err == nil {
		t.Fatal("a client trusting only the old root still verifies the server")
	}
	if err := handshakeTrusting(e.ListenAddr, cs.SelfSigned.Cert); err != nil {
		t.Fatalf("the new root does not verify the server: %v", err)
	}
	if fileExists(filepath.Join(s.tlsDir, servingCertTrigger)) {
		t.Fatal("the trigger file was not consumed")
	}
	for _, f := range []string{"serving-kube-apiserver.crt", "client-admin.crt", "etcd/server-client.crt"} {
		certs := pemCerts(t, mustRead(t, filepath.Join(s.tlsDir, f)))
		if f == "serving-kube-apiserver.crt" && !equalChains(certs[1:], two) {
			t.Errorf("%s: leaf + %d certs, want leaf + the completed bundle", f, len(certs)-1)
		}
		if bytes.Equal(mustRead(t, filepath.Join(s.tlsDir, f)), apiLeaf) {
			t.Errorf("%s not re-issued by certificate rotate", f)
		}
	}
}

// #12978 (v1.33.6 on, inferred): the server that handled rotate-ca re-issues
// its serving cert at its next start, with the bundle just loaded; v1.33.5
// keeps the old CA's cert and chain.
func TestRotateCARegeneratesServingCertByVersion(t *testing.T) {
	for _, c := range []struct {
		version string
		reissue bool
	}{{"v1.33.5+k3s1", false}, {"v1.33.6+k3s1", true}, {"v1.35.0+k3s1", true}} {
		t.Run(c.version, func(t *testing.T) {
			root := t.TempDir()
			e, _, _ := newTestEnv(t, root, nil)
			mustWrite(t, filepath.Join(e.EmuDir, "version"), []byte(c.version))
			dataDir := root + "/s1"
			cfg := &nodeConfig{Token: "secret", DataDir: dataDir, NodeName: "s1"}
			s, stop := startServer(t, e, cfg)
			defer func() { stop() }()
			before := servedChain(t, e.ListenAddr)
			old := caFromFiles(t, s.tlsDir+"/server-ca.crt", s.tlsDir+"/server-ca.key")
			cs := crossSign(t, old, "server")
			stage := root + "/stage"
			mustWrite(t, stage+"/tls/server-ca.crt", cs.Bundle)
			mustWrite(t, stage+"/tls/server-ca.key", cs.Key)
			if err := cmdRotateCA(e, []string{"-d", dataDir, "-s", e.LocalURL, "--path", stage}); err != nil {
				t.Fatal(err)
			}
			if got := fileExists(filepath.Join(s.tlsDir, servingCertTrigger)); got != c.reissue {
				t.Fatalf("trigger written: %v, want %v", got, c.reissue)
			}
			stop()
			s, stop = startServer(t, e, cfg)
			after := servedChain(t, e.ListenAddr)
			if !c.reissue {
				if !equalChains(raws(after), raws(before)) {
					t.Fatal("serving cert re-issued by a CA change alone")
				}
				// Still valid for clients: the cross-signed bundle holds the old root.
				if err := handshakeTrusting(e.ListenAddr, cs.SelfSigned.Cert, old.Cert); err != nil {
					t.Fatal(err)
				}
				return
			}
			if len(after) != 5 || !equalChains(raws(after[1:]), pemCerts(t, cs.Bundle)) || !bytes.Equal(after[0].AuthorityKeyId, cs.Intermediate.Cert.SubjectKeyId) {
				t.Fatalf("serving cert not re-issued with the loaded bundle (%d certs)", len(after))
			}
			if fileExists(filepath.Join(s.tlsDir, servingCertTrigger)) {
				t.Fatal("trigger not consumed")
			}
		})
	}
}

// loadDynamicCert's rules on their own: a cached cert is served as stored
// whatever the current CA; expiry and a missing SAN re-sign it with the same
// key and the current bundle; a corrupt cache is replaced with a new key.
func TestDynamicCertRules(t *testing.T) {
	dir := t.TempDir()
	log := newLogger(&syncBuffer{})
	now := time.Now()
	oldRoot := makeCA(t, "k3s-server-ca@1", nil, nil)
	cs := crossSign(t, oldRoot, "server")
	caOf := func(bundle, key []byte) *signingCA {
		certs, _ := parseCertsPEM(bundle)
		keys, _ := parsePrivateKeysPEM(key)
		return &signingCA{Cert: certs[0], Bundle: bundle, Key: keys[0]}
	}
	crossCA := caOf(cs.Bundle, cs.Key)
	doneCA := caOf(completing(cs), cs.Key)
	dns := []string{"localhost"}

	d, err := loadDynamicCert(dir, crossCA, dns, nil, 120, now, log)
	if err != nil {
		t.Fatal(err)
	}
	issued := d.chain
	if !equalChains(issued[1:], pemCerts(t, cs.Bundle)) {
		t.Fatal("a new serving cert must carry the whole bundle")
	}
	stored, key, err := readDynamicSecret(filepath.Join(dir, "dynamic-cert.json"))
	if err != nil || !equalChains(raws(stored), issued) {
		t.Fatalf("tls.crt differs from the served chain: %v", err)
	}

	// Same intermediate, fewer certs: nothing to re-issue, the stored chain stays.
	d, err = loadDynamicCert(dir, doneCA, dns, nil, 120, now, log)
	if err != nil || !equalChains(d.chain, issued) || !equalChains(d.tlsCert.Certificate, issued) {
		t.Fatalf("completed bundle alone re-issued the serving cert: %v", err)
	}
	// Even a CA that did not sign it: served as stored.
	other := makeCA(t, "other", nil, nil)
	d, err = loadDynamicCert(dir, caOf(append(append([]byte{}, other.PEM...), other.PEM...), other.KeyPEM), dns, nil, 120, now, log)
	if err != nil || !equalChains(d.chain, issued) {
		t.Fatalf("a foreign CA re-issued the serving cert: %v", err)
	}

	// A missing SAN: re-signed, same key, current bundle, old names kept.
	d, err = loadDynamicCert(dir, doneCA, []string{"localhost", "s1.example"}, nil, 120, now, log)
	if err != nil || !equalChains(d.chain[1:], pemCerts(t, completing(cs))) || !publicKeysEqual(d.tlsCert.Leaf.PublicKey, key.Public()) ||
		!coversAll(d.tlsCert.Leaf, []string{"localhost", "s1.example"}, nil) {
		t.Fatalf("SAN re-sign: %v", err)
	}
	resigned := d.chain

	// Expiring within the threshold: renewed, same key, current bundle.
	d, err = loadDynamicCert(dir, crossCA, dns, nil, 120, now.Add(300*24*time.Hour), log)
	if err != nil || equalChains(d.chain, resigned) || !equalChains(d.chain[1:], pemCerts(t, cs.Bundle)) || !publicKeysEqual(d.tlsCert.Leaf.PublicKey, key.Public()) {
		t.Fatalf("renewal: %v", err)
	}

	// A corrupt cache: a new cert with a new key.
	if err := os.WriteFile(filepath.Join(dir, "dynamic-cert.json"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	d, err = loadDynamicCert(dir, doneCA, dns, nil, 120, now, log)
	if err != nil || publicKeysEqual(d.tlsCert.Leaf.PublicKey, key.Public()) || !equalChains(d.chain[1:], pemCerts(t, completing(cs))) {
		t.Fatalf("corrupt cache: %v", err)
	}
}

// After --force to an unrelated server CA, a v1.33.5 server still presents
// the old CA's serving cert: kubectl with the new CA and agents' CA
// validation fail until certificate rotate asks for a new one. From
// v1.33.6 the handling server asks for it itself.
func TestForcedRotationServingCertByVersion(t *testing.T) {
	for _, c := range []struct {
		version string
		fixed   bool
	}{{"v1.33.5+k3s1", false}, {"v1.33.6+k3s1", true}} {
		t.Run(c.version, func(t *testing.T) {
			root := t.TempDir()
			e, _, _ := newTestEnv(t, root, nil)
			mustWrite(t, filepath.Join(e.EmuDir, "version"), []byte(c.version))
			dataDir := root + "/s1"
			cfg := &nodeConfig{Token: "secret", DataDir: dataDir, NodeName: "s1"}
			_, stop := startServer(t, e, cfg)
			defer func() { stop() }()
			newRoot := makeCA(t, "other-root", nil, nil)
			inter := makeCA(t, "k3s-server-ca@9", nil, newRoot)
			stage := root + "/forced"
			mustWrite(t, stage+"/tls/server-ca.crt", append(append([]byte{}, inter.PEM...), newRoot.PEM...))
			mustWrite(t, stage+"/tls/server-ca.key", inter.KeyPEM)
			if err := cmdRotateCA(e, []string{"-d", dataDir, "-s", e.LocalURL, "--path", stage, "--force"}); err != nil {
				t.Fatal(err)
			}
			stop()
			_, stop = startServer(t, e, cfg)
			readyz := func() error {
				ke := *e
				ke.Stdout = &syncBuffer{}
				return cmdKubectl(&ke, []string{"get", "--raw", "/readyz"})
			}
			_, validateErr := validateServer(time.Now, e.LocalURL, joinToken{Username: "server", Password: "secret"}, newLogger(&syncBuffer{}))
			if c.fixed {
				if err := readyz(); err != nil {
					t.Fatalf("kubectl after a forced rotation: %v", err)
				}
				if validateErr != nil {
					t.Fatalf("agent CA validation: %v", validateErr)
				}
				return
			}
			err := readyz()
			if err == nil || !strings.HasPrefix(err.Error(), "Unable to connect to the server: tls: failed to verify certificate: x509: certificate signed by unknown authority") {
				t.Fatalf("kubectl against the old CA's serving cert: %v", err)
			}
			if validateErr == nil || !strings.HasPrefix(validateErr.Error(), "CA cert validation failed") {
				t.Fatalf("agent CA validation against the old CA's serving cert: %v", validateErr)
			}
			stop()
			if err := cmdCertRotate(e, []string{"-d", dataDir, "--service", "k3s-server"}, time.Now()); err != nil {
				t.Fatal(err)
			}
			_, stop = startServer(t, e, cfg)
			if err := readyz(); err != nil {
				t.Fatalf("kubectl after certificate rotate --service k3s-server: %v", err)
			}
		})
	}
}
