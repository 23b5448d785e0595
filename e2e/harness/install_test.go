package harness

import (
	"strings"
	"testing"
)

// TestUnitType: current install.sh writes Type=notify for servers and
// agents; agents installed before 2022 have Type=exec.
func TestUnitType(t *testing.T) {
	for _, tc := range []struct {
		role     Role
		execType bool
		typ      string
	}{{Server, false, "Type=notify\n"}, {Agent, false, "Type=notify\n"}, {Agent, true, "Type=exec\n"}, {Server, true, "Type=notify\n"}} {
		role, typ := tc.role, tc.typ
		unit := map[Role]string{Server: "k3s", Agent: "k3s-agent"}[role]
		text := unitText(role, unit, tc.execType, nil)
		// The rest of the text is installsh's, tested there.
		for _, want := range []string{typ, "EnvironmentFile=-/etc/systemd/system/" + unit + ".service.env\n"} {
			if !strings.Contains(text, want) {
				t.Errorf("%s unit lacks %q:\n%s", role, want, text)
			}
		}
	}
}

func TestInstallPlacesTokenEverywhereAsked(t *testing.T) {
	spec := Spec{Name: "t", Clusters: []ClusterSpec{{
		Name:    "c",
		Servers: []NodeSpec{{}, {TokenIn: []TokenPlace{InExecStart, InConfigDropIn}, DataDir: "/srv/k3s"}},
		Agents:  []NodeSpec{{TokenIn: []TokenPlace{InTokenFileConfig}}},
	}}}
	if err := spec.validate(); err != nil {
		t.Fatal(err)
	}
	c := &Cluster{Name: "c", spec: spec.Clusters[0]}
	for i, ns := range spec.Clusters[0].Servers {
		c.Servers = append(c.Servers, &Node{Name: ns.Name, Role: Server, DataDir: ns.DataDir, Unit: "k3s", spec: spec.Clusters[0].Servers[i]})
	}
	a := &Node{Name: "c-a1", Role: Agent, DataDir: defaultDataDir, Unit: "k3s-agent", spec: spec.Clusters[0].Agents[0]}
	c.Agents = []*Node{a}

	files := func(in installation) map[string]string {
		m := map[string]string{}
		for _, f := range in.files() {
			m[f.Path] = string(f.Data)
			if strings.Contains(f.Path, "token") || strings.HasSuffix(f.Path, ".env") {
				if f.Mode != 0o600 {
					t.Errorf("%s mode %o, want 0600", f.Path, f.Mode)
				}
			}
		}
		return m
	}

	s1 := files(installFor(c.Servers[0], c, "short"))
	if s1["/etc/systemd/system/k3s.service.env"] != "K3S_TOKEN='short'\n" {
		t.Errorf("first server env = %q", s1["/etc/systemd/system/k3s.service.env"])
	}
	if !strings.Contains(s1["/etc/systemd/system/k3s.service"], "\t'--cluster-init' \\\n") {
		t.Errorf("first server of an HA cluster lacks --cluster-init")
	}

	s2 := files(installFor(c.Servers[1], c, "K10x::server:pw"))
	unit := s2["/etc/systemd/system/k3s.service"]
	for _, want := range []string{"\t'--server' \\\n\t'https://c-s1:6443' \\\n", "\t'--data-dir' \\\n\t'/srv/k3s' \\\n", "\t'--token' \\\n\t'K10x::server:pw' \\\n"} {
		if !strings.Contains(unit, want) {
			t.Errorf("joining server unit lacks %q:\n%s", want, unit)
		}
	}
	if s2[tokenDropIn] != "token: \"K10x::server:pw\"\n" {
		t.Errorf("drop-in = %q", s2[tokenDropIn])
	}
	if s2["/etc/systemd/system/k3s.service.env"] != "" {
		t.Errorf("env file should be empty, is %q", s2["/etc/systemd/system/k3s.service.env"])
	}

	a1 := files(installFor(a, c, "K10x::server:pw"))
	if a1["/etc/systemd/system/k3s-agent.service.env"] != "K3S_URL='https://c-s1:6443'\n" {
		t.Errorf("agent env = %q", a1["/etc/systemd/system/k3s-agent.service.env"])
	}
	if a1[configFile] != "token-file: \"/etc/rancher/k3s/token\"\n" || a1[tokenFilePath] != "K10x::server:pw\n" {
		t.Errorf("agent token-file config = %q, token file = %q", a1[configFile], a1[tokenFilePath])
	}
	if !strings.Contains(a1["/etc/systemd/system/k3s-agent.service"], "Type=notify\n") {
		t.Error("agent unit is not Type=notify, as current install.sh writes it")
	}
}

func TestParseGetNodes(t *testing.T) {
	out := "NAME    STATUS     ROLES                       AGE   VERSION\n" +
		"a-s1    Ready      control-plane,etcd,master   10s   v1.33.5+k3s1\n" +
		"a-a1    NotReady   <none>                      5s    v1.33.5+k3s1\n" +
		"a-a2    Ready,SchedulingDisabled   <none>      5s    v1.33.5+k3s1\n"
	got := parseGetNodes(out)
	if !got["a-s1"] || got["a-a1"] || !got["a-a2"] || len(got) != 3 {
		t.Errorf("parseGetNodes = %v", got)
	}
}
