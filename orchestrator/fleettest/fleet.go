package fleettest

import (
	"context"
	"encoding/json"
	"fmt"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fleetcert/fleetcert/internal/installsh"
	"github.com/fleetcert/fleetcert/inventory"
	"github.com/fleetcert/fleetcert/k3s"
	"github.com/fleetcert/fleetcert/pki"
	"github.com/fleetcert/fleetcert/remote"
)

// Spec is the shape of a fake fleet.
type Spec struct {
	Clusters int
	Servers  int // per cluster, at least 1
	Agents   int // per cluster
	// EmbeddedEtcd gives servers a server/db/etcd directory (k3s
	// --cluster-init); clusters with several servers always have it.
	EmbeddedEtcd bool
	// Version is what `k3s --version` prints first; v1.33.4+k3s1 when empty.
	Version string
	// OpenRC names the nodes OpenRC runs, installed as install.sh does
	// there: the service script, with a server's token in command_args,
	// an agent's in /etc/rancher/k3s/<service>.env.
	OpenRC []string
}

// Fleet is a set of fake clusters and their inventory.
type Fleet struct {
	Material  *Material
	Inventory []inventory.Cluster
	Clusters  []*Cluster
	// Supervisor: servers answer on 127.0.0.1:6443 through the connection
	// (supervisor.go). Off, the fake has no forwarding.
	Supervisor bool

	nodes   map[string]*Node // by inventory ID
	version string

	plans  sync.Map // script -> *factsPlan
	hashes sync.Map // bundle -> hashCA

	mu      sync.Mutex
	unknown []string
	pids    atomic.Int64 // the last PID a fake OpenRC supervisor gave k3s
}

// Cluster is one fake cluster: the state its nodes share.
type Cluster struct {
	Name  string
	Nodes []*Node

	mu sync.Mutex
	// datastore is the CA material k3s keeps in its datastore, which
	// every server loads at start; rotate-ca replaces files in it.
	datastore pki.CASet
	// served is the server CA bundle the cluster's servers serve: the one
	// the last server start loaded.
	served    []byte
	snapshots []string
	nodesJSON []byte
}

// New builds a fleet of spec.Clusters clusters, named c0001, c0002, ...,
// each with spec.Servers servers (<cluster>-s1 the primary) and spec.Agents
// agents (<cluster>-a1, ...), every node a stock install.sh install with
// its token in <unit>.service.env.
func New(m *Material, spec Spec) *Fleet {
	f := &Fleet{Material: m, nodes: map[string]*Node{}, version: spec.Version}
	f.pids.Store(5000)
	if f.version == "" {
		f.version = "v1.33.4+k3s1"
	}
	servers := max(1, spec.Servers)
	etcd := spec.EmbeddedEtcd || servers > 1
	for i := range spec.Clusters {
		name := fmt.Sprintf("c%04d", i+1)
		c := &Cluster{Name: name, datastore: pki.CASet{}, served: m.CAs["server-ca.crt"]}
		for k, v := range m.CAs {
			c.datastore[k] = v
		}
		ic := inventory.Cluster{Name: name, Labels: map[string]string{"ring": ring(i)}, Line: i + 1}
		password := fmt.Sprintf("pw%04d", i+1)
		first := name + "-s1"
		for s := range servers {
			n := f.newNode(c, inventory.Node{Cluster: name, Name: fmt.Sprintf("%s-s%d", name, s+1), Role: inventory.Server, Primary: s == 0}, password, first, etcd, spec.OpenRC)
			ic.Nodes = append(ic.Nodes, n.inv)
		}
		for a := range spec.Agents {
			n := f.newNode(c, inventory.Node{Cluster: name, Name: fmt.Sprintf("%s-a%d", name, a+1), Role: inventory.Agent}, password, first, false, spec.OpenRC)
			ic.Nodes = append(ic.Nodes, n.inv)
		}
		c.nodesJSON = nodeList(c.Nodes)
		f.Clusters = append(f.Clusters, c)
		f.Inventory = append(f.Inventory, ic)
	}
	return f
}

func ring(i int) string {
	if i == 0 {
		return "canary"
	}
	return "main"
}

// Dial is an orchestrator.Dialer: it hands out the fake node.
func (f *Fleet) Dial(_ context.Context, n inventory.Node) (remote.Host, error) {
	fn, ok := f.nodes[n.ID()]
	if !ok {
		return nil, fmt.Errorf("fleettest: no node %s", n.ID())
	}
	if fn.DialErr != nil {
		return nil, fn.DialErr
	}
	if f.Supervisor {
		return tunnelNode{fn}, nil
	}
	return fn, nil
}

// Nodes lists every inventory node, cluster by cluster.
func (f *Fleet) Nodes() []inventory.Node {
	var out []inventory.Node
	for _, c := range f.Inventory {
		out = append(out, c.Nodes...)
	}
	return out
}

// Node returns the fake node with inventory ID id ("cluster/name").
func (f *Fleet) Node(id string) *Node { return f.nodes[id] }

// Unknown lists the first line of every script no fake node understood.
func (f *Fleet) Unknown() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.unknown...)
}

func (f *Fleet) recordUnknown(line string) {
	f.mu.Lock()
	f.unknown = append(f.unknown, line)
	f.mu.Unlock()
}

// hashCA is pki.HashCA, remembered: every cluster of a fleet holds the
// same bundles, and a cross-signed one takes a chain verification.
func (f *Fleet) hashCA(bundle []byte) string {
	if h, ok := f.hashes.Load(string(bundle)); ok {
		return h.(string)
	}
	h := pki.HashCA(bundle)
	f.hashes.Store(string(bundle), h)
	return h
}

// Snapshots lists the etcd snapshots taken on the cluster.
func (c *Cluster) Snapshots() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.snapshots...)
}

// Datastore returns the cluster's datastore CA material.
func (c *Cluster) Datastore() pki.CASet {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := pki.CASet{}
	for k, v := range c.datastore {
		out[k] = v
	}
	return out
}

// nodeList is `kubectl get nodes -o json` for the cluster: every node
// Ready, under its hostname.
func nodeList(nodes []*Node) []byte {
	type cond struct {
		Type   string `json:"type"`
		Status string `json:"status"`
	}
	type item struct {
		Kind     string `json:"kind"`
		Metadata struct {
			Name string `json:"name"`
		} `json:"metadata"`
		Status struct {
			Conditions []cond `json:"conditions"`
		} `json:"status"`
	}
	list := struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Items      []item `json:"items"`
	}{APIVersion: "v1", Kind: "List"}
	for _, n := range nodes {
		it := item{Kind: "Node"}
		it.Metadata.Name = n.hostname
		it.Status.Conditions = []cond{{"MemoryPressure", "False"}, {"DiskPressure", "False"}, {"Ready", "True"}}
		list.Items = append(list.Items, it)
	}
	out, _ := json.Marshal(list)
	return append(out, '\n')
}

// newNode lays out a stock install.sh node: unit, env file with the token,
// config.yaml on servers, server/tls with the shared CAs and leafs,
// server/token, and the agent directory.
func (f *Fleet) newNode(c *Cluster, in inventory.Node, password, firstServer string, etcd bool, openrc []string) *Node {
	m := f.Material
	in.Host = in.Name + ".fleet.test"
	in.DataDir = inventory.DefaultDataDir
	in.ConfigFile = inventory.DefaultConfigFile
	in.Service = inventory.DefaultServerService
	role := k3s.RoleServer
	if in.Role == inventory.Agent {
		in.Service, role = inventory.DefaultAgentService, k3s.RoleAgent
	}
	l := k3s.Layout{Role: role, DataDir: in.DataDir, ConfigFile: in.ConfigFile, Unit: in.Service}
	if slices.Contains(openrc, in.Name) {
		l.Init = k3s.InitOpenRC
	}
	n := &Node{inv: in, fleet: f, cluster: c, layout: l, hostname: in.Name,
		files: make(map[string]*File, 64), dirs: map[string]bool{}, password: password, leafs: map[string]File{}}
	now := m.Made
	put := func(p string, data []byte, mode uint32) {
		n.files[p] = &File{Data: data, Mode: mode, MTime: now}
	}
	// leaf is a leaf certificate or key, which k3s issues again at a
	// start when it is missing.
	leaf := func(p string, data []byte, mode uint32) {
		put(p, data, mode)
		n.leafs[p] = File{Data: data, Mode: mode}
	}
	token := pki.FormatToken(m.Hash, "server", password)
	env := map[string]string{"K3S_TOKEN": token}
	// Agents are Type=exec, as installs from before 2022 left them, and
	// behave so: "active" while they retry a CA they do not trust.
	unit := installsh.Unit{Role: string(role), EnvFile: l.EnvFile()}
	switch {
	case role == k3s.RoleAgent:
		env["K3S_URL"] = "https://" + firstServer + ".fleet.test:6443"
		unit.Type = "exec"
	case etcd && in.Primary:
		unit.Args = []string{"--cluster-init"}
	case etcd:
		unit.Args = []string{"--server", "https://" + firstServer + ".fleet.test:6443"}
	}
	if l.OpenRC() {
		script := installsh.OpenRC{Role: string(role), Service: in.Service, EnvFile: l.OpenRCEnvFile(), Args: unit.Args}
		if role == k3s.RoleServer {
			script.Args = append(script.Args, "--token", token)
			delete(env, "K3S_TOKEN")
		}
		put(l.ServiceScript(), []byte(script.Text()), 0o755)
		put(l.OpenRCEnvFile(), []byte(installsh.EnvFile(env)), 0o600)
	} else {
		put(l.UnitFile(), []byte(unit.Text()), 0o644)
		put(l.EnvFile(), []byte(installsh.EnvFile(env)), 0o600)
	}
	agentDir := l.AgentDir()
	put(path.Join(agentDir, "server-ca.crt"), m.CAs["server-ca.crt"], 0o644)
	put(path.Join(agentDir, "client-ca.crt"), m.CAs["client-ca.crt"], 0o644)
	for name, data := range m.AgentLeafs {
		leaf(path.Join(agentDir, name), data, 0o644)
		leaf(path.Join(agentDir, strings.TrimSuffix(name, ".crt")+".key"), m.LeafKey, 0o600)
	}
	leaf(path.Join(agentDir, "client-kubelet.crt"), m.KubeletCert(n.hostname), 0o644)
	n.dirs[agentDir] = true
	n.units = map[string]string{in.Service: "active"}
	if l.OpenRC() {
		put(l.OpenRCChildPID(), []byte("4242\n"), 0o644)
	}
	if role == k3s.RoleServer {
		put(l.Config(), []byte("write-kubeconfig-mode: \"0644\"\ntls-san:\n  - "+in.Host+"\n"), 0o600)
		tls := l.ServerTLSDir()
		for _, name := range m.CAs.Names() {
			mode := uint32(0o644)
			if strings.HasSuffix(name, ".key") {
				mode = 0o600
			}
			put(path.Join(tls, name), m.CAs[name], mode)
		}
		leafs := m.ServerLeafs
		if etcd {
			for name, data := range m.EtcdLeafs {
				leaf(path.Join(tls, name), data, 0o644)
				leaf(path.Join(tls, strings.TrimSuffix(name, ".crt")+".key"), m.LeafKey, 0o600)
			}
		}
		for name, data := range leafs {
			leaf(path.Join(tls, name), data, 0o644)
			leaf(path.Join(tls, strings.TrimSuffix(name, ".crt")+".key"), m.LeafKey, 0o600)
		}
		put(l.ServerToken(), []byte(token+"\n"), 0o600)
		put(l.AgentTokenFile(), []byte(token+"\n"), 0o600)
		n.dirs[l.ServerDir()] = true
		if etcd {
			n.dirs[l.EtcdDBDir()] = true
		}
	}
	f.nodes[in.ID()] = n
	c.Nodes = append(c.Nodes, n)
	return n
}

// clock is the nodes' clock, in whole seconds as stat and date show it.
func clock() time.Time { return time.Now().Truncate(time.Second) }
