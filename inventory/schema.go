package inventory

import (
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
)

// The raw* types hold the file as written, each value with its line and
// whether it was set at all, before inheritance fills the gaps.

var (
	sshKeys     = []string{"user", "port", "identityFile", "knownHostsFile", "bastion"}
	settingKeys = []string{"ssh", "sudo", "dataDir", "configFile", "product"}
	rootKeys    = []string{"defaults", "clusters"}
	clusterKeys = append([]string{"name", "labels", "servers", "agents"}, settingKeys...)
	nodeKeys    = append([]string{"host", "name", "primary", "service"}, settingKeys...)
)

type rawSSH struct {
	user, identityFile, knownHostsFile, bastion opt[string]
	port                                        opt[int]
}

// settings are what defaults, clusters and nodes may each set.
type settings struct {
	ssh                          rawSSH
	sudo                         opt[bool]
	dataDir, configFile, product opt[string]
}

type rawNode struct {
	settings
	host, name, service opt[string]
	primary             opt[bool]
	role                Role
	field               string
	line                int
	ok                  bool // a mapping with a valid host: worth resolving
}

type rawCluster struct {
	settings
	name            opt[string]
	labels          map[string]string
	servers, agents []rawNode
	field           string
	line            int
	ok              bool
}

type rawInventory struct {
	defaults settings
	clusters []rawCluster
}

// document decodes the top level: defaults, clusters, and x-* keys, which
// are ignored so that a file can keep YAML anchors there (as Compose files
// do) without them being unknown keys.
func (d *decoder) document(doc *yaml.Node) rawInventory {
	var raw rawInventory
	const want = "expected a mapping with clusters (and optionally defaults)"
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
		d.add(0, "", "empty inventory; %s", want)
		return raw
	}
	n := d.deref(doc.Content[0])
	if isNull(n) {
		d.add(n.Line, "", "empty inventory; %s", want)
		return raw
	}
	if n.Kind != yaml.MappingNode {
		d.add(n.Line, "", "%s, got %s", want, kindName(n))
		return raw
	}
	top := d.pairs(n, "", 0)
	if !slices.ContainsFunc(top, func(p pair) bool {
		return slices.Contains(rootKeys, p.key) || strings.HasPrefix(p.key, "x-") || closest(p.key, rootKeys) != ""
	}) {
		// Another kind of YAML file (a Kubernetes manifest, an Ansible
		// inventory): one clear message beats a list of unknown keys.
		d.add(n.Line, "", "not a fleetcert inventory: %s, found %s", want, keyList(top))
		return raw
	}
	clustersLine, clustersOK := n.Line, true
	for _, p := range top {
		switch {
		case p.key == "defaults":
			if !isNull(d.deref(p.v)) {
				d.object(p.v, "defaults", settingKeys, func(p pair, f string) { d.setting(&raw.defaults, p, f) })
			}
		case p.key == "clusters":
			clustersLine = p.k.Line
			clustersOK = d.list(p.v, "clusters", func(_ int, el *yaml.Node, f string) {
				raw.clusters = append(raw.clusters, d.cluster(el, f))
			})
		case strings.HasPrefix(p.key, "x-"):
		default:
			d.add(p.k.Line, p.key, "unknown key%s", suggest(p.key, rootKeys))
		}
	}
	if clustersOK && len(raw.clusters) == 0 {
		d.add(clustersLine, "clusters", "no clusters; the inventory needs at least one")
	}
	return raw
}

// keyList names the first few keys of a mapping for a message.
func keyList(pairs []pair) string {
	var keys []string
	for _, p := range pairs {
		keys = append(keys, p.key)
	}
	if len(keys) > 5 {
		keys = append(keys[:5], "...")
	}
	return strings.Join(keys, ", ")
}

// setting decodes one of the keys that defaults, clusters and nodes share.
func (d *decoder) setting(s *settings, p pair, f string) {
	switch p.key {
	case "ssh":
		if !isNull(d.deref(p.v)) {
			d.object(p.v, f, sshKeys, func(p pair, f string) { d.sshField(&s.ssh, p, f) })
		}
	case "sudo":
		s.sudo, _ = d.boolean(p.v, f)
	case "dataDir":
		s.dataDir = d.checked(p.v, f, checkRemotePath)
	case "configFile":
		s.configFile = d.checked(p.v, f, checkRemotePath)
	case "product":
		s.product = d.checked(p.v, f, checkProduct)
	}
}

// sshField decodes one key of an ssh block. A null or empty value is set
// but empty: it stops inheritance and leaves the field to ~/.ssh/config.
func (d *decoder) sshField(s *rawSSH, p pair, f string) {
	switch p.key {
	case "user":
		s.user = d.checked(p.v, f, checkUser)
	case "port":
		s.port, _ = d.integer(p.v, f, 1, 65535)
	case "identityFile":
		s.identityFile = d.checked(p.v, f, checkLocalPath)
	case "knownHostsFile":
		s.knownHostsFile = d.checked(p.v, f, checkLocalPath)
	case "bastion":
		s.bastion = d.checked(p.v, f, checkBastion)
	}
}

// cluster decodes one entry of clusters.
func (d *decoder) cluster(n *yaml.Node, field string) rawCluster {
	c := rawCluster{field: field, line: d.deref(n).Line, labels: map[string]string{}}
	hasName := false
	c.ok = d.object(n, field, clusterKeys, func(p pair, f string) {
		switch p.key {
		case "name":
			hasName = true
			c.name = d.checked(p.v, f, checkName)
		case "labels":
			d.labels(p.v, f, c.labels)
		case "servers":
			d.list(p.v, f, func(_ int, el *yaml.Node, f string) { c.servers = append(c.servers, d.node(el, f, Server)) })
		case "agents":
			d.list(p.v, f, func(_ int, el *yaml.Node, f string) { c.agents = append(c.agents, d.node(el, f, Agent)) })
		default:
			d.setting(&c.settings, p, f)
		}
	})
	if c.ok && !hasName {
		d.add(c.line, join(field, "name"), "missing; every cluster needs a name")
	}
	return c
}

// node decodes one entry of servers or agents.
func (d *decoder) node(n *yaml.Node, field string, role Role) rawNode {
	r := rawNode{role: role, field: field, line: d.deref(n).Line}
	if v := d.deref(n); v.Kind == yaml.ScalarNode && !isNull(v) {
		d.add(v.Line, field, "expected a mapping such as {host: %s}, got %s", v.Value, kindName(v))
		return r
	}
	hasHost := false
	r.ok = d.object(n, field, nodeKeys, func(p pair, f string) {
		switch p.key {
		case "host":
			hasHost = true
			r.host = d.checked(p.v, f, checkHost)
		case "name":
			r.name = d.checked(p.v, f, checkName)
		case "service":
			r.service = d.checked(p.v, f, checkUnit)
		case "primary":
			r.primary, _ = d.boolean(p.v, f)
		default:
			d.setting(&r.settings, p, f)
		}
	})
	if r.ok && !hasHost {
		d.add(r.line, join(field, "host"), "missing; every node needs a host")
	}
	r.ok = r.ok && r.host.set
	return r
}

// labels decodes a cluster's labels into into. Values are taken as written,
// so `tier: 1` is the label value "1".
func (d *decoder) labels(n *yaml.Node, field string, into map[string]string) {
	n = d.deref(n)
	if isNull(n) {
		return
	}
	if n.Kind != yaml.MappingNode {
		d.add(n.Line, field, "expected a mapping of key: value, got %s", kindName(n))
		return
	}
	for _, p := range d.pairs(n, field, 0) {
		f := join(field, p.key)
		if err := checkLabelKey(p.key); err != nil {
			d.add(p.k.Line, f, "%v", err)
			continue
		}
		v := d.deref(p.v)
		if v.Kind != yaml.ScalarNode {
			d.add(v.Line, f, "expected a string, got %s", kindName(v))
			continue
		}
		val := v.Value
		if isNull(v) {
			val = ""
		}
		if err := checkLabelValue(val); err != nil {
			d.add(v.Line, f, "%v", err)
			continue
		}
		into[p.key] = val
	}
}

// checked decodes a string and passes it through check, which may normalise
// it. A value that fails is reported and left unset.
func (d *decoder) checked(n *yaml.Node, field string, check func(string) (string, error)) opt[string] {
	o, ok := d.str(n, field)
	if !ok {
		return opt[string]{}
	}
	v, err := check(o.v)
	if err != nil {
		d.add(o.line, field, "%v", err)
		return opt[string]{}
	}
	o.v = v
	return o
}
