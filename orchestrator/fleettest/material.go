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
	"crypto/x509"
	"sync"
	"time"

	"github.com/fleetcert/fleetcert/internal/certtest"
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

	kubeletCert func(node string) []byte
}

// KubeletCert is agent/client-kubelet.crt for a node: k3s issues it with CN
// system:node:<node name>, which is how fleetcert learns the name a node
// registered under.
func (m *Material) KubeletCert(node string) []byte { return m.kubeletCert(node) }

var defaultMaterial = sync.OnceValues(newMaterial)

// Default returns the material, made on first use and shared afterwards.
// Callers must not modify it.
func Default() (*Material, error) { return defaultMaterial() }

func newMaterial() (*Material, error) {
	made := time.Now().AddDate(-1, 0, 0).Truncate(time.Second)
	cas := certtest.NewK3sCAs(made)
	m := &Material{CAs: pki.CASet(cas.Files(certtest.NewRSAKey(2048))), Made: made,
		ServerLeafs: map[string][]byte{}, AgentLeafs: map[string][]byte{}, EtcdLeafs: map[string][]byte{}}
	m.Hash = pki.HashCA(m.CAs["server-ca.crt"])

	leafKey := certtest.NewECKey()
	m.LeafKey = certtest.KeyPEM(leafKey)
	leaf := func(issuer, cn string, usage x509.ExtKeyUsage) []byte {
		return cas[issuer].IssueLeaf(certtest.Spec{CN: cn, Key: leafKey, NotBefore: made, NotAfter: made.AddDate(2, 0, 0),
			Usage: []x509.ExtKeyUsage{usage}}).ChainPEM()
	}
	client, serving := x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth
	m.kubeletCert = func(node string) []byte { return leaf("client-ca", "system:node:"+node, client) }
	for _, l := range []struct {
		into         map[string][]byte
		name, issuer string
		cn           string
		usage        x509.ExtKeyUsage
	}{
		{m.ServerLeafs, "client-admin.crt", "client-ca", "system:admin", client},
		{m.ServerLeafs, "client-auth-proxy.crt", "request-header-ca", "system:auth-proxy", client},
		{m.ServerLeafs, "client-controller.crt", "client-ca", "system:kube-controller-manager", client},
		{m.ServerLeafs, "client-k3s-cloud-controller.crt", "client-ca", "k3s-cloud-controller-manager", client},
		{m.ServerLeafs, "client-k3s-controller.crt", "client-ca", "system:k3s-controller", client},
		{m.ServerLeafs, "client-kube-apiserver.crt", "client-ca", "system:apiserver", client},
		{m.ServerLeafs, "client-kube-proxy.crt", "client-ca", "system:kube-proxy", client},
		{m.ServerLeafs, "client-scheduler.crt", "client-ca", "system:kube-scheduler", client},
		{m.ServerLeafs, "client-supervisor.crt", "client-ca", "system:k3s-supervisor", client},
		{m.ServerLeafs, "serving-kube-apiserver.crt", "server-ca", "kube-apiserver", serving},
		{m.EtcdLeafs, "etcd/client.crt", "etcd/server-ca", "etcd-client", client},
		{m.EtcdLeafs, "etcd/server-client.crt", "etcd/server-ca", "etcd-server", serving},
		{m.EtcdLeafs, "etcd/peer-server-client.crt", "etcd/peer-ca", "etcd-peer", serving},
		{m.AgentLeafs, "client-kubelet.crt", "client-ca", "system:node:node", client},
		{m.AgentLeafs, "serving-kubelet.crt", "server-ca", "node", serving},
		{m.AgentLeafs, "client-kube-proxy.crt", "client-ca", "system:kube-proxy", client},
		{m.AgentLeafs, "client-k3s-controller.crt", "client-ca", "system:k3s-controller", client},
	} {
		l.into[l.name] = leaf(l.issuer, l.cn, l.usage)
	}
	return m, nil
}
