// Package fleettest is a fake k3s fleet for tests and benchmarks of the
// orchestrator and the commands. Every node is a remote.Host that answers
// the scripts fleetcert sends from in-memory state, at once, with enough
// of k3s's behaviour for rotate-ca, rotate-sa-key and rotate to pass every
// phase and gate for real: a datastore per cluster that `k3s certificate
// rotate-ca` fills, restarts that load it into server/tls and rewrite
// server/token (or, on agents, download the served CA), tokens that must
// pin the CA the cluster serves for a restart to come up, and `k3s
// certificate rotate` removing leaf certificates that the next start
// issues again. A script it does not know fails with exit 127 and is
// recorded (Fleet.Unknown), so a new command cannot pass unseen. Tests
// break nodes through Node's fault controls (BeforeRun, BeforeWrite,
// DialErr, ClockOffset).
//
// The CA material is made once (Default): five k3s-style self-signed ECDSA
// P-256 CAs, an RSA service.key and leaf certificates signed by them, shared
// by every node of every fleet, so that building a thousand clusters
// generates no key.
package fleettest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"sync"
	"time"

	"github.com/fleetcert/fleetcert/pki"
)

// Material is the CA material every fake node starts from.
type Material struct {
	// CAs is server/tls's rotatable files as k3s makes them for itself:
	// one self-signed certificate per CA, and service.key.
	CAs pki.CASet
	// Hash is hashCA of CAs' server-ca.crt: what every token pins.
	Hash string
	// ServerLeafs are leaf files under server/tls (relative names), each
	// the leaf followed by its CA, as k3s writes them; AgentLeafs the same
	// under agent/. LeafKey is the key of all of them.
	ServerLeafs map[string][]byte
	AgentLeafs  map[string][]byte
	EtcdLeafs   map[string][]byte
	LeafKey     []byte
	// Made is when the CAs were made (a year before Default was first
	// called).
	Made time.Time

	kubeletMu   sync.Mutex
	kubeletCert func(node string) ([]byte, error)
}

// KubeletCert is agent/client-kubelet.crt for a node: k3s issues it with CN
// system:node:<node name>, which is how fleetcert learns the name a node
// registered under.
func (m *Material) KubeletCert(node string) ([]byte, error) {
	m.kubeletMu.Lock()
	defer m.kubeletMu.Unlock()
	return m.kubeletCert(node)
}

var defaultMaterial = sync.OnceValues(newMaterial)

// Default returns the material, made on first use and shared afterwards.
// Callers must not modify it.
func Default() (*Material, error) { return defaultMaterial() }

func newMaterial() (*Material, error) {
	made := time.Now().AddDate(-1, 0, 0).Truncate(time.Second)
	m := &Material{CAs: pki.CASet{}, Made: made,
		ServerLeafs: map[string][]byte{}, AgentLeafs: map[string][]byte{}, EtcdLeafs: map[string][]byte{}}
	type ca struct {
		cert *x509.Certificate
		key  crypto.Signer
	}
	cas := map[string]ca{}
	for _, t := range pki.CATypes {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		// As k3s (dynamiclistener NewSelfSignedCACert): serial 0, CN
		// <prefix>@<unix>, 10 years, no AuthorityKeyId.
		tmpl := &x509.Certificate{
			SerialNumber:          big.NewInt(0),
			Subject:               pkix.Name{CommonName: fmt.Sprintf("%s@%d", t.DefaultCN, made.Unix())},
			NotBefore:             made.UTC(),
			NotAfter:              made.Add(3650 * 24 * time.Hour).UTC(),
			KeyUsage:              x509.KeyUsageKeyEncipherment | x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
			BasicConstraintsValid: true,
			IsCA:                  true,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
		if err != nil {
			return nil, err
		}
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, err
		}
		keyPEM, err := pki.EncodeKey(key)
		if err != nil {
			return nil, err
		}
		m.CAs[t.CertFile], m.CAs[t.KeyFile] = pemCert(der), keyPEM
		cas[t.Name] = ca{cert, key}
	}
	sa, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	if m.CAs[pki.ServiceKeyFile], err = pki.EncodeKey(sa); err != nil {
		return nil, err
	}
	m.Hash = pki.HashCA(m.CAs["server-ca.crt"])

	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	if m.LeafKey, err = pki.EncodeKey(leafKey); err != nil {
		return nil, err
	}
	serial := int64(1)
	leaf := func(issuer, cn string, usage x509.ExtKeyUsage) ([]byte, error) {
		serial++
		is := cas[issuer]
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			Subject:      pkix.Name{CommonName: cn},
			NotBefore:    made.UTC(),
			NotAfter:     made.AddDate(2, 0, 0).UTC(),
			KeyUsage:     x509.KeyUsageKeyEncipherment | x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, is.cert, leafKey.Public(), is.key)
		if err != nil {
			return nil, err
		}
		return append(pemCert(der), pemCert(is.cert.Raw)...), nil
	}
	client, serving := x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth
	m.kubeletCert = func(node string) ([]byte, error) { return leaf("client", "system:node:"+node, client) }
	for _, l := range []struct {
		into         map[string][]byte
		name, issuer string
		cn           string
		usage        x509.ExtKeyUsage
	}{
		{m.ServerLeafs, "client-admin.crt", "client", "system:admin", client},
		{m.ServerLeafs, "client-auth-proxy.crt", "request-header", "system:auth-proxy", client},
		{m.ServerLeafs, "client-controller.crt", "client", "system:kube-controller-manager", client},
		{m.ServerLeafs, "client-k3s-cloud-controller.crt", "client", "k3s-cloud-controller-manager", client},
		{m.ServerLeafs, "client-k3s-controller.crt", "client", "system:k3s-controller", client},
		{m.ServerLeafs, "client-kube-apiserver.crt", "client", "system:apiserver", client},
		{m.ServerLeafs, "client-kube-proxy.crt", "client", "system:kube-proxy", client},
		{m.ServerLeafs, "client-scheduler.crt", "client", "system:kube-scheduler", client},
		{m.ServerLeafs, "client-supervisor.crt", "client", "system:k3s-supervisor", client},
		{m.ServerLeafs, "serving-kube-apiserver.crt", "server", "kube-apiserver", serving},
		{m.EtcdLeafs, "etcd/client.crt", "etcd/server", "etcd-client", client},
		{m.EtcdLeafs, "etcd/server-client.crt", "etcd/server", "etcd-server", serving},
		{m.EtcdLeafs, "etcd/peer-server-client.crt", "etcd/peer", "etcd-peer", serving},
		{m.AgentLeafs, "client-kubelet.crt", "client", "system:node:node", client},
		{m.AgentLeafs, "serving-kubelet.crt", "server", "node", serving},
		{m.AgentLeafs, "client-kube-proxy.crt", "client", "system:kube-proxy", client},
		{m.AgentLeafs, "client-k3s-controller.crt", "client", "system:k3s-controller", client},
	} {
		if l.into[l.name], err = leaf(l.issuer, l.cn, l.usage); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func pemCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
