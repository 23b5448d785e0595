package inventory

import (
	"net/netip"
	"strings"
)

// resolve applies inheritance and the built-in defaults to the raw file and
// checks what only the whole file can tell: duplicates across clusters and
// nodes, servers and primaries.
func (d *decoder) resolve(raw rawInventory) *Inventory {
	inv := &Inventory{File: d.file}
	names := map[string]int{}       // cluster name → line
	seen := map[endpoint]seenNode{} // every node's SSH endpoint
	for _, rc := range raw.clusters {
		if !rc.ok {
			continue
		}
		if rc.name.set {
			if line, dup := names[rc.name.v]; dup {
				d.add(rc.name.line, join(rc.field, "name"), "duplicate cluster %q (first at line %d)", rc.name.v, line)
			} else {
				names[rc.name.v] = rc.name.line
			}
		}
		inv.Clusters = append(inv.Clusters, d.resolveCluster(raw.defaults, rc, seen))
	}
	return inv
}

// resolveCluster builds one cluster: servers, then agents, each in file
// order, with the primary decided.
func (d *decoder) resolveCluster(defaults settings, rc rawCluster, seen map[endpoint]seenNode) Cluster {
	c := Cluster{Name: rc.name.v, Labels: rc.labels, Line: rc.line}
	if len(rc.servers) == 0 {
		d.add(rc.line, join(rc.field, "servers"), "cluster %q has no servers; it needs at least one", rc.name.v)
	}
	for _, rn := range rc.agents {
		if rn.primary.v {
			d.add(rn.primary.line, join(rn.field, "primary"), "only a server can be primary; this is an agent")
		}
	}
	byName := map[string]int{} // node name → line
	primary := -1              // index in c.Nodes
	for _, rn := range append(append([]rawNode{}, rc.servers...), rc.agents...) {
		if !rn.ok {
			continue
		}
		n, ok := d.resolveNode(defaults, rc, rn)
		if !ok {
			continue
		}
		if line, dup := byName[n.Name]; dup {
			d.add(rn.line, join(rn.field, "name"), "duplicate node name %q in cluster %q (first at line %d)%s", n.Name, c.Name, line, derivedNote(rn))
		} else {
			byName[n.Name] = rn.line
		}
		d.checkEndpoint(n, rn, seen)
		if n.Primary && n.Role == Server {
			if primary >= 0 {
				p := c.Nodes[primary]
				d.add(rn.primary.line, join(rn.field, "primary"), "cluster %q already has primary server %q (line %d); mark only one", c.Name, p.Name, p.Line)
			} else {
				primary = len(c.Nodes)
			}
		}
		n.Primary = primary == len(c.Nodes)
		if len(c.Nodes) > 0 && n.Product != c.Nodes[0].Product {
			d.add(rn.line, join(rn.field, "product"), "%s, but %s of the same cluster is %s: a cluster runs one product",
				n.Product, c.Nodes[0].Name, c.Nodes[0].Product)
		}
		c.Nodes = append(c.Nodes, n)
	}
	// Without a marked primary the first server loads new CA material.
	if primary < 0 && len(c.Nodes) > 0 && c.Nodes[0].Role == Server {
		c.Nodes[0].Primary = true
	}
	return c
}

func derivedNote(rn rawNode) string {
	if rn.name.set {
		return ""
	}
	return "; the name defaults to the host, set name to tell them apart"
}

// resolveNode applies inheritance, field by field: the node's own value,
// else the cluster's, else defaults', else the built-in default.
func (d *decoder) resolveNode(def settings, rc rawCluster, rn rawNode) (Node, bool) {
	layers := [3]settings{rn.settings, rc.settings, def}
	product := first(layers[0].product, layers[1].product, layers[2].product, some(DefaultProduct, 0)).v
	dataDir, configFile, server, agent := ProductDefaults(product)
	n := Node{
		Product:    product,
		Cluster:    rc.name.v,
		Name:       rn.name.v,
		Host:       rn.host.v,
		Role:       rn.role,
		Primary:    rn.primary.v,
		Sudo:       first(layers[0].sudo, layers[1].sudo, layers[2].sudo).v,
		DataDir:    first(layers[0].dataDir, layers[1].dataDir, layers[2].dataDir, some(dataDir, 0)).v,
		ConfigFile: first(layers[0].configFile, layers[1].configFile, layers[2].configFile, some(configFile, 0)).v,
		Service:    rn.service.v,
		Line:       rn.line,
		SSH: SSH{
			User:           first(layers[0].ssh.user, layers[1].ssh.user, layers[2].ssh.user).v,
			Port:           first(layers[0].ssh.port, layers[1].ssh.port, layers[2].ssh.port).v,
			IdentityFile:   first(layers[0].ssh.identityFile, layers[1].ssh.identityFile, layers[2].ssh.identityFile).v,
			KnownHostsFile: first(layers[0].ssh.knownHostsFile, layers[1].ssh.knownHostsFile, layers[2].ssh.knownHostsFile).v,
			Bastion:        first(layers[0].ssh.bastion, layers[1].ssh.bastion, layers[2].ssh.bastion).v,
		},
	}
	if !rn.service.set {
		n.Service = server
		if n.Role == Agent {
			n.Service = agent
		}
	}
	if !rn.name.set {
		name, err := checkName(nameFromHost(n.Host))
		if err != nil {
			d.add(rn.host.line, join(rn.field, "name"), "missing, and the host %q does not make a valid name; set name", n.Host)
			return n, false
		}
		n.Name = name
	}
	return n, true
}

// endpoint is where SSH reaches a node. The bastion is part of it because
// edge sites often reuse the same private addresses behind their own jump
// hosts: 192.168.1.10 behind two different bastions is two machines.
type endpoint struct {
	host    string
	port    int
	bastion string
}

type seenNode struct {
	id   string
	line int
}

// checkEndpoint reports a node whose host, port and bastion another node
// already has: two entries for one machine would be restarted twice and
// get two different tokens.
func (d *decoder) checkEndpoint(n Node, rn rawNode, seen map[endpoint]seenNode) {
	host := strings.ToLower(n.Host)
	if a, err := netip.ParseAddr(n.Host); err == nil {
		host = a.String()
	}
	port := n.SSH.Port
	if port == 0 {
		port = 22
	}
	key := endpoint{host: host, port: port, bastion: n.SSH.Bastion}
	if prev, dup := seen[key]; dup {
		d.add(rn.host.line, join(rn.field, "host"), "%s port %d is already node %s (line %d)", n.Host, port, prev.id, prev.line)
		return
	}
	seen[key] = seenNode{id: n.ID(), line: rn.line}
}
