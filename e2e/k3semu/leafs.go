package main

import (
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// serverLeaf is one leaf cert under server/tls, signed by the CA whose
// file stem is CA, and rotated by `certificate rotate --service Service`.
type serverLeaf struct {
	Name    string
	CA      string
	Service string
	Spec    leafSpec
}

func serverLeafs(version string, nodeName string, nodeIPs []net.IP) []serverLeaf {
	apiSANs := []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "localhost", nodeName}
	apiIPs := append([]net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1"), net.ParseIP("10.43.0.1")}, nodeIPs...)
	etcdSANs := []string{"localhost", nodeName}
	etcdIPs := append([]net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")}, nodeIPs...)
	leafs := []serverLeaf{
		{"client-admin", "client-ca", "admin", leafSpec{CN: "system:admin", Orgs: []string{"system:masters"}, Client: true}},
		{"client-supervisor", "client-ca", "supervisor", leafSpec{CN: "system:k3s-supervisor", Orgs: []string{"system:masters"}, Client: true}},
		{"client-controller", "client-ca", "controller-manager", leafSpec{CN: "system:kube-controller-manager", Client: true}},
		{"client-scheduler", "client-ca", "scheduler", leafSpec{CN: "system:kube-scheduler", Client: true}},
		{"client-kube-apiserver", "client-ca", "api-server", leafSpec{CN: "system:apiserver", Orgs: []string{"system:masters"}, Client: true}},
		{"client-kube-proxy", "client-ca", "kube-proxy", leafSpec{CN: "system:kube-proxy", Client: true}},
		{"client-k3s-controller", "client-ca", "k3s-controller", leafSpec{CN: "system:k3s-controller", Client: true}},
		{"client-k3s-cloud-controller", "client-ca", "cloud-controller", leafSpec{CN: "k3s-cloud-controller-manager", Client: true}},
		{"client-auth-proxy", "request-header-ca", "auth-proxy", leafSpec{CN: "system:auth-proxy", Client: true}},
		{"serving-kube-apiserver", "server-ca", "api-server", leafSpec{CN: "kube-apiserver", DNS: apiSANs, IPs: apiIPs, Server: true}},
		{"etcd/client", "etcd/server-ca", "etcd", leafSpec{CN: "etcd-client", Client: true}},
		{"etcd/server-client", "etcd/server-ca", "etcd", leafSpec{CN: "etcd-server", DNS: etcdSANs, IPs: etcdIPs, Server: true, Client: true}},
		{"etcd/peer-server-client", "etcd/peer-ca", "etcd", leafSpec{CN: "etcd-peer", DNS: etcdSANs, IPs: etcdIPs, Server: true, Client: true}},
	}
	if !hasSupervisorCert(version) {
		out := leafs[:0]
		for _, l := range leafs {
			if l.Service != "supervisor" {
				out = append(out, l)
			}
		}
		leafs = out
	}
	return leafs
}

// agentLeaf is one leaf cert under agent/, obtained from a server.
type agentLeaf struct {
	Name    string
	CA      string // "client-ca" or "server-ca"
	Service string
}

var agentLeafs = []agentLeaf{
	{"client-kubelet", "client-ca", "kubelet"},
	{"serving-kubelet", "server-ca", "kubelet"},
	{"client-kube-proxy", "client-ca", "kube-proxy"},
	{"client-k3s-controller", "client-ca", "k3s-controller"},
}

// agentLeafSpec is what a server signs for an agent leaf (the CSR subject
// is ignored, as in k3s).
func agentLeafSpec(name, nodeName string, ips []net.IP) (leafSpec, error) {
	switch name {
	case "client-kubelet":
		return leafSpec{CN: "system:node:" + nodeName, Orgs: []string{"system:nodes"}, Client: true}, nil
	case "serving-kubelet":
		return leafSpec{CN: nodeName, DNS: []string{nodeName, "localhost"}, IPs: append([]net.IP{net.ParseIP("127.0.0.1")}, ips...), Server: true}, nil
	case "client-kube-proxy":
		return leafSpec{CN: "system:kube-proxy", Client: true}, nil
	case "client-k3s-controller":
		return leafSpec{CN: "system:k3s-controller", Client: true}, nil
	}
	return leafSpec{}, fmt.Errorf("unknown agent certificate %q", name)
}

// localIPs lists the non-loopback interface addresses.
func localIPs() []net.IP {
	var ips []net.IP
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() && !n.IP.IsLinkLocalUnicast() {
			ips = append(ips, n.IP)
		}
	}
	return ips
}

// ensureServerLeafs issues/renews every server leaf (docs/k3s-behaviour.md#layout), writes
// the nochain copies and service.current.key. Returns the regenerated names.
func ensureServerLeafs(tlsDir, version, nodeName string, now time.Time, log *Logger) ([]string, error) {
	days := renewDays(version)
	cas := map[string]*signingCA{}
	for _, ca := range defaultCAs {
		sca, err := loadSigningCA(filepath.Join(tlsDir, ca.Stem+".crt"), filepath.Join(tlsDir, ca.Stem+".key"))
		if err != nil {
			return nil, err
		}
		cas[ca.Stem] = sca
	}
	for _, stem := range []string{"server-ca", "client-ca"} {
		if _, err := writeIfChanged(filepath.Join(tlsDir, stem+".nochain.crt"), encodeCertPEM(cas[stem].Cert.Raw), 0o644); err != nil {
			return nil, err
		}
	}
	var regenerated []string
	for _, l := range serverLeafs(version, nodeName, localIPs()) {
		crt := filepath.Join(tlsDir, l.Name+".crt")
		key := filepath.Join(tlsDir, l.Name+".key")
		ok, err := ensureLeaf(crt, key, cas[l.CA], l.Spec, days, now)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", crt, err)
		}
		if ok {
			regenerated = append(regenerated, l.Name)
		}
	}
	if len(regenerated) > 0 {
		log.Infof("Generated or renewed certificates: %s", strings.Join(regenerated, ", "))
	}
	// Legacy shared kubelet keys (no cert) on servers.
	for _, k := range []string{"client-kubelet.key", "serving-kubelet.key"} {
		if _, _, err := loadOrCreateKey(filepath.Join(tlsDir, k)); err != nil {
			return nil, err
		}
	}
	// service.current.key = the first key block of service.key, as is.
	sb, err := os.ReadFile(filepath.Join(tlsDir, "service.key"))
	if err != nil {
		return nil, err
	}
	first, err := firstPrivateKeyBlock(sb)
	if err != nil {
		return nil, fmt.Errorf("service.key: %w", err)
	}
	if _, err := writeIfChanged(filepath.Join(tlsDir, "service.current.key"), first, 0o600); err != nil {
		return nil, err
	}
	return regenerated, nil
}

// certsFromFile is a small helper for the agent and check.
func certsFromFile(path string) ([]*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return parseCertsPEM(b)
}
