package main

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// currentDefault is a cluster with default single-cert CAs.
func currentDefault(t *testing.T) (bootstrapData, *testCA, []byte) {
	t.Helper()
	server := makeCA(t, "k3s-server-ca@0", nil, nil)
	client := makeCA(t, "k3s-client-ca@0", nil, nil)
	svc := rsaKeyPEM(t)
	now := time.Now()
	return bootstrapData{
		"ServerCA":    {now, server.PEM},
		"ServerCAKey": {now, server.KeyPEM},
		"ClientCA":    {now, client.PEM},
		"ClientCAKey": {now, client.KeyPEM},
		"ServiceKey":  {now, svc},
	}, server, svc
}

func TestValidateCrossSignedRotationAccepted(t *testing.T) {
	cur, server, svc := currentDefault(t)
	cs := crossSign(t, server, "server")
	newSvc := append(rsaKeyPEM(t), svc...)
	err := validateBootstrap(cur, map[string][]byte{"ServerCA": cs.Bundle, "ServerCAKey": cs.Key, "ServiceKey": newSvc}, false)
	if err != nil {
		t.Fatalf("cross-signed rotation rejected: %v", err)
	}
}

func TestValidateSameRootCustomCAAccepted(t *testing.T) {
	root := makeCA(t, "k3s-root-ca@1", nil, nil)
	inter := makeCA(t, "k3s-intermediate-ca@1", nil, root)
	oldServer := makeCA(t, "k3s-server-ca@1", nil, inter)
	newServer := makeCA(t, "k3s-server-ca@2", nil, inter)
	cur := bootstrapData{
		"ServerCA":    {time.Now(), bytes.Join([][]byte{oldServer.PEM, inter.PEM, root.PEM}, nil)},
		"ServerCAKey": {time.Now(), oldServer.KeyPEM},
		"ServiceKey":  {time.Now(), rsaKeyPEM(t)},
	}
	err := validateBootstrap(cur, map[string][]byte{
		"ServerCA":    bytes.Join([][]byte{newServer.PEM, inter.PEM, root.PEM}, nil),
		"ServerCAKey": newServer.KeyPEM,
	}, false)
	if err != nil {
		t.Fatalf("same-root custom CA rejected: %v", err)
	}
}

func TestValidateUnrelatedRootRejected(t *testing.T) {
	cur, _, _ := currentDefault(t)
	root := makeCA(t, "other-root", nil, nil)
	inter := makeCA(t, "k3s-server-ca@2", nil, root)
	err := validateBootstrap(cur, map[string][]byte{"ServerCA": append(inter.PEM, root.PEM...), "ServerCAKey": inter.KeyPEM}, false)
	if err == nil {
		t.Fatal("unrelated root accepted")
	}
	if got, want := err.Error(), "ServerCA: new CA cert cannot be verified using old CA chain: x509: certificate signed by unknown authority"; !strings.HasPrefix(got, want) {
		t.Fatalf("got %q want prefix %q", got, want)
	}
}

func TestValidateSingleCertRejected(t *testing.T) {
	cur, _, _ := currentDefault(t)
	ca := makeCA(t, "k3s-client-ca@2", nil, nil)
	err := validateBootstrap(cur, map[string][]byte{"ClientCA": ca.PEM, "ClientCAKey": ca.KeyPEM}, false)
	want := "ClientCA: new CA bundle contains only a single certificate but should include root or intermediate CA certificates"
	if err == nil || err.Error() != want {
		t.Fatalf("got %v want %q", err, want)
	}
	// Re-staging the unchanged default CA fails the same way.
	err = validateBootstrap(cur, map[string][]byte{"ClientCA": cur["ClientCA"].Content}, false)
	if err == nil || !strings.Contains(err.Error(), "only a single certificate") {
		t.Fatalf("re-staged default CA: %v", err)
	}
}

func TestValidateMismatchedKeyRejected(t *testing.T) {
	cur, server, _ := currentDefault(t)
	cs := crossSign(t, server, "server")
	wrong := makeCA(t, "x", nil, nil)
	err := validateBootstrap(cur, map[string][]byte{"ServerCA": cs.Bundle, "ServerCAKey": wrong.KeyPEM}, false)
	want := "ServerCAKey: new CA cert and key cannot be loaded as X590KeyPair: tls: private key does not match public key"
	if err == nil || err.Error() != want {
		t.Fatalf("got %v want %q", err, want)
	}
	// Bundle supplied without its key: checked against the current key.
	err = validateBootstrap(cur, map[string][]byte{"ServerCA": cs.Bundle}, false)
	if err == nil || !strings.HasPrefix(err.Error(), "ServerCAKey: new CA cert and key cannot be loaded as X590KeyPair") {
		t.Fatalf("bundle without key: %v", err)
	}
	// Key order matters: the first key must match the first cert.
	swapped := append(append([]byte{}, cs.SelfSigned.KeyPEM...), cs.Intermediate.KeyPEM...)
	err = validateBootstrap(cur, map[string][]byte{"ServerCA": cs.Bundle, "ServerCAKey": swapped}, false)
	if err == nil || !strings.Contains(err.Error(), "X590KeyPair") {
		t.Fatalf("swapped keys: %v", err)
	}
}

func TestValidateServiceKeyRejectedWithoutOldFirstKey(t *testing.T) {
	cur, _, svc := currentDefault(t)
	err := validateBootstrap(cur, map[string][]byte{"ServiceKey": rsaKeyPEM(t)}, false)
	want := "ServiceKey: old ServiceAccount signing key not in new ServiceAccount key list"
	if err == nil || err.Error() != want {
		t.Fatalf("got %v want %q", err, want)
	}
	if err := validateBootstrap(cur, map[string][]byte{"ServiceKey": append(rsaKeyPEM(t), svc...)}, false); err != nil {
		t.Fatalf("new key + old key rejected: %v", err)
	}
}

func TestValidateSeveralErrorsAggregated(t *testing.T) {
	cur, _, _ := currentDefault(t)
	ca := makeCA(t, "single", nil, nil)
	err := validateBootstrap(cur, map[string][]byte{"ServerCA": ca.PEM, "ServerCAKey": ca.KeyPEM, "ServiceKey": rsaKeyPEM(t)}, false)
	if err == nil || !strings.HasPrefix(err.Error(), "[ServerCA: new CA bundle contains only a single certificate") ||
		!strings.Contains(err.Error(), ", ServiceKey: old ServiceAccount signing key not in new ServiceAccount key list]") {
		t.Fatalf("got %v", err)
	}
}

// caCertReplace is the server side: wrapper text, --force, nothing on disk.
func TestCACertReplaceWrapperAndForce(t *testing.T) {
	root := t.TempDir()
	e, logs, _ := newTestEnv(t, root, nil)
	s := newServer(e, &nodeConfig{Token: "secret", DataDir: root + "/data", NodeName: "s1"})
	if err := s.prepare(); err != nil {
		t.Fatal(err)
	}
	onDisk := mustRead(t, s.tlsDir+"/server-ca.crt")
	single := makeCA(t, "k3s-server-ca@9", nil, nil)
	payload := bootstrapData{"ServerCA": {time.Now(), single.PEM}, "ServerCAKey": {time.Now(), single.KeyPEM}}

	err := s.caCertReplace(payload, false)
	want := "failed to validate new CA certificates and keys: ServerCA: new CA bundle contains only a single certificate but should include root or intermediate CA certificates"
	if err == nil || err.Error() != want {
		t.Fatalf("got %v want %q", err, want)
	}
	if err := s.caCertReplace(payload, true); err != nil {
		t.Fatalf("forced: %v", err)
	}
	assertContains(t, logs.String(), "Save of CA certificates and keys forced, ignoring validation errors: ServerCA: new CA bundle contains only a single certificate")
	assertContains(t, logs.String(), "certificate: Cluster Certificate Authority data has been updated, k3s must be restarted.")
	assertContains(t, logs.String(), "Using current data for ClientCA: ")
	if !bytes.Equal(onDisk, mustRead(t, s.tlsDir+"/server-ca.crt")) {
		t.Fatal("rotate-ca must not change files on disk")
	}
	unlock, _ := s.ds.lock()
	data, err := s.ds.loadBootstrap("secret")
	unlock()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(data["ServerCA"].Content, single.PEM) {
		t.Fatal("forced save did not reach the datastore")
	}
}
