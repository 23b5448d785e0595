package main

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestCACertsCachedPerProcess(t *testing.T) {
	root := t.TempDir()
	e, _, _ := newTestEnv(t, root, nil)
	s, stop := startServer(t, e, &nodeConfig{Token: "secret", DataDir: root + "/s1", NodeName: "s1"})
	defer stop()
	first := getCACerts(t, e.LocalURL)
	mustWrite(t, s.tlsDir+"/server-ca.crt", append(append([]byte{}, first...), first...))
	if !bytes.Equal(getCACerts(t, e.LocalURL), first) {
		t.Fatal("/cacerts must be cached for the life of the process")
	}
}

// Agents keep working across a cross-signed rotation (their old root still
// verifies the new chain), and lose the cluster after a forced rotation to
// an unrelated client CA until they restart.
func TestAgentAcrossRotations(t *testing.T) {
	root := t.TempDir()
	e, _, _ := newTestEnv(t, root, nil)
	dataDir := root + "/s1"
	cfg := &nodeConfig{Token: "secret", DataDir: dataDir, NodeName: "s1"}
	s, stop := startServer(t, e, cfg)
	defer func() { stop() }()
	token := strings.TrimSpace(string(mustRead(t, s.dir+"/token")))
	a, _, stopAgent := startAgent(t, e, &nodeConfig{Token: token, ServerURL: e.LocalURL, DataDir: root + "/a1", NodeName: "a1"})
	defer stopAgent()
	waitRegistered(t, a, "agent did not register")
	heartbeatSince := func(since time.Time) func() bool {
		return func() bool {
			nodes, _ := s.ds.listNodes()
			for _, n := range nodes {
				if n.Name == "a1" && n.LastHeartbeat.After(since) {
					return true
				}
			}
			return false
		}
	}

	// Cross-signed rotation of the server and client CAs.
	stage := root + "/stage"
	for _, stem := range []string{"server-ca", "client-ca"} {
		cs := crossSign(t, caFromFiles(t, s.tlsDir+"/"+stem+".crt", s.tlsDir+"/"+stem+".key"), strings.TrimSuffix(stem, "-ca"))
		mustWrite(t, stage+"/tls/"+stem+".crt", cs.Bundle)
		mustWrite(t, stage+"/tls/"+stem+".key", cs.Key)
	}
	if err := cmdRotateCA(e, []string{"-d", dataDir, "-s", e.LocalURL, "--path", stage}); err != nil {
		t.Fatal(err)
	}
	stop()
	s, stop = startServer(t, e, cfg)
	restarted := time.Now()
	waitFor(t, 3*time.Second, "heartbeat after cross-signed rotation", heartbeatSince(restarted))

	// Forced rotation of the client CA to an unrelated root.
	forced := root + "/forced"
	newRoot := makeCA(t, "other-root", nil, nil)
	inter := makeCA(t, "k3s-client-ca@9", nil, newRoot)
	mustWrite(t, forced+"/tls/client-ca.crt", append(append([]byte{}, inter.PEM...), newRoot.PEM...))
	mustWrite(t, forced+"/tls/client-ca.key", inter.KeyPEM)
	err := cmdRotateCA(e, []string{"-d", dataDir, "-s", e.LocalURL, "--path", forced})
	if err == nil || !strings.Contains(err.Error(), "certificate error ID") {
		t.Fatalf("unforced unrelated root: %v", err)
	}
	if err := cmdRotateCA(e, []string{"-d", dataDir, "-s", e.LocalURL, "--path", forced, "--force"}); err != nil {
		t.Fatal(err)
	}
	stop()
	s, stop = startServer(t, e, cfg)
	restarted = time.Now()
	time.Sleep(600 * time.Millisecond)
	if heartbeatSince(restarted)() {
		t.Fatal("an agent with a kubelet cert from the replaced client CA must not heartbeat")
	}
	// Restarting the agent with its old token fails: the server CA root
	// changed with the cross-signed rotation. With the new token it recovers.
	stopAgent()
	a2, logs2, stopAgent2 := startAgent(t, e, &nodeConfig{Token: token, ServerURL: e.LocalURL, DataDir: root + "/a1", NodeName: "a1"})
	waitFor(t, 3*time.Second, "stale token rejected", func() bool {
		return strings.Contains(logs2.String(), "token CA hash does not match")
	})
	stopAgent2()
	select {
	case <-a2.registered:
		t.Fatal("agent with a stale token registered")
	default:
	}
	newToken := strings.TrimSpace(string(mustRead(t, s.dir+"/token")))
	if newToken == token {
		t.Fatal("token hash unchanged after a server CA rotation")
	}
	a3, _, stopAgent3 := startAgent(t, e, &nodeConfig{Token: newToken, ServerURL: e.LocalURL, DataDir: root + "/a1", NodeName: "a1"})
	defer stopAgent3()
	waitRegistered(t, a3, "restarted agent did not register")
}
