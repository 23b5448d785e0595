package inventory

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// parseOK parses src and fails the test on any problem.
func parseOK(t *testing.T, src string) *Inventory {
	t.Helper()
	inv, err := Parse("hosts.yaml", []byte(src))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return inv
}

// problemsOf parses src and returns its problems as strings, failing the
// test when src is valid or the error is not *Errors.
func problemsOf(t *testing.T, src string) []string {
	t.Helper()
	inv, err := Parse("hosts.yaml", []byte(src))
	if err == nil {
		t.Fatalf("Parse succeeded, want problems")
	}
	if inv != nil {
		t.Errorf("Parse returned an inventory along with an error")
	}
	var errs *Errors
	if !errors.As(err, &errs) {
		t.Fatalf("error is %T, want *Errors: %v", err, err)
	}
	out := make([]string, len(errs.Problems))
	for i, p := range errs.Problems {
		out[i] = p.String()
	}
	return out
}

func TestParseResolvesExample(t *testing.T) {
	inv := parseOK(t, `
defaults:
  ssh: {user: root, port: 22}
clusters:
  - name: edge-berlin-01
    labels: {ring: canary, region: eu}
    servers:
      - host: 10.1.0.10
        name: berlin-s1
      - {host: 10.1.0.11, ssh: {port: 2222}}
    agents:
      - {host: 10.1.0.20, service: k3s-agent}
`)
	if inv.File != "hosts.yaml" || len(inv.Clusters) != 1 {
		t.Fatalf("got file %q with %d clusters", inv.File, len(inv.Clusters))
	}
	c := inv.Clusters[0]
	want := []Node{
		{Cluster: "edge-berlin-01", Name: "berlin-s1", Host: "10.1.0.10", Role: Server, Primary: true,
			SSH: SSH{User: "root", Port: 22}, DataDir: DefaultDataDir, ConfigFile: DefaultConfigFile, Service: "k3s", Product: "k3s", Line: 8},
		{Cluster: "edge-berlin-01", Name: "10.1.0.11", Host: "10.1.0.11", Role: Server,
			SSH: SSH{User: "root", Port: 2222}, DataDir: DefaultDataDir, ConfigFile: DefaultConfigFile, Service: "k3s", Product: "k3s", Line: 10},
		{Cluster: "edge-berlin-01", Name: "10.1.0.20", Host: "10.1.0.20", Role: Agent,
			SSH: SSH{User: "root", Port: 22}, DataDir: DefaultDataDir, ConfigFile: DefaultConfigFile, Service: "k3s-agent", Product: "k3s", Line: 12},
	}
	if !reflect.DeepEqual(c.Nodes, want) {
		t.Errorf("nodes:\n got %+v\nwant %+v", c.Nodes, want)
	}
	if !reflect.DeepEqual(c.Labels, map[string]string{"ring": "canary", "region": "eu"}) {
		t.Errorf("labels = %v", c.Labels)
	}
	if got := c.Primary().ID(); got != "edge-berlin-01/berlin-s1" {
		t.Errorf("Primary = %s", got)
	}
	if len(c.servers()) != 2 || len(c.agents()) != 1 {
		t.Errorf("servers/agents = %d/%d", len(c.servers()), len(c.agents()))
	}
}

// TestInheritance checks each inherited field on its own, so that a field
// falling through the wrong layer is named.
func TestInheritance(t *testing.T) {
	const src = `
defaults:
  ssh: {user: d-user, port: 2200, identityFile: /d/key, knownHostsFile: ~/d_known, bastion: d-jump}
  sudo: true
  dataDir: /d/data
  configFile: /d/config.yaml
clusters:
  - name: c1
    ssh: {user: c-user, identityFile: ~/c/key}
    sudo: false
    dataDir: /c/data
    servers:
      - {host: plain}
      - host: overrides
        ssh: {port: 2222, bastion: "n@jump:2", knownHostsFile: /n/known}
        sudo: true
        configFile: /n/config.yaml
      - host: clears
        ssh: {user: "", port: ~, identityFile: "", knownHostsFile: ~, bastion: ""}
  - name: c2
    servers:
      - {host: bare}
      - {host: own, sudo: false, dataDir: /n/data/}
`
	inv := parseOK(t, src)
	node := func(cluster, name string) Node {
		c, _ := inv.cluster(cluster)
		n, ok := c.node(name)
		if !ok {
			t.Fatalf("no node %s/%s", cluster, name)
		}
		return n
	}
	tests := []struct {
		node, field string
		got, want   any
	}{
		{"c1/plain", "ssh.user", node("c1", "plain").SSH.User, "c-user"},
		{"c1/plain", "ssh.port", node("c1", "plain").SSH.Port, 2200},
		{"c1/plain", "ssh.identityFile", node("c1", "plain").SSH.IdentityFile, "~/c/key"},
		{"c1/plain", "ssh.knownHostsFile", node("c1", "plain").SSH.KnownHostsFile, "~/d_known"},
		{"c1/plain", "ssh.bastion", node("c1", "plain").SSH.Bastion, "d-jump"},
		{"c1/plain", "sudo (cluster false over defaults true)", node("c1", "plain").Sudo, false},
		{"c1/plain", "dataDir", node("c1", "plain").DataDir, "/c/data"},
		{"c1/plain", "configFile", node("c1", "plain").ConfigFile, "/d/config.yaml"},

		{"c1/overrides", "ssh.user", node("c1", "overrides").SSH.User, "c-user"},
		{"c1/overrides", "ssh.port", node("c1", "overrides").SSH.Port, 2222},
		{"c1/overrides", "ssh.identityFile", node("c1", "overrides").SSH.IdentityFile, "~/c/key"},
		{"c1/overrides", "ssh.knownHostsFile", node("c1", "overrides").SSH.KnownHostsFile, "/n/known"},
		{"c1/overrides", "ssh.bastion", node("c1", "overrides").SSH.Bastion, "n@jump:2"},
		{"c1/overrides", "sudo (node true over cluster false)", node("c1", "overrides").Sudo, true},
		{"c1/overrides", "configFile", node("c1", "overrides").ConfigFile, "/n/config.yaml"},

		{"c1/clears", "ssh (every field cleared)", node("c1", "clears").SSH, SSH{}},

		{"c2/bare", "ssh", node("c2", "bare").SSH, SSH{User: "d-user", Port: 2200, IdentityFile: "/d/key", KnownHostsFile: "~/d_known", Bastion: "d-jump"}},
		{"c2/bare", "sudo", node("c2", "bare").Sudo, true},
		{"c2/bare", "dataDir", node("c2", "bare").DataDir, "/d/data"},
		{"c2/own", "sudo (node false over defaults true)", node("c2", "own").Sudo, false},
		{"c2/own", "dataDir (cleaned)", node("c2", "own").DataDir, "/n/data"},
	}
	for _, tt := range tests {
		if !reflect.DeepEqual(tt.got, tt.want) {
			t.Errorf("%s %s = %#v, want %#v", tt.node, tt.field, tt.got, tt.want)
		}
	}
}

func TestBuiltInDefaults(t *testing.T) {
	inv := parseOK(t, `
clusters:
  - name: c
    servers: [{host: s.example.com}]
    agents: [{host: "[fd00::20]"}, {host: a2, service: k3s-gpu.service}]
`)
	c := inv.Clusters[0]
	s, a, a2 := c.Nodes[0], c.Nodes[1], c.Nodes[2]
	if s.SSH != (SSH{}) || s.Sudo {
		t.Errorf("server ssh/sudo = %+v/%v, want all unset", s.SSH, s.Sudo)
	}
	if s.DataDir != "/var/lib/rancher/k3s" || s.ConfigFile != "/etc/rancher/k3s/config.yaml" {
		t.Errorf("server paths = %s, %s", s.DataDir, s.ConfigFile)
	}
	if s.Service != "k3s" || a.Service != "k3s-agent" || a2.Service != "k3s-gpu" {
		t.Errorf("services = %s, %s, %s", s.Service, a.Service, a2.Service)
	}
	if s.Name != "s.example.com" || a.Host != "fd00::20" || a.Name != "fd00--20" {
		t.Errorf("names = %s, %s (host %s)", s.Name, a.Name, a.Host)
	}
	if !s.Primary || a.Primary {
		t.Errorf("primary = %v, %v", s.Primary, a.Primary)
	}
}

func TestPrimary(t *testing.T) {
	tests := []struct {
		name    string
		servers string
		want    string // primary node name
	}{
		{"first server by default", `[{host: a}, {host: b}]`, "a"},
		{"marked", `[{host: a}, {host: b, primary: true}]`, "b"},
		{"false is not a mark", `[{host: a, primary: false}, {host: b}]`, "a"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			inv := parseOK(t, "clusters:\n  - name: c\n    servers: "+tt.servers+"\n")
			c := inv.Clusters[0]
			if got := c.Primary().Name; got != tt.want {
				t.Errorf("Primary = %q, want %q", got, tt.want)
			}
			count := 0
			for _, n := range c.Nodes {
				if n.Primary {
					count++
				}
			}
			if count != 1 {
				t.Errorf("%d nodes have Primary set, want 1", count)
			}
		})
	}
}

// TestProblems checks that each kind of problem is found and reported with
// file, line and field.
func TestProblems(t *testing.T) {
	const ok = "clusters:\n  - name: c\n    servers: [{host: s}]\n"
	tests := []struct {
		name, src string
		want      string // one of the problems, exactly
	}{
		{"empty file", "", `hosts.yaml: empty inventory; expected a mapping with clusters (and optionally defaults)`},
		{"comments only", "# nothing\n", `hosts.yaml: empty inventory; expected a mapping with clusters (and optionally defaults)`},
		{"null document", "~\n", `hosts.yaml:1: empty inventory; expected a mapping with clusters (and optionally defaults)`},
		{"not a mapping", "- a\n- b\n", `hosts.yaml:1: expected a mapping with clusters (and optionally defaults), got a list`},
		{"another kind of file", "apiVersion: batch/v1\nkind: CronJob\n", `hosts.yaml:1: not a fleetcert inventory: expected a mapping with clusters (and optionally defaults), found apiVersion, kind`},
		{"no clusters key", "defaults: {sudo: true}\n", `hosts.yaml:1: clusters: no clusters; the inventory needs at least one`},
		{"empty clusters", "clusters: []\n", `hosts.yaml:1: clusters: no clusters; the inventory needs at least one`},
		{"clusters not a list", "clusters: {name: c}\n", `hosts.yaml:1: clusters: expected a list, got a mapping`},
		{"yaml syntax", "clusters:\n  - name: c\n    servers: [{host: s}]\n  bad\n", `hosts.yaml:4: invalid YAML: could not find expected ':'`},
		{"yaml tab", "clusters:\n  - name: c\n\tservers: []\n", `hosts.yaml:2: invalid YAML: found a tab character that violates indentation`},
		{"two documents", ok + "---\nclusters: []\n", `hosts.yaml:4: a second YAML document (---); an inventory is one document`},
		{"unknown top key", "cluster:\n  - name: c\n", `hosts.yaml:1: cluster: unknown key; did you mean "clusters"?`},
		{"unknown ssh key", "defaults:\n  ssh:\n    prot: 22\n" + ok, `hosts.yaml:3: defaults.ssh.prot: unknown key; did you mean "port"?`},
		{"unknown key case", "defaults:\n  data_dir: /x\n" + ok, `hosts.yaml:2: defaults.data_dir: unknown key; did you mean "dataDir"?`},
		{"unknown key far", "clusters:\n  - name: c\n    zzz: 1\n    servers: [{host: s}]\n", `hosts.yaml:3: clusters[0].zzz: unknown key; expected one of name, labels, servers, agents, ssh, sudo, dataDir, configFile, product`},
		{"unknown node key", "clusters:\n  - name: c\n    servers:\n      - {host: s, hots: t}\n", `hosts.yaml:4: clusters[0].servers[0].hots: unknown key; did you mean "host"?`},
		{"duplicate key", "clusters:\n  - name: c\n    name: d\n    servers: [{host: s}]\n", `hosts.yaml:3: clusters[0].name: duplicate key (first at line 2)`},
		{"port range", "clusters:\n  - name: c\n    servers:\n      - {host: s}\n      - {host: t, ssh: {port: 70000}}\n", `hosts.yaml:5: clusters[0].servers[1].ssh.port: 70000 is out of range 1-65535`},
		{"port zero", "defaults: {ssh: {port: 0}}\n" + ok, `hosts.yaml:1: defaults.ssh.port: 0 is out of range 1-65535`},
		{"port string", "defaults: {ssh: {port: \"22\"}}\n" + ok, `hosts.yaml:1: defaults.ssh.port: expected a whole number, got "22"`},
		{"port huge", "defaults: {ssh: {port: 99999999999999999999}}\n" + ok, `hosts.yaml:1: defaults.ssh.port: 99999999999999999999 is out of range 1-65535`},
		{"sudo yes", "defaults: {sudo: yes}\n" + ok, `hosts.yaml:1: defaults.sudo: expected true or false, got "yes"`},
		{"ssh not mapping", "defaults: {ssh: root}\n" + ok, `hosts.yaml:1: defaults.ssh: expected a mapping, got "root"`},
		{"name is a list", "clusters:\n  - name: [a]\n    servers: [{host: s}]\n", `hosts.yaml:2: clusters[0].name: expected a string, got a list`},
		{"host is bool", "clusters:\n  - name: c\n    servers: [{host: true}]\n", `hosts.yaml:3: clusters[0].servers[0].host: expected a string, got boolean true`},
		{"cluster not mapping", "clusters:\n  - c\n", `hosts.yaml:2: clusters[0]: expected a mapping, got "c"`},
		{"node shorthand", "clusters:\n  - name: c\n    servers: [10.0.0.1]\n", `hosts.yaml:3: clusters[0].servers[0]: expected a mapping such as {host: 10.0.0.1}, got "10.0.0.1"`},
		{"cluster without name", "clusters:\n  - servers: [{host: s}]\n", `hosts.yaml:2: clusters[0].name: missing; every cluster needs a name`},
		{"node without host", "clusters:\n  - name: c\n    servers: [{name: s}]\n", `hosts.yaml:3: clusters[0].servers[0].host: missing; every node needs a host`},
		{"duplicate cluster", ok + "  - name: c\n    servers: [{host: t}]\n", `hosts.yaml:4: clusters[1].name: duplicate cluster "c" (first at line 2)`},
		{"same host and port", ok + "  - name: d\n    servers: [{host: s, ssh: {port: 22}}]\n", `hosts.yaml:5: clusters[1].servers[0].host: s port 22 is already node c/s (line 3)`},
		{"same IPv6 written twice", "clusters:\n  - name: c\n    servers:\n      - {host: \"fd00::1\", name: a}\n      - {host: \"[fd00:0::1]\", name: b}\n", `hosts.yaml:5: clusters[0].servers[1].host: fd00:0::1 port 22 is already node c/a (line 4)`},
		{"same node name", "clusters:\n  - name: c\n    servers: [{host: s, name: n}]\n    agents: [{host: t, name: n}]\n", `hosts.yaml:4: clusters[0].agents[0].name: duplicate node name "n" in cluster "c" (first at line 3)`},
		{"no servers", "clusters:\n  - name: c\n    agents: [{host: a}]\n", `hosts.yaml:2: clusters[0].servers: cluster "c" has no servers; it needs at least one`},
		{"relative dataDir", "defaults: {dataDir: var/lib/k3s}\n" + ok, `hosts.yaml:1: defaults.dataDir: "var/lib/k3s" is a relative path; write an absolute path`},
		{"root dataDir", "defaults: {dataDir: /}\n" + ok, `hosts.yaml:1: defaults.dataDir: "/" is not allowed`},
		{"empty configFile", "defaults: {configFile: \"\"}\n" + ok, `hosts.yaml:1: defaults.configFile: must not be empty`},
		{"relative configFile", "clusters:\n  - name: c\n    configFile: k3s.yaml\n    servers: [{host: s}]\n", `hosts.yaml:3: clusters[0].configFile: "k3s.yaml" is a relative path; write an absolute path`},
		{"relative identityFile", "defaults: {ssh: {identityFile: .ssh/id}}\n" + ok, `hosts.yaml:1: defaults.ssh.identityFile: ".ssh/id" is a relative path; write an absolute path or one starting with ~/`},
		{"tilde user knownHosts", "defaults: {ssh: {knownHostsFile: ~ops/known}}\n" + ok, `hosts.yaml:1: defaults.ssh.knownHostsFile: "~ops/known": only a leading ~/ is expanded; write ~/path or an absolute path`},
		{"bad unit", "clusters:\n  - name: c\n    servers: [{host: s, service: \"k3s server\"}]\n", `hosts.yaml:3: clusters[0].servers[0].service: "k3s server" is not a unit name: it may only contain letters, digits and @ . _ -, and must not start with - or .`},
		{"empty unit", "clusters:\n  - name: c\n    servers: [{host: s, service: \"\"}]\n", `hosts.yaml:3: clusters[0].servers[0].service: must not be empty`},
		{"shell in host", "clusters:\n  - name: c\n    servers: [{host: \"s;reboot\"}]\n", `hosts.yaml:3: clusters[0].servers[0].host: "s;reboot" is not a hostname, IPv4 or IPv6 address`},
		{"option as host", "clusters:\n  - name: c\n    servers: [{host: -oProxyCommand=x}]\n", `hosts.yaml:3: clusters[0].servers[0].host: "-oProxyCommand=x" is not a hostname, IPv4 or IPv6 address`},
		{"bad IPv4", "clusters:\n  - name: c\n    servers: [{host: 10.1.0.300}]\n", `hosts.yaml:3: clusters[0].servers[0].host: "10.1.0.300" is not a hostname, IPv4 or IPv6 address`},
		{"bracketed hostname", "clusters:\n  - name: c\n    servers: [{host: \"[s]\"}]\n", `hosts.yaml:3: clusters[0].servers[0].host: "[s]": brackets may only enclose an IPv6 address`},
		{"bad bastion hop", "defaults: {ssh: {bastion: \"a@j1,b@@j2 x\"}}\n" + ok, `hosts.yaml:1: defaults.ssh.bastion: hop 2 "b@@j2 x": "j2 x" is not a hostname, IPv4 or IPv6 address`},
		{"bastion port", "defaults: {ssh: {bastion: \"jump:0\"}}\n" + ok, `hosts.yaml:1: defaults.ssh.bastion: "jump:0": port "0" is out of range 1-65535`},
		{"bad user", "defaults: {ssh: {user: \"root;id\"}}\n" + ok, `hosts.yaml:1: defaults.ssh.user: "root;id" is not a user name: it may only contain letters, digits and . _ - @, and must not start with -`},
		{"bad cluster name", "clusters:\n  - name: edge/berlin\n    servers: [{host: s}]\n", `hosts.yaml:2: clusters[0].name: "edge/berlin" may only contain letters, digits and . _ - and must start with a letter or digit`},
		{"dot-dot node name", "clusters:\n  - name: c\n    servers: [{host: s, name: ..}]\n", `hosts.yaml:3: clusters[0].servers[0].name: ".." may only contain letters, digits and . _ - and must start with a letter or digit`},
		{"host makes no name", "clusters:\n  - name: c\n    servers: [{host: \"::1\"}]\n", `hosts.yaml:3: clusters[0].servers[0].name: missing, and the host "::1" does not make a valid name; set name`},
		{"bad label key", "clusters:\n  - name: c\n    labels: {\"ring name\": x}\n    servers: [{host: s}]\n", `hosts.yaml:3: clusters[0].labels.ring name: label key "ring name": must be 1-63 letters, digits and - _ . starting and ending with a letter or digit`},
		{"bad label value", "clusters:\n  - name: c\n    labels: {ring: \"can ary\"}\n    servers: [{host: s}]\n", `hosts.yaml:3: clusters[0].labels.ring: label value "can ary": must be at most 63 letters, digits and - _ . starting and ending with a letter or digit`},
		{"label value list", "clusters:\n  - name: c\n    labels: {ring: [a]}\n    servers: [{host: s}]\n", `hosts.yaml:3: clusters[0].labels.ring: expected a string, got a list`},
		{"two primaries", "clusters:\n  - name: c\n    servers:\n      - {host: a, primary: true}\n      - {host: b, primary: true}\n", `hosts.yaml:5: clusters[0].servers[1].primary: cluster "c" already has primary server "a" (line 4); mark only one`},
		{"primary agent", "clusters:\n  - name: c\n    servers: [{host: s}]\n    agents:\n      - {host: a,\n         primary: true}\n", `hosts.yaml:6: clusters[0].agents[0].primary: only a server can be primary; this is an agent`},
		{"alias bomb", aliasBomb, `hosts.yaml: aliases expand to too many values; simplify the anchors`},
		{"merge cycle", "clusters:\n  - &c {name: c, servers: [{host: s}], <<: *c}\n", `hosts.yaml:2: clusters[0]: merge keys (<<) nested too deep`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := problemsOf(t, tt.src)
			for _, p := range got {
				if p == tt.want {
					return
				}
			}
			t.Errorf("problems:\n  %s\nwant among them:\n  %s", strings.Join(got, "\n  "), tt.want)
		})
	}
}

// aliasBomb makes aliases multiply the work: 300 clusters each naming
// the same list of 300 servers is 90,000 nodes from a few hundred lines.
// Decoding must give up with a problem rather than grind through it.
var aliasBomb = func() string {
	var b strings.Builder
	b.WriteString("x-servers: &s\n")
	for i := range 300 {
		fmt.Fprintf(&b, "  - {host: h%d}\n", i)
	}
	b.WriteString("clusters:\n")
	for i := range 300 {
		fmt.Fprintf(&b, "  - {name: c%d, servers: *s}\n", i)
	}
	return b.String()
}()

// TestAllProblemsAtOnce checks that one parse reports every problem, in
// line order, and that Error prints one per line.
func TestAllProblemsAtOnce(t *testing.T) {
	const src = `defaults:
  ssh: {port: 0}
clusters:
  - name: a
    servers:
      - {host: "bad host"}
      - {host: ok, service: "k3s;x"}
  - name: a
    dataDir: rel
    servers: [{host: ok}]
`
	got := problemsOf(t, src)
	want := []string{
		`hosts.yaml:2: defaults.ssh.port: 0 is out of range 1-65535`,
		`hosts.yaml:6: clusters[0].servers[0].host: "bad host" is not a hostname, IPv4 or IPv6 address`,
		`hosts.yaml:7: clusters[0].servers[1].service: "k3s;x" is not a unit name: it may only contain letters, digits and @ . _ -, and must not start with - or .`,
		`hosts.yaml:8: clusters[1].name: duplicate cluster "a" (first at line 4)`,
		`hosts.yaml:9: clusters[1].dataDir: "rel" is a relative path; write an absolute path`,
		`hosts.yaml:10: clusters[1].servers[0].host: ok port 22 is already node a/ok (line 7)`,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("problems:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
	_, err := Parse("hosts.yaml", []byte(src))
	if lines := strings.Split(err.Error(), "\n"); !reflect.DeepEqual(lines, want) {
		t.Errorf("Error() lines = %q", lines)
	}
}

func TestBastionScopesEndpoints(t *testing.T) {
	// The same private address behind two different bastions is two machines.
	parseOK(t, `
clusters:
  - {name: a, ssh: {bastion: gw-a}, servers: [{host: 192.168.1.10}]}
  - {name: b, ssh: {bastion: gw-b}, servers: [{host: 192.168.1.10}]}
`)
}

func TestAnchorsAndMerge(t *testing.T) {
	inv := parseOK(t, `
x-ssh: &ssh {user: ops, port: 2222}
x-node: &node {sudo: true, dataDir: /srv/k3s}
clusters:
  - name: c
    ssh:
      <<: *ssh
      port: 22            # explicit keys win over merged ones
    servers:
      - {<<: *node, host: s}
      - {<<: [*node, {sudo: false}], host: t}
`)
	s, _ := inv.Clusters[0].node("s")
	if s.SSH.User != "ops" || s.SSH.Port != 22 || !s.Sudo || s.DataDir != "/srv/k3s" {
		t.Errorf("node s = %+v", s)
	}
	// In a merged list the first mapping wins.
	if n, _ := inv.Clusters[0].node("t"); !n.Sudo {
		t.Errorf("node t sudo = false, want true from the first merged mapping")
	}
}

func TestMergedUnknownKeyNamesAnchorLine(t *testing.T) {
	got := problemsOf(t, "x-ssh: &ssh {usr: ops}\nclusters:\n  - name: c\n    ssh: {<<: *ssh}\n    servers: [{host: s}]\n")
	want := `hosts.yaml:1: clusters[0].ssh.usr: unknown key; did you mean "user"?`
	if len(got) != 1 || got[0] != want {
		t.Errorf("problems = %q, want [%q]", got, want)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "hosts.yaml")
	if err := os.WriteFile(good, []byte("clusters:\n  - name: c\n    servers: [{host: s}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	inv, err := Load(good)
	if err != nil || inv.File != good || inv.Clusters[0].Nodes[0].ID() != "c/s" {
		t.Fatalf("Load = %+v, %v", inv, err)
	}

	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("clusters:\n  - name: c\n    servers: [{host: s, ssh: {port: 70000}}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = Load(bad)
	var errs *Errors
	if !errors.As(err, &errs) || len(errs.Problems) != 1 || errs.Problems[0].File != bad || errs.Problems[0].Line != 3 {
		t.Fatalf("Load(bad) = %v", err)
	}
	if want := bad + ":3: clusters[0].servers[0].ssh.port: 70000 is out of range 1-65535"; err.Error() != want {
		t.Errorf("Load(bad) error = %q, want %q", err, want)
	}

	if _, err := Load(filepath.Join(dir, "missing.yaml")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Load(missing) = %v, want fs.ErrNotExist", err)
	}
}

func TestParseStdinName(t *testing.T) {
	_, err := Parse("<stdin>", []byte("clusters:\n  - name: c\n    servers: [{host: s, dataDir: x}]\n"))
	if err == nil || !strings.HasPrefix(err.Error(), "<stdin>:3: clusters[0].servers[0].dataDir: ") {
		t.Errorf("error = %v", err)
	}
}

func TestExpand(t *testing.T) {
	s := SSH{IdentityFile: "~/.ssh/id", KnownHostsFile: "/etc/known", User: "u"}
	got := s.Expand("/home/ops/")
	if got.IdentityFile != "/home/ops/.ssh/id" || got.KnownHostsFile != "/etc/known" || got.User != "u" {
		t.Errorf("Expand = %+v", got)
	}
}

// TestProduct: product is inherited like any setting and chooses the
// installer's defaults; a cluster runs one product; an unknown one is an
// error naming the line.
func TestProduct(t *testing.T) {
	inv, err := Parse("hosts.yaml", []byte(`clusters:
  - name: r
    product: rke2
    servers: [{host: s1}]
    agents: [{host: a1, dataDir: /data/rke2}]
  - name: k
    servers: [{host: s2}]
`))
	if err != nil {
		t.Fatal(err)
	}
	s, a, k := inv.Clusters[0].Nodes[0], inv.Clusters[0].Nodes[1], inv.Clusters[1].Nodes[0]
	if s.Product != "rke2" || s.DataDir != "/var/lib/rancher/rke2" || s.ConfigFile != "/etc/rancher/rke2/config.yaml" || s.Service != "rke2-server" {
		t.Errorf("rke2 server = %+v", s)
	}
	if a.Product != "rke2" || a.DataDir != "/data/rke2" || a.Service != "rke2-agent" {
		t.Errorf("rke2 agent = %+v", a)
	}
	if k.Product != "k3s" || k.Service != "k3s" || k.DataDir != DefaultDataDir {
		t.Errorf("k3s server = %+v", k)
	}
	for yaml, want := range map[string]string{
		"clusters:\n  - name: m\n    servers: [{host: s1}]\n    agents: [{host: a1, product: rke2}]\n": "hosts.yaml:4: clusters[0].agents[0].product: rke2, but s1 of the same cluster is k3s",
		"defaults:\n  product: k8s\nclusters:\n  - name: m\n    servers: [{host: s1}]\n":               `hosts.yaml:2: defaults.product: "k8s" is not a product fleetcert knows`,
	} {
		_, err := Parse("hosts.yaml", []byte(yaml))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want %q", yaml, err, want)
		}
	}
}
