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

// TestInstallOpenRC: on an OpenRC node the install is install.sh's there:
// the service script (installsh.OpenRC, 0755) with the arguments in
// command_args, the env file it sources (0600, always written), and the
// OpenRC token places: command_args, the env file, /etc/environment.
func TestInstallOpenRC(t *testing.T) {
	spec := Spec{Name: "t", Clusters: []ClusterSpec{{
		Name:    "c",
		Servers: []NodeSpec{{Init: InitOpenRC, TokenIn: []TokenPlace{InCommandArgs}}},
		Agents: []NodeSpec{
			{Init: InitOpenRC, Busybox: true},
			{Init: InitOpenRC, Unit: "k3s-edge", TokenIn: []TokenPlace{InEtcEnvironment, InTokenFileArg}},
		},
	}}}
	if err := spec.validate(); err != nil {
		t.Fatal(err)
	}
	c := &Cluster{Name: "c", spec: spec.Clusters[0]}
	s := &Node{Name: "c-s1", Role: Server, DataDir: defaultDataDir, Unit: "k3s", Init: InitOpenRC, spec: spec.Clusters[0].Servers[0]}
	c.Servers = []*Node{s}
	a1 := &Node{Name: "c-a1", Role: Agent, DataDir: defaultDataDir, Unit: "k3s-agent", Init: InitOpenRC, spec: spec.Clusters[0].Agents[0]}
	a2 := &Node{Name: "c-a2", Role: Agent, DataDir: defaultDataDir, Unit: "k3s-edge", Init: InitOpenRC, spec: spec.Clusters[0].Agents[1]}
	c.Agents = []*Node{a1, a2}

	type got struct {
		mode int64
		data string
	}
	render := func(n *Node, token string) map[string]got {
		m := map[string]got{}
		for _, f := range installFor(n, c, token).files() {
			m[f.Path] = got{f.Mode, string(f.Data)}
		}
		for p := range m {
			if strings.HasPrefix(p, "/etc/systemd") {
				t.Errorf("%s: systemd file %s on an OpenRC node", n.Name, p)
			}
		}
		return m
	}

	tok := "K10" + strings.Repeat("a", 64) + "::server:pw"
	sf := render(s, tok)
	script := sf["/etc/init.d/k3s"]
	if script.mode != 0o755 {
		t.Errorf("service script mode %o, want 0755", script.mode)
	}
	for _, want := range []string{
		"#!/sbin/openrc-run\n", "supervisor=supervise-daemon\n", "name=k3s\n",
		"command_args=\"server \\\n\t'--token' \\\n\t'" + tok + "' \\\n    >>/var/log/k3s.log 2>&1\"\n",
		"if [ -f /etc/rancher/k3s/k3s.env ]; then . /etc/rancher/k3s/k3s.env; fi\n",
	} {
		if !strings.Contains(script.data, want) {
			t.Errorf("server script lacks %q:\n%s", want, script.data)
		}
	}
	if env := sf["/etc/rancher/k3s/k3s.env"]; env.mode != 0o600 || env.data != "" {
		t.Errorf("server env file = %o %q, want 0600 and empty", env.mode, env.data)
	}
	if s.TokenFile(InCommandArgs) != "/etc/init.d/k3s" || s.ServiceFile() != "/etc/init.d/k3s" || s.LogFile() != "/var/log/k3s.log" {
		t.Errorf("server token file %s, service file %s, log %s", s.TokenFile(InCommandArgs), s.ServiceFile(), s.LogFile())
	}

	af := render(a1, tok)
	env := af["/etc/rancher/k3s/k3s-agent.env"]
	if env.mode != 0o600 || env.data != "K3S_TOKEN='"+tok+"'\nK3S_URL='https://c-s1:6443'\n" {
		t.Errorf("agent env file = %o %q", env.mode, env.data)
	}
	if a1.TokenFile(InEnvFile) != "/etc/rancher/k3s/k3s-agent.env" {
		t.Errorf("agent env token file = %s", a1.TokenFile(InEnvFile))
	}
	if !strings.Contains(af["/etc/init.d/k3s-agent"].data, "command_args=\"agent \\\n    >>/var/log/k3s-agent.log 2>&1\"\n") {
		t.Errorf("agent script:\n%s", af["/etc/init.d/k3s-agent"].data)
	}

	ef := render(a2, tok)
	if e := ef["/etc/environment"]; e.data != "K3S_TOKEN="+tok+"\n" {
		t.Errorf("/etc/environment = %q", e.data)
	}
	if !strings.Contains(ef["/etc/init.d/k3s-edge"].data, "\t'--token-file' \\\n\t'/etc/rancher/k3s/token' \\\n    >>/var/log/k3s-edge.log 2>&1\"\n") {
		t.Errorf("k3s-edge script:\n%s", ef["/etc/init.d/k3s-edge"].data)
	}
	if ef[tokenFilePath].data != tok+"\n" || ef["/etc/rancher/k3s/k3s-edge.env"].mode != 0o600 {
		t.Errorf("token file %q, env file mode %o", ef[tokenFilePath].data, ef["/etc/rancher/k3s/k3s-edge.env"].mode)
	}
	if got := etcEnvironmentText(map[string]string{"K3S_TOKEN": "it's $x"}); got != "K3S_TOKEN='it'\\''s $x'\n" {
		t.Errorf("a value sh would take apart is quoted: %q", got)
	}

	if got := busyboxLinks(); len(got) != 4 || got[0].Path != "/usr/bin/sh" || got[0].Mode != modeSymlink || string(got[0].Data) != "/bin/busybox" {
		t.Errorf("busybox links = %+v", got)
	}
}

// TestValidateInit: each init system refuses what makes no sense on it.
func TestValidateInit(t *testing.T) {
	for _, tc := range []struct {
		node NodeSpec
		err  string
	}{
		{NodeSpec{}, ""},
		{NodeSpec{Init: "systemd", TokenIn: []TokenPlace{InRuntimeDropIn}}, ""},
		{NodeSpec{Init: InitOpenRC, TokenIn: []TokenPlace{InCommandArgs, InEnvFile, InEtcEnvironment, InConfig, InConfigDropIn, InTokenFileArg, InTokenFileConfig, InConfigByEnv, InConfigByFlag, InConfigDotDropIn, InTokenFileNBSP}, Busybox: true}, ""},
		{NodeSpec{TokenIn: []TokenPlace{InCommandArgs}}, "exists only on OpenRC nodes"},
		{NodeSpec{TokenIn: []TokenPlace{InEtcEnvironment}}, "exists only on OpenRC nodes"},
		{NodeSpec{Busybox: true}, "Busybox needs an OpenRC node"},
		{NodeSpec{Init: InitOpenRC, TokenIn: []TokenPlace{InExecStart}}, "makes no sense on an OpenRC node"},
		{NodeSpec{Init: InitOpenRC, TokenIn: []TokenPlace{InDistroEnvFile}}, "makes no sense on an OpenRC node"},
		{NodeSpec{Init: InitOpenRC, TokenIn: []TokenPlace{InRuntimeDropIn}}, "makes no sense on an OpenRC node"},
		{NodeSpec{Init: InitOpenRC, TokenIn: []TokenPlace{InPrefixDropIn}}, "makes no sense on an OpenRC node"},
		{NodeSpec{Init: InitOpenRC, Template: true, Unit: "k3s@x"}, "no unit templates"},
		{NodeSpec{Init: InitOpenRC, LegacyExecType: true}, "no unit Type"},
		{NodeSpec{Init: "runit"}, "unknown init system"},
		{NodeSpec{Init: InitOpenRC, Product: ProductRKE2}, "no RKE2 on OpenRC"},
	} {
		spec := Spec{Name: "t", Clusters: []ClusterSpec{{Name: "c", Servers: []NodeSpec{tc.node}}}}
		err := spec.validate()
		if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("%+v: error %v, want %q", tc.node, err, tc.err)
		}
	}
}

// TestDemoGamma: demo cluster gamma is the issue's: one OpenRC server with
// its secure token in command_args, one OpenRC busybox agent with its token
// in its env file; alpha and beta stay systemd.
func TestDemoGamma(t *testing.T) {
	cs := DemoClusters()
	if len(cs) != 4 || cs[0].Name != "alpha" || cs[1].Name != "beta" || cs[2].Name != "gamma" || cs[3].Name != "delta" {
		t.Fatalf("demo clusters: %+v", cs)
	}
	for _, c := range cs[:2] {
		for _, n := range append(append([]NodeSpec{}, c.Servers...), c.Agents...) {
			if n.Init != "" || n.Busybox {
				t.Errorf("%s: a node is not a stock systemd node: %+v", c.Name, n)
			}
		}
	}
	g := cs[2]
	if len(g.Servers) != 1 || len(g.Agents) != 1 {
		t.Fatalf("gamma: %d servers, %d agents", len(g.Servers), len(g.Agents))
	}
	s, a := g.Servers[0], g.Agents[0]
	if s.Init != InitOpenRC || s.Token != SecureToken || len(s.TokenIn) != 1 || s.TokenIn[0] != InCommandArgs {
		t.Errorf("gamma server: %+v", s)
	}
	if a.Init != InitOpenRC || !a.Busybox || a.Token != DefaultToken || len(a.TokenIn) != 1 || a.TokenIn[0] != InEnvFile {
		t.Errorf("gamma agent: %+v", a)
	}
}
