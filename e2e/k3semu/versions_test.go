package main

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestSince(t *testing.T) {
	fixes := map[int]int{29: 15, 30: 11, 31: 7, 32: 3}
	for v, want := range map[string]bool{
		"v1.28.15+k3s1": false, "v1.29.14+k3s1": false, "v1.29.15+k3s1": true,
		"v1.31.6+k3s1": false, "v1.31.7+k3s2": true, "v1.32.3+k3s1": true, "v1.33.0+k3s1": true,
	} {
		if got := since(v, fixes); got != want {
			t.Errorf("%s: %v", v, got)
		}
	}
}

func TestOldVersionsLackCommands(t *testing.T) {
	root := t.TempDir()
	e, _, _ := newTestEnv(t, root, nil)
	mustWrite(t, filepath.Join(e.EmuDir, "version"), []byte("v1.25.6+k3s1"))
	if code := run(context.Background(), e, []string{"k3s", "certificate", "rotate-ca", "--path", root}); code != 3 {
		t.Fatalf("rotate-ca on v1.25.6: exit %d", code)
	}
	if code := run(context.Background(), e, []string{"k3s", "certificate", "check"}); code != 3 {
		t.Fatalf("check on v1.25.6: exit %d", code)
	}
	mustWrite(t, filepath.Join(e.EmuDir, "version"), []byte("v1.30.8+k3s1"))
	err := cmdCertCheck(e, []string{"-d", root, "-o", "json"}, time.Now())
	if err == nil || !strings.Contains(err.Error(), "flag provided but not defined: -o") {
		t.Fatalf("check -o on v1.30.8: %v", err)
	}
	mustWrite(t, filepath.Join(e.EmuDir, "version"), []byte("v1.30.9+k3s1"))
	if err := cmdCertCheck(e, []string{"-d", root, "-o", "json"}, time.Now()); err != nil {
		t.Fatalf("check -o on v1.30.9: %v", err)
	}
}

func TestPartialRotateBug(t *testing.T) {
	cur, _, svc := currentDefault(t)
	supplied := map[string][]byte{"ServiceKey": append(rsaKeyPEM(t), svc...)}
	if err := validateBootstrap(cur, supplied, false); err != nil {
		t.Fatalf("fixed release: %v", err)
	}
	err := validateBootstrap(cur, supplied, true)
	if err == nil || !strings.Contains(err.Error(), "ServerCA: new CA bundle contains only a single certificate") {
		t.Fatalf("affected release: %v", err)
	}
	if !partialRotateBug("v1.30.4+k3s1") || partialRotateBug("v1.30.5+k3s1") {
		t.Fatal("#10689 version gate")
	}
}

func TestJoinedServerRotationBug(t *testing.T) {
	for _, c := range []struct {
		version string
		applied bool
	}{{"v1.31.6+k3s1", false}, {"v1.31.7+k3s1", true}} {
		t.Run(c.version, func(t *testing.T) {
			root := t.TempDir()
			e1, _, _ := newTestEnv(t, root, nil)
			s1, stop := startServer(t, e1, &nodeConfig{Token: "secret", DataDir: root + "/s1", NodeName: "s1", ClusterInit: true})
			defer stop()
			token := strings.TrimSpace(string(mustRead(t, s1.dir+"/token")))
			e2, _, _ := newTestEnv(t, root, nil)
			e2.EmuDir = root + "/etc2"
			mustWrite(t, e2.EmuDir+"/version", []byte(c.version))
			cfg2 := &nodeConfig{Token: token, ServerURL: e1.LocalURL, DataDir: root + "/s2", NodeName: "s2"}
			if err := newServer(e2, cfg2).prepare(); err != nil {
				t.Fatal(err)
			}
			stage := root + "/stage"
			cs := crossSign(t, caFromFiles(t, s1.tlsDir+"/client-ca.crt", s1.tlsDir+"/client-ca.key"), "client")
			mustWrite(t, stage+"/tls/client-ca.crt", cs.Bundle)
			mustWrite(t, stage+"/tls/client-ca.key", cs.Key)
			if err := cmdRotateCA(e1, []string{"-d", root + "/s1", "-s", e1.LocalURL, "--path", stage}); err != nil {
				t.Fatal(err)
			}
			if err := newServer(e2, cfg2).prepare(); err != nil {
				t.Fatal(err)
			}
			got := bytes.Equal(mustRead(t, root+"/s2/server/tls/client-ca.crt"), cs.Bundle)
			if got != c.applied {
				t.Fatalf("rotation applied on joined server = %v, want %v", got, c.applied)
			}
		})
	}
}
