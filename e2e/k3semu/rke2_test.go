package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// testPods runs static pods as goroutines: they outlive the server that
// started them, as the real ones outlive `systemctl restart rke2-server`.
type testPods struct {
	mu     sync.Mutex
	pods   map[string]*testPod
	starts map[string]int
}

type testPod struct {
	uid    string
	cancel context.CancelFunc
	done   chan struct{}
}

func newTestPods() *testPods {
	return &testPods{pods: map[string]*testPod{}, starts: map[string]int{}}
}

func (p *testPods) key(dataDir, name string) string { return dataDir + "|" + name }

func (p *testPods) Running(dataDir, name string) (string, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	pod, ok := p.pods[p.key(dataDir, name)]
	if !ok {
		return "", false
	}
	select {
	case <-pod.done:
		return "", false
	default:
		return pod.uid, true
	}
}

func (p *testPods) Start(e *Env, dataDir, name, manifest, uid string) error {
	m, err := readPodManifest(manifest)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	pod := &testPod{uid: uid, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(pod.done)
		if err := runPod(ctx, e, name, m); err != nil {
			e.Log.Errorf("pod %s: %v", name, err)
		}
	}()
	p.mu.Lock()
	p.pods[p.key(dataDir, name)] = pod
	p.starts[name]++
	p.mu.Unlock()
	return nil
}

func (p *testPods) Stop(dataDir, name string) error {
	p.mu.Lock()
	pod, ok := p.pods[p.key(dataDir, name)]
	delete(p.pods, p.key(dataDir, name))
	p.mu.Unlock()
	if ok {
		pod.cancel()
		<-pod.done
	}
	return nil
}

func (p *testPods) count(name string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.starts[name]
}

func (p *testPods) stopAll() {
	p.mu.Lock()
	keys := make([]string, 0, len(p.pods))
	for k := range p.pods {
		keys = append(keys, k)
	}
	p.mu.Unlock()
	for _, k := range keys {
		dataDir, name, _ := strings.Cut(k, "|")
		p.Stop(dataDir, name)
	}
}

// newRKE2Env is newTestEnv as RKE2: supervisor, apiserver and etcd health
// on their own free ports.
func newRKE2Env(t *testing.T, root string, vars map[string]string) (*Env, *syncBuffer, *testPods) {
	t.Helper()
	e, logs, _ := newTestEnv(t, root, vars)
	ports := freePorts(t, 2)
	e.Product = rke2Product
	e.APIListenAddr, e.APILocalURL = ports[0], "https://"+ports[0]
	e.EtcdHealthAddr = ports[1]
	pods := newTestPods()
	e.Pods = pods
	t.Cleanup(pods.stopAll)
	return e, logs, pods
}

func TestRKE2ProductByName(t *testing.T) {
	for argv0, want := range map[string]string{
		"/usr/local/bin/rke2": "rke2", "/opt/rke2/bin/rke2": "rke2", "/usr/local/bin/k3s": "k3s",
		"/var/lib/rancher/rke2/bin/kubectl": "rke2", "/usr/local/bin/kubectl": "k3s", "kube-apiserver": "rke2",
	} {
		if got := productFor(argv0).Name; got != want {
			t.Errorf("%s: product %s, want %s", argv0, got, want)
		}
	}
	e := defaultEnvFor(func(string) string { return "" }, "/usr/local/bin/rke2")
	if e.ListenAddr != "0.0.0.0:9345" || e.APIListenAddr != "0.0.0.0:6443" || e.KubeconfigPath != "/etc/rancher/rke2/rke2.yaml" ||
		e.ConfigFile != "/etc/rancher/rke2/config.yaml" || e.LocalURL != "https://127.0.0.1:9345" {
		t.Fatalf("rke2 env: %+v", e)
	}
	if e.envName("K3S_TOKEN") != "RKE2_TOKEN" || e.routePrefix() != "/v1-rke2" || e.serviceName("k3s-server") != "rke2-server" {
		t.Fatal("rke2 names")
	}
	if e.apiURL("https://s1:9345") != "https://s1:6443" {
		t.Fatalf("apiURL %s", e.apiURL("https://s1:9345"))
	}
}

func TestRKE2ConfigAndEnvironment(t *testing.T) {
	root := t.TempDir()
	e, _, _ := newRKE2Env(t, root, map[string]string{"RKE2_TOKEN": "from-env", "K3S_TOKEN": "ignored", "RKE2_URL": "https://x:9345"})
	cfg, err := loadNodeConfig(context.Background(), e, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Token != "from-env" || cfg.ServerURL != "https://x:9345" || cfg.DataDir != "/var/lib/rancher/rke2" {
		t.Fatalf("agent config from RKE2_*: %+v", cfg)
	}
	mustWrite(t, e.ConfigFile, []byte("token: from-config\n"))
	mustWrite(t, e.ConfigFile+".d/10.yaml", []byte("token: from-dropin\n"))
	if cfg, err = loadNodeConfig(context.Background(), e, true, nil); err != nil {
		t.Fatal(err)
	}
	if cfg.Token != "from-dropin" || !cfg.ClusterInit {
		t.Fatalf("server config: %+v (rke2 servers always run etcd)", cfg)
	}
}

func TestRKE2Version(t *testing.T) {
	root := t.TempDir()
	e, _, _ := newRKE2Env(t, root, nil)
	out := &syncBuffer{}
	e.Stdout = out
	printVersion(e)
	assertContains(t, out.String(), "rke2 version v1.33.5+rke2r1 (")
	for v, want := range map[string][3]bool{
		"v1.27.12+rke2r1": {true, false, false}, "v1.27.13+rke2r1": {true, true, false},
		"v1.29.12+rke2r1": {true, true, false}, "v1.29.13+rke2r1": {true, true, true},
		"v1.32.0+rke2r1": {true, true, false}, "v1.32.1+rke2r1": {true, true, true},
		"v1.26.1+rke2r1": {false, false, false},
	} {
		got := [3]bool{hasRotateCA(v), hasCertCheck(v), hasCheckOutput(v)}
		if got != want {
			t.Errorf("%s: rotate-ca/check/--output %v, want %v", v, got, want)
		}
	}
}

// startRKE2 runs `rke2 server` until its apiserver pod is ready.
func startRKE2(t *testing.T, e *Env, cfg *nodeConfig) (*server, func()) {
	t.Helper()
	s, stop := startServing(t, e, cfg)
	select {
	case <-s.apiReady:
	case <-time.After(10 * time.Second):
		stop()
		t.Fatal("rke2 apiserver pod not ready")
	}
	return s, stop
}

func fileHash(t *testing.T, manifest string) string {
	t.Helper()
	m, err := readPodManifest(manifest)
	if err != nil {
		t.Fatal(err)
	}
	return m.Spec.Containers[0].Env[0].Value
}

// The CA change of a rotation reaches the apiserver pod only through the
// supervisor's next start, which re-signs its leaf files and so changes
// its manifest; a restart that changes nothing leaves both pods running.
func TestRKE2StaticPodsAcrossRestartAndRotation(t *testing.T) {
	root := t.TempDir()
	e, logs, pods := newRKE2Env(t, root, map[string]string{"KUBECONFIG": root + "/k3s.yaml"})
	dataDir := root + "/s1"
	cfg := &nodeConfig{Token: "secret", DataDir: dataDir, NodeName: "s1"}
	s, stop := startRKE2(t, e, cfg)
	defer func() { stop() }()

	if !fileExists(filepath.Join(dataDir, "server", "db", "etcd")) {
		t.Fatal("an rke2 server always runs embedded etcd")
	}
	if !bytes.Equal(getCACerts(t, e.LocalURL), mustRead(t, s.tlsDir+"/server-ca.crt")) {
		t.Fatal("/cacerts on the supervisor port")
	}
	apiChain := servedChain(t, e.APIListenAddr)
	if !bytes.Equal(apiChain[0].Raw, pemCerts(t, mustRead(t, s.tlsDir+"/serving-kube-apiserver.crt"))[0]) {
		t.Fatal(":6443 must present serving-kube-apiserver.crt")
	}
	assertContains(t, string(mustRead(t, e.KubeconfigPath)), "server: "+e.APILocalURL)
	if nodes := kubectlNodes(t, e); nodes["s1"] != "True" {
		waitFor(t, 5*time.Second, "s1 Ready", func() bool { return kubectlNodes(t, e)["s1"] == "True" })
	}
	apiManifest := filepath.Join(manifestsDir(dataDir), "kube-apiserver.yaml")
	etcdManifest := filepath.Join(manifestsDir(dataDir), "etcd.yaml")
	hash0 := fileHash(t, apiManifest)
	info0, _ := os.Stat(apiManifest)

	// systemctl restart rke2-server with nothing changed: same manifests,
	// same pods.
	stop()
	if _, ok := pods.Running(dataDir, staticPodAPIServer); !ok {
		t.Fatal("the apiserver pod must outlive its supervisor")
	}
	if _, err := httpGet(tlsClient(e.now, insecureTLS()), e.APILocalURL+"/livez", "", ""); err == nil {
		t.Fatal("livez without a client cert must be refused")
	}
	s, stop = startRKE2(t, e, cfg)
	if pods.count(staticPodAPIServer) != 1 || pods.count(staticPodEtcd) != 1 {
		t.Fatalf("an unchanged restart restarted pods: apiserver %d, etcd %d starts", pods.count(staticPodAPIServer), pods.count(staticPodEtcd))
	}
	if info, _ := os.Stat(apiManifest); !info.ModTime().Equal(info0.ModTime()) {
		t.Fatal("an unchanged manifest must not be rewritten")
	}

	// A cross-signed server CA rotation: nothing changes until the restart.
	old := caFromFiles(t, s.tlsDir+"/server-ca.crt", s.tlsDir+"/server-ca.key")
	cs := crossSign(t, old, "server")
	stage := root + "/stage"
	mustWrite(t, stage+"/tls/server-ca.crt", cs.Bundle)
	mustWrite(t, stage+"/tls/server-ca.key", cs.Key)
	if err := cmdRotateCA(e, []string{"-d", dataDir, "--path", stage}); err != nil {
		t.Fatalf("rotate-ca against the default --server (the supervisor): %v", err)
	}
	if !equalChains(raws(servedChain(t, e.APIListenAddr)), raws(apiChain)) {
		t.Fatal("the apiserver changed its chain before any restart")
	}
	stop()
	s, stop = startRKE2(t, e, cfg)
	if pods.count(staticPodAPIServer) != 2 {
		t.Fatalf("the rotation's restart must replace the apiserver pod (%d starts)", pods.count(staticPodAPIServer))
	}
	if pods.count(staticPodEtcd) != 1 {
		t.Fatal("the etcd pod must keep running when no etcd file changed")
	}
	if fileHash(t, apiManifest) == hash0 {
		t.Fatal("FILE_HASH did not change with the certificates")
	}
	newChain := servedChain(t, e.APIListenAddr)
	if !equalChains(raws(newChain[1:]), pemCerts(t, cs.Bundle)) {
		t.Fatal(":6443 does not present the new serving-kube-apiserver chain")
	}
	if !bytes.Equal(getCACerts(t, e.LocalURL), cs.Bundle) {
		t.Fatal("/cacerts on 9345 is not the new bundle after the restart")
	}
	assertContains(t, logs.String(), "Pod for kube-apiserver not synced")
	_ = etcdManifest

	// rke2 certificate rotate: force-restart removes and restarts both.
	stop()
	if err := cmdCertRotate(e, []string{"-d", dataDir, "--service", "rke2-server,api-server"}, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := cmdCertRotate(e, []string{"-d", dataDir, "--service", "k3s-server"}, time.Now()); err == nil {
		t.Fatal("rke2 does not know the k3s-server service")
	}
	if !fileExists(filepath.Join(dataDir, forceRestartFile)) {
		t.Fatal("rke2 certificate rotate must leave force-restart")
	}
	s, stop = startRKE2(t, e, cfg)
	if pods.count(staticPodEtcd) != 2 || pods.count(staticPodAPIServer) != 3 {
		t.Fatalf("force-restart: etcd %d, apiserver %d starts", pods.count(staticPodEtcd), pods.count(staticPodAPIServer))
	}
	if fileExists(filepath.Join(dataDir, forceRestartFile)) {
		t.Fatal("force-restart must be consumed")
	}
}

// An agent joins through the supervisor (9345) and reports to the
// apiserver pod (6443); one whose token pins another CA never joins.
func TestRKE2AgentJoinsThroughSupervisor(t *testing.T) {
	root := t.TempDir()
	e, _, _ := newRKE2Env(t, root, map[string]string{"KUBECONFIG": root + "/k3s.yaml"})
	s, stop := startRKE2(t, e, &nodeConfig{Token: "secret", DataDir: root + "/s1", NodeName: "s1"})
	defer stop()
	token := strings.TrimSpace(string(mustRead(t, s.dir+"/token")))
	a, _, stopAgent := startAgent(t, e, &nodeConfig{Token: token, ServerURL: e.LocalURL, DataDir: root + "/a1", NodeName: "a1"})
	defer stopAgent()
	waitRegistered(t, a, "agent did not register")
	waitFor(t, 5*time.Second, "a1 Ready", func() bool { return kubectlNodes(t, e)["a1"] == "True" })

	bad := "K10" + strings.Repeat("0", 64) + token[strings.Index(token, "::"):]
	_, logs, stopBad := startAgent(t, e, &nodeConfig{Token: bad, ServerURL: e.LocalURL, DataDir: root + "/a2", NodeName: "a2"})
	defer stopBad()
	waitFor(t, 5*time.Second, "hash mismatch logged", func() bool {
		return strings.Contains(logs.String(), "token CA hash does not match the Cluster CA certificate hash")
	})
}

func TestRKE2KubectlNeedsKubeconfig(t *testing.T) {
	root := t.TempDir()
	e, _, _ := newRKE2Env(t, root, map[string]string{"HOME": root + "/home"})
	err := cmdKubectl(e, []string{"get", "nodes"})
	if err == nil {
		t.Fatal("rke2's kubectl must not find rke2.yaml by itself")
	}
	if code := run(context.Background(), e, []string{"/usr/local/bin/rke2", "kubectl", "get", "nodes"}); code != 3 {
		t.Fatalf("rke2 kubectl: exit %d, want 3 (no such subcommand)", code)
	}
}

func insecureTLS() *tls.Config { return &tls.Config{InsecureSkipVerify: true} }
