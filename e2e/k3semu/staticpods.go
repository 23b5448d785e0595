package main

import (
	"bytes"
	"context"
	"crypto/md5"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	yaml2 "go.yaml.in/yaml/v2"
)

// RKE2's control plane as rke2 runs it (docs/k3s-behaviour.md#rke2): the
// rke2 process (the unit's main PID) is the supervisor on :9345; etcd and
// kube-apiserver are static pods, i.e. processes of their own that the
// supervisor describes in manifests under <data-dir>/agent/pod-manifests
// and the kubelet runs. They outlive `systemctl restart rke2-server`
// (KillMode=process: only the main PID is signalled). At every start the
// supervisor rewrites each manifest, but only when its bytes changed; a
// manifest carries FILE_HASH, the SHA-256 of every file the pod reads
// (certificates, keys, the etcd config), and its pod UID is a hash of the
// whole manifest. A pod whose UID no longer matches its manifest is
// removed and started anew (the kubelet, and rke2's reconcileStaticPods);
// one whose UID matches keeps running with what it loaded when it started.
// So a CA rotation reaches the apiserver (and etcd, when the etcd CAs
// changed) because the supervisor's start re-signs the leaf files, which
// changes FILE_HASH; nothing else restarts them. `rke2 certificate
// rotate` leaves <data-dir>/force-restart, after which the next start
// removes both pods' manifests and pods first.
//
// Emulated: the pods are this binary run as `etcd` / `kube-apiserver`
// (argv[0]), detached from the supervisor, logging to
// <data-dir>/agent/logs/<pod>.log; the kubelet's record of a running pod
// (PID and UID) is <data-dir>/agent/k3semu-pods/<pod>. etcd serves its
// peers on :2380 (etcd.go) and its health on 127.0.0.1:2381 (/health,
// 503 until quorum); kube-apiserver serves :6443 with
// server/tls/serving-kube-apiserver.crt as loaded at its start (leaf +
// the server CA bundle at issue) and judges clients by client-ca.crt as
// loaded at its start.

const (
	staticPodEtcd      = "etcd"
	staticPodAPIServer = "kube-apiserver"
	forceRestartFile   = "force-restart"
)

// podRunner is the kubelet's part: what runs, starting and removing pods.
type podRunner interface {
	// Running returns the UID of the running pod name, if one runs.
	Running(dataDir, name string) (uid string, ok bool)
	Start(e *Env, dataDir, name, manifest, uid string) error
	Stop(dataDir, name string) error
}

func (e *Env) pods() podRunner {
	if e.Pods == nil {
		return procPods{}
	}
	return e.Pods
}

// ---- manifests ----

type podManifest struct {
	APIVersion string      `yaml:"apiVersion"`
	Kind       string      `yaml:"kind"`
	Metadata   podMeta     `yaml:"metadata"`
	Spec       podSpecYAML `yaml:"spec"`
}

type podMeta struct {
	Name        string            `yaml:"name"`
	Namespace   string            `yaml:"namespace"`
	UID         string            `yaml:"uid,omitempty"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations,omitempty"`
}

type podSpecYAML struct {
	HostNetwork bool           `yaml:"hostNetwork"`
	Containers  []podContainer `yaml:"containers"`
}

type podContainer struct {
	Name    string   `yaml:"name"`
	Command []string `yaml:"command"`
	Args    []string `yaml:"args"`
	Env     []podEnv `yaml:"env"`
}

type podEnv struct {
	Name  string `yaml:"name"`
	Value string `yaml:"value"`
}

func manifestsDir(dataDir string) string { return filepath.Join(dataDir, "agent", "pod-manifests") }

// argFiles is rke2's podtemplate.ReadFiles: the values of --flag=/abs
// arguments that are existing regular files.
func argFiles(args []string) []string {
	var files []string
	for _, a := range args {
		_, v, ok := strings.Cut(a, "=")
		if !ok || !strings.HasPrefix(v, "/") {
			continue
		}
		if st, err := os.Stat(v); err == nil && !st.IsDir() {
			files = append(files, v)
		}
	}
	return files
}

// writePodManifest renders a manifest with FILE_HASH over files (hashed
// in order, as rke2's hashFiles) and the UID over the rest, then writes it
// only when its bytes changed. Returns the path, the UID and whether it
// was rewritten.
func writePodManifest(dataDir, name string, args, files []string, annotations map[string]string) (string, string, bool, error) {
	h := sha256.New()
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return "", "", false, fmt.Errorf("failed to hash files for pod %s: %w", name, err)
		}
		h.Write(b)
	}
	m := podManifest{
		APIVersion: "v1", Kind: "Pod",
		Metadata: podMeta{Name: name, Namespace: "kube-system", Annotations: annotations,
			Labels: map[string]string{"component": name, "tier": "control-plane"}},
		Spec: podSpecYAML{HostNetwork: true, Containers: []podContainer{{
			Name: name, Command: []string{name}, Args: args,
			Env: []podEnv{{Name: "FILE_HASH", Value: hex.EncodeToString(h.Sum(nil))}},
		}}},
	}
	path := filepath.Join(manifestsDir(dataDir), name+".yaml")
	body, err := yaml2.Marshal(m)
	if err != nil {
		return "", "", false, err
	}
	sum := md5.Sum(append(body, []byte("file:"+path)...))
	m.Metadata.UID = hex.EncodeToString(sum[:])
	if body, err = yaml2.Marshal(m); err != nil {
		return "", "", false, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", "", false, err
	}
	if cur, err := os.ReadFile(path); err == nil && bytes.Equal(cur, body) {
		return path, m.Metadata.UID, false, nil
	}
	return path, m.Metadata.UID, true, writeFileAtomic(path, body, 0o600)
}

func readPodManifest(path string) (*podManifest, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var m podManifest
	if err := yaml2.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(m.Spec.Containers) != 1 {
		return nil, fmt.Errorf("%s: want one container", path)
	}
	return &m, nil
}

// podArg is the value of --name=VALUE in a pod's args.
func podArg(args []string, name string) string {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v
		}
	}
	return ""
}

// etcdManifest is the etcd pod: its config file and certificate files.
func (s *server) etcdManifest() (string, string, bool, error) {
	etcdTLS := filepath.Join(s.tlsDir, "etcd")
	conf := filepath.Join(s.dir, "db", "etcd", "config")
	body := fmt.Sprintf("name: %s\ndata-dir: %s\nlisten-peer-urls: https://%s\nlisten-metrics-urls: http://%s\n"+
		"peer-transport-security:\n  cert-file: %s\n  key-file: %s\n  trusted-ca-file: %s\n  client-cert-auth: true\n"+
		"client-transport-security:\n  cert-file: %s\n  key-file: %s\n  trusted-ca-file: %s\n  client-cert-auth: true\n",
		s.cfg.NodeName, filepath.Join(s.dir, "db", "etcd"), s.env.PeerListenAddr, s.env.EtcdHealthAddr,
		filepath.Join(etcdTLS, "peer-server-client.crt"), filepath.Join(etcdTLS, "peer-server-client.key"), filepath.Join(etcdTLS, "peer-ca.crt"),
		filepath.Join(etcdTLS, "server-client.crt"), filepath.Join(etcdTLS, "server-client.key"), filepath.Join(etcdTLS, "server-ca.crt"))
	if _, err := writeIfChanged(conf, []byte(body), 0o600); err != nil {
		return "", "", false, err
	}
	args := []string{"--config-file=" + conf, "--k3semu-data-dir=" + s.cfg.DataDir, "--k3semu-node-name=" + s.cfg.NodeName}
	files := []string{
		filepath.Join(etcdTLS, "server-client.crt"), filepath.Join(etcdTLS, "server-client.key"), filepath.Join(etcdTLS, "server-ca.crt"),
		filepath.Join(etcdTLS, "peer-server-client.crt"), filepath.Join(etcdTLS, "peer-server-client.key"), filepath.Join(etcdTLS, "peer-ca.crt"),
	}
	files = append(files, argFiles(args)...)
	return writePodManifest(s.cfg.DataDir, staticPodEtcd, args, files, map[string]string{"etcd.k3s.io/initial": `{}`})
}

// apiServerManifest is the kube-apiserver pod: its flags name every
// certificate and key it reads.
func (s *server) apiServerManifest() (string, string, bool, error) {
	t := func(rel string) string { return filepath.Join(s.tlsDir, rel) }
	_, port, _ := net.SplitHostPort(s.env.APIListenAddr)
	args := []string{
		"--secure-port=" + port,
		"--tls-cert-file=" + t("serving-kube-apiserver.crt"), "--tls-private-key-file=" + t("serving-kube-apiserver.key"),
		"--client-ca-file=" + t("client-ca.crt"),
		"--etcd-servers=https://127.0.0.1:2379",
		"--etcd-cafile=" + t("etcd/server-ca.crt"), "--etcd-certfile=" + t("etcd/client.crt"), "--etcd-keyfile=" + t("etcd/client.key"),
		"--kubelet-client-certificate=" + t("client-kube-apiserver.crt"), "--kubelet-client-key=" + t("client-kube-apiserver.key"),
		"--proxy-client-cert-file=" + t("client-auth-proxy.crt"), "--proxy-client-key-file=" + t("client-auth-proxy.key"),
		"--requestheader-client-ca-file=" + t("request-header-ca.crt"),
		"--service-account-key-file=" + t("service.key"), "--service-account-signing-key-file=" + t("service.current.key"),
		"--k3semu-data-dir=" + s.cfg.DataDir, "--k3semu-node-name=" + s.cfg.NodeName,
	}
	files := argFiles(args)
	sort.Strings(files)
	return writePodManifest(s.cfg.DataDir, staticPodAPIServer, args, files, nil)
}

// syncPod makes the running pod the manifest's: kept when its UID
// matches, else removed and started anew.
func (s *server) syncPod(name, manifest, uid string) error {
	pods := s.env.pods()
	if cur, ok := pods.Running(s.cfg.DataDir, name); ok {
		if cur == uid {
			s.log.Infof("Pod for %s is synced", name)
			return nil
		}
		s.log.Infof("Pod for %s not synced (pod sandbox has changed), removing old pod %s", name, cur)
		if err := pods.Stop(s.cfg.DataDir, name); err != nil {
			return err
		}
	}
	s.log.Infof("Starting static pod %s (uid %s)", name, uid)
	return pods.Start(s.env, s.cfg.DataDir, name, manifest, uid)
}

// serveStatic is serve for RKE2: the supervisor on :9345, then the etcd
// and kube-apiserver static pods, READY=1 once the apiserver is ready.
func (s *server) serveStatic(ctx context.Context) error {
	pods := s.env.pods()
	if trigger := filepath.Join(s.cfg.DataDir, forceRestartFile); fileExists(trigger) {
		os.Remove(trigger)
		s.log.Infof("Static pod cleanup in progress (force restart): %s, %s", staticPodEtcd, staticPodAPIServer)
		for _, name := range []string{staticPodEtcd, staticPodAPIServer} {
			os.Remove(filepath.Join(manifestsDir(s.cfg.DataDir), name+".yaml"))
			if _, ok := pods.Running(s.cfg.DataDir, name); ok {
				if err := pods.Stop(s.cfg.DataDir, name); err != nil {
					return err
				}
			}
		}
	}
	tlsCfg := &tls.Config{GetCertificate: s.serving.getCertificate, ClientAuth: tls.RequestClientCert, MinVersion: tls.VersionTLS12, Time: s.env.now}
	ln, err := net.Listen("tcp", s.env.ListenAddr)
	if err != nil {
		return err
	}
	s.listener = ln
	srv := &http.Server{Handler: s.routes(), TLSConfig: tlsCfg, ErrorLog: log.New(logWriter{s.log}, "", 0), ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(tls.NewListener(ln, tlsCfg)) }()
	defer func() {
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(shutdownCtx)
	}()
	s.log.Infof("Running supervisor on %s", s.env.ListenAddr)
	close(s.ready)

	path, uid, changed, err := s.etcdManifest()
	if err != nil {
		return err
	}
	if changed {
		s.log.Infof("Wrote static pod manifest %s", path)
	}
	if err := s.syncPod(staticPodEtcd, path, uid); err != nil {
		return err
	}
	if !s.waitHTTP(ctx, "etcd", func() error { return etcdHealthy(s.env.EtcdHealthAddr) }) {
		return nil
	}
	if path, uid, changed, err = s.apiServerManifest(); err != nil {
		return err
	}
	if changed {
		s.log.Infof("Wrote static pod manifest %s", path)
	}
	if err := s.syncPod(staticPodAPIServer, path, uid); err != nil {
		return err
	}
	if !s.waitHTTP(ctx, "apiserver", s.apiserverReady) {
		return nil
	}
	close(s.apiReady)
	if err := s.env.sdNotify("READY=1"); err != nil {
		s.log.Warnf("Failed to notify systemd: %v", err)
	}
	s.log.Infof("%s is up and running", s.env.prod().Name)
	agentCtx, stopAgent := context.WithCancel(ctx)
	agentDone := make(chan struct{})
	go func() { s.runLocalAgent(agentCtx); close(agentDone) }()
	defer func() { stopAgent(); <-agentDone }()
	select {
	case <-ctx.Done():
		return nil
	case err := <-errc:
		return err
	}
}

// waitHTTP polls check every RetryInterval; false when ctx ended first.
func (s *server) waitHTTP(ctx context.Context, what string, check func() error) bool {
	for {
		err := check()
		if err == nil {
			return true
		}
		s.log.Infof("Waiting for %s: %v", what, err)
		if !sleepCtx(ctx, s.env.RetryInterval) {
			return false
		}
	}
}

func etcdHealthy(addr string) error {
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + addr + "/health")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("etcd health: %s", resp.Status)
	}
	return nil
}

// apiserverReady asks the apiserver pod's /readyz as the supervisor does
// (client-supervisor, else the admin client certificate).
func (s *server) apiserverReady() error {
	leaf := "client-supervisor"
	if !fileExists(filepath.Join(s.tlsDir, leaf+".crt")) {
		leaf = "client-admin"
	}
	pair, err := tls.LoadX509KeyPair(filepath.Join(s.tlsDir, leaf+".crt"), filepath.Join(s.tlsDir, leaf+".key"))
	if err != nil {
		return err
	}
	c := tlsClient(s.env.now, &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{pair}})
	_, err = httpGet(c, strings.TrimRight(s.env.APILocalURL, "/")+"/readyz", "", "")
	return err
}

// ---- the pods ----

// runStaticPod is this binary run as a static pod: `etcd` or
// `kube-apiserver` with --manifest=PATH.
func runStaticPod(ctx context.Context, e *Env, name string, args []string) error {
	var manifest string
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--manifest="); ok {
			manifest = v
		}
	}
	m, err := readPodManifest(manifest)
	if err != nil {
		return err
	}
	return runPod(ctx, e, name, m)
}

func runPod(ctx context.Context, e *Env, name string, m *podManifest) error {
	args := m.Spec.Containers[0].Args
	cfg := &nodeConfig{DataDir: podArg(args, "k3semu-data-dir"), NodeName: podArg(args, "k3semu-node-name")}
	s := newServer(e, cfg)
	e.Log.Infof("Static pod %s %s started", name, m.Metadata.UID)
	switch name {
	case staticPodEtcd:
		return s.runEtcdPod(ctx)
	case staticPodAPIServer:
		return s.runAPIServerPod(ctx, args)
	}
	return fmt.Errorf("unknown static pod %q", name)
}

// runEtcdPod serves peers on :2380 with the certificates as loaded now,
// and /health on the metrics address: 503 until quorum, then 200.
func (s *server) runEtcdPod(ctx context.Context) error {
	peer, err := s.startPeer()
	if err != nil {
		return err
	}
	defer peer.close()
	var healthy atomic.Bool
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) {
		if !healthy.Load() {
			http.Error(w, `{"health":"false","reason":"no quorum"}`, http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, `{"health":"true","reason":""}`)
	})
	ln, err := net.Listen("tcp", s.env.EtcdHealthAddr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	defer srv.Close()
	if err := peer.waitQuorum(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	healthy.Store(true)
	<-ctx.Done()
	return nil
}

// runAPIServerPod serves the API with the serving certificate and client
// CA as they are on disk now, ready once etcd is healthy.
func (s *server) runAPIServerPod(ctx context.Context, args []string) error {
	cert, err := tls.LoadX509KeyPair(podArg(args, "tls-cert-file"), podArg(args, "tls-private-key-file"))
	if err != nil {
		return err
	}
	caPEM, err := os.ReadFile(podArg(args, "client-ca-file"))
	if err != nil {
		return err
	}
	s.clientCAs = poolFromPEM(caPEM)
	tlsCfg := &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequestClientCert, MinVersion: tls.VersionTLS12, Time: s.env.now}
	ln, err := net.Listen("tcp", s.env.APIListenAddr)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	s.apiRoutes(mux)
	srv := &http.Server{Handler: mux, TLSConfig: tlsCfg, ErrorLog: log.New(logWriter{s.log}, "", 0), ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(tls.NewListener(ln, tlsCfg)) }()
	defer srv.Close()
	go func() {
		if s.waitHTTP(ctx, "etcd", func() error { return etcdHealthy(s.env.EtcdHealthAddr) }) {
			close(s.apiReady)
		}
	}()
	select {
	case <-ctx.Done():
		return nil
	case err := <-errc:
		return err
	}
}

// ---- pods as processes (the node image) ----

type procPods struct{}

func podStatePath(dataDir, name string) string {
	return filepath.Join(dataDir, "agent", "k3semu-pods", name)
}

// podPID is the live process recorded for pod name, if it still runs as
// that pod (argv[0] names it).
func podPID(dataDir, name string) (int, string, bool) {
	b, err := os.ReadFile(podStatePath(dataDir, name))
	if err != nil {
		return 0, "", false
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0, "", false
	}
	pid, err := strconv.Atoi(f[0])
	if err != nil {
		return 0, "", false
	}
	cmd, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return 0, "", false
	}
	argv0, _, _ := bytes.Cut(cmd, []byte{0})
	if filepath.Base(string(argv0)) != name {
		return 0, "", false
	}
	return pid, f[1], true
}

func (procPods) Running(dataDir, name string) (string, bool) {
	_, uid, ok := podPID(dataDir, name)
	return uid, ok
}

func (procPods) Start(e *Env, dataDir, name, manifest, uid string) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	logDir := filepath.Join(dataDir, "agent", "logs")
	if err := os.MkdirAll(logDir, 0o750); err != nil {
		return err
	}
	out, err := os.OpenFile(filepath.Join(logDir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return err
	}
	defer out.Close()
	cmd := &exec.Cmd{Path: exe, Args: []string{name, "--manifest=" + manifest}, Stdout: out, Stderr: out,
		SysProcAttr: &syscall.SysProcAttr{Setsid: true}}
	for _, kv := range os.Environ() {
		// As rke2 does for its children: systemd must not hear from them.
		if !strings.HasPrefix(kv, "NOTIFY_SOCKET=") && !strings.HasPrefix(kv, hiddenFDVar+"=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	go cmd.Wait() // reaped while this supervisor lives; by init after
	if err := os.MkdirAll(filepath.Dir(podStatePath(dataDir, name)), 0o700); err != nil {
		return err
	}
	return writeFileAtomic(podStatePath(dataDir, name), []byte(fmt.Sprintf("%d %s\n", cmd.Process.Pid, uid)), 0o600)
}

func (procPods) Stop(dataDir, name string) error {
	pid, _, ok := podPID(dataDir, name)
	if !ok {
		return nil
	}
	syscall.Kill(pid, syscall.SIGTERM)
	for i := 0; i < 100; i++ {
		if _, _, ok := podPID(dataDir, name); !ok {
			os.Remove(podStatePath(dataDir, name))
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	syscall.Kill(pid, syscall.SIGKILL)
	time.Sleep(200 * time.Millisecond)
	if _, _, ok := podPID(dataDir, name); ok {
		return errors.New("static pod " + name + " did not stop")
	}
	os.Remove(podStatePath(dataDir, name))
	return nil
}
