package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

const (
	defaultDataDir    = "/var/lib/rancher/k3s"
	defaultConfigFile = "/etc/rancher/k3s/config.yaml"
	defaultKubeconfig = "/etc/rancher/k3s/k3s.yaml"
	defaultEmuDir     = "/etc/k3semu"
	defaultListen     = "0.0.0.0:6443"
	defaultLocalURL   = "https://127.0.0.1:6443"
	defaultVersion    = "v1.33.5+k3s1"
)

// Env holds everything the emulator takes from the machine, so tests can
// run servers and agents in-process with temp dirs and 127.0.0.1 ports.
type Env struct {
	Getenv         func(string) string
	Hostname       string
	SharedDir      string // cluster datastore
	EmuDir         string // /etc/k3semu (version, fault)
	KubeconfigPath string // /etc/rancher/k3s/k3s.yaml
	ConfigFile     string // default config.yaml
	ListenAddr     string // server listen address
	LocalURL       string // how the server's own agent reaches it
	Log            *Logger
	Stdout         io.Writer

	HeartbeatInterval time.Duration
	RetryInterval     time.Duration
	ReadyWindow       time.Duration
}

// defaultEnv is the real machine. K3SEMU_* variables (emulator-only, for
// running it outside a container) move its fixed paths.
func defaultEnv() *Env {
	host, _ := os.Hostname()
	e := &Env{
		Getenv:            os.Getenv,
		Hostname:          host,
		SharedDir:         defaultSharedDir,
		EmuDir:            defaultEmuDir,
		KubeconfigPath:    defaultKubeconfig,
		ConfigFile:        defaultConfigFile,
		ListenAddr:        defaultListen,
		LocalURL:          defaultLocalURL,
		Log:               newLogger(os.Stderr),
		Stdout:            os.Stdout,
		HeartbeatInterval: 5 * time.Second,
		RetryInterval:     2 * time.Second,
		ReadyWindow:       20 * time.Second,
	}
	for env, field := range map[string]*string{
		"K3SEMU_SHARED_DIR": &e.SharedDir,
		"K3SEMU_ETC_DIR":    &e.EmuDir,
		"K3SEMU_KUBECONFIG": &e.KubeconfigPath,
		"K3SEMU_LISTEN":     &e.ListenAddr,
		"K3SEMU_LOCAL_URL":  &e.LocalURL,
	} {
		if v := os.Getenv(env); v != "" {
			*field = v
		}
	}
	return e
}

// version is the k3s version this node pretends to run.
func (e *Env) version() string {
	b, err := os.ReadFile(filepath.Join(e.EmuDir, "version"))
	if err != nil {
		return defaultVersion
	}
	if v := strings.TrimSpace(string(b)); v != "" {
		return v
	}
	return defaultVersion
}

// flagDef is one command-line flag. Long names work with one or two
// dashes, as with urfave/cli.
type flagDef struct {
	Name    string
	Aliases []string
	Bool    bool
	EnvVar  string
	Config  bool // may be set from config.yaml
	Multi   bool // repeatable: values accumulate, comma-joined
	Default string
}

func lookupFlag(defs []flagDef, name string) *flagDef {
	for i := range defs {
		if defs[i].Name == name {
			return &defs[i]
		}
		for _, a := range defs[i].Aliases {
			if a == name {
				return &defs[i]
			}
		}
	}
	return nil
}

// parseArgs parses argv flags into name -> value (last occurrence wins),
// returning the positional arguments too.
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
		name := strings.TrimLeft(a, "-")
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

// configFiles lists config.yaml then its drop-ins (alphabetical).
func configFiles(main string) []string {
	var files []string
	if fileExists(main) {
		files = append(files, main)
	}
	entries, err := os.ReadDir(main + ".d")
	if err == nil {
		var names []string
		for _, e := range entries {
			n := strings.ToLower(e.Name())
			if e.IsDir() || !(strings.HasSuffix(n, ".yaml") || strings.HasSuffix(n, ".yml")) {
				continue
			}
			names = append(names, e.Name())
		}
		sort.Strings(names)
		for _, n := range names {
			files = append(files, filepath.Join(main+".d", n))
		}
	}
	return files
}

func yamlScalar(v any) string {
	switch v := v.(type) {
	case nil:
		return ""
	case string:
		return v
	case []any:
		// Repeated flags: for the scalar flags used here the last one wins.
		if len(v) == 0 {
			return ""
		}
		return yamlScalar(v[len(v)-1])
	default:
		return fmt.Sprint(v)
	}
}

// readConfigValues merges config.yaml and drop-ins (later wins, key+ appends).
func readConfigValues(defs []flagDef, main string, log *Logger) (map[string]string, error) {
	vals := map[string]string{}
	for _, f := range configFiles(main) {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		var m yaml.Node
		if err := yaml.Unmarshal(b, &m); err != nil {
			return nil, fmt.Errorf("failed to parse %s: %w", f, err)
		}
		if len(m.Content) == 0 {
			continue
		}
		doc := m.Content[0]
		if doc.Kind != yaml.MappingNode {
			return nil, fmt.Errorf("failed to parse %s: not a map", f)
		}
		for i := 0; i+1 < len(doc.Content); i += 2 {
			key := doc.Content[i].Value
			var v any
			if err := doc.Content[i+1].Decode(&v); err != nil {
				return nil, fmt.Errorf("failed to parse %s: %w", f, err)
			}
			appendVal := strings.HasSuffix(key, "+")
			key = strings.TrimSuffix(key, "+")
			def := lookupFlag(defs, key)
			if def == nil || !def.Config {
				log.Warnf("Unknown flag --%s found in config.yaml, skipping", key)
				continue
			}
			s := yamlScalar(v)
			if appendVal && vals[def.Name] != "" {
				s = vals[def.Name] + "," + s
			}
			vals[def.Name] = s
		}
	}
	return vals, nil
}

// resolveFlags applies k3s precedence: argv > config.yaml.d > config.yaml >
// environment > default. (token-file beats token; see readTokenFile.)
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
		if d.Default != "" {
			vals[d.Name] = d.Default
		}
		if d.EnvVar != "" {
			if v := e.Getenv(d.EnvVar); v != "" {
				vals[d.Name] = v
			}
		}
	}
	if lookupFlag(defs, "config") != nil {
		cfgFile := e.ConfigFile
		if v := e.Getenv("K3S_CONFIG_FILE"); v != "" {
			cfgFile = v
		}
		if v, ok := argv["config"]; ok {
			cfgFile = v
		}
		cfg, err := readConfigValues(defs, cfgFile, e.Log)
		if err != nil {
			return nil, err
		}
		for k, v := range cfg {
			vals[k] = v
		}
	}
	for k, v := range argv {
		vals[k] = v
	}
	return vals, nil
}

// readTokenFile returns the trimmed content of a token file.
func readTokenFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

var commonNodeFlags = []flagDef{
	{Name: "token", Aliases: []string{"t"}, EnvVar: "K3S_TOKEN", Config: true},
	{Name: "token-file", EnvVar: "K3S_TOKEN_FILE", Config: true},
	{Name: "server", Aliases: []string{"s"}, EnvVar: "K3S_URL", Config: true},
	{Name: "data-dir", Aliases: []string{"d"}, EnvVar: "K3S_DATA_DIR", Config: true, Default: defaultDataDir},
	{Name: "config", Aliases: []string{"c"}, EnvVar: "K3S_CONFIG_FILE"},
	{Name: "node-name", EnvVar: "K3S_NODE_NAME", Config: true},
	{Name: "with-node-id", Bool: true, Config: true},
}

var serverFlags = append(append([]flagDef{}, commonNodeFlags...),
	flagDef{Name: "agent-token", EnvVar: "K3S_AGENT_TOKEN", Config: true},
	flagDef{Name: "agent-token-file", EnvVar: "K3S_AGENT_TOKEN_FILE", Config: true},
	flagDef{Name: "cluster-init", Bool: true, EnvVar: "K3S_CLUSTER_INIT", Config: true},
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

func loadNodeConfig(e *Env, defs []flagDef, args []string) (*nodeConfig, error) {
	vals, err := resolveFlags(e, defs, args)
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
	if f := vals["token-file"]; f != "" {
		if c.Token, err = readTokenFile(f); err != nil {
			return nil, err
		}
	}
	if f := vals["agent-token-file"]; f != "" {
		if c.AgentToken, err = readTokenFile(f); err != nil {
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
