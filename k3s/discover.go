package k3s

import (
	"errors"
	"fmt"
	"path"
	"slices"
	"sort"
	"strings"
)

// NodeFiles is what was read from a node to find its token sources.
type NodeFiles struct {
	// Init is what booted the node (InitSystemd, InitOpenRC...): it decides
	// where k3s's settings come from.
	Init string
	// Unit is what systemd says about the k3s unit; nil when systemd does
	// not run the node (then install.sh's paths are assumed).
	Unit *UnitShow
	// ManagerEnv is `systemctl show-environment`, one VAR=value a line.
	ManagerEnv []string
	// Files maps absolute paths to contents. A path mapped to nil was
	// looked for and is absent. A directory path with a trailing "/"
	// mapped to nil says the directory was listed: its entries are in
	// Files.
	Files map[string][]byte
	// Unreadable holds paths that exist but could not be read (a file) or
	// searched (a directory): not the same as empty or absent.
	Unreadable map[string]bool
}

// TokenScan is every token definition of a node and what decides which
// one k3s uses.
type TokenScan struct {
	// Sources, lowest precedence first: systemd's manager environment,
	// unit Environment= lines, environment files in the unit's load
	// order, the config file, its drop-ins in name order, the effective
	// ExecStart, then token-file targets; problems (Err set, Key empty)
	// for whatever cannot be accounted for.
	Sources []TokenSource
	// Pending lists what must still be read (token-file targets, a config
	// file chosen by K3S_CONFIG_FILE or --config, a directory ending in
	// "/" to list): read them and scan again.
	Pending []string
	// ConfigFile is the config file k3s reads; ConfigFrom says why
	// ("default", or the definition that names it).
	ConfigFile, ConfigFrom string
	// Joins, when set, is the definition that makes the node join a
	// cluster (--server, server:, K3S_URL): such a node must hold a token.
	Joins string
	// Binary is the program the unit's ExecStart runs (empty when unknown).
	Binary string

	kinds      map[string]FileKind // format of every file read for the scan
	candidates []string            // read by every facts round trip: absent when not in Files
}

// scanTokens finds every place the node defines a token, where systemd and
// k3s say they are:
//
//   - the unit file and drop-ins systemd loaded (FragmentPath,
//     DropInPaths) and the environment files it names (EnvironmentFiles),
//     plus install.sh's env files even when not loaded (rewritten too, so
//     they stay consistent);
//   - systemd's manager environment, which every unit inherits;
//   - the config file k3s reads: K3S_CONFIG_FILE (from any environment
//     source) beats --config/-c, default /etc/rancher/k3s/config.yaml; and
//     its drop-in directory <file>.d;
//   - the files token-file settings name.
//
// Whatever may hold a token but cannot be read or parsed with certainty is
// a problem source (Err set), which refuses the node.
func scanTokens(l Layout, in NodeFiles) TokenScan {
	sc := TokenScan{kinds: map[string]FileKind{}, candidates: candidateFiles(l)}
	files := in.Files
	var env, exec, problems []TokenSource
	if in.Init == InitOpenRC {
		env, exec, problems = sc.openrcSources(l, in)
	} else {
		env, exec, problems = sc.systemdSources(l, in)
	}
	env = productEnv(l, env)
	if isProductBinary(sc.Binary) && path.Base(sc.Binary) != l.product().binary {
		problems = append(problems, problem(l.UnitName(), kindUnit, 0,
			"the service runs %s, but the inventory says the cluster is %s (product:)", sc.Binary, l.ProductName()))
	}
	execStarts, execRefs := splitRefs(exec)
	envs, envRefs := splitRefs(env)
	sc.ConfigFile, sc.ConfigFrom = configChoice(l, envRefs, execRefs)
	config := sc.configSources(l, in)
	configTokens, configRefs := splitRefs(config)
	sc.Joins = joins(envRefs, configRefs, execRefs)
	all := append(envs, configTokens...)
	all = append(all, execStarts...)
	all = append(all, problems...)
	targets, pending := tokenFileTargets(all, files)
	all = append(all, targets...)
	for _, t := range targets {
		sc.kinds[t.File] = fileToken
	}
	for _, p := range pending {
		sc.need(in, p, fileToken)
	}
	all = append(all, sc.uncoveredAll(files, all)...)
	all = append(all, sc.unreadable(in)...)
	for i := range all {
		if l.Role == RoleAgent && all[i].Agent && all[i].Kind != kindTokenFile && all[i].Ignored == "" {
			all[i].Ignored = "agent-token settings are read by servers only"
		}
	}
	sc.Sources = all
	sort.Strings(sc.Pending)
	sc.Pending = slices.Compact(sc.Pending)
	return sc
}

// systemdSources reads the token places systemd gives k3s: the manager
// environment, the unit's Environment= lines and environment files in
// load order (env), its effective ExecStart (exec), and what cannot be
// accounted for (problems).
func (sc *TokenScan) systemdSources(l Layout, in NodeFiles) (env, exec, problems []TokenSource) {
	files := in.Files
	unit := readUnitChain(l, in.Unit, files)
	env = append(env, managerEnvSources(in.ManagerEnv)...)
	env = append(env, unit.environment...)
	for i, f := range unit.files {
		sc.need(in, f, fileUnit)
		if i > 0 || (in.Unit == nil && f != l.UnitFile()) {
			sc.kinds[f] = fileUnitDropIn
		}
	}
	for _, ef := range unit.envFiles {
		k := fileEnv
		if ef.kind == kindDistroEnvFile {
			k = fileDistroEnv
		}
		if ef.extra || in.Unit != nil {
			sc.need(in, ef.path, k)
		}
		if content := files[ef.path]; content != nil {
			sc.kinds[ef.path] = k
			env = append(env, parseEnvFile(ef.path, ef.kind, content, ef.ignored)...)
		}
	}
	sc.Binary = unit.binary
	problems = append(unit.problems, systemdProblems(l, in.Unit)...)
	return env, unit.execStarts, problems
}

// productEnv marks environment definitions named for another product as
// ignored: RKE2 does not read K3S_TOKEN, nor k3s RKE2_TOKEN. They are
// still rewritten, so that nothing is left on the old CA.
func productEnv(l Layout, env []TokenSource) []TokenSource {
	prefix := l.product().envPrefix()
	for i, s := range env {
		if _, ok := envSettings[s.Key]; ok && !strings.HasPrefix(s.Key, prefix) && s.Ignored == "" {
			env[i].Ignored = fmt.Sprintf("%s reads %s* variables, not %s", l.ProductName(), prefix, s.Key)
		}
	}
	return env
}

// need asks for p to be read when it has not been, and records its kind.
func (sc *TokenScan) need(in NodeFiles, p string, k FileKind) {
	if _, ok := sc.kinds[p]; !ok {
		sc.kinds[p] = k
	}
	if _, read := in.Files[p]; !read && !in.Unreadable[p] && !slices.Contains(sc.candidates, p) {
		sc.Pending = append(sc.Pending, p)
	}
}

// configChoice is the config file k3s reads (pkg/configfilearg):
// K3S_CONFIG_FILE wins over --config/-c; without either, the default.
// Among environment sources the usual order holds (later, higher wins).
func configChoice(l Layout, envRefs, execRefs []TokenSource) (file, from string) {
	if s, ok := winner(envRefs, settingConfig); ok && s.Value != "" {
		return s.Value, describeRef(s)
	}
	if s, ok := winner(execRefs, settingConfig); ok && s.Value != "" {
		return s.Value, describeRef(s)
	}
	return l.Config(), "default"
}

func describeRef(s TokenSource) string {
	return fmt.Sprintf("%s %s:%d", s.Key, s.File, s.Line)
}

// configSources parses the chosen config file and its drop-ins in k3s's
// order: the main file first (a missing one is fine), then <file>.d
// entries in byte order. The default config.yaml, when another file is
// chosen, is still read and its tokens rewritten, but marked ignored.
func (sc *TokenScan) configSources(l Layout, in NodeFiles) []TokenSource {
	var out []TokenSource
	read := func(file, why string) {
		dir := dropInDir{Path: file + ".d", Suffixes: []string{".yaml", ".yml"}, CaseInsensitive: true}
		sc.need(in, file, fileConfig)
		if _, listed := in.Files[dir.Path+"/"]; !listed && dir.Path != l.configDropInDir() && !in.Unreadable[dir.Path] {
			sc.Pending = append(sc.Pending, dir.Path+"/")
		}
		var srcs []TokenSource
		if c := in.Files[file]; c != nil {
			srcs = append(srcs, parseConfig(file, kindConfigFile, c)...)
		}
		for _, p := range dropIns(dir, in.Files) {
			sc.kinds[p] = fileConfigDropIn
			srcs = append(srcs, parseConfig(p, kindConfigDropIn, in.Files[p])...)
		}
		if why != "" {
			for i := range srcs {
				if srcs[i].Ignored == "" {
					srcs[i].Ignored = why
				}
			}
		}
		out = append(out, srcs...)
	}
	if sc.ConfigFile != l.Config() {
		read(l.Config(), "k3s reads "+sc.ConfigFile+" instead ("+sc.ConfigFrom+")")
	}
	read(sc.ConfigFile, "")
	return out
}

// joins names the definition that makes the node join a cluster, if any:
// --server/-s, server: or K3S_URL with a value.
func joins(groups ...[]TokenSource) string {
	var all []TokenSource
	for _, g := range groups {
		all = append(all, g...)
	}
	if s, ok := winner(all, settingServer); ok && s.Value != "" {
		return describeRef(s)
	}
	return ""
}

// ErrNeedDaemonReload is the problem of a unit whose files changed since
// systemd loaded them: its next start would run what systemd does not list
// yet.
var ErrNeedDaemonReload = errors.New("the unit's files changed since systemd last loaded them (NeedDaemonReload=yes)")

// systemdProblems are what systemd's view says fleetcert cannot account
// for: no loaded unit, files changed since the last daemon-reload (the
// next start would use files systemd does not list yet), values it could
// not read.
func systemdProblems(l Layout, u *UnitShow) []TokenSource {
	if u == nil {
		return nil
	}
	unit := l.UnitName() + ".service"
	var out []TokenSource
	switch {
	case u.LoadState != "loaded":
		out = append(out, problem(unit, kindUnit, 0, "systemd has no loaded unit %s (LoadState=%s)", unit, u.LoadState))
	case u.FragmentPath == "":
		out = append(out, problem(unit, kindUnit, 0, "systemd names no unit file for %s", unit))
	}
	if u.NeedDaemonReload {
		out = append(out, problem(unit, kindUnit, 0, "%w: run systemctl daemon-reload (or undo the change), then rerun", ErrNeedDaemonReload))
	}
	for _, v := range u.Unparsed {
		out = append(out, problem(unit, kindUnit, 0, "cannot read systemctl show's %s with certainty", v))
	}
	return out
}

// uncoveredAll runs the parsers' safety net over every file read.
func (sc *TokenScan) uncoveredAll(files map[string][]byte, all []TokenSource) []TokenSource {
	paths := make([]string, 0, len(sc.kinds))
	for p := range sc.kinds {
		if files[p] != nil {
			paths = append(paths, p)
		}
	}
	sort.Strings(paths)
	var out []TokenSource
	for _, p := range paths {
		var mine []TokenSource
		for _, s := range all {
			if s.File == p {
				mine = append(mine, s)
			}
		}
		out = append(out, uncovered(sc.kinds[p], p, files[p], mine)...)
	}
	return out
}

// unreadable turns every place that may hold a token but could not be
// read into a problem: unreadable is not empty.
func (sc *TokenScan) unreadable(in NodeFiles) []TokenSource {
	var out []TokenSource
	for p := range in.Unreadable {
		kind, known := sc.kinds[p]
		if !known && p != sc.ConfigFile+".d" {
			continue
		}
		out = append(out, problem(p, kindOfFile(kind), 0, "exists but cannot be read with the privileges fleetcert runs with (set sudo: true)"))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].File < out[j].File })
	return out
}

// looked lists every place the scan read for tokens, present or not.
func (sc TokenScan) looked() []string {
	out := make([]string, 0, len(sc.kinds)+1)
	for p := range sc.kinds {
		out = append(out, p)
	}
	if len(sc.Sources) > 0 && sc.Sources[0].Kind == kindManagerEnv {
		out = append(out, managerEnvironment)
	}
	sort.Strings(out)
	return out
}

// fileKinds is the format of every file the scan read, for rewriting.
func (sc TokenScan) fileKinds() map[string]FileKind { return sc.kinds }
