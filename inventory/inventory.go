// Package inventory loads, defaults, validates and selects the fleet that
// fleetcert works on, described in one YAML file (hosts.yaml).
//
// Every value is checked here, before anything connects anywhere, so the
// rest of fleetcert can put inventory values into remote commands (quoted)
// and file names without second-guessing them. Problems are reported all at
// once, each with file, line and field, as an *Errors.
//
// The package does no I/O beyond reading the file named to Load.
package inventory

import (
	"strings"
)

// Role is what a node is in its cluster.
type Role string

// The two roles a k3s node can have.
const (
	Server Role = "server"
	Agent  Role = "agent"
)

// Built-in values for what neither defaults, cluster nor node sets: a k3s
// install.sh node.
const (
	DefaultProduct       = "k3s"
	DefaultDataDir       = "/var/lib/rancher/k3s"
	DefaultConfigFile    = "/etc/rancher/k3s/config.yaml"
	DefaultServerService = "k3s"
	DefaultAgentService  = "k3s-agent"
)

// productDefaults are what each product's installer uses where the
// inventory says nothing. They are k3s.ProductDefaults, which the
// orchestrator's tests hold them to; inventory imports no fleetcert package.
var products = map[string]struct{ dataDir, configFile, server, agent string }{
	"k3s":  {DefaultDataDir, DefaultConfigFile, DefaultServerService, DefaultAgentService},
	"rke2": {"/var/lib/rancher/rke2", "/etc/rancher/rke2/config.yaml", "rke2-server", "rke2-agent"},
}

// ProductDefaults are the data dir, config file and service names of a
// product's installer, as the inventory fills them in.
func ProductDefaults(product string) (dataDir, configFile, server, agent string) {
	p := products[product]
	return p.dataDir, p.configFile, p.server, p.agent
}

// Inventory is a loaded, validated and fully resolved inventory file.
type Inventory struct {
	File     string    // as given to Load or Parse; "<stdin>" for standard input
	Clusters []Cluster // in file order
}

// Cluster is one k3s cluster. A cluster from Load or Parse has at least one
// server and exactly one primary server.
type Cluster struct {
	Name   string            `json:"name"`
	Labels map[string]string `json:"labels"` // never nil
	Nodes  []Node            `json:"nodes"`  // servers first, then agents, each in file order
	Line   int               `json:"line"`
}

// Node is one machine of a cluster with every setting resolved: defaults,
// then cluster, then node, field by field, then the built-in defaults.
type Node struct {
	Cluster    string `json:"cluster"`
	Name       string `json:"name"` // unique in its cluster; the host when not given
	Host       string `json:"host"` // hostname, ssh_config alias, IPv4 or IPv6 (never bracketed)
	Role       Role   `json:"role"`
	Primary    bool   `json:"primary"` // the server that loads new CA material
	SSH        SSH    `json:"ssh"`
	Sudo       bool   `json:"sudo"`
	DataDir    string `json:"dataDir"`
	ConfigFile string `json:"configFile"`
	Service    string `json:"service"` // systemd unit or OpenRC service name, without ".service"
	// Product is the distribution the cluster runs: k3s or rke2. All the
	// nodes of a cluster have the same.
	Product string `json:"product"`
	Line    int    `json:"line"` // where the node is written in the file
}

// SSH is how to reach a node. A zero field is unset: the inventory leaves it
// to ~/.ssh/config and then to ssh's own defaults (user = local user, port
// 22). IdentityFile and KnownHostsFile may start with "~/", which the caller
// expands (see Expand); any other path is absolute.
type SSH struct {
	User           string `json:"user,omitempty"`
	Port           int    `json:"port,omitempty"`
	IdentityFile   string `json:"identityFile,omitempty"`
	KnownHostsFile string `json:"knownHostsFile,omitempty"`
	Bastion        string `json:"bastion,omitempty"` // ProxyJump syntax: [user@]host[:port], comma-separated hops
}

// ID names the node across the fleet, as "cluster/name"; it is what logs,
// reports and state files use.
func (n Node) ID() string { return n.Cluster + "/" + n.Name }

// Expand returns s with a leading "~/" in IdentityFile and KnownHostsFile
// replaced by home. The inventory keeps "~/" as written so that it stays
// independent of the user running fleetcert; remote expands it when dialling.
func (s SSH) Expand(home string) SSH {
	s.IdentityFile = expandHome(s.IdentityFile, home)
	s.KnownHostsFile = expandHome(s.KnownHostsFile, home)
	return s
}

func expandHome(p, home string) string {
	if rest, ok := strings.CutPrefix(p, "~/"); ok {
		return strings.TrimSuffix(home, "/") + "/" + rest
	}
	return p
}

// Primary returns the server that loads new CA material: the one marked
// primary, or else the first server. Every cluster from Load or Parse has
// one; for a hand-built cluster without servers it returns the zero Node.
func (c Cluster) Primary() Node {
	for _, n := range c.Nodes {
		if n.Primary {
			return n
		}
	}
	return Node{}
}

// names returns the cluster names in file order.
func (inv *Inventory) names() []string {
	out := make([]string, len(inv.Clusters))
	for i, c := range inv.Clusters {
		out[i] = c.Name
	}
	return out
}

// Count returns how many servers and agents the clusters have together.
func Count(clusters []Cluster) (servers, agents int) {
	for _, c := range clusters {
		for _, n := range c.Nodes {
			if n.Role == Server {
				servers++
			} else {
				agents++
			}
		}
	}
	return servers, agents
}
