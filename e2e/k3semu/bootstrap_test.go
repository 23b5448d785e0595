package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestReconcileThreeSecondRule(t *testing.T) {
	dir := t.TempDir()
	dsTime := time.Now().Add(-time.Hour).Truncate(time.Second)
	data := bootstrapData{
		"ServerCA":   {dsTime, []byte("datastore server ca\n")},
		"ClientCA":   {dsTime, []byte("datastore client ca\n")},
		"ServiceKey": {dsTime, []byte("same\n")},
		"PasswdFile": {dsTime, []byte("pw,server,server,k3s:server\n")},
	}
	serverCA := filepath.Join(dir, "tls/server-ca.crt")
	clientCA := filepath.Join(dir, "tls/client-ca.crt")
	svc := filepath.Join(dir, "tls/service.key")
	mustWrite(t, serverCA, []byte("old server ca\n"))
	mustWrite(t, clientCA, []byte("old client ca\n"))
	mustWrite(t, svc, []byte("same\n"))
	// Disk older than the datastore, and 2 s newer (within the skew): overwritten.
	os.Chtimes(serverCA, dsTime.Add(-time.Minute), dsTime.Add(-time.Minute))
	os.Chtimes(clientCA, dsTime.Add(2*time.Second), dsTime.Add(2*time.Second))
	svcTime := dsTime.Add(time.Hour)
	os.Chtimes(svc, svcTime, svcTime) // equal content: never touched

	logs := &syncBuffer{}
	if err := reconcileBootstrap(dir, data, newLogger(logs)); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{serverCA, clientCA} {
		info, _ := os.Stat(p)
		if !info.ModTime().Equal(dsTime) {
			t.Errorf("%s mtime %v, want datastore timestamp %v", p, info.ModTime(), dsTime)
		}
		assertContains(t, logs.String(), p+" will be updated from the datastore")
	}
	if !bytes.Equal(mustRead(t, serverCA), data["ServerCA"].Content) {
		t.Fatal("server-ca.crt not rewritten")
	}
	if info, _ := os.Stat(svc); !info.ModTime().Equal(svcTime) {
		t.Fatal("an equal file must not be rewritten")
	}
	if b, err := os.ReadFile(filepath.Join(dir, "cred/passwd")); err != nil || string(b) != "pw,server,server,k3s:server\n" {
		t.Fatalf("missing file not restored: %q %v", b, err)
	}

	// Disk 3 s or more newer than the datastore and different: fatal, nothing written.
	mustWrite(t, clientCA, []byte("edited by hand\n"))
	os.Chtimes(clientCA, dsTime.Add(3*time.Second), dsTime.Add(3*time.Second))
	err := reconcileBootstrap(dir, data, newLogger(logs))
	want := clientCA + " newer than datastore and could cause a cluster outage. Remove the file(s) from disk and restart to be recreated from datastore."
	if err == nil || err.Error() != want {
		t.Fatalf("got %v, want %q", err, want)
	}
	if string(mustRead(t, clientCA)) != "edited by hand\n" {
		t.Fatal("fatal reconcile must not write")
	}
}

func TestDatastoreEncryption(t *testing.T) {
	ds := &datastore{dir: t.TempDir()}
	data := bootstrapData{"ServerCA": {time.Now().UTC().Truncate(time.Second), []byte("ca")}}
	if err := ds.saveBootstrap("right", data); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(filepath.Join(ds.dir, "bootstrap", storageKey("right")))
	if bytes.Contains(raw, []byte("ca\"")) || !strings.Contains(string(raw), ":") {
		t.Fatalf("not encrypted as <salt>:<b64>: %q", raw)
	}
	if _, err := decrypt("wrong", string(raw)); err == nil {
		t.Fatal("decrypt with a wrong password succeeded")
	}
	got, err := ds.loadBootstrap("right")
	if err != nil || string(got["ServerCA"].Content) != "ca" {
		t.Fatalf("load: %v %v", got, err)
	}
	if _, err := ds.loadBootstrap("wrong"); !errors.Is(err, errBootstrapOtherPass) || err.Error() != "bootstrap data already found and encrypted with different token" {
		t.Fatalf("wrong password: %v", err)
	}
	if err := ds.saveBootstrap("wrong", data); !errors.Is(err, errBootstrapOtherPass) {
		t.Fatalf("second password saved: %v", err)
	}
	if _, err := (&datastore{dir: t.TempDir()}).loadBootstrap("x"); !errors.Is(err, errBootstrapNotFound) {
		t.Fatalf("empty datastore: %v", err)
	}
	if storageKey("right") != sum([]byte("right"))[:12] {
		t.Fatal("storage key must be hex(sha256(password))[:12]")
	}
}

func TestServerWithDifferentTokenFails(t *testing.T) {
	root := t.TempDir()
	e, _, _ := newTestEnv(t, root, nil)
	if err := newServer(e, &nodeConfig{Token: "one", DataDir: root + "/a", NodeName: "a"}).prepare(); err != nil {
		t.Fatal(err)
	}
	err := newServer(e, &nodeConfig{Token: "two", DataDir: root + "/b", NodeName: "b"}).prepare()
	if err == nil || !strings.Contains(err.Error(), "bootstrap data already found and encrypted with different token") {
		t.Fatalf("got %v", err)
	}
}

func TestCustomCAInstallKept(t *testing.T) {
	root := t.TempDir()
	e, _, _ := newTestEnv(t, root, nil)
	dataDir := root + "/data"
	tlsDir := dataDir + "/server/tls"
	rootCA := makeCA(t, "k3s-root-ca@1", nil, nil)
	inter := makeCA(t, "k3s-intermediate-ca@1", nil, rootCA)
	for _, stem := range []string{"server-ca", "client-ca", "request-header-ca", "etcd/server-ca", "etcd/peer-ca"} {
		ca := makeCA(t, "k3s-"+strings.ReplaceAll(stem, "/", "-")+"@1", nil, inter)
		mustWrite(t, filepath.Join(tlsDir, stem+".crt"), bytes.Join([][]byte{ca.PEM, inter.PEM, rootCA.PEM}, nil))
		mustWrite(t, filepath.Join(tlsDir, stem+".key"), ca.KeyPEM)
	}
	bundle := mustRead(t, tlsDir+"/server-ca.crt")
	if err := newServer(e, &nodeConfig{Token: "pw", DataDir: dataDir, NodeName: "n"}).prepare(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(bundle, mustRead(t, tlsDir+"/server-ca.crt")) {
		t.Fatal("custom server CA replaced")
	}
	if got, want := strings.TrimSpace(string(mustRead(t, dataDir+"/server/token"))), "K10"+sum(rootCA.Cert.Raw)+"::server:pw"; got != want {
		t.Fatalf("token %s, want root fingerprint %s", got, want)
	}
	if !fileExists(tlsDir + "/service.key") {
		t.Fatal("service.key not generated")
	}
}
