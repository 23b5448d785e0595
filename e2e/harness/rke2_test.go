package harness

import (
	"strings"
	"testing"
)

func TestRKE2SpecDefaultsAndOneProductPerCluster(t *testing.T) {
	s := Spec{Name: "t", Clusters: []ClusterSpec{DemoDelta()}}
	if err := s.validate(); err != nil {
		t.Fatal(err)
	}
	n := s.Clusters[0].Servers[0]
	if n.DataDir != rke2DataDir || len(n.TokenIn) != 1 || n.TokenIn[0] != InConfig {
		t.Fatalf("RKE2 defaults: %+v", n)
	}
	mixed := Spec{Name: "t", Clusters: []ClusterSpec{{Name: "m", Servers: []NodeSpec{{Product: ProductRKE2}}, Agents: []NodeSpec{{}}}}}
	if err := mixed.validate(); err == nil || !strings.Contains(err.Error(), "one product per cluster") {
		t.Fatalf("mixed cluster: %v", err)
	}
	bad := Spec{Name: "t", Clusters: []ClusterSpec{{Name: "b", Servers: []NodeSpec{{Product: ProductRKE2, TokenIn: []TokenPlace{InRuntimeDropIn}}}}}}
	if err := bad.validate(); err == nil {
		t.Fatal("an unmodelled RKE2 token place must be refused")
	}
}

func TestRKE2InstallFiles(t *testing.T) {
	s := Spec{Name: "t", Clusters: []ClusterSpec{DemoDelta()}}
	if err := s.validate(); err != nil {
		t.Fatal(err)
	}
	cs := s.Clusters[0]
	c := &Cluster{Name: cs.Name, spec: cs}
	srv := &Node{Name: cs.Servers[0].Name, Role: Server, DataDir: rke2DataDir, Unit: defaultUnit(ProductRKE2, Server), spec: cs.Servers[0]}
	ag := &Node{Name: cs.Agents[0].Name, Role: Agent, DataDir: rke2DataDir, Unit: defaultUnit(ProductRKE2, Agent), spec: cs.Agents[0]}
	c.Servers, c.Agents = []*Node{srv}, []*Node{ag}
	files := map[string]string{}
	for _, f := range rke2Install(ag, c, "K10abc::server:pw") {
		files[f.Path] = string(f.Data)
	}
	unit := files["/usr/local/lib/systemd/system/rke2-agent.service"]
	for _, want := range []string{"Type=notify", "KillMode=process", "EnvironmentFile=-/usr/local/lib/systemd/system/%N.env", "ExecStart=/usr/local/bin/rke2 agent\n"} {
		if !strings.Contains(unit, want) {
			t.Errorf("agent unit lacks %q:\n%s", want, unit)
		}
	}
	cfg := files["/etc/rancher/rke2/config.yaml"]
	if cfg != "server: \"https://delta-s1:9345\"\ntoken: \"K10abc::server:pw\"\n" {
		t.Errorf("agent config.yaml:\n%s", cfg)
	}
	if env := files["/usr/local/lib/systemd/system/rke2-agent.env"]; !strings.Contains(env, "HOME=") || strings.Contains(env, "TOKEN") {
		t.Errorf("agent env file: %q", env)
	}
	if ag.TokenFile(InConfig) != rke2ConfigFile || c.url() != "https://delta-s1:9345" {
		t.Error("RKE2 token file or cluster URL")
	}
	f := &Fleet{Name: "t", Clusters: []*Cluster{c}}
	inv := f.inventoryYAML()
	if !strings.Contains(inv, "    product: \"rke2\"\n") || strings.Contains(inv, "dataDir") || strings.Contains(inv, "service:") {
		t.Errorf("inventory:\n%s", inv)
	}
	if got := strings.Join(kubectlCmd(srv), " "); got != "/var/lib/rancher/rke2/bin/kubectl --kubeconfig /etc/rancher/rke2/rke2.yaml" {
		t.Errorf("kubectl: %s", got)
	}
}

func TestDemoKeepsAlphaAndBeta(t *testing.T) {
	d := DemoClusters()
	if len(d) < 3 || d[0].Name != "alpha" || d[1].Name != "beta" || d[len(d)-1].Name != "delta" {
		t.Fatalf("demo clusters: %v", d)
	}
}
