package main

import (
	"bytes"
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
// as a JSON core/v1 Secret (like dynamiclistener). SANs requested through
// SNI are added on the fly.
type dynamicCert struct {
	mu      sync.Mutex
	path    string
	ca      *signingCA
	key     crypto.Signer
	dns     []string
	ips     []net.IP
	tlsCert *tls.Certificate
	log     *Logger
	days    int
	certDER []byte
}

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

// loadDynamicCert loads dynamic-cert.json and regenerates it when missing,
// expiring, no longer issued by the current server CA, lacking a SAN, or
// when the dynamic-cert-regenerate trigger file exists (deleted here).
func loadDynamicCert(tlsDir string, ca *signingCA, dns []string, ips []net.IP, days int, now time.Time, log *Logger) (*dynamicCert, error) {
	d := &dynamicCert{path: filepath.Join(tlsDir, "dynamic-cert.json"), ca: ca, dns: dns, ips: ips, log: log, days: days}
	reason := ""
	trigger := filepath.Join(tlsDir, "dynamic-cert-regenerate")
	if fileExists(trigger) {
		reason = "regeneration requested"
		if err := os.Remove(trigger); err != nil {
			return nil, err
		}
	}
	leaf, key, err := readDynamicSecret(d.path)
	switch {
	case err != nil:
		reason = "missing or unreadable"
	case reason != "":
		key = nil // a forced regeneration gets a new key
	case leaf.NotAfter.Sub(now) <= time.Duration(days)*24*time.Hour:
		reason = "expiring"
	case !bytes.Equal(leaf.AuthorityKeyId, ca.Cert.SubjectKeyId) || leaf.CheckSignatureFrom(ca.Cert) != nil:
		reason = "issuer changed"
	default:
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
		if !coversAll(leaf, dns, ips) {
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
		d.certDER = leaf.Raw
		return d, d.buildTLS()
	}
	log.Infof("Regenerating serving certificate dynamic-cert.json: %s", reason)
	return d, d.regenerate(now)
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

func readDynamicSecret(path string) (*x509.Certificate, crypto.Signer, error) {
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
	return certs[0], keys[0], nil
}

// regenerate issues a new serving cert (caller holds mu or is the constructor).
func (d *dynamicCert) regenerate(now time.Time) error {
	der, err := d.ca.sign(d.key.Public(), leafSpec{CN: "k3s", Orgs: []string{"k3s"}, DNS: d.dns, IPs: d.ips, Server: true}, now)
	if err != nil {
		return err
	}
	d.certDER = der
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
		Data:     map[string][]byte{"tls.crt": append(encodeCertPEM(der), encodeCertPEM(d.ca.Cert.Raw)...), "tls.key": keyPEM},
		Type:     "kubernetes.io/tls",
	}
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(d.path, b, 0o600); err != nil {
		return err
	}
	return d.buildTLS()
}

func sanitizeAnnotation(s string) string {
	return strings.NewReplacer(":", "_", "*", "_").Replace(s)
}

// buildTLS makes the served chain: leaf + the whole server CA bundle, so
// clients pinned to an old root can verify through a cross-signed cert.
func (d *dynamicCert) buildTLS() error {
	chain := [][]byte{d.certDER}
	certs, err := parseCertsPEM(d.ca.Bundle)
	if err != nil {
		return err
	}
	for _, c := range certs {
		chain = append(chain, c.Raw)
	}
	leaf, err := x509.ParseCertificate(d.certDER)
	if err != nil {
		return err
	}
	d.tlsCert = &tls.Certificate{Certificate: chain, PrivateKey: d.key, Leaf: leaf}
	return nil
}

// getCertificate serves the cert, adding the SNI name as a SAN if needed.
func (d *dynamicCert) getCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	name := strings.ToLower(strings.TrimSuffix(hello.ServerName, "."))
	if name != "" && net.ParseIP(name) == nil && d.tlsCert.Leaf.VerifyHostname(name) != nil {
		d.dns = append(d.dns, name)
		if err := d.regenerate(time.Now()); err != nil {
			d.log.Errorf("failed to add %s to the serving certificate: %v", name, err)
		} else {
			d.log.Infof("Updated serving certificate with new SAN %s", name)
		}
	}
	return d.tlsCert, nil
}
