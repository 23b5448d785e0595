package k3s

import (
	"strings"
	"testing"
)

// agentShow is what systemd says of a stock install.sh agent.
func agentShow(dropIns ...string) *UnitShow {
	return &UnitShow{LoadState: "loaded", FragmentPath: "/etc/systemd/system/k3s-agent.service", DropInPaths: dropIns,
		EnvFiles: []EnvFileEntry{{"/etc/default/k3s-agent", true}, {"/etc/sysconfig/k3s-agent", true}, {"/etc/systemd/system/k3s-agent.service.env", true}}}
}

const agentUnit = "[Service]\nType=notify\nEnvironmentFile=-/etc/systemd/system/k3s-agent.service.env\nExecStart=/usr/local/bin/k3s \\\n    agent \\\n\n"

// effectiveOf scans and returns the effective token's source, failing on
// pending files or problems.
func effectiveOf(t *testing.T, l Layout, in NodeFiles) (TokenScan, TokenSource) {
	t.Helper()
	sc := scanTokens(l, in)
	if len(sc.Pending) > 0 {
		t.Fatalf("pending: %v", sc.Pending)
	}
	for _, s := range sc.Sources {
		if s.Err != nil {
			t.Fatalf("problem: %s", s)
		}
	}
	eff, err := effectiveToken(sc.Sources, l.Role)
	if err != nil {
		t.Fatalf("effective token: %v", err)
	}
	return sc, eff
}

func TestScanTokensWhereSystemdSays(t *testing.T) {
	agent := Layout{Role: RoleAgent}
	env := "/etc/systemd/system/k3s-agent.service.env"
	for _, tc := range []struct {
		name     string
		layout   Layout
		unit     *UnitShow
		files    map[string][]byte
		wantFile string
		wantKind SourceKind
	}{{
		// systemctl edit --runtime writes /run/systemd/system/<unit>.d/;
		// systemd lists it in DropInPaths, install.sh's paths do not.
		name: "runtime drop-in", layout: agent,
		unit: agentShow("/run/systemd/system/k3s-agent.service.d/override.conf"),
		files: map[string][]byte{
			"/etc/systemd/system/k3s-agent.service":                 []byte(agentUnit),
			"/run/systemd/system/k3s-agent.service.d/override.conf": []byte("[Service]\nEnvironment=\"K3S_TOKEN=" + nodeTok + "\"\n"),
			env: []byte("K3S_URL='https://s:6443'\n"),
		},
		wantFile: "/run/systemd/system/k3s-agent.service.d/override.conf", wantKind: kindUnitEnvironment,
	}, {
		// A drop-in in k3s-.service.d applies to every unit named k3s-*.
		name: "prefix drop-in", layout: agent,
		unit: agentShow("/etc/systemd/system/k3s-.service.d/token.conf"),
		files: map[string][]byte{
			"/etc/systemd/system/k3s-agent.service":         []byte(agentUnit),
			"/etc/systemd/system/k3s-.service.d/token.conf": []byte("[Service]\nEnvironment=K3S_TOKEN=" + nodeTok + "\n"),
			env: []byte("K3S_URL='https://s:6443'\n"),
		},
		wantFile: "/etc/systemd/system/k3s-.service.d/token.conf", wantKind: kindUnitEnvironment,
	}, {
		// A template's instance: the unit file is k3s-agent@.service and
		// systemd has already expanded %i/%N in EnvironmentFiles.
		name: "template instance", layout: Layout{Role: RoleAgent, Unit: "k3s-agent@edge"},
		unit: &UnitShow{LoadState: "loaded", FragmentPath: "/etc/systemd/system/k3s-agent@.service",
			EnvFiles: []EnvFileEntry{{"/etc/k3s/edge.env", false}}},
		files: map[string][]byte{
			"/etc/systemd/system/k3s-agent@.service": []byte("[Service]\nEnvironmentFile=/etc/k3s/%i.env\nExecStart=/opt/bin/k3s agent\n"),
			"/etc/k3s/edge.env":                      []byte("K3S_URL=https://s:6443\nK3S_TOKEN=" + nodeTok + "\n"),
		},
		wantFile: "/etc/k3s/edge.env", wantKind: kindEnvFile,
	}, {
		// A later drop-in's ExecStart replaces the unit's (after a reset).
		name: "ExecStart replaced by a drop-in", layout: agent,
		unit: agentShow("/etc/systemd/system/k3s-agent.service.d/10-args.conf"),
		files: map[string][]byte{
			"/etc/systemd/system/k3s-agent.service":                []byte(agentUnit),
			"/etc/systemd/system/k3s-agent.service.d/10-args.conf": []byte("[Service]\nExecStart=\nExecStart=/usr/local/bin/k3s agent --token " + nodeTok + "\n"),
			env: []byte("K3S_URL='https://s:6443'\nK3S_TOKEN='" + srvTok + "'\n"),
		},
		wantFile: "/etc/systemd/system/k3s-agent.service.d/10-args.conf", wantKind: kindUnitDropIn,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			sc, eff := effectiveOf(t, tc.layout, NodeFiles{Unit: tc.unit, Files: tc.files})
			if eff.File != tc.wantFile || eff.Kind != tc.wantKind {
				t.Errorf("effective token from %s (%s), want %s (%s)", eff.File, eff.Kind, tc.wantFile, tc.wantKind)
			}
			if sc.Joins == "" {
				t.Error("the agent's K3S_URL/--server was not seen")
			}
		})
	}
}

// TestScanTokensConfigChoice: k3s reads the file K3S_CONFIG_FILE names
// (from any environment source), else the one --config/-c names, else
// /etc/rancher/k3s/config.yaml; then <file>.d/*.yaml|*.yml in byte order,
// dotfiles included. The default file, when another is chosen, is ignored
// by k3s but still rewritten.
func TestScanTokensConfigChoice(t *testing.T) {
	l := Layout{Role: RoleAgent}
	unit := func(args string) []byte {
		return []byte("[Service]\nEnvironmentFile=-/etc/systemd/system/k3s-agent.service.env\nExecStart=/usr/local/bin/k3s agent" + args + "\n")
	}
	base := func(envLines, args string) map[string][]byte {
		return map[string][]byte{
			"/etc/systemd/system/k3s-agent.service":     unit(args),
			"/etc/systemd/system/k3s-agent.service.env": []byte("K3S_URL=https://s:6443\n" + envLines),
			"/etc/rancher/k3s/config.yaml":              []byte("token: " + srvTok + "\n"),
		}
	}
	for _, tc := range []struct {
		name, env, args, wantConfig string
		more                        map[string][]byte
		wantEffective               string
	}{
		{name: "default", wantConfig: "/etc/rancher/k3s/config.yaml", wantEffective: "/etc/rancher/k3s/config.yaml"},
		{name: "K3S_CONFIG_FILE", env: "K3S_CONFIG_FILE=/etc/k3s/c.yaml\n", wantConfig: "/etc/k3s/c.yaml",
			more: map[string][]byte{"/etc/k3s/c.yaml": []byte("token: " + nodeTok + "\n")}, wantEffective: "/etc/k3s/c.yaml"},
		{name: "--config", args: " --config /etc/k3s/f.yaml", wantConfig: "/etc/k3s/f.yaml",
			more: map[string][]byte{"/etc/k3s/f.yaml": []byte("token: " + nodeTok + "\n")}, wantEffective: "/etc/k3s/f.yaml"},
		{name: "-c=", args: " -c=/etc/k3s/f.yaml", wantConfig: "/etc/k3s/f.yaml",
			more: map[string][]byte{"/etc/k3s/f.yaml": []byte("token: " + nodeTok + "\n")}, wantEffective: "/etc/k3s/f.yaml"},
		{name: "K3S_CONFIG_FILE beats --config", env: "K3S_CONFIG_FILE=/etc/k3s/c.yaml\n", args: " --config /etc/k3s/f.yaml",
			wantConfig: "/etc/k3s/c.yaml", more: map[string][]byte{"/etc/k3s/c.yaml": []byte("token: " + nodeTok + "\n")},
			wantEffective: "/etc/k3s/c.yaml"},
		{name: "dotfile drop-in", wantConfig: "/etc/rancher/k3s/config.yaml",
			more:          map[string][]byte{"/etc/rancher/k3s/config.yaml.d/.late.YML": []byte("token: " + nodeTok + "\n")},
			wantEffective: "/etc/rancher/k3s/config.yaml.d/.late.YML"},
		{name: "drop-in of a chosen file", env: "K3S_CONFIG_FILE=/etc/k3s/c.yaml\n", wantConfig: "/etc/k3s/c.yaml",
			more:          map[string][]byte{"/etc/k3s/c.yaml": nil, "/etc/k3s/c.yaml.d/x.yaml": []byte("token: " + nodeTok + "\n")},
			wantEffective: "/etc/k3s/c.yaml.d/x.yaml"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			files := base(tc.env, tc.args)
			first := scanTokens(l, NodeFiles{Files: files})
			if first.ConfigFile != tc.wantConfig {
				t.Fatalf("config file %s, want %s", first.ConfigFile, tc.wantConfig)
			}
			if tc.wantConfig != (Layout{}).Config() {
				// The chosen file and its drop-in directory are asked for.
				want := []string{tc.wantConfig, tc.wantConfig + ".d/"}
				if strings.Join(first.Pending, " ") != strings.Join(want, " ") {
					t.Fatalf("pending %v, want %v", first.Pending, want)
				}
				files[tc.wantConfig+".d/"] = nil // listed
			}
			for p, c := range tc.more {
				files[p] = c
			}
			sc, eff := effectiveOf(t, l, NodeFiles{Files: files})
			if eff.File != tc.wantEffective {
				t.Errorf("effective token from %s, want %s", eff.File, tc.wantEffective)
			}
			for _, s := range sc.Sources {
				if s.File == (Layout{}).Config() && tc.wantConfig != (Layout{}).Config() && s.Ignored == "" {
					t.Errorf("config.yaml's token is not marked ignored though k3s reads %s", tc.wantConfig)
				}
			}
		})
	}
}

// TestScanTokensRefuses: whatever may hold a token but cannot be read or
// parsed with certainty is a problem source (which refuses the node).
func TestScanTokensRefuses(t *testing.T) {
	l := Layout{Role: RoleAgent}
	unit := "/etc/systemd/system/k3s-agent.service"
	env := "/etc/systemd/system/k3s-agent.service.env"
	ok := map[string][]byte{unit: []byte(agentUnit), env: []byte("K3S_URL=https://s:6443\nK3S_TOKEN=" + nodeTok + "\n")}
	with := func(p string, c []byte) map[string][]byte {
		m := map[string][]byte{}
		for k, v := range ok {
			m[k] = v
		}
		m[p] = c
		return m
	}
	for _, tc := range []struct {
		name string
		in   NodeFiles
		want string
	}{
		// A secure token in the manager environment reaches the unit, but
		// no file fleetcert could rewrite holds it.
		{"manager environment", NodeFiles{Unit: agentShow(), Files: ok, ManagerEnv: []string{"LANG=C", "K3S_TOKEN=" + nodeTok}}, "manager environment"},
		{"escaped manager value", NodeFiles{Unit: agentShow(), Files: ok, ManagerEnv: []string{"K3S_TOKEN_FILE=$'/x\\ty'"}}, "escaped"},
		{"wrapper ExecStart", NodeFiles{Unit: agentShow("/etc/systemd/system/k3s-agent.service.d/w.conf"),
			Files: with("/etc/systemd/system/k3s-agent.service.d/w.conf", []byte("[Service]\nExecStart=\nExecStart=/usr/local/bin/run-k3s.sh\n"))}, "run-k3s.sh"},
		{"sh -c", NodeFiles{Files: with(unit, []byte("[Service]\nExecStart=/bin/sh -c 'exec k3s agent'\n"))}, "/bin/sh"},
		{"files changed since daemon-reload", NodeFiles{Unit: func() *UnitShow { u := agentShow(); u.NeedDaemonReload = true; return u }(), Files: ok}, "NeedDaemonReload"},
		{"no such unit", NodeFiles{Unit: &UnitShow{LoadState: "not-found"}, Files: ok}, "no loaded unit"},
		{"quoted drop-in path", NodeFiles{Unit: func() *UnitShow {
			return parseUnitShow([]string{"LoadState=loaded", "FragmentPath=" + unit, `DropInPaths="/etc/a b.conf"`})
		}(), Files: ok}, "DropInPaths"},
		{"EnvironmentFile= wildcard", NodeFiles{Unit: func() *UnitShow {
			return parseUnitShow([]string{"LoadState=loaded", "FragmentPath=" + unit, "EnvironmentFiles=/etc/k3s/*.env (ignore_errors=yes)"})
		}(), Files: ok}, "EnvironmentFiles"},
		{"unreadable env file", NodeFiles{Unit: agentShow(), Files: map[string][]byte{unit: []byte(agentUnit)}, Unreadable: map[string]bool{env: true}}, "cannot be read"},
		{"unreadable config drop-ins", NodeFiles{Files: ok, Unreadable: map[string]bool{"/etc/rancher/k3s/config.yaml.d": true}}, "cannot be read"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sc := scanTokens(l, tc.in)
			var problems []string
			for _, s := range sc.Sources {
				if s.Err != nil {
					problems = append(problems, s.String())
				}
			}
			if !strings.Contains(strings.Join(problems, "\n"), tc.want) {
				t.Errorf("problems %q, want one saying %q", problems, tc.want)
			}
			if strings.Contains(strings.Join(problems, "\n"), "agentpw") {
				t.Error("a problem shows the token's secret")
			}
		})
	}
}

// TestScanTokensManagerEnvironment: the manager's environment is the
// lowest source (a unit's own Environment= and EnvironmentFile= beat it);
// a short token or a file reference there is read, not refused.
func TestScanTokensManagerEnvironment(t *testing.T) {
	l := Layout{Role: RoleAgent}
	files := map[string][]byte{"/etc/systemd/system/k3s-agent.service": []byte(agentUnit),
		"/etc/systemd/system/k3s-agent.service.env": []byte("K3S_URL=https://s:6443\nK3S_TOKEN=" + nodeTok + "\n")}
	_, eff := effectiveOf(t, l, NodeFiles{Unit: agentShow(), Files: files, ManagerEnv: []string{"K3S_TOKEN=" + shortTok}})
	if eff.Kind != kindEnvFile {
		t.Errorf("effective token from %s, want the env file over the manager environment", eff.Kind)
	}
	delete(files, "/etc/systemd/system/k3s-agent.service.env")
	files["/etc/systemd/system/k3s-agent.service.env"] = []byte("K3S_URL=https://s:6443\n")
	_, eff = effectiveOf(t, l, NodeFiles{Unit: agentShow(), Files: files, ManagerEnv: []string{"K3S_TOKEN=" + shortTok}})
	if eff.Kind != kindManagerEnv || eff.File != managerEnvironment {
		t.Errorf("effective token from %s %s, want the manager environment", eff.Kind, eff.File)
	}
}

// TestTokenFileTrimmedAsK3s: k3s reads a token file with
// strings.TrimSpace, which trims Unicode white space such as U+00A0.
func TestTokenFileTrimmedAsK3s(t *testing.T) {
	l := Layout{Role: RoleAgent}
	files := map[string][]byte{
		"/etc/systemd/system/k3s-agent.service": []byte("[Service]\nExecStart=/usr/local/bin/k3s agent --server https://s:6443 --token-file /etc/k3s/tok\n"),
		"/etc/k3s/tok":                          []byte("\u00a0" + nodeTok + "\u2003\n"),
	}
	_, eff := effectiveOf(t, l, NodeFiles{Files: files})
	if eff.Value != nodeTok || eff.Kind != kindTokenFile {
		t.Errorf("token file read as %q (%s)", eff.Redacted(), eff.Kind)
	}
	plan, err := PlanTokenRewrites(l, NodeFiles{Files: files}, RewriteOptions{NewHash: newHash})
	if err != nil || len(plan) != 1 {
		t.Fatalf("plan: %v %v", plan, err)
	}
	want := "\u00a0K10" + newHash + "::node:agentpw\u2003\n"
	if string(plan[0].New) != want {
		t.Errorf("rewritten to %q, want %q", plan[0].New, want)
	}
}

func TestParseSnapshotSystemdSection(t *testing.T) {
	out := factsVersion + "\n@systemd\nLoadState=loaded\nNeedDaemonReload=no\nFragmentPath=/etc/systemd/system/k3s.service\n" +
		"DropInPaths=/run/systemd/system/k3s.service.d/a.conf /etc/systemd/system/k3s.service.d/b.conf\n" +
		"EnvironmentFiles=/etc/default/k3s (ignore_errors=yes)\nEnvironmentFiles=/etc/k3s.env (ignore_errors=no)\nMainPID=812\n" +
		"@manager-env\nLANG=C.UTF-8\nK3S_TOKEN_FILE=/x\n@files\n@absent /etc/default/k3s\n@unreadable /etc/k3s.env\n@listed /etc/k3s/c.yaml.d\n@end\n"
	s, err := parseSnapshot([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	u := s.Unit
	if u == nil || u.LoadState != "loaded" || u.MainPID != 812 || u.NeedDaemonReload || u.FragmentPath != "/etc/systemd/system/k3s.service" ||
		len(u.DropInPaths) != 2 || u.DropInPaths[0] != "/run/systemd/system/k3s.service.d/a.conf" ||
		len(u.EnvFiles) != 2 || !u.EnvFiles[0].Optional || u.EnvFiles[1].Optional || u.EnvFiles[1].Path != "/etc/k3s.env" {
		t.Errorf("unit: %+v", u)
	}
	if len(s.ManagerEnv) != 2 || s.ManagerEnv[1] != "K3S_TOKEN_FILE=/x" {
		t.Errorf("manager env: %q", s.ManagerEnv)
	}
	if !s.Absent["/etc/default/k3s"] || !s.Unreadable["/etc/k3s.env"] || !s.Listed["/etc/k3s/c.yaml.d"] {
		t.Errorf("absent %v unreadable %v listed %v", s.Absent, s.Unreadable, s.Listed)
	}
	in := s.NodeFiles(nil)
	if c, read := in.Files["/etc/default/k3s"]; !read || c != nil {
		t.Error("an absent file must read as looked for and absent")
	}
	if _, listed := in.Files["/etc/k3s/c.yaml.d/"]; !listed {
		t.Error("a listed directory must be marked as listed")
	}
}

// TestEffectiveTokenProblemsReportedOnce: an effective token that cannot
// be known because a listed source has a problem is that source's problem,
// not a second one; a problem of the precedence itself (key+ appended to
// an earlier config value) is the node's token problem.
func TestEffectiveTokenProblemsReportedOnce(t *testing.T) {
	l := Layout{Role: RoleAgent}
	describe := func(files map[string]File) NodeFacts {
		s := &Snapshot{Files: files, Dirs: map[string]bool{l.AgentDir(): true}}
		return DescribeWith(l, s, ScanNode(l, s, nil))
	}
	unit := File{Data: []byte("[Service]\nExecStart=/usr/local/bin/k3s agent --server https://s:6443\n")}
	f := describe(map[string]File{l.UnitFile(): unit, "/etc/rancher/k3s/config.yaml": {Data: []byte("token: [" + nodeTok + "]\n")}})
	if f.TokenErr != nil {
		t.Errorf("a source's problem repeated as the token problem: %v", f.TokenErr)
	}
	problems := 0
	for _, s := range f.Tokens {
		if s.Err != nil {
			problems++
		}
	}
	if problems == 0 {
		t.Error("the config source's problem is not listed")
	}
	f = describe(map[string]File{l.UnitFile(): unit,
		"/etc/rancher/k3s/config.yaml":          {Data: []byte("token: " + nodeTok + "\n")},
		"/etc/rancher/k3s/config.yaml.d/x.yaml": {Data: []byte("token+: " + nodeTok + "\n")}})
	if f.TokenErr == nil || !strings.Contains(f.TokenErr.Error(), "appended") {
		t.Errorf("token problem %v, want the key+ append", f.TokenErr)
	}
}
