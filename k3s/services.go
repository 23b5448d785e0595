package k3s

import (
	"fmt"
	"path"
	"slices"
	"strings"
)

// Services `k3s certificate rotate --service` knows (docs/k3s-behaviour.md#certificate-rotate). Each
// renews the leaf certificates of one component.
var (
	serverServices = []string{"admin", "api-server", "auth-proxy", "cloud-controller", "controller-manager",
		"etcd", "scheduler", "supervisor", "k3s-server"}
	agentServices = []string{"kube-proxy", "kubelet", "k3s-controller"}
)

// supervisorCert is the file whose presence tells that a k3s version has
// the supervisor service: older ones reject --service supervisor.
const supervisorCert = "client-supervisor.crt"

// ParseServices checks a --service list against the known names.
func ParseServices(list []string) ([]string, error) {
	var out []string
	for _, s := range list {
		for _, name := range strings.Split(s, ",") {
			name = strings.TrimSpace(name)
			if name == "" {
				continue
			}
			// RKE2 names k3s's own services after itself; fleetcert
			// keeps k3s's names and translates them per node.
			if rest, ok := strings.CutPrefix(name, ProductRKE2+"-"); ok {
				name = "k3s-" + rest
			}
			if !slices.Contains(serverServices, name) && !slices.Contains(agentServices, name) {
				return nil, fmt.Errorf("service %s is not recognized (known: %s)", name,
					strings.Join(append(slices.Clone(serverServices), agentServices...), ", "))
			}
			if !slices.Contains(out, name) {
				out = append(out, name)
			}
		}
	}
	return out, nil
}

// ServicesFor is the --service list to pass on a node: the requested
// services that apply to its role and exist in its k3s (supervisor only
// where its certificate exists). An empty request means every service the
// node has. dropped lists requested services left out, for the report.
func (l Layout) ServicesFor(requested []string, s *Snapshot) (services, dropped []string) {
	available := slices.Clone(agentServices)
	if l.Role == RoleServer {
		available = append(slices.Clone(serverServices), agentServices...)
		if _, ok := s.Files[path.Join(l.ServerTLSDir(), supervisorCert)]; !ok {
			available = slices.DeleteFunc(available, func(x string) bool { return x == "supervisor" })
		}
	}
	if len(requested) == 0 {
		return available, nil
	}
	for _, r := range requested {
		if slices.Contains(available, r) {
			services = append(services, r)
		} else {
			dropped = append(dropped, r)
		}
	}
	return services, dropped
}

// LeafBackupsDir is where `k3s certificate rotate` leaves its tls-<unix>
// copies on this node.
func (l Layout) LeafBackupsDir() string {
	if l.Role == RoleAgent {
		return l.AgentDir()
	}
	return l.ServerDir()
}

// serviceLeafs are the leaf certificates each service's rotation renews,
// relative to server/tls (server) or agent/ (agent) (docs/k3s-behaviour.md#certificate-rotate).
// k3s-server renews the :6443 serving cert through a trigger file instead.
var serviceLeafs = map[string]struct{ server, agent []string }{
	"admin":              {server: []string{"client-admin.crt"}},
	"api-server":         {server: []string{"client-kube-apiserver.crt", "serving-kube-apiserver.crt"}},
	"controller-manager": {server: []string{"client-controller.crt"}},
	"scheduler":          {server: []string{"client-scheduler.crt"}},
	"etcd":               {server: []string{"etcd/client.crt", "etcd/server-client.crt", "etcd/peer-server-client.crt"}},
	"cloud-controller":   {server: []string{"client-k3s-cloud-controller.crt"}},
	"k3s-controller":     {server: []string{"client-k3s-controller.crt"}, agent: []string{"client-k3s-controller.crt"}},
	"supervisor":         {server: []string{"client-supervisor.crt"}},
	"auth-proxy":         {server: []string{"client-auth-proxy.crt"}},
	"kubelet":            {agent: []string{"client-kubelet.crt", "serving-kubelet.crt"}},
	"kube-proxy":         {server: []string{"client-kube-proxy.crt"}, agent: []string{"client-kube-proxy.crt"}},
}

// RenewedLeafs lists the certificate files a rotation of services renews
// on this node (all of the node's services when none are named), for gates
// that check each was written again after the restart. Files that do not
// exist on the node (e.g. etcd certs on a sqlite server) are left out.
func (l Layout) RenewedLeafs(services []string, s *Snapshot) []string {
	if len(services) == 0 {
		services, _ = l.ServicesFor(nil, s)
	}
	var out []string
	for _, svc := range services {
		files := serviceLeafs[svc]
		var candidates []string
		if l.Role == RoleServer {
			for _, f := range files.server {
				candidates = append(candidates, path.Join(l.ServerTLSDir(), l.leafName(f)))
			}
		}
		for _, f := range files.agent {
			candidates = append(candidates, path.Join(l.AgentDir(), l.leafName(f)))
		}
		for _, c := range candidates {
			if _, ok := s.Files[c]; ok && !slices.Contains(out, c) {
				out = append(out, c)
			}
		}
	}
	return out
}
