package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

func getCACerts(t *testing.T, url string) []byte {
	t.Helper()
	b, err := httpGet(tlsClient(time.Now, &tls.Config{InsecureSkipVerify: true}), url+"/cacerts", "", "")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// startAgent runs an agent in-process; cancel via the returned func.
func startAgent(t *testing.T, base *Env, cfg *nodeConfig) (*agent, *syncBuffer, func()) {
	t.Helper()
	e := *base
	logs := &syncBuffer{}
	e.Log = newLogger(logs)
	a, err := newAgent(&e, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.run(ctx); close(done) }()
	var once sync.Once
	return a, logs, func() { once.Do(func() { cancel(); <-done }) }
}

func kubectlNodes(t *testing.T, e *Env) map[string]string {
	t.Helper()
	out := &syncBuffer{}
	ke := *e
	ke.Stdout = out
	if err := cmdKubectl(&ke, []string{"get", "nodes", "-o", "json"}); err != nil {
		t.Fatal(err)
	}
	var list struct {
		Items []struct {
			Metadata struct{ Name string }
			Status   struct {
				Conditions []struct{ Type, Status string }
			}
		}
	}
	if err := json.Unmarshal([]byte(out.String()), &list); err != nil {
		t.Fatal(err)
	}
	nodes := map[string]string{}
	for _, n := range list.Items {
		for _, c := range n.Status.Conditions {
			if c.Type == "Ready" {
				nodes[n.Metadata.Name] = c.Status
			}
		}
	}
	return nodes
}

func TestServerAndAgentJoin(t *testing.T) {
	root := t.TempDir()
	e, _, _ := newTestEnv(t, root, nil)
	s, stop := startServer(t, e, &nodeConfig{Token: "secret", DataDir: root + "/s1", NodeName: "s1", ClusterInit: true})
	defer stop()

	ca := mustRead(t, s.tlsDir+"/server-ca.crt")
	token := strings.TrimSpace(string(mustRead(t, s.dir+"/token")))
	if token != "K10"+sum(ca)+"::server:secret" {
		t.Fatalf("server/token = %s", token)
	}
	if info, _ := os.Stat(s.dir + "/token"); info.Mode().Perm() != 0o600 {
		t.Fatalf("token mode %v", info.Mode())
	}
	if l, err := os.Readlink(s.dir + "/node-token"); err != nil || l != s.dir+"/token" {
		t.Fatalf("node-token: %s %v", l, err)
	}
	if got := string(mustRead(t, s.dir+"/cred/passwd")); got != "secret,server,server,k3s:server\nsecret,node,node,k3s:agent\n" {
		t.Fatalf("passwd %q", got)
	}
	if !bytes.Equal(getCACerts(t, e.LocalURL), ca) {
		t.Fatal("/cacerts differs from server-ca.crt")
	}
	if b, err := httpGet(tlsClient(time.Now, &tls.Config{RootCAs: poolFromPEM(ca)}), e.LocalURL+"/ping", "", ""); err != nil || string(b) != "pong" {
		t.Fatalf("/ping through the server CA: %q %v", b, err)
	}

	// A good agent (full token) registers and gets its files.
	good, _, stopGood := startAgent(t, e, &nodeConfig{Token: token, ServerURL: e.LocalURL, DataDir: root + "/a1", NodeName: "a1"})
	defer stopGood()
	// An agent whose token pins another CA never registers.
	badToken := "K10" + strings.Repeat("0", 64) + "::server:secret"
	bad, badLogs, stopBad := startAgent(t, e, &nodeConfig{Token: badToken, ServerURL: e.LocalURL, DataDir: root + "/a2", NodeName: "a2"})
	defer stopBad()
	// A short-token agent joins with a warning.
	short, shortLogs, stopShort := startAgent(t, e, &nodeConfig{Token: "secret", ServerURL: e.LocalURL, DataDir: root + "/a3", NodeName: "a3"})
	defer stopShort()

	for _, a := range []*agent{good, short} {
		waitRegistered(t, a, "agent "+a.cfg.NodeName+" did not register")
	}
	assertContains(t, shortLogs.String(), "the token does not include a CA hash")
	if !bytes.Equal(mustRead(t, root+"/a1/agent/server-ca.crt"), ca) || !bytes.Equal(mustRead(t, root+"/a1/agent/client-ca.crt"), mustRead(t, s.tlsDir+"/client-ca.crt")) {
		t.Fatal("agent CA files differ from the server's")
	}
	for _, f := range []string{"client-kubelet", "serving-kubelet", "client-kube-proxy", "client-k3s-controller"} {
		if _, err := tls.LoadX509KeyPair(root+"/a1/agent/"+f+".crt", root+"/a1/agent/"+f+".key"); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
	waitFor(t, 3*time.Second, "mismatch logged twice", func() bool {
		return strings.Count(badLogs.String(), "token CA hash does not match") >= 2
	})
	assertContains(t, badLogs.String(), "Failed to validate connection to cluster at "+e.LocalURL+": token CA hash does not match the Cluster CA certificate hash: "+strings.Repeat("0", 64)+" != "+sum(ca))
	select {
	case <-bad.registered:
		t.Fatal("agent with a wrong CA hash registered")
	default:
	}
	if fileExists(root + "/a2/agent/server-ca.crt") {
		t.Fatal("agent with a wrong CA hash downloaded files")
	}

	nodes := kubectlNodes(t, e)
	for _, n := range []string{"s1", "a1", "a3"} {
		if nodes[n] != "True" {
			t.Errorf("node %s Ready=%q (%v)", n, nodes[n], nodes)
		}
	}
	if _, ok := nodes["a2"]; ok {
		t.Error("a2 is in the node list")
	}
	out := &syncBuffer{}
	ke := *e
	ke.Stdout = out
	if err := cmdKubectl(&ke, []string{"get", "--raw=/readyz"}); err != nil || strings.TrimSpace(out.String()) != "ok" {
		t.Fatalf("readyz %q %v", out.String(), err)
	}

	// A stopped agent goes NotReady after the ready window.
	stopShort()
	waitFor(t, 4*time.Second, "a3 NotReady", func() bool { return kubectlNodes(t, e)["a3"] == "False" })

	// The agent survives a server restart.
	stop()
	_, stop = startServer(t, e, &nodeConfig{Token: "secret", DataDir: root + "/s1", NodeName: "s1", ClusterInit: true})
	before := time.Now()
	waitFor(t, 3*time.Second, "a1 heartbeat after server restart", func() bool {
		nodes, _ := s.ds.listNodes()
		for _, n := range nodes {
			if n.Name == "a1" && n.LastHeartbeat.After(before) {
				return true
			}
		}
		return false
	})
	stop()
	// kubectl fails while the server is down.
	if err := cmdKubectl(&ke, []string{"get", "nodes"}); err == nil || !strings.Contains(err.Error(), "was refused") {
		t.Fatalf("kubectl with server down: %v", err)
	}
}

func TestJoiningServerReadsDatastore(t *testing.T) {
	root := t.TempDir()
	e1, _, _ := newTestEnv(t, root, nil)
	s1, stop := startServer(t, e1, &nodeConfig{Token: "secret", DataDir: root + "/s1", NodeName: "s1", ClusterInit: true})
	defer stop()
	token := strings.TrimSpace(string(mustRead(t, s1.dir+"/token")))

	e2, _, _ := newTestEnv(t, root, nil)
	e2.KubeconfigPath = root + "/k3s-2.yaml"
	s2 := newServer(e2, &nodeConfig{Token: token, ServerURL: e1.LocalURL, DataDir: root + "/s2", NodeName: "s2"})
	if err := s2.prepare(); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"server-ca.crt", "client-ca.key", "etcd/peer-ca.crt", "service.key"} {
		if !bytes.Equal(mustRead(t, s1.tlsDir+"/"+f), mustRead(t, s2.tlsDir+"/"+f)) {
			t.Errorf("%s differs on the joined server", f)
		}
	}
	if !fileExists(root + "/s2/server/db/etcd") {
		t.Error("joined server must use embedded etcd")
	}
	if string(mustRead(t, s2.dir+"/token")) != token+"\n" {
		t.Error("joined server token differs")
	}

	// A secure token with a wrong hash cannot join.
	e3, _, _ := newTestEnv(t, root, nil)
	err := newServer(e3, &nodeConfig{Token: "K10" + strings.Repeat("1", 64) + "::server:secret", ServerURL: e1.LocalURL, DataDir: root + "/s3", NodeName: "s3"}).prepare()
	if err == nil || !strings.Contains(err.Error(), "token CA hash does not match the Cluster CA certificate hash") {
		t.Fatalf("wrong hash: %v", err)
	}
	// The right hash with another password finds no bootstrap data.
	err = newServer(e3, &nodeConfig{Token: "K10" + sum(mustRead(t, s1.tlsDir+"/server-ca.crt")) + "::server:other", ServerURL: e1.LocalURL, DataDir: root + "/s4", NodeName: "s4"}).prepare()
	if err == nil || !strings.Contains(err.Error(), "bootstrap data already found and encrypted with different token") {
		t.Fatalf("other password: %v", err)
	}
}

// TestRotateCAEndToEnd: rotate-ca CLI -> PUT -> datastore; nothing changes
// until restart; restart reconciles, re-signs leafs, rewrites the token.
func TestRotateCAEndToEnd(t *testing.T) {
	root := t.TempDir()
	e, logs, out := newTestEnv(t, root, nil)
	dataDir := root + "/s1"
	s, stop := startServer(t, e, &nodeConfig{Token: "secret", DataDir: dataDir, NodeName: "s1"})
	oldCA := mustRead(t, s.tlsDir+"/server-ca.crt")
	oldAdminKey := mustRead(t, s.tlsDir+"/client-admin.key")
	if !bytes.Equal(getCACerts(t, e.LocalURL), oldCA) {
		t.Fatal("cacerts")
	}

	cli := func(args ...string) error {
		return cmdRotateCA(e, append([]string{"-d", dataDir, "-s", e.LocalURL}, args...))
	}

	// Staged directly in DIR instead of DIR/tls: only warnings, nothing rotates.
	wrong := root + "/wrong"
	old := caFromFiles(t, s.tlsDir+"/server-ca.crt", s.tlsDir+"/server-ca.key")
	cs := crossSign(t, old, "server")
	mustWrite(t, wrong+"/server-ca.crt", cs.Bundle)
	mustWrite(t, wrong+"/server-ca.key", cs.Key)
	if err := cli("--path", wrong); err != nil {
		t.Fatal(err)
	}
	assertContains(t, logs.String(), "failed to stat ServerCA: stat "+wrong+"/tls/server-ca.crt: no such file or directory")

	// A single-cert CA fails: generic error for the CLI, details in the server log.
	bad := root + "/bad"
	single := makeCA(t, "k3s-client-ca@5", nil, nil)
	mustWrite(t, bad+"/tls/client-ca.crt", single.PEM)
	mustWrite(t, bad+"/tls/client-ca.key", single.KeyPEM)
	err := cli("--path", bad)
	if err == nil || !strings.Contains(err.Error(), "see server log for details: ") || !strings.Contains(err.Error(), "certificate error ID ") {
		t.Fatalf("got %v", err)
	}
	assertContains(t, logs.String(), "failed to validate new CA certificates and keys: ClientCA: new CA bundle contains only a single certificate")

	// Cross-signed server CA + service key: accepted.
	stage := root + "/stage"
	mustWrite(t, stage+"/tls/server-ca.crt", cs.Bundle)
	mustWrite(t, stage+"/tls/server-ca.key", cs.Key)
	newSvc := append(rsaKeyPEM(t), mustRead(t, s.tlsDir+"/service.key")...)
	mustWrite(t, stage+"/tls/service.key", newSvc)
	if err := cli("--path", stage); err != nil {
		t.Fatal(err)
	}
	assertContains(t, out.String(), "certificates saved to datastore")
	if !bytes.Equal(mustRead(t, s.tlsDir+"/server-ca.crt"), oldCA) || !bytes.Equal(getCACerts(t, e.LocalURL), oldCA) {
		t.Fatal("disk and /cacerts must not change before restart")
	}

	// Restart: reconcile from the datastore, re-sign leafs, new token hash.
	stop()
	s, stop = startServer(t, e, &nodeConfig{Token: "secret", DataDir: dataDir, NodeName: "s1"})
	defer func() { stop() }()
	if !bytes.Equal(mustRead(t, s.tlsDir+"/server-ca.crt"), cs.Bundle) || !bytes.Equal(getCACerts(t, e.LocalURL), cs.Bundle) {
		t.Fatal("restart did not apply the new server CA")
	}
	assertContains(t, logs.String(), s.tlsDir+"/server-ca.crt will be updated from the datastore")
	if got := strings.TrimSpace(string(mustRead(t, s.dir+"/token"))); got != "K10"+sum(cs.SelfSigned.Cert.Raw)+"::server:secret" {
		t.Fatalf("token after rotation %s", got)
	}
	admin, _ := certsFromFile(s.tlsDir + "/serving-kube-apiserver.crt")
	if !bytes.Equal(admin[0].AuthorityKeyId, cs.Intermediate.Cert.SubjectKeyId) {
		t.Fatal("leaf not re-signed by the new CA")
	}
	if !bytes.Equal(mustRead(t, s.tlsDir+"/client-admin.key"), oldAdminKey) {
		t.Fatal("re-signing must reuse keys")
	}
	if !bytes.Equal(mustRead(t, s.tlsDir+"/service.key"), newSvc) {
		t.Fatal("service.key not updated")
	}
	if first, _ := firstPrivateKeyBlock(newSvc); !bytes.Equal(mustRead(t, s.tlsDir+"/service.current.key"), first) {
		t.Fatal("service.current.key is not the new first key")
	}
	// The :6443 cert is not re-issued by a CA change (v1.33.5 predates
	// #12978): it is still the old CA's, with the old chain.
	served, _, err := readDynamicSecret(s.tlsDir + "/dynamic-cert.json")
	if err != nil || !bytes.Equal(served[0].AuthorityKeyId, old.Cert.SubjectKeyId) || len(served) != 2 || !bytes.Equal(served[1].Raw, old.Cert.Raw) {
		t.Fatalf("serving cert re-issued by a CA change alone: %v", err)
	}

	// A hand-edited CA file >= 3 s newer than the datastore: restart fails.
	stop()
	p := s.tlsDir + "/request-header-ca.crt"
	mustWrite(t, p, append(mustRead(t, p), '\n'))
	future := time.Now().Add(time.Minute)
	os.Chtimes(p, future, future)
	err = newServer(e, &nodeConfig{Token: "secret", DataDir: dataDir, NodeName: "s1"}).prepare()
	if err == nil || err.Error() != p+" newer than datastore and could cause a cluster outage. Remove the file(s) from disk and restart to be recreated from datastore." {
		t.Fatalf("got %v", err)
	}
	os.Remove(p)
	_, stop = startServer(t, e, &nodeConfig{Token: "secret", DataDir: dataDir, NodeName: "s1"})
}

// A server whose own secure token pins a stale hash keeps its node NotReady.
func TestServerWithStaleTokenHashNotReady(t *testing.T) {
	root := t.TempDir()
	e, logs, _ := newTestEnv(t, root, nil)
	_, stop := startServer(t, e, &nodeConfig{Token: "K10" + strings.Repeat("2", 64) + "::server:secret", DataDir: root + "/s1", NodeName: "s1"})
	defer stop()
	waitFor(t, 3*time.Second, "mismatch log", func() bool {
		return strings.Contains(logs.String(), "token CA hash does not match the Cluster CA certificate hash: "+strings.Repeat("2", 64))
	})
	if _, ok := kubectlNodes(t, e)["s1"]; ok {
		t.Fatal("server node registered despite the stale token hash")
	}
	if !strings.Contains(logs.String(), "k3s is up and running") {
		t.Fatal("the server process itself still comes up")
	}
}

func TestAgentToken(t *testing.T) {
	root := t.TempDir()
	e, _, _ := newTestEnv(t, root, nil)
	s, stop := startServer(t, e, &nodeConfig{Token: "serverpw", AgentToken: "agentpw", DataDir: root + "/s1", NodeName: "s1"})
	defer stop()
	ca := mustRead(t, s.tlsDir+"/server-ca.crt")
	agentToken := string(mustRead(t, s.dir+"/agent-token"))
	if agentToken != "K10"+sum(ca)+"::node:agentpw\n" {
		t.Fatalf("agent-token %q", agentToken)
	}
	if _, err := os.Readlink(s.dir + "/agent-token"); err == nil {
		t.Fatal("agent-token must be a file when --agent-token is set")
	}
	assertContains(t, string(mustRead(t, s.dir+"/cred/passwd")), "agentpw,node,node,k3s:agent")

	a, _, stopA := startAgent(t, e, &nodeConfig{Token: strings.TrimSpace(agentToken), ServerURL: e.LocalURL, DataDir: root + "/a1", NodeName: "a1"})
	defer stopA()
	waitRegistered(t, a, "agent with the agent token did not register")
	_, logs, stopB := startAgent(t, e, &nodeConfig{Token: "K10" + sum(ca) + "::node:wrong", ServerURL: e.LocalURL, DataDir: root + "/a2", NodeName: "a2"})
	defer stopB()
	waitFor(t, 3*time.Second, "401 for a wrong password", func() bool { return strings.Contains(logs.String(), "401 Unauthorized") })
}
