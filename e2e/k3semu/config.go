package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	yaml2 "go.yaml.in/yaml/v2"
)

const (
	defaultDataDir    = "/var/lib/rancher/k3s"
	defaultConfigFile = "/etc/rancher/k3s/config.yaml"
	defaultKubeconfig = "/etc/rancher/k3s/k3s.yaml"
	defaultEmuDir     = "/etc/k3semu"
	defaultListen     = "0.0.0.0:6443"
	defaultLocalURL   = "https://127.0.0.1:6443"
	defaultPeerListen = "0.0.0.0:2380"
	defaultVersion    = "v1.33.5+k3s1"

	// k3s's util.ReadFile waits this long for a missing token file.
	defaultTokenFileWait = 4 * time.Minute
)

// Env holds everything the emulator takes from the machine, so tests can
// run servers and agents in-process with temp dirs and 127.0.0.1 ports.
type Env struct {
	// Getenv reads the environment k3s was started with. In main() that is
	// the one recovered after hiding the process arguments (hide.go), not
	// the process's own, which holds only a marker by then.
	Getenv         func(string) string
	Hostname       string
	SharedDir      string // cluster datastore
	EmuDir         string // /etc/k3semu (version, fault, clock, node-clock)
	KubeconfigPath string // /etc/rancher/k3s/k3s.yaml
	ConfigFile     string // default config.yaml
	ListenAddr     string // server listen address
	LocalURL       string // how the server's own agent reaches it
	// PeerListenAddr is where an etcd member listens for its peers (etcd's
	// :2380); empty: 127.0.0.1 on a free port (in-process tests).
	PeerListenAddr string
	Log            *Logger
	Stdout         io.Writer

	// Product is k3s (nil) or RKE2 (product.go). With RKE2, ListenAddr and
	// LocalURL are the supervisor's (:9345) and these the static pods'.
	Product        *product
	APIListenAddr  string // kube-apiserver pod (:6443)
	APILocalURL    string
	EtcdHealthAddr string    // etcd pod's local health listener
	Pods           podRunner // runs static pods; nil: processes (staticpods.go)

	HeartbeatInterval time.Duration
	RetryInterval     time.Duration
	ReadyWindow       time.Duration
	TokenFileWait     time.Duration // how long a missing token file is waited for
}

// defaultEnv is the real machine, with getenv its environment. K3SEMU_*
// variables (emulator-only, for running it outside a container) move its
// fixed paths.
func defaultEnv(getenv func(string) string) *Env {
	return defaultEnvFor(getenv, "k3s")
}

// defaultEnvFor is defaultEnv for the product argv0 names (product.go).
func defaultEnvFor(getenv func(string) string, argv0 string) *Env {
	host, _ := os.Hostname()
	p := productFor(argv0)
	e := &Env{
		Product:           p,
		APIListenAddr:     p.APIListen,
		APILocalURL:       p.APILocalURL,
		EtcdHealthAddr:    p.EtcdHealth,
		Getenv:            getenv,
		Hostname:          host,
		SharedDir:         defaultSharedDir,
		EmuDir:            defaultEmuDir,
		KubeconfigPath:    p.Kubeconfig,
		ConfigFile:        p.ConfigFile,
		ListenAddr:        p.Listen,
		LocalURL:          p.LocalURL,
		PeerListenAddr:    defaultPeerListen,
		Log:               newLogger(os.Stderr),
		Stdout:            os.Stdout,
		HeartbeatInterval: 5 * time.Second,
		RetryInterval:     2 * time.Second,
		ReadyWindow:       20 * time.Second,
		TokenFileWait:     defaultTokenFileWait,
	}
	for env, field := range map[string]*string{
		"K3SEMU_SHARED_DIR":  &e.SharedDir,
		"K3SEMU_ETC_DIR":     &e.EmuDir,
		"K3SEMU_KUBECONFIG":  &e.KubeconfigPath,
		"K3SEMU_LISTEN":      &e.ListenAddr,
		"K3SEMU_LOCAL_URL":   &e.LocalURL,
		"K3SEMU_PEER_LISTEN": &e.PeerListenAddr,
		"K3SEMU_API_LISTEN":  &e.APIListenAddr,
		"K3SEMU_API_URL":     &e.APILocalURL,
		"K3SEMU_ETCD_HEALTH": &e.EtcdHealthAddr,
	} {
		if v := getenv(env); v != "" {
			*field = v
		}
	}
	return e
}

// version is the k3s version this node pretends to run.
func (e *Env) version() string {
	b, err := os.ReadFile(filepath.Join(e.EmuDir, "version"))
	if err != nil {
		return e.prod().DefaultVersion
	}
	if v := strings.TrimSpace(string(b)); v != "" {
		return v
	}
	return e.prod().DefaultVersion
}

// now is k3s's clock on this node: the real one, moved by <EmuDir>/node-clock
// (whole seconds, signed: the node's own clock is off, as the harness's date
// and stat shims show it to fleetcert) and by <EmuDir>/clock (a Go duration,
// signed: k3s alone lives at another time, e.g. -8784h runs a cluster as it
// was 366 days ago). Everything k3s judges certificates by follows it:
// issuing and renewing them, verifying peers and clients in TLS handshakes,
// `certificate check`. Both files are read at every call, so removing them
// moves a running k3s to the real time at once: a cluster brought up a
// "year ago" is then expired without anyone restarting it. File times, the
// node registry and the log keep the real clock.
func (e *Env) now() time.Time {
	return time.Now().Add(e.clockOffset())
}

func (e *Env) clockOffset() time.Duration {
	var d time.Duration
	if b, err := os.ReadFile(filepath.Join(e.EmuDir, "node-clock")); err == nil {
		if sec, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err == nil {
			d += time.Duration(sec) * time.Second
		}
	}
	if b, err := os.ReadFile(filepath.Join(e.EmuDir, "clock")); err == nil {
		if v, err := time.ParseDuration(strings.TrimSpace(string(b))); err == nil {
			d += v
		}
	}
	return d
}

// flagDef is one command-line flag. Long names work with one or two
// dashes, as with urfave/cli (Go's flag package underneath).
type flagDef struct {
	Name    string
	Aliases []string
	Bool    bool
	EnvVar  string // only sets the default (urfave/cli)
	Multi   bool   // repeatable: values accumulate, comma-joined
	Default string
}

func lookupFlag(defs []flagDef, name string) *flagDef {
	for i := range defs {
		if defs[i].Name == name || slices.Contains(defs[i].Aliases, name) {
			return &defs[i]
		}
	}
	return nil
}

// parseArgs parses argv flags into name -> value (last occurrence wins,
// as with Go's flag package), returning the positional arguments too.
func parseArgs(defs []flagDef, args []string) (map[string]string, []string, error) {
	vals := map[string]string{}
	var pos []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			pos = append(pos, args[i+1:]...)
			break
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			pos = append(pos, a)
			continue
		}
		name := strings.TrimPrefix(strings.TrimPrefix(a, "-"), "-")
		if name == "" || name[0] == '-' || name[0] == '=' {
			return nil, nil, fmt.Errorf("bad flag syntax: %s", a)
		}
		value, hasValue := "", false
		if n, v, ok := strings.Cut(name, "="); ok {
			name, value, hasValue = n, v, true
		}
		def := lookupFlag(defs, name)
		if def == nil {
			return nil, nil, fmt.Errorf("flag provided but not defined: -%s", name)
		}
		if def.Bool {
			if !hasValue {
				value = "true"
			} else if _, err := strconv.ParseBool(value); err != nil {
				return nil, nil, fmt.Errorf("invalid boolean value %q for -%s: %v", value, name, err)
			}
		} else if !hasValue {
			if i+1 >= len(args) {
				return nil, nil, fmt.Errorf("flag needs an argument: -%s", name)
			}
			i++
			value = args[i]
		}
		if def.Multi && vals[def.Name] != "" {
			value = vals[def.Name] + "," + value
		}
		vals[def.Name] = value
	}
	return vals, pos, nil
}

// resolveFlags applies urfave/cli precedence: default < environment
// variable (EnvVar only sets the flag's default) < argv, where a later
// occurrence of a flag wins. It reads no config file: see
// resolveWithConfig for the subcommands k3s gives one.
func resolveFlags(e *Env, defs []flagDef, args []string) (map[string]string, error) {
	argv, pos, err := parseArgs(defs, args)
	if err != nil {
		return nil, fmt.Errorf("Incorrect Usage: %v", err)
	}
	if len(pos) > 0 {
		return nil, fmt.Errorf("unexpected arguments: %s", strings.Join(pos, " "))
	}
	vals := map[string]string{}
	for _, d := range defs {
		if def := e.flagDefault(d.Default); def != "" {
			vals[d.Name] = def
		}
		if d.EnvVar != "" {
			if v := e.Getenv(e.envName(d.EnvVar)); v != "" {
				vals[d.Name] = v
			}
		}
	}
	maps.Copy(vals, argv)
	return vals, nil
}

// resolveWithConfig is resolveFlags for `server`, `agent` and
// `etcd-snapshot`, which k3s gives a config file (pkg/configfilearg): the
// config file's values become --key=value flags inserted right after the
// subcommand, before the real arguments, so a real flag overrides them and
// both override the environment.
func resolveWithConfig(e *Env, cmd string, defs []flagDef, args []string) (map[string]string, error) {
	cfg, err := configArgs(configFilePath(e, args))
	if err != nil {
		return nil, err
	}
	cfg = filterConfigArgs(cmd, defs, cfg, e.Log)
	return resolveFlags(e, defs, append(cfg, args...))
}

// ---- config.yaml, as k3s's pkg/configfilearg reads it ----

// configFilePath picks the config file: $K3S_CONFIG_FILE when set and not
// empty (it beats the flag), else the first `--config X`, `--config=X`,
// `-c X` or `-c=X` in argv (exactly these spellings: k3s finds the file
// before the CLI parser runs, so `-config X` is not seen), else the
// default. "" means none (a trailing --config with no value; the CLI
// parser then complains).
func configFilePath(e *Env, args []string) string {
	if v := e.Getenv(e.envName("K3S_CONFIG_FILE")); v != "" {
		return v
	}
	for i, a := range args {
		for _, name := range []string{"--config", "-c"} {
			if a == name {
				if i+1 < len(args) {
					return args[i+1]
				}
				return ""
			}
			if v, ok := strings.CutPrefix(a, name+"="); ok {
				return v
			}
		}
	}
	return e.ConfigFile
}

// configDropIns lists the drop-ins of file: the entries of <file>.d that
// are not directories and whose name ends in .yaml or .yml in any case
// (dotfiles included), in byte order. A missing <file>.d is no drop-in;
// any other error (e.g. <file>.d is a file) fails, as in k3s.
func configDropIns(file string) ([]string, error) {
	dir := file + ".d"
	entries, err := os.ReadDir(dir) // sorted by name, byte order
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	var files []string
	for _, ent := range entries {
		n := strings.ToLower(ent.Name())
		if ent.IsDir() || !(strings.HasSuffix(n, ".yaml") || strings.HasSuffix(n, ".yml")) {
			continue
		}
		files = append(files, filepath.Join(dir, ent.Name()))
	}
	return files, nil
}

// configArgs returns the flags k3s makes of a config file and its
// drop-ins: the main file first (a missing one is fine), then the
// drop-ins. Each file is a YAML map read with yaml.v2 into a MapSlice, as
// k3s does (so yes/no/on/off are booleans, "..." ends the document and a
// key given twice is no error). Across files and within one, a later value
// replaces an earlier one; `key+:` appends to it instead (the values then
// become one --key=v flag each, so a repeatable flag gets them all and a
// plain string flag ends up with the last one). Keys come out in the
// order they were first seen, one dash for a one-letter key.
func configArgs(file string) ([]string, error) {
	if file == "" {
		return nil, nil
	}
	files, err := configDropIns(file)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(file); err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		if len(files) == 0 {
			return nil, nil
		}
	} else {
		files = append([]string{file}, files...)
	}
	var order []string
	values := map[string]any{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		var data yaml2.MapSlice
		if err := yaml2.Unmarshal(b, &data); err != nil {
			return nil, err
		}
		for _, item := range data {
			k, v := configString(item.Key), item.Value
			isAppend := strings.HasSuffix(k, "+")
			k = strings.TrimSuffix(k, "+")
			old, seen := values[k]
			if !seen {
				order = append(order, k)
			}
			if seen && isAppend {
				values[k] = append(configSlice(old), configSlice(v)...)
			} else {
				values[k] = v
			}
		}
	}
	var args []string
	for _, k := range order {
		prefix := "--"
		if len(k) == 1 {
			prefix = "-"
		}
		if list, ok := values[k].([]any); ok {
			for _, v := range list {
				args = append(args, prefix+k+"="+configString(v))
			}
		} else {
			args = append(args, prefix+k+"="+configString(values[k]))
		}
	}
	return args, nil
}

// configString renders a YAML value the way k3s does (wrangler's
// convert.ToString): a list stands for its first element, nil is "", and
// the result is strings.TrimSpace'd.
func configString(v any) string {
	if t, ok := v.(time.Time); ok {
		return t.Format(time.RFC3339)
	}
	if list, ok := v.([]any); ok {
		if len(list) == 0 {
			return ""
		}
		v = list[0]
	}
	if v == nil {
		return ""
	}
	return strings.TrimSpace(fmt.Sprint(v))
}

// configSlice is one side of a `key+:` append.
func configSlice(v any) []any {
	switch v := v.(type) {
	case string:
		return []any{v}
	case []any:
		return v
	}
	if s := configString(v); s != "" {
		return []any{s}
	}
	return nil
}

// serverOnlyKeys are real k3s server flags an agent does not have, beyond
// the emulator's own server flags. See filterConfigArgs.
var serverOnlyKeys = []string{
	"write-kubeconfig", "o", "write-kubeconfig-mode", "write-kubeconfig-group", "tls-san",
	"cluster-cidr", "service-cidr", "cluster-dns", "cluster-domain", "disable", "flannel-backend",
	"kube-apiserver-arg", "kube-controller-manager-arg", "kube-scheduler-arg", "etcd-arg",
	"datastore-endpoint", "cluster-reset", "secrets-encryption", "etcd-expose-metrics",
	"disable-helm-controller", "disable-network-policy", "embedded-registry",
}

// filterConfigArgs drops config keys the subcommand does not know. k3s
// does so for server and etcd-snapshot only, with a warning. It has no
// list for agent: an unknown key there reaches the CLI parser and the
// agent fails to start ("flag provided but not defined"). The emulator
// knows few flags, so for an agent it keeps (to fail) only keys known to
// be server-only and ignores the rest, which a real agent may accept.
func filterConfigArgs(cmd string, defs []flagDef, args []string, log *Logger) []string {
	var out []string
	for _, a := range args {
		name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		switch {
		case lookupFlag(defs, name) != nil:
			out = append(out, a)
		case cmd != "agent":
			log.Warnf("Unknown flag --%s found in config.yaml, skipping", name)
		case lookupFlag(serverFlags, name) != nil || slices.Contains(serverOnlyKeys, name):
			out = append(out, a)
		default:
			log.Warnf("k3semu: config key --%s is not emulated, ignoring it", name)
		}
	}
	return out
}

// readTokenFile reads a --token-file or --agent-token-file as k3s's
// util.ReadFile does: the content, strings.TrimSpace'd (any Unicode space,
// U+00A0 included). While the file does not exist it looks again every
// RetryInterval (2 s) for up to TokenFileWait (4 minutes), then fails;
// any other error fails at once.
func readTokenFile(ctx context.Context, e *Env, path string) (string, error) {
	if path == "" {
		return "", nil
	}
	deadline := time.Now().Add(e.TokenFileWait)
	for {
		b, err := os.ReadFile(path)
		if err == nil {
			return strings.TrimSpace(string(b)), nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return "", err
		}
		e.Log.Infof("Waiting for file %q to be created", path)
		if !time.Now().Add(e.RetryInterval).Before(deadline) {
			return "", context.DeadlineExceeded
		}
		if !sleepCtx(ctx, e.RetryInterval) {
			return "", ctx.Err()
		}
	}
}

var commonNodeFlags = []flagDef{
	{Name: "token", Aliases: []string{"t"}, EnvVar: "K3S_TOKEN"},
	{Name: "token-file", EnvVar: "K3S_TOKEN_FILE"},
	{Name: "server", Aliases: []string{"s"}, EnvVar: "K3S_URL"},
	{Name: "data-dir", Aliases: []string{"d"}, EnvVar: "K3S_DATA_DIR", Default: defaultDataDir},
	{Name: "config", Aliases: []string{"c"}, EnvVar: "K3S_CONFIG_FILE"},
	{Name: "node-name", EnvVar: "K3S_NODE_NAME"},
	{Name: "with-node-id", Bool: true},
}

var serverFlags = append(append([]flagDef{}, commonNodeFlags...),
	flagDef{Name: "agent-token", EnvVar: "K3S_AGENT_TOKEN"},
	flagDef{Name: "agent-token-file", EnvVar: "K3S_AGENT_TOKEN_FILE"},
	flagDef{Name: "cluster-init", Bool: true, EnvVar: "K3S_CLUSTER_INIT"},
)

var agentFlags = commonNodeFlags

// nodeConfig is the resolved configuration of a server or agent.
type nodeConfig struct {
	Token       string
	ServerURL   string
	DataDir     string
	NodeName    string
	AgentToken  string
	ClusterInit bool
}

// loadNodeConfig resolves `k3s server` (isServer) or `k3s agent` flags as
// k3s does: config files under real flags, the environment under both,
// then --token-file over --token and --agent-token-file over
// --agent-token, wherever each came from.
func loadNodeConfig(ctx context.Context, e *Env, isServer bool, args []string) (*nodeConfig, error) {
	cmd, defs := "agent", agentFlags
	if isServer {
		cmd, defs = "server", serverFlags
	}
	vals, err := resolveWithConfig(e, cmd, defs, args)
	if err != nil {
		return nil, err
	}
	c := &nodeConfig{
		Token:      vals["token"],
		ServerURL:  vals["server"],
		DataDir:    vals["data-dir"],
		NodeName:   vals["node-name"],
		AgentToken: vals["agent-token"],
	}
	c.ClusterInit, _ = strconv.ParseBool(vals["cluster-init"])
	if isServer && e.prod().StaticPods {
		// rke2 always runs embedded etcd (ClusterInit set in its defaults).
		c.ClusterInit = true
	}
	// k3s server reads the agent token file first, then the token file.
	if f := vals["agent-token-file"]; f != "" {
		if c.AgentToken, err = readTokenFile(ctx, e, f); err != nil {
			return nil, err
		}
	}
	if f := vals["token-file"]; f != "" {
		if c.Token, err = readTokenFile(ctx, e, f); err != nil {
			return nil, err
		}
	}
	if c.NodeName == "" {
		c.NodeName = e.Hostname
	}
	if c.DataDir, err = filepath.Abs(c.DataDir); err != nil {
		return nil, err
	}
	return c, nil
}
