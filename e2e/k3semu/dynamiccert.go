package main

import (
	"crypto"
	"crypto/sha1"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// dynamicCert is the :6443 serving cert, cached in server/tls/dynamic-cert.json
// as a JSON core/v1 Secret (like dynamiclistener's file storage). SANs
// requested through SNI are added on the fly.
//
// What is stored and served follows rancher/dynamiclistener (factory/gen.go,
// listener.go) as k3s configures it (pkg/cluster/https.go), see
// docs/k3s-behaviour.md#complete-cross-signed:
//   - tls.crt is the leaf followed by every certificate of server-ca.crt as it
//     was when the leaf was signed (generateCert marshals leaf + TLS.CACert,
//     the whole bundle k3s loads with LoadCertsChain at start);
//   - the handshake presents tls.crt as stored (tls.X509KeyPair of the secret),
//     never a chain rebuilt from the current bundle;
//   - nothing checks whether the cached cert still comes from the current CA
//     (TLS.Verify only logs a warning when a cert is re-signed): it changes
//     only when missing, when dynamic-cert-regenerate exists (new key), when it
//     expires within the renewal threshold (same key) or lacks a SAN (same key).
type dynamicCert struct {
	mu      sync.Mutex
	path    string
	ca      *signingCA
	key     crypto.Signer
	dns     []string
	ips     []net.IP
	chain   [][]byte // tls.crt as stored: leaf, then the CA bundle it was issued with
	tlsCert *tls.Certificate
	log     *Logger
	now     func() time.Time // k3s's clock for certificates issued while serving; nil: time.Now
}

// servingCertTrigger in server/tls makes the next start re-issue the
// serving cert with a new key (k3s's RegenerateCerts callback).
const servingCertTrigger = "dynamic-cert-regenerate"

type secretJSON struct {
	Kind       string            `json:"kind"`
	APIVersion string            `json:"apiVersion"`
	Metadata   secretMeta        `json:"metadata"`
	Data       map[string][]byte `json:"data"`
	Type       string            `json:"type"`
}

type secretMeta struct {
	Name        string            `json:"name"`
	Namespace   string            `json:"namespace"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// loadDynamicCert loads dynamic-cert.json and re-issues it, signed by the
// current server CA with the current bundle as its chain, only for
// dynamiclistener's reasons: missing or unreadable, or the
// dynamic-cert-regenerate trigger file exists (deleted here; both get a new
// key), expiring within days, or lacking a SAN (both keep the key). A cert
// from a CA that is no longer current is kept and served as it is.
func loadDynamicCert(tlsDir string, ca *signingCA, dns []string, ips []net.IP, days int, now time.Time, log *Logger) (*dynamicCert, error) {
	d := &dynamicCert{path: filepath.Join(tlsDir, "dynamic-cert.json"), ca: ca, dns: dns, ips: ips, log: log}
	forced := false
	trigger := filepath.Join(tlsDir, servingCertTrigger)
	if fileExists(trigger) {
		forced = true
		if err := os.Remove(trigger); err != nil {
			return nil, err
		}
	}
	chain, key, err := readDynamicSecret(d.path)
	reason := ""
	if err != nil {
		reason = "missing or unreadable"
		key = nil
	} else {
		// Regenerate, Renew and AddCN all keep the names already on the cert.
		leaf := chain[0]
		for _, n := range leaf.DNSNames {
			if !slices.Contains(d.dns, n) {
				d.dns = append(d.dns, n)
			}
		}
		for _, ip := range leaf.IPAddresses {
			if !containsIP(d.ips, ip) {
				d.ips = append(d.ips, ip)
			}
		}
		switch {
		case forced:
			reason = "regeneration requested"
			key = nil // Regenerate starts from an empty secret: a new key
		case leaf.NotAfter.Sub(now) <= time.Duration(days)*24*time.Hour:
			reason = "expiring"
		case !coversAll(leaf, dns, ips):
			reason = "SANs changed"
		}
	}
	if key == nil {
		k, err := newECKey()
		if err != nil {
			return nil, err
		}
		key = k
	}
	d.key = key
	if reason == "" {
		for _, c := range chain {
			d.chain = append(d.chain, c.Raw)
		}
		return d, d.buildTLS()
	}
	if err == nil && !forced {
		// Renew verifies the cert it replaces; Regenerate starts empty.
		d.warnIfIssuerChanges(chain[0])
	}
	log.Infof("Regenerating serving certificate dynamic-cert.json: %s", reason)
	return d, d.regenerate(now)
}

// warnIfIssuerChanges logs what dynamiclistener's generateCert logs when the
// cert it is about to replace does not verify against the current CA bundle.
func (d *dynamicCert) warnIfIssuerChanges(leaf *x509.Certificate) {
	roots := x509.NewCertPool()
	certs, err := parseCertsPEM(d.ca.Bundle)
	if err != nil {
		return
	}
	for _, c := range certs {
		roots.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		d.log.Warnf("unable to verify existing certificate: %v - signing operation may change certificate issuer", err)
	}
}

func containsIP(ips []net.IP, ip net.IP) bool {
	return slices.ContainsFunc(ips, func(x net.IP) bool { return x.Equal(ip) })
}

func coversAll(c *x509.Certificate, dns []string, ips []net.IP) bool {
	for _, n := range dns {
		if !slices.Contains(c.DNSNames, n) {
			return false
		}
	}
	for _, ip := range ips {
		if !containsIP(c.IPAddresses, ip) {
			return false
		}
	}
	return true
}

// readDynamicSecret returns the certificates of tls.crt (leaf first) and
// the key of tls.key.
func readDynamicSecret(path string) ([]*x509.Certificate, crypto.Signer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	var s secretJSON
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, nil, err
	}
	certs, err := parseCertsPEM(s.Data["tls.crt"])
	if err != nil {
		return nil, nil, err
	}
	keys, err := parsePrivateKeysPEM(s.Data["tls.key"])
	if err != nil {
		return nil, nil, err
	}
	if !publicKeysEqual(certs[0].PublicKey, keys[0].Public()) {
		return nil, nil, errors.New("tls.crt and tls.key do not match")
	}
	return certs, keys[0], nil
}

// regenerate signs a serving cert for d.key with the server CA loaded at
// start and stores it with that CA's whole bundle as its chain (caller
// holds mu or is the constructor).
func (d *dynamicCert) regenerate(now time.Time) error {
	der, err := d.ca.sign(d.key.Public(), leafSpec{CN: "k3s", Orgs: []string{"k3s"}, DNS: d.dns, IPs: d.ips, Server: true}, now)
	if err != nil {
		return err
	}
	bundle, err := parseCertsPEM(d.ca.Bundle)
	if err != nil {
		return err
	}
	chain := [][]byte{der}
	for _, c := range bundle {
		chain = append(chain, c.Raw)
	}
	var crt []byte
	for _, c := range chain {
		crt = append(crt, encodeCertPEM(c)...)
	}
	keyPEM, err := encodeKeyPEM(d.key)
	if err != nil {
		return err
	}
	ann := map[string]string{}
	for _, n := range d.dns {
		ann["listener.cattle.io/cn-"+sanitizeAnnotation(n)] = n
	}
	for _, ip := range d.ips {
		ann["listener.cattle.io/cn-"+sanitizeAnnotation(ip.String())] = ip.String()
	}
	sum := sha1.Sum(der)
	ann["listener.cattle.io/fingerprint"] = "SHA1=" + strings.ToUpper(hex.EncodeToString(sum[:]))
	s := secretJSON{
		Kind: "Secret", APIVersion: "v1",
		Metadata: secretMeta{Name: "k3s-serving", Namespace: "kube-system", Annotations: ann},
		Data:     map[string][]byte{"tls.crt": crt, "tls.key": keyPEM},
		Type:     "kubernetes.io/tls",
	}
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(d.path, b, 0o600); err != nil {
		return err
	}
	d.chain = chain
	return d.buildTLS()
}

func sanitizeAnnotation(s string) string {
	return strings.NewReplacer(":", "_", "*", "_").Replace(s)
}

// buildTLS makes what the handshake presents: tls.crt as stored.
func (d *dynamicCert) buildTLS() error {
	leaf, err := x509.ParseCertificate(d.chain[0])
	if err != nil {
		return err
	}
	d.tlsCert = &tls.Certificate{Certificate: d.chain, PrivateKey: d.key, Leaf: leaf}
	return nil
}

// getCertificate serves the cert, adding the SNI name as a SAN if needed.
func (d *dynamicCert) getCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	name := strings.ToLower(strings.TrimSuffix(hello.ServerName, "."))
	if name != "" && net.ParseIP(name) == nil && d.tlsCert.Leaf.VerifyHostname(name) != nil {
		d.dns = append(d.dns, name)
		d.warnIfIssuerChanges(d.tlsCert.Leaf)
		now := time.Now
		if d.now != nil {
			now = d.now
		}
		if err := d.regenerate(now()); err != nil {
			d.log.Errorf("failed to add %s to the serving certificate: %v", name, err)
		} else {
			d.log.Infof("Updated serving certificate with new SAN %s", name)
		}
	}
	return d.tlsCert, nil
}
