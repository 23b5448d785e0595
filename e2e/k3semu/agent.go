package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// httpGet fetches url and returns the body of a 200 response.
func httpGet(client *http.Client, url, user, pw string) ([]byte, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	if user != "" {
		req.SetBasicAuth(user, pw)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", url, resp.Status)
	}
	return body, nil
}

// tlsClient is an HTTPS client that judges certificates at now (k3s's
// clock, Env.now).
func tlsClient(now func() time.Time, cfg *tls.Config) *http.Client {
	cfg.Time = now
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true}}
}

func poolFromPEM(b []byte) *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(b)
	return pool
}

// validateServer returns the cluster CA bundle of serverURL, checked the
// way k3s checks a join token (docs/k3s-behaviour.md#tokens): trusted by the host -> no hash
// check; else fetch /cacerts insecurely, re-fetch trusting that bundle,
// compare hashCA with the token's hash (a short token only warns).
func validateServer(now func() time.Time, serverURL string, tok joinToken, log *Logger) ([]byte, error) {
	url := strings.TrimRight(serverURL, "/") + "/cacerts"
	if body, err := httpGet(tlsClient(now, &tls.Config{}), url, "", ""); err == nil {
		log.Warnf("Cluster CA certificate is trusted by the host CA bundle. Token CA hash will not be validated.")
		return body, nil
	}
	cacerts, err := httpGet(tlsClient(now, &tls.Config{InsecureSkipVerify: true}), url, "", "")
	if err != nil {
		return nil, err
	}
	if _, err := httpGet(tlsClient(now, &tls.Config{RootCAs: poolFromPEM(cacerts)}), url, "", ""); err != nil {
		return nil, fmt.Errorf("CA cert validation failed: %w", err)
	}
	serverHash := hashCA(cacerts)
	if tok.CAHash == "" {
		log.Warnf("Cluster CA certificate is not trusted by the host CA bundle, but the token does not include a CA hash. Use the full token from the server's node-token file to enable Cluster CA validation.")
		return cacerts, nil
	}
	if tok.CAHash != serverHash {
		return nil, fmt.Errorf("token CA hash does not match the Cluster CA certificate hash: %s != %s", tok.CAHash, serverHash)
	}
	return cacerts, nil
}

// agent is one running `k3s agent`.
type agent struct {
	env      *Env
	cfg      *nodeConfig
	log      *Logger
	dir      string
	token    joinToken
	version  string
	serverCA []byte
	// registered is closed after the first successful heartbeat (tests).
	registered chan struct{}
}

// runAgent is `k3s agent`: validate the token (retrying every 2 s
// forever), fetch CA files and leaf certs, then heartbeat.
func runAgent(ctx context.Context, e *Env, cfg *nodeConfig) error {
	a, err := newAgent(e, cfg)
	if err != nil {
		return err
	}
	return a.run(ctx)
}

func newAgent(e *Env, cfg *nodeConfig) (*agent, error) {
	if cfg.Token == "" {
		return nil, errors.New("--token is required")
	}
	if cfg.ServerURL == "" {
		return nil, errors.New("--server is required")
	}
	if !strings.HasPrefix(cfg.ServerURL, "https://") {
		return nil, fmt.Errorf("server url must begin with https://: %s", cfg.ServerURL)
	}
	tok, err := parseToken(cfg.Token)
	if err != nil {
		return nil, err
	}
	return &agent{env: e, cfg: cfg, log: e.Log, dir: filepath.Join(cfg.DataDir, "agent"), token: tok, version: e.version(), registered: make(chan struct{})}, nil
}

func (a *agent) run(ctx context.Context) error {
	a.log.Infof("Starting %s agent %s", a.env.prod().Name, a.version)
	if err := os.MkdirAll(a.dir, 0o700); err != nil {
		return err
	}
	for {
		err := a.join()
		if err == nil {
			break
		}
		a.log.Errorf("Failed to validate connection to cluster at %s: %v", a.cfg.ServerURL, err)
		if !sleepCtx(ctx, a.env.RetryInterval) {
			return nil
		}
	}
	if err := a.env.sdNotify("READY=1"); err != nil {
		a.log.Warnf("Failed to notify systemd: %v", err)
	}
	a.log.Infof("%s agent is up and running", a.env.prod().Name)
	a.heartbeatLoop(ctx)
	return nil
}

// join validates the server and fetches the CA files and leaf certs.
func (a *agent) join() error {
	cacerts, err := validateServer(a.env.now, a.cfg.ServerURL, a.token, a.log)
	if err != nil {
		return err
	}
	client := tlsClient(a.env.now, &tls.Config{RootCAs: poolFromPEM(cacerts)})
	base := strings.TrimRight(a.cfg.ServerURL, "/")
	files := map[string][]byte{}
	for _, name := range []string{"server-ca.crt", "client-ca.crt"} {
		b, err := httpGet(client, base+a.env.routePrefix()+"/"+name, "node", a.token.Password)
		if err != nil {
			return err
		}
		files[name] = b
	}
	// Written at every start, so mtimes are fresh.
	for name, b := range files {
		if err := writeFileAtomic(filepath.Join(a.dir, name), b, 0o644); err != nil {
			return err
		}
	}
	a.serverCA = files["server-ca.crt"]
	for _, l := range agentLeafs {
		if err := a.fetchLeaf(client, base, l.Name); err != nil {
			return fmt.Errorf("failed to get %s certificate: %w", l.Name, err)
		}
	}
	return nil
}

// fetchLeaf posts a CSR made with the local key (kept across restarts).
func (a *agent) fetchLeaf(client *http.Client, base, name string) error {
	key, _, err := loadOrCreateKey(filepath.Join(a.dir, name+".key"))
	if err != nil {
		return err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return err
	}
	req, err := http.NewRequest(http.MethodPost, base+a.env.routePrefix()+"/sign/"+name+".crt", bytes.NewReader(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})))
	if err != nil {
		return err
	}
	req.SetBasicAuth("node", a.token.Password)
	req.Header.Set("K3s-Node-Name", a.cfg.NodeName)
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s %s", req.URL, resp.Status, strings.TrimSpace(string(body)))
	}
	if _, err := parseCertsPEM(body); err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(a.dir, name+".crt"), body, 0o644)
}

// heartbeatLoop keeps the node Ready. It authenticates with client-kubelet
// and trusts the server CA bundle downloaded at start, like a kubelet: a
// server restarted onto an unrelated CA loses this node until it restarts.
func (a *agent) heartbeatLoop(ctx context.Context) {
	url := a.env.apiURL(a.cfg.ServerURL) + a.env.routePrefix() + "/heartbeat"
	cert, err := tls.LoadX509KeyPair(filepath.Join(a.dir, "client-kubelet.crt"), filepath.Join(a.dir, "client-kubelet.key"))
	if err != nil {
		a.log.Errorf("Failed to load kubelet client certificate: %v", err)
		return
	}
	client := tlsClient(a.env.now, &tls.Config{RootCAs: poolFromPEM(a.serverCA), Certificates: []tls.Certificate{cert}})
	body, _ := json.Marshal(heartbeatRequest{Roles: "<none>", Version: a.version})
	failing := false
	for {
		err := postJSON(client, url, body)
		switch {
		case err != nil && !failing:
			a.log.Warnf("Failed to update node status, will retry: %v", err)
			failing = true
		case err == nil:
			if failing {
				a.log.Infof("Node status update succeeded again")
			}
			failing = false
			select {
			case <-a.registered:
			default:
				a.log.Infof("Node %s registered", a.cfg.NodeName)
				close(a.registered)
			}
		}
		if !sleepCtx(ctx, a.env.HeartbeatInterval) {
			return
		}
	}
}

func postJSON(client *http.Client, url string, body []byte) error {
	resp, err := client.Post(url, "application/json", bytes.NewReader(body))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	return nil
}
