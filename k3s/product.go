package k3s

import (
	"path"
	"strings"

	"github.com/fleetcert/fleetcert/remote"
)

// Products fleetcert drives: k3s and RKE2 share k3s's certificate code
// (same server/tls layout, same certificate rotate-ca, same token hash) and
// differ in names, places, ports and how the control plane runs
// (docs/k3s-behaviour.md#rke2).
const (
	ProductK3s  = "k3s"
	ProductRKE2 = "rke2"
)

// product is everything that differs between the products, in one place.
type product struct {
	binary     string // program name; also the prefix of its environment variables
	dataDir    string
	configFile string
	// unitDir is where the installer puts its units, and envFile the name
	// of the environment file it writes beside a unit (%s: the unit name).
	unitDir, envFile      string
	serverUnit, agentUnit string
	// supervisorPort serves /cacerts and agents' joins; the apiserver
	// is on 6443 for both.
	supervisorPort string
	// kubeconfig is the admin kubeconfig for the product's own kubectl,
	// <data dir>/bin/kubectl; empty: the program has a kubectl subcommand
	// that finds it (k3s kubectl).
	kubeconfig string
	// versionTag is what follows "+" in a release: v1.33.5+k3s1,
	// v1.33.5+rke2r1.
	versionTag string
	// staticPods: etcd and the apiserver run as static pods that a
	// restart of the service does not stop; what they serve proves a
	// change, never the service's state.
	staticPods bool
	// checkOutput is the first release per line of `certificate check
	// --output`.
	checkOutput gate
}

var products = map[string]*product{
	ProductK3s: {
		binary: "k3s", dataDir: "/var/lib/rancher/k3s", configFile: "/etc/rancher/k3s/config.yaml",
		unitDir: "/etc/systemd/system", envFile: "%s.service.env", serverUnit: "k3s", agentUnit: "k3s-agent",
		supervisorPort: "6443", versionTag: "k3s",
		checkOutput: gate{"v1.32.0+k3s1", "v1.31.5+k3s1", "v1.30.9+k3s1"},
	},
	ProductRKE2: {
		binary: "rke2", dataDir: "/var/lib/rancher/rke2", configFile: "/etc/rancher/rke2/config.yaml",
		unitDir: "/usr/local/lib/systemd/system", envFile: "%s.env", serverUnit: "rke2-server", agentUnit: "rke2-agent",
		supervisorPort: "9345", kubeconfig: "/etc/rancher/rke2/rke2.yaml", versionTag: "rke2r",
		staticPods:  true,
		checkOutput: gate{"v1.32.1+k3s1", "v1.31.5+k3s1", "v1.30.9+k3s1", "v1.29.13+k3s1"},
	},
}

// isProductBinary reports whether a program is one of the products'.
func isProductBinary(program string) bool {
	for _, p := range products {
		if path.Base(program) == p.binary {
			return true
		}
	}
	return false
}

// Products lists the product names an inventory may give.
func Products() []string { return []string{ProductK3s, ProductRKE2} }

// ProductDefaults are the data dir, config file and service names an
// installer of the product uses, for the inventory's defaults.
func ProductDefaults(name string) (dataDir, configFile, serverUnit, agentUnit string, ok bool) {
	p, ok := products[name]
	if !ok {
		return "", "", "", "", false
	}
	return p.dataDir, p.configFile, p.serverUnit, p.agentUnit, true
}

// product is the layout's product; k3s when unset.
func (l Layout) product() *product {
	if p, ok := products[l.Product]; ok {
		return p
	}
	return products[ProductK3s]
}

// ProductName is the layout's product, for messages: k3s or rke2.
func (l Layout) ProductName() string { return l.product().binary }

// envPrefix is what the product's environment variables start with.
func (p *product) envPrefix() string { return strings.ToUpper(p.binary) + "_" }

// SupervisorAddr is where a server serves /cacerts, on its own loopback.
func (l Layout) SupervisorAddr() string { return "127.0.0.1:" + l.product().supervisorPort }

// APIServerAddr is where a server's apiserver presents its serving chain.
func (l Layout) APIServerAddr() string { return "127.0.0.1:6443" }

// StaticPods reports whether the apiserver runs apart from the service
// (RKE2's static pods): it keeps serving through a restart of the service
// and changes only when its pod is replaced.
func (l Layout) StaticPods() bool { return l.product().staticPods }

// rotateServiceName is the name `certificate rotate --service` knows a
// service by in the product: k3s's own services are named after the
// program (k3s-server is rke2-server in RKE2).
func (l Layout) rotateServiceName(s string) string {
	if rest, ok := strings.CutPrefix(s, "k3s-"); ok {
		return l.product().binary + "-" + rest
	}
	return s
}

// leafName is a leaf file name of k3s as the product names it
// (client-k3s-controller.crt is client-rke2-controller.crt in RKE2).
func (l Layout) leafName(name string) string {
	return strings.Replace(name, "-k3s-", "-"+l.product().binary+"-", 1)
}

// kubectl is the command that runs kubectl as the node's admin.
func (l Layout) kubectl() string {
	if kc := l.product().kubeconfig; kc != "" {
		return remote.Quotef("%s --kubeconfig %s", path.Join(l.dataDir(), "bin", "kubectl"), kc)
	}
	return l.bin() + " kubectl"
}

// bin runs the product's program: the path the service runs (Binary, from
// the unit or service script) when known, else by name with the
// installers' /usr/local/bin first on PATH. Under sudo, secure_path (e.g.
// /sbin:/bin:/usr/sbin:/usr/bin on the RHEL family) would not find it.
func (l Layout) bin() string {
	if path.IsAbs(l.Binary) && path.Base(l.Binary) == l.product().binary {
		return remote.Quote(l.Binary)
	}
	return "PATH=/usr/local/bin:$PATH " + l.product().binary
}
