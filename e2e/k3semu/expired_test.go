package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// year is how far back the expired-cluster tests start their cluster: 366
// days, so that every leaf k3s issued then expired a day ago.
const year = 366 * 24 * time.Hour

func writeEmu(t *testing.T, e *Env, name, value string) {
	t.Helper()
	if err := os.MkdirAll(e.EmuDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(e.EmuDir, name), []byte(value+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestClockOffsets(t *testing.T) {
	e, _, _ := newTestEnv(t, t.TempDir(), nil)
	near := func(want time.Duration) {
		t.Helper()
		if got := time.Until(e.now()); (got - want).Abs() > 2*time.Second {
			t.Errorf("k3s's clock is %s from the real one, want %s", got.Round(time.Second), want)
		}
	}
	near(0)
	writeEmu(t, e, "node-clock", "600")
	near(10 * time.Minute)
	writeEmu(t, e, "clock", "-1h")
	near(-50 * time.Minute)
	writeEmu(t, e, "node-clock", "-7200")
	near(-3 * time.Hour)
	writeEmu(t, e, "clock", "garbage")
	near(-2 * time.Hour)
	os.Remove(filepath.Join(e.EmuDir, "node-clock"))
	near(0)
}

// kubectl runs `k3s kubectl` with e and returns its output or error.
func kubectl(e *Env, args ...string) (string, error) {
	out := &syncBuffer{}
	ke := *e
	ke.Stdout = out
	err := cmdKubectl(&ke, args)
	return out.String(), err
}

// TestExpiredCluster: a cluster run a year ago (k3s's clock set back 366
// days) is healthy then; once its clock is the real one again, every leaf
// it issued has expired: kubectl gets the x509 error, the nodes stop
// heartbeating. A server restarted alone renews its own certificates but
// cannot reach etcd quorum while its peer still presents an expired peer
// certificate; once both restarted, both are ready. A kubeconfig kept from
// before gets 401, its expired client certificate logged by the server;
// the agent comes back once it restarts.
func TestExpiredCluster(t *testing.T) {
	root := t.TempDir()
	e1, logs1, _ := newTestEnv(t, root, nil)
	writeEmu(t, e1, "clock", (-year).String())
	cfg1 := &nodeConfig{Token: "secret", DataDir: root + "/s1", NodeName: "s1", ClusterInit: true}
	s1, stop1 := startServer(t, e1, cfg1)
	defer func() { stop1() }()
	token := strings.TrimSpace(string(mustRead(t, s1.dir+"/token")))
	e2, logs2, _ := newTestEnv(t, root, nil)
	e2.KubeconfigPath = root + "/k3s-2.yaml"
	cfg2 := &nodeConfig{Token: token, ServerURL: e1.LocalURL, DataDir: root + "/s2", NodeName: "s2"}
	_, stop2 := startServer(t, e2, cfg2)
	defer func() { stop2() }()
	agentCfg := &nodeConfig{Token: token, ServerURL: e1.LocalURL, DataDir: root + "/a1", NodeName: "a1"}
	a, agentLogs, stopAgent := startAgent(t, e1, agentCfg)
	defer func() { stopAgent() }()
	waitRegistered(t, a, "the agent did not register a year ago")

	// A year ago: everything was issued then, and is fine then.
	for _, f := range []string{s1.tlsDir + "/client-admin.crt", s1.tlsDir + "/etcd/peer-server-client.crt", root + "/s2/server/tls/serving-kube-apiserver.crt", root + "/a1/agent/client-kubelet.crt"} {
		certs, err := certsFromFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if d := time.Since(certs[0].NotAfter); d < 23*time.Hour || d > 25*time.Hour {
			t.Errorf("%s expires %s ago, want a day", f, d.Round(time.Minute))
		}
	}
	if out, err := kubectl(e1, "get", "--raw=/readyz"); err != nil || strings.TrimSpace(out) != "ok" {
		t.Fatalf("readyz a year ago: %q %v", out, err)
	}
	waitFor(t, 3*time.Second, "every node Ready a year ago", func() bool {
		n := kubectlNodes(t, e1)
		return n["s1"] == "True" && n["s2"] == "True" && n["a1"] == "True"
	})
	oldKubeconfig := mustRead(t, e1.KubeconfigPath)

	// Now: the same processes, a year later.
	os.Remove(filepath.Join(e1.EmuDir, "clock"))
	_, err := kubectl(e1, "get", "--raw=/readyz")
	if err == nil || !strings.Contains(err.Error(), "Unable to connect to the server") || !strings.Contains(err.Error(), "x509: certificate has expired or is not yet valid") {
		t.Fatalf("kubectl on the expired cluster: %v", err)
	}
	waitFor(t, 3*time.Second, "the nodes' status updates failing", func() bool {
		return strings.Contains(logs1.String(), "Failed to update node s1 status") && strings.Contains(logs2.String(), "Failed to update node s2 status") &&
			strings.Contains(agentLogs.String(), "certificate has expired")
	})

	// s1 restarted alone: renewed, but no quorum with s2's expired peer
	// certificate.
	stop1()
	s1, stop1 = startServing(t, e1, cfg1)
	waitFor(t, 3*time.Second, "s1 waiting for quorum", func() bool {
		return strings.Count(logs1.String(), "Waiting for etcd quorum: 1 of 2 members reachable, 2 needed") >= 2
	})
	assertContains(t, logs1.String(), "s2 at ")
	assertContains(t, logs1.String(), "x509: certificate has expired or is not yet valid")
	select {
	case <-s1.apiReady:
		t.Fatal("s1 became ready without quorum")
	default:
	}
	if _, err := kubectl(e1, "get", "--raw=/readyz"); err == nil || !strings.Contains(err.Error(), "Error from server (ServiceUnavailable): apiserver not ready") {
		t.Fatalf("readyz without quorum: %v", err)
	}
	certs, err := certsFromFile(s1.tlsDir + "/etcd/peer-server-client.crt")
	if err != nil || time.Until(certs[0].NotAfter) < 300*24*time.Hour {
		t.Fatalf("s1's peer certificate was not renewed at start: %v", err)
	}

	// s2 restarted too: both reach quorum.
	stop2()
	_, stop2 = startServer(t, e2, cfg2)
	select {
	case <-s1.apiReady:
	case <-time.After(5 * time.Second):
		t.Fatal("s1 not ready once s2 was renewed too")
	}
	if out, err := kubectl(e1, "get", "--raw=/readyz"); err != nil || strings.TrimSpace(out) != "ok" {
		t.Fatalf("readyz after both renewed: %q %v", out, err)
	}

	// A kubeconfig kept from a year ago: the server is fine now, its
	// client certificate is not.
	old := filepath.Join(root, "old-k3s.yaml")
	if err := os.WriteFile(old, oldKubeconfig, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := kubectl(e1, "--kubeconfig", old, "get", "nodes"); err == nil || err.Error() != "error: You must be logged in to the server (Unauthorized)" {
		t.Fatalf("kubectl with an expired client certificate: %v", err)
	}
	assertContains(t, logs1.String(), "Unable to authenticate the request due to an error: x509: certificate has expired or is not yet valid")

	// The agent still runs with its expired kubelet certificate: NotReady
	// until it restarts and gets new ones.
	waitFor(t, 4*time.Second, "a1 NotReady, s1 and s2 Ready", func() bool {
		n := kubectlNodes(t, e1)
		return n["s1"] == "True" && n["s2"] == "True" && n["a1"] == "False"
	})
	stopAgent()
	_, _, stopAgent = startAgent(t, e1, agentCfg)
	waitFor(t, 4*time.Second, "a1 Ready after its restart", func() bool { return kubectlNodes(t, e1)["a1"] == "True" })
}
