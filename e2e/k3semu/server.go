package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// server is one running `k3s server`.
type server struct {
	env      *Env
	cfg      *nodeConfig
	log      *Logger
	ds       *datastore
	dir      string // <data-dir>/server
	tlsDir   string
	agentDir string
	version  string
	etcd     bool

	password     string // server token password
	nodePassword string // agent token password (or the server's)

	serving   *dynamicCert
	clientCAs *x509.CertPool

	cacertsOnce sync.Once
	cacerts     []byte
	cacertsErr  error

	// ready is closed once the listener serves; tests wait on it.
	ready chan struct{}
	// apiReady is closed once etcd has quorum (at once without etcd): the
	// API answers and systemd is told READY=1.
	apiReady chan struct{}
	listener net.Listener
}

func newServer(e *Env, cfg *nodeConfig) *server {
	dir := filepath.Join(cfg.DataDir, "server")
	return &server{
		env: e, cfg: cfg, log: e.Log,
		ds:       &datastore{dir: e.SharedDir},
		dir:      dir,
		tlsDir:   filepath.Join(dir, "tls"),
		agentDir: filepath.Join(cfg.DataDir, "agent"),
		version:  e.version(),
		ready:    make(chan struct{}),
		apiReady: make(chan struct{}),
	}
}

// runServer is `k3s server`: prepare the data dir, serve :6443, notify
// systemd, run the embedded agent and heartbeat until ctx ends.
func runServer(ctx context.Context, e *Env, cfg *nodeConfig) error {
	s := newServer(e, cfg)
	s.log.Infof("Starting %s %s", e.prod().Name, s.version)
	if err := s.prepare(); err != nil {
		return err
	}
	return s.serve(ctx)
}

func (s *server) prepare() error {
	now := s.env.now()
	for _, d := range []string{s.tlsDir, filepath.Join(s.tlsDir, "etcd"), filepath.Join(s.dir, "cred"), filepath.Join(s.dir, "db"), s.agentDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	if err := s.resolvePasswords(); err != nil {
		return err
	}
	etcdDir := filepath.Join(s.dir, "db", "etcd")
	sqlite := filepath.Join(s.dir, "db", "state.db")
	initialized := fileExists(etcdDir) || fileExists(sqlite)
	s.etcd = s.cfg.ClusterInit || s.cfg.ServerURL != "" || fileExists(etcdDir)

	if s.cfg.ServerURL != "" {
		if s.cfg.Token == "" {
			return errors.New("token is required to join a cluster")
		}
		if !initialized {
			// A new member validates the token against the cluster it joins;
			// an initialized member skips this (k3s ignores the result).
			tok, err := parseToken(s.cfg.Token)
			if err != nil {
				return err
			}
			if _, err := validateServer(s.env.now, s.cfg.ServerURL, tok, s.log); err != nil {
				return fmt.Errorf("failed to validate token: %w", err)
			}
		}
	}
	if err := s.bootstrap(now, initialized); err != nil {
		return err
	}
	if s.etcd {
		if err := os.MkdirAll(filepath.Join(etcdDir, "member"), 0o700); err != nil {
			return err
		}
	} else if !fileExists(sqlite) {
		if err := os.WriteFile(sqlite, nil, 0o600); err != nil {
			return err
		}
	}
	if _, err := ensureServerLeafs(s.tlsDir, s.version, s.cfg.NodeName, now, s.log); err != nil {
		return err
	}
	if err := s.writeTokens(); err != nil {
		return err
	}
	credURL, adminURL := "https://127.0.0.1:6444", s.env.LocalURL
	if s.env.prod().StaticPods {
		// RKE2: the apiserver pod serves 6443 itself, for everyone.
		credURL, adminURL = s.env.APILocalURL, s.env.APILocalURL
	}
	if err := writeCredKubeconfigs(s.dir, credURL); err != nil {
		return err
	}
	if err := writeAdminKubeconfig(s.env.KubeconfigPath, adminURL, s.tlsDir); err != nil {
		return err
	}
	if err := s.ensureLocalAgentCerts(now); err != nil {
		return err
	}
	serverCA, err := loadSigningCA(filepath.Join(s.tlsDir, "server-ca.crt"), filepath.Join(s.tlsDir, "server-ca.key"))
	if err != nil {
		return err
	}
	dns := []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "localhost", s.cfg.NodeName}
	if s.env.Hostname != "" && s.env.Hostname != s.cfg.NodeName {
		dns = append(dns, s.env.Hostname)
	}
	ips := append([]net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1"), net.ParseIP("10.43.0.1")}, localIPs()...)
	if s.serving, err = loadDynamicCert(s.tlsDir, serverCA, dns, ips, renewDays(s.version), now, s.log); err != nil {
		return err
	}
	s.serving.now = s.env.now
	clientBundle, err := os.ReadFile(filepath.Join(s.tlsDir, "client-ca.crt"))
	if err != nil {
		return err
	}
	s.clientCAs = x509.NewCertPool()
	if !s.clientCAs.AppendCertsFromPEM(clientBundle) {
		return errors.New("client-ca.crt: no certificates")
	}
	return nil
}

// resolvePasswords derives the server and node passwords from the tokens;
// without a token the one in server/token (from an earlier start) is used.
func (s *server) resolvePasswords() error {
	tokenText := s.cfg.Token
	if tokenText == "" {
		if b, err := os.ReadFile(filepath.Join(s.dir, "token")); err == nil {
			tokenText = strings.TrimSpace(string(b))
		}
	}
	if tokenText != "" {
		pw, err := normalizeToken(tokenText)
		if err != nil {
			return fmt.Errorf("failed to normalize server token; must be in format K10<CA-HASH>::<USERNAME>:<PASSWORD> or <PASSWORD>: %w", err)
		}
		s.password = pw
	}
	if s.cfg.AgentToken != "" {
		pw, err := normalizeToken(s.cfg.AgentToken)
		if err != nil {
			return fmt.Errorf("failed to normalize agent token: %w", err)
		}
		s.nodePassword = pw
	}
	return nil
}

// bootstrap loads the cluster's bootstrap data from the datastore and
// reconciles disk, or (first server, first start) creates and saves it.
func (s *server) bootstrap(now time.Time, initialized bool) error {
	unlock, err := s.ds.lock()
	if err != nil {
		return err
	}
	defer unlock()

	var data bootstrapData
	if s.password != "" {
		data, err = s.ds.loadBootstrap(s.password)
	} else {
		err = errBootstrapNotFound
		if _, e := s.ds.loadBootstrap(""); errors.Is(e, errBootstrapOtherPass) {
			err = errBootstrapOtherPass
		}
	}
	switch {
	case err == nil && s.cfg.ServerURL != "" && initialized && joinedServerRotationBug(s.version):
		// Releases before the fix for #11233: a joined server does not
		// reconcile its files from the datastore at restart.
		s.log.Infof("Managed etcd cluster bootstrap already complete and initialized")
	case err == nil:
		if err := reconcileBootstrap(s.dir, data, s.log); err != nil {
			return err
		}
	case errors.Is(err, errBootstrapNotFound) && s.cfg.ServerURL == "":
		if s.password == "" {
			s.password = randomHex(16)
		}
		if err := ensureCAs(s.tlsDir, now, s.log); err != nil {
			return err
		}
		if !fileExists(filepath.Join(s.dir, "cred", "ipsec.psk")) {
			if err := writeFileAtomic(filepath.Join(s.dir, "cred", "ipsec.psk"), []byte(randomHex(32)), 0o600); err != nil {
				return err
			}
		}
		if err := s.ensurePasswd(); err != nil {
			return err
		}
		if data, err = readBootstrapFromDisk(s.dir); err != nil {
			return err
		}
		if err := s.ds.saveBootstrap(s.password, data); err != nil {
			return err
		}
		s.log.Infof("Saved bootstrap data to datastore")
		return nil
	default:
		return fmt.Errorf("failed to get bootstrap data: %w", err)
	}
	// Existing data: make sure passwd matches the configured tokens, and
	// keep the datastore in step with any change.
	before, _ := os.ReadFile(filepath.Join(s.dir, "cred", "passwd"))
	if err := s.ensurePasswd(); err != nil {
		return err
	}
	after, err := os.ReadFile(filepath.Join(s.dir, "cred", "passwd"))
	if err != nil {
		return err
	}
	if string(before) != string(after) {
		info, err := os.Stat(filepath.Join(s.dir, "cred", "passwd"))
		if err != nil {
			return err
		}
		data["PasswdFile"] = bootstrapFile{Timestamp: info.ModTime(), Content: after}
		return s.ds.saveBootstrap(s.password, data)
	}
	return nil
}

// ensurePasswd makes server/cred/passwd hold the server and node users.
func (s *server) ensurePasswd() error {
	path := filepath.Join(s.dir, "cred", "passwd")
	nodePW := s.nodePassword
	if nodePW == "" {
		// No agent token: keep the node password already in the cluster's
		// passwd, else agents use the server password.
		nodePW = s.password
		if cur, err := readPasswd(path); err == nil && cur["node"].Password != "" {
			nodePW = cur["node"].Password
		}
	}
	s.nodePassword = nodePW
	_, err := writeIfChanged(path, renderPasswd(s.password, nodePW), 0o600)
	return err
}

// writeTokens writes server/token, node-token and agent-token.
func (s *server) writeTokens() error {
	ca, err := os.ReadFile(filepath.Join(s.tlsDir, "server-ca.crt"))
	if err != nil {
		return err
	}
	tokenPath := filepath.Join(s.dir, "token")
	if err := writeFileAtomic(tokenPath, []byte(formatToken(ca, "server", s.password)+"\n"), 0o600); err != nil {
		return err
	}
	if err := symlinkTo(tokenPath, filepath.Join(s.dir, "node-token")); err != nil {
		return err
	}
	agentPath := filepath.Join(s.dir, "agent-token")
	if s.cfg.AgentToken != "" {
		os.Remove(agentPath)
		return writeFileAtomic(agentPath, []byte(formatToken(ca, "node", s.nodePassword)+"\n"), 0o600)
	}
	return symlinkTo(tokenPath, agentPath)
}

func symlinkTo(target, link string) error {
	if cur, err := os.Readlink(link); err == nil && cur == target {
		return nil
	}
	os.Remove(link)
	return os.Symlink(target, link)
}

// ensureLocalAgentCerts writes the agent dir of the server's own agent.
func (s *server) ensureLocalAgentCerts(now time.Time) error {
	for _, stem := range []string{"server-ca", "client-ca"} {
		b, err := os.ReadFile(filepath.Join(s.tlsDir, stem+".crt"))
		if err != nil {
			return err
		}
		if err := writeFileAtomic(filepath.Join(s.agentDir, stem+".crt"), b, 0o644); err != nil {
			return err
		}
	}
	for _, l := range agentLeafs {
		ca, err := loadSigningCA(filepath.Join(s.tlsDir, l.CA+".crt"), filepath.Join(s.tlsDir, l.CA+".key"))
		if err != nil {
			return err
		}
		spec, err := agentLeafSpec(l.Name, s.cfg.NodeName, localIPs())
		if err != nil {
			return err
		}
		key, _, err := loadOrCreateKey(filepath.Join(s.agentDir, l.Name+".key"))
		if err != nil {
			return err
		}
		der, err := ca.sign(key.Public(), spec, now)
		if err != nil {
			return err
		}
		if err := writeFileAtomic(filepath.Join(s.agentDir, l.Name+".crt"), ca.chainPEM(der), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func (s *server) roles() string {
	if s.etcd {
		return "control-plane,etcd,master"
	}
	return "control-plane,master"
}

// serve listens on :6443, notifies systemd and runs until ctx ends.
func (s *server) serve(ctx context.Context) error {
	if s.env.prod().StaticPods {
		return s.serveStatic(ctx)
	}
	// A client certificate is asked for but judged per request, as
	// kube-apiserver's x509 authenticator does (authClient): one that does
	// not verify is a 401, not a failed handshake.
	tlsCfg := &tls.Config{
		GetCertificate: s.serving.getCertificate,
		ClientAuth:     tls.RequestClientCert,
		MinVersion:     tls.VersionTLS12,
		Time:           s.env.now,
	}
	ln, err := net.Listen("tcp", s.env.ListenAddr)
	if err != nil {
		return err
	}
	s.listener = ln
	var peer *etcdPeer
	if s.etcd {
		if peer, err = s.startPeer(); err != nil {
			ln.Close()
			return err
		}
		defer peer.close()
	}
	srv := &http.Server{Handler: s.routes(), TLSConfig: tlsCfg, ErrorLog: log.New(logWriter{s.log}, "", 0), ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(tls.NewListener(ln, tlsCfg)) }()
	s.log.Infof("Running supervisor and apiserver on %s", s.env.ListenAddr)
	close(s.ready)
	stopServing := func() {
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(shutdownCtx)
	}
	if peer != nil {
		// k3s notifies systemd only once etcd is up (etcd.go).
		if err := peer.waitQuorum(ctx); err != nil {
			stopServing()
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
	}
	close(s.apiReady)
	if err := s.env.sdNotify("READY=1"); err != nil {
		s.log.Warnf("Failed to notify systemd: %v", err)
	}
	s.log.Infof("k3s is up and running")
	agentCtx, stopAgent := context.WithCancel(ctx)
	agentDone := make(chan struct{})
	go func() { s.runLocalAgent(agentCtx); close(agentDone) }()
	defer func() { stopAgent(); <-agentDone }()
	select {
	case <-ctx.Done():
		stopServing()
		return nil
	case err := <-errc:
		return err
	}
}

// runLocalAgent is the server's embedded agent: it validates the server
// token against the local /cacerts (a secure token with a stale hash keeps
// this node NotReady, as in k3s) and then heartbeats the server's node.
func (s *server) runLocalAgent(ctx context.Context) {
	tokenText := s.cfg.Token
	if tokenText != "" {
		tok, err := parseToken(tokenText)
		if err == nil && tok.CAHash != "" {
			for {
				if _, err = validateServer(s.env.now, s.env.LocalURL, tok, s.log); err == nil {
					break
				}
				s.log.Errorf("Failed to validate connection to cluster at %s: %v", s.env.LocalURL, err)
				if !sleepCtx(ctx, s.env.RetryInterval) {
					return
				}
			}
		}
	}
	// The kubelet authenticates with agent/client-kubelet.crt as written at
	// this start: once that is no longer valid at k3s's clock, the
	// apiserver answers Unauthorized and the node goes NotReady.
	var kubelet *x509.Certificate
	if certs, err := certsFromFile(filepath.Join(s.agentDir, "client-kubelet.crt")); err == nil {
		kubelet = certs[0]
	}
	failing := false
	for {
		var err error
		if now := s.env.now(); kubelet != nil && (now.After(kubelet.NotAfter) || now.Before(kubelet.NotBefore)) {
			err = fmt.Errorf("Unauthorized (kubelet client certificate: x509: certificate has expired or is not yet valid: current time %s is outside %s to %s)",
				now.UTC().Format(time.RFC3339), kubelet.NotBefore.UTC().Format(time.RFC3339), kubelet.NotAfter.UTC().Format(time.RFC3339))
		} else {
			err = s.ds.heartbeat(s.cfg.NodeName, s.roles(), s.version, time.Now())
		}
		switch {
		case err != nil && !failing:
			s.log.Warnf("Failed to update node %s status, will retry: %v", s.cfg.NodeName, err)
			failing = true
		case err == nil && failing:
			s.log.Infof("Node %s status update succeeded again", s.cfg.NodeName)
			failing = false
		}
		if !sleepCtx(ctx, s.env.HeartbeatInterval) {
			return
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func (s *server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ping", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "pong") })
	mux.HandleFunc("GET /cacerts", s.handleCACerts)
	p := s.env.routePrefix()
	mux.HandleFunc("PUT "+p+"/cert/cacerts", s.requireServer(s.handleCACertReplace))
	mux.HandleFunc("GET "+p+"/server-ca.crt", s.requireNode(s.serveFile("server-ca.crt")))
	mux.HandleFunc("GET "+p+"/client-ca.crt", s.requireNode(s.serveFile("client-ca.crt")))
	mux.HandleFunc("GET "+p+"/readyz", s.requireNode(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	mux.HandleFunc("POST "+p+"/sign/{name}", s.requireNode(s.handleSign))
	if s.env.prod().StaticPods {
		// The API is the kube-apiserver pod's, on its own port (staticpods.go).
		return mux
	}
	s.apiRoutes(mux)
	return mux
}

// apiRoutes are what kube-apiserver answers: on k3s's one port, or in the
// RKE2 kube-apiserver static pod.
func (s *server) apiRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST "+s.env.routePrefix()+"/heartbeat", s.requireAPI(s.handleHeartbeat))
	mux.HandleFunc("GET /readyz", s.requireAPI(s.requireAdmin(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })))
	mux.HandleFunc("GET /livez", s.requireAdmin(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	mux.HandleFunc("GET /api/v1/nodes", s.requireAPI(s.requireAdmin(s.handleNodes)))
}

// handleCACerts serves server-ca.crt as read at the first request, cached
// for the life of the process (docs/k3s-behaviour.md#datastore).
func (s *server) handleCACerts(w http.ResponseWriter, r *http.Request) {
	s.cacertsOnce.Do(func() {
		s.cacerts, s.cacertsErr = os.ReadFile(filepath.Join(s.tlsDir, "server-ca.crt"))
	})
	if s.cacertsErr != nil {
		http.Error(w, s.cacertsErr.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/plain")
	w.Write(s.cacerts)
}

func (s *server) serveFile(name string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		b, err := os.ReadFile(filepath.Join(s.tlsDir, name))
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Write(b)
	}
}

// requireAPI answers 503 "apiserver not ready", as k3s's router does, until
// etcd has quorum.
func (s *server) requireAPI(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-s.apiReady:
			h(w, r)
		default:
			http.Error(w, "apiserver not ready", http.StatusServiceUnavailable)
		}
	}
}

func unauthorized(w http.ResponseWriter) {
	http.Error(w, "Unauthorized", http.StatusUnauthorized)
}

// requireServer allows basic auth server:<server password> (role k3s:server).
func (s *server) requireServer(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		user, pw, ok := r.BasicAuth()
		if !ok || user != "server" || pw != s.password {
			unauthorized(w)
			return
		}
		h(w, r)
	}
}

// requireNode allows node:<agent password> and the server token.
func (s *server) requireNode(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		user, pw, ok := r.BasicAuth()
		if !ok || !((user == "node" && (pw == s.nodePassword || pw == s.password)) || (user == "server" && pw == s.password)) {
			unauthorized(w)
			return
		}
		h(w, r)
	}
}

// errNoClientCert: the request came without a client certificate.
var errNoClientCert = errors.New("no client certificate")

// authClient authenticates a request by its client certificate as
// kube-apiserver's x509 authenticator does: verified against the client CA
// bundle this process loaded at start, at k3s's clock, for client auth
// (and, as before, only a leaf that names client auth). A certificate that
// does not verify is logged as kube-apiserver logs it ("Unable to
// authenticate the request due to an error: x509: certificate has expired
// or is not yet valid: ...", k3s-io/k3s#4047, #9787) and answered 401.
func (s *server) authClient(r *http.Request) (cn string, orgs []string, err error) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return "", nil, errNoClientCert
	}
	certs := r.TLS.PeerCertificates
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	_, err = certs[0].Verify(x509.VerifyOptions{Roots: s.clientCAs, Intermediates: inter, CurrentTime: s.env.now(),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	if err == nil && !slices.ContainsFunc(certs[0].ExtKeyUsage, func(u x509.ExtKeyUsage) bool {
		return u == x509.ExtKeyUsageClientAuth || u == x509.ExtKeyUsageAny
	}) {
		err = errors.New("x509: certificate specifies an incompatible key usage")
	}
	if err != nil {
		s.log.Errorf("Unable to authenticate the request due to an error: %v", err)
		return "", nil, err
	}
	return certs[0].Subject.CommonName, certs[0].Subject.Organization, nil
}

// requireAdmin allows a client cert of group system:masters (kubectl).
func (s *server) requireAdmin(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		_, orgs, err := s.authClient(r)
		if err != nil || !containsString(orgs, "system:masters") {
			unauthorized(w)
			return
		}
		h(w, r)
	}
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// handleSign signs an agent leaf from a PEM CSR (the emulator's stand-in
// for k3s's per-certificate endpoints). The node name comes from the
// K3s-Node-Name header; the CSR's subject is ignored.
func (s *server) handleSign(w http.ResponseWriter, r *http.Request) {
	name := strings.TrimSuffix(r.PathValue("name"), ".crt")
	node := r.Header.Get("K3s-Node-Name")
	if node == "" {
		http.Error(w, "missing K3s-Node-Name", http.StatusBadRequest)
		return
	}
	var ips []net.IP
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		if ip := net.ParseIP(host); ip != nil {
			ips = append(ips, ip)
		}
	}
	spec, err := agentLeafSpec(name, node, ips)
	if err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	block, _ := pem.Decode(body)
	if block == nil || block.Type != "CERTIFICATE REQUEST" {
		http.Error(w, "body must be a PEM CERTIFICATE REQUEST", http.StatusBadRequest)
		return
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err == nil {
		err = csr.CheckSignature()
	}
	if err != nil {
		http.Error(w, "invalid CSR: "+err.Error(), http.StatusBadRequest)
		return
	}
	caStem := "client-ca"
	for _, l := range agentLeafs {
		if l.Name == name {
			caStem = l.CA
		}
	}
	ca, err := loadSigningCA(filepath.Join(s.tlsDir, caStem+".crt"), filepath.Join(s.tlsDir, caStem+".key"))
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	der, err := ca.sign(csr.PublicKey, spec, s.env.now())
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Write(ca.chainPEM(der))
}

type heartbeatRequest struct {
	Roles   string `json:"roles"`
	Version string `json:"version"`
}

// handleHeartbeat records an agent heartbeat. Like a kubelet, the agent
// authenticates with its client-kubelet cert, verified against the client
// CA bundle this process loaded at start.
func (s *server) handleHeartbeat(w http.ResponseWriter, r *http.Request) {
	cn, orgs, err := s.authClient(r)
	if err != nil || !strings.HasPrefix(cn, "system:node:") || !containsString(orgs, "system:nodes") {
		unauthorized(w)
		return
	}
	var req heartbeatRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if req.Roles == "" {
		req.Roles = "<none>"
	}
	if err := s.ds.heartbeat(strings.TrimPrefix(cn, "system:node:"), req.Roles, req.Version, time.Now()); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
