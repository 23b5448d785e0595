package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func preparedServer(t *testing.T) (*Env, *syncBuffer, *syncBuffer, string) {
	t.Helper()
	root := t.TempDir()
	e, logs, out := newTestEnv(t, root, nil)
	dataDir := filepath.Join(root, "data")
	if err := newServer(e, &nodeConfig{Token: "pw", DataDir: dataDir, NodeName: "s1", ClusterInit: true}).prepare(); err != nil {
		t.Fatal(err)
	}
	return e, logs, out, dataDir
}

func TestCertificateRotateDeletesSelectedFilesAndBacksUp(t *testing.T) {
	e, logs, _, dataDir := preparedServer(t)
	tlsDir := filepath.Join(dataDir, "server", "tls")
	now := time.Unix(1700000000, 0)
	if err := cmdCertRotate(e, []string{"-d", dataDir, "--service", "admin,kubelet", "--service=k3s-server,etcd"}, now); err != nil {
		t.Fatal(err)
	}
	backup := filepath.Join(dataDir, "server", "tls-1700000000")
	for _, f := range []string{"client-admin.crt", "client-admin.key", "etcd/client.crt", "server-ca.crt", "service.key", "client-kube-proxy.crt"} {
		if !fileExists(filepath.Join(backup, f)) {
			t.Errorf("backup lacks %s", f)
		}
	}
	// Agent files of the selected services are copied flat into the backup.
	if !fileExists(filepath.Join(backup, "client-kubelet.crt")) || !fileExists(filepath.Join(backup, "serving-kubelet.key")) {
		t.Error("agent kubelet files not backed up")
	}
	for _, f := range []string{"client-admin.crt", "client-admin.key", "client-kubelet.key", "serving-kubelet.key", "etcd/client.crt", "etcd/peer-server-client.key"} {
		if fileExists(filepath.Join(tlsDir, f)) {
			t.Errorf("%s not deleted", f)
		}
	}
	for _, f := range []string{"agent/client-kubelet.crt", "agent/serving-kubelet.key"} {
		if fileExists(filepath.Join(dataDir, f)) {
			t.Errorf("%s not deleted", f)
		}
	}
	for _, f := range []string{"server-ca.crt", "server-ca.key", "service.key", "client-kube-proxy.crt", "client-scheduler.crt"} {
		if !fileExists(filepath.Join(tlsDir, f)) {
			t.Errorf("%s deleted but not selected", f)
		}
	}
	if !fileExists(filepath.Join(tlsDir, "dynamic-cert-regenerate")) {
		t.Error("k3s-server did not write dynamic-cert-regenerate")
	}
	assertContains(t, logs.String(), "Successfully backed up certificates to "+backup+", please restart k3s server or agent to rotate certificates")

	// Next start: new keys for deleted files, trigger consumed.
	if err := newServer(e, &nodeConfig{Token: "pw", DataDir: dataDir, NodeName: "s1"}).prepare(); err != nil {
		t.Fatal(err)
	}
	if !fileExists(filepath.Join(tlsDir, "client-admin.crt")) || fileExists(filepath.Join(tlsDir, "dynamic-cert-regenerate")) {
		t.Fatal("restart did not regenerate")
	}
	if string(mustRead(t, filepath.Join(tlsDir, "client-admin.key"))) == string(mustRead(t, filepath.Join(backup, "client-admin.key"))) {
		t.Fatal("a deleted key must be replaced by a new one")
	}

	if err := cmdCertRotate(e, []string{"-d", dataDir, "--service", "certificate-authority"}, now); err == nil || err.Error() != "service certificate-authority is not recognized" {
		t.Fatalf("got %v", err)
	}
}

func TestCertificateRotateAgentOnly(t *testing.T) {
	root := t.TempDir()
	e, _, _ := newTestEnv(t, root, nil)
	agentDir := filepath.Join(root, "data", "agent")
	for _, f := range []string{"client-kubelet.crt", "client-kubelet.key", "client-kube-proxy.crt", "server-ca.crt"} {
		mustWrite(t, filepath.Join(agentDir, f), []byte("x"))
	}
	if err := cmdCertRotate(e, []string{"-d", filepath.Join(root, "data")}, time.Unix(1700000001, 0)); err != nil {
		t.Fatal(err)
	}
	if !fileExists(filepath.Join(agentDir, "tls-1700000001", "client-kubelet.crt")) || fileExists(filepath.Join(agentDir, "client-kubelet.crt")) || !fileExists(filepath.Join(agentDir, "server-ca.crt")) {
		t.Fatal("agent rotate: wrong files")
	}
	if fileExists(filepath.Join(root, "data", "server")) {
		t.Fatal("agent rotate created server dir")
	}
}

func TestCertificateCheckJSON(t *testing.T) {
	e, _, out, dataDir := preparedServer(t)
	if err := cmdCertCheck(e, []string{"-d", dataDir, "-o", "json"}, time.Now()); err != nil {
		t.Fatal(err)
	}
	var doc map[string][]map[string]any
	if err := json.Unmarshal([]byte(out.String()), &doc); err != nil {
		t.Fatalf("%v: %s", err, out.String())
	}
	certs := doc["Certificates"]
	if len(certs) == 0 {
		t.Fatal("no certificates")
	}
	sawLeaf, sawCA := false, false
	for _, c := range certs {
		for _, k := range []string{"Filename", "Subject", "Issuer", "Usages", "ExpiryTime", "ResidualTime", "Status"} {
			if _, ok := c[k]; !ok {
				t.Fatalf("missing %s in %v", k, c)
			}
		}
		if c["Status"] != "OK" {
			t.Errorf("status %v for %v", c["Status"], c["Filename"])
		}
		res := c["ResidualTime"].(float64) // nanoseconds
		if c["Subject"] == "system:admin" {
			sawLeaf = true
			if d := time.Duration(res); d < 364*24*time.Hour || d > 366*24*time.Hour {
				t.Errorf("leaf residual %v", d)
			}
		}
		if strings.HasPrefix(c["Subject"].(string), "k3s-client-ca@") {
			sawCA = true
		}
	}
	if !sawLeaf || !sawCA {
		t.Fatal("leaf and chain certs expected")
	}
	// 200 days later: leafs are within 120 days of expiry.
	out2 := &syncBuffer{}
	e.Stdout = out2
	if err := cmdCertCheck(e, []string{"-d", dataDir, "-o", "json", "--service", "admin"}, time.Now().Add(300*24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	assertContains(t, out2.String(), `"Status":"WARNING"`)
	out3 := &syncBuffer{}
	e.Stdout = out3
	if err := cmdCertCheck(e, []string{"-d", dataDir, "-o", "table", "--service", "admin"}, time.Now().Add(400*24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	assertContains(t, out3.String(), "FILENAME")
	assertContains(t, out3.String(), "EXPIRED")
}

func TestEtcdSnapshotSave(t *testing.T) {
	e, logs, _, dataDir := preparedServer(t)
	if err := cmdEtcdSnapshotSave(e, []string{"-d", dataDir, "--name", "pre-rotate", "--node-name", "s1"}, time.Unix(1700000002, 0)); err != nil {
		t.Fatal(err)
	}
	if !fileExists(filepath.Join(dataDir, "server/db/snapshots/pre-rotate-s1-1700000002")) {
		t.Fatal("snapshot missing")
	}
	assertContains(t, logs.String(), "Snapshot pre-rotate-s1-1700000002 saved.")
	os.RemoveAll(filepath.Join(dataDir, "server/db/etcd"))
	if err := cmdEtcdSnapshotSave(e, []string{"-d", dataDir}, time.Now()); err == nil || err.Error() != "etcd datastore disabled" {
		t.Fatalf("sqlite server: %v", err)
	}
}
