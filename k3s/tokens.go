package k3s

import (
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"sort"
	"strings"

	"github.com/fleetcert/fleetcert/pki"
)

// SourceKind says what kind of place defines a token on a node.
type SourceKind string

// The places a node may define its join token (docs/k3s-behaviour.md#token-places).
const (
	// kindEnvFile is install.sh's <unit>.service.env, or any other file an
	// EnvironmentFile= line of the unit names.
	kindEnvFile SourceKind = "env-file"
	// kindDistroEnvFile is /etc/default/<unit> or /etc/sysconfig/<unit>.
	kindDistroEnvFile SourceKind = "distro-env-file"
	// kindUnitExecStart is a flag on the ExecStart= of the unit file itself.
	kindUnitExecStart SourceKind = "unit-execstart"
	// kindUnitEnvironment is an Environment=K3S_TOKEN=... line in the unit
	// or one of its drop-ins.
	kindUnitEnvironment SourceKind = "unit-environment"
	// kindUnitDropIn is a flag on an ExecStart= of a unit drop-in.
	kindUnitDropIn SourceKind = "unit-dropin"
	// kindConfigFile is a key of config.yaml.
	kindConfigFile SourceKind = "config"
	// kindConfigDropIn is a key of a config.yaml.d/*.yaml|*.yml drop-in.
	kindConfigDropIn SourceKind = "config-dropin"
	// kindTokenFile is the file a token-file setting points to; its whole
	// content (surrounding white space trimmed, as k3s reads it) is the token.
	kindTokenFile SourceKind = "token-file"
	// kindManagerEnv is systemd's manager environment (systemctl
	// set-environment, DefaultEnvironment=), which every unit inherits.
	kindManagerEnv SourceKind = "manager-environment"
	// kindUnit is a whole-file finding about the unit (not found, not
	// reloaded, not readable).
	kindUnit SourceKind = "unit"
	// kindCommandArgs is a flag in command_args of an OpenRC service
	// script (/etc/init.d/k3s), or a finding about the script.
	kindCommandArgs SourceKind = "openrc-command-args"
	// kindOpenRCEnvFile is a file an OpenRC service script sources (the
	// env file /etc/rancher/k3s/<service>.env), or /etc/conf.d/<service>.
	kindOpenRCEnvFile SourceKind = "openrc-env-file"
	// kindEtcEnvironment is /etc/environment, which install.sh's OpenRC
	// script sources before the env file.
	kindEtcEnvironment SourceKind = "etc-environment"
)

// The four settings k3s reads a token from, by their config.yaml names.
// token/token-file on both roles, agent-token(-file) on servers
// (docs/k3s-behaviour.md#tokens).
const (
	settingToken          = "token"
	settingTokenFile      = "token-file"
	settingAgentToken     = "agent-token"
	settingAgentTokenFile = "agent-token-file"
)

// Two more settings decide where tokens are and whether one is needed:
// the config file (K3S_CONFIG_FILE, --config/-c) and the server a node
// joins (K3S_URL, --server/-s, server:). Definitions of them are found by
// the same parsers as tokens but are references, never tokens.
const (
	settingConfig = "config"
	settingServer = "server"
)

// envSettings maps the environment variables k3s reads (urfave/cli EnvVars
// of the flags) to settings, for every product: k3s names them after its
// program, so RKE2 reads RKE2_TOKEN where k3s reads K3S_TOKEN. The scan
// marks the other product's names as ignored (productEnv).
var envSettings = map[string]string{}

func init() {
	for _, p := range products {
		for suffix, setting := range map[string]string{
			"TOKEN": settingToken, "TOKEN_FILE": settingTokenFile,
			"AGENT_TOKEN": settingAgentToken, "AGENT_TOKEN_FILE": settingAgentTokenFile,
			"CONFIG_FILE": settingConfig, "URL": settingServer,
		} {
			envSettings[p.envPrefix()+suffix] = setting
		}
	}
}

// flagSettings maps flag names (without dashes; Go's flag package, which
// urfave/cli uses, accepts one or two dashes alike) to settings. -t is
// the alias of --token.
var flagSettings = map[string]string{
	"token":            settingToken,
	"t":                settingToken,
	"token-file":       settingTokenFile,
	"agent-token":      settingAgentToken,
	"agent-token-file": settingAgentTokenFile,
	"config":           settingConfig,
	"c":                settingConfig,
	"server":           settingServer,
	"s":                settingServer,
}

// TokenSource is one place where a node defines a join token, or a
// reference to a file holding one.
//
// Value is a secret: String, Redacted and every error of this package keep
// it out; never log a TokenSource with %#v.
type TokenSource struct {
	File string     // absolute path of the file holding the definition
	Kind SourceKind // what kind of place it is
	// Key is the name as written: K3S_TOKEN, --token, -t, token, token+,
	// K3S_AGENT_TOKEN_FILE, --agent-token-file, ... For kindTokenFile it is
	// the key of the (first) setting that points to the file.
	Key string
	// Value is the value as k3s receives it (quotes and escapes resolved):
	// the token, or for a token-file reference the path.
	Value string
	// Line is the 1-based line of the file where the value starts.
	Line int
	// Agent is set for agent-token(-file) settings (server only): that token
	// pins the CA the same way and is rewritten like the server token.
	Agent bool
	// FileRef is set for token-file settings: Value is a path and the token
	// is in the kindTokenFile source for that path.
	FileRef bool
	// Token is Value parsed, for definitions that are not file references
	// and parsed cleanly.
	Token pki.Token
	// Err says why the definition cannot be used or rewritten safely
	// (unparseable token, unsupported syntax, ambiguity). It never holds the
	// secret. A problem with a whole file has an empty Key.
	Err error
	// Ignored, when not empty, says why k3s never sees this definition
	// (ExecStart replaced by a drop-in, export-prefixed line systemd
	// ignores, env file the unit does not load, setting only servers read).
	// Such definitions are still rewritten so they stay consistent.
	Ignored string
	// Warning flags a definition that works but is read differently by
	// systemd and a POSIX shell, or uses expansions fleetcert does not model.
	Warning string
	// ReferencedBy, for kindTokenFile, lists the settings that point to
	// the file, as "file:line key".
	ReferencedBy []string

	// ref is settingConfig or settingServer for a definition of those:
	// not a token, kept apart from token sources by scanTokens.
	ref     string
	keyLine int // line of the key, for coverage checks
	hashOff int // byte offset of the CA hash in File, -1 when not a literal run
	cls     int // precedence class, see effectiveToken
}

// Secure reports whether the definition is a token that pins a CA hash.
func (s TokenSource) Secure() bool { return s.Err == nil && !s.FileRef && s.Token.Secure() }

// setting is the k3s setting the definition feeds: token, token-file,
// agent-token or agent-token-file (for kindTokenFile: token or
// agent-token).
func (s TokenSource) setting() string {
	switch {
	case s.ref != "":
		return s.ref
	case s.Agent && s.FileRef:
		return settingAgentTokenFile
	case s.Agent:
		return settingAgentToken
	case s.FileRef:
		return settingTokenFile
	}
	return settingToken
}

// Redacted is the value safe to show: the token with its secret replaced
// (K10<hash>::server:****), or the path of a token file.
func (s TokenSource) Redacted() string {
	switch {
	case s.FileRef:
		return s.Value
	case s.Err != nil || s.Value == "":
		return "****"
	}
	return s.Token.Redacted()
}

// TokenClass is "secure", "short", "file" or "invalid".
func (s TokenSource) TokenClass() string {
	switch {
	case s.FileRef:
		return "file"
	case s.Err != nil:
		return "invalid"
	case s.Token.Secure():
		return "secure"
	}
	return "short"
}

// String describes the source without its secret, e.g.
// "/etc/systemd/system/k3s.service.env:1 K3S_TOKEN (env-file) K10ab..::server:****".
func (s TokenSource) String() string {
	where := fmt.Sprintf("%s:%d", s.File, s.Line)
	if s.Key == "" {
		return fmt.Sprintf("%s (%s): %v", where, s.Kind, s.Err)
	}
	str := fmt.Sprintf("%s %s (%s) %s", where, s.Key, s.Kind, s.Redacted())
	if s.Err != nil {
		str += fmt.Sprintf(": %v", s.Err)
	}
	return str
}

// GoString keeps %#v from printing the secret.
func (s TokenSource) GoString() string { return "k3s.TokenSource{" + s.String() + "}" }

// MarshalJSON writes the redacted view: the secret never reaches a report.
func (s TokenSource) MarshalJSON() ([]byte, error) {
	v := struct {
		File         string     `json:"file"`
		Kind         SourceKind `json:"kind"`
		Key          string     `json:"key,omitempty"`
		Line         int        `json:"line,omitempty"`
		Setting      string     `json:"setting,omitempty"`
		Class        string     `json:"class,omitempty"`
		Value        string     `json:"value,omitempty"`
		Ignored      string     `json:"ignored,omitempty"`
		Warning      string     `json:"warning,omitempty"`
		Error        string     `json:"error,omitempty"`
		ReferencedBy []string   `json:"referencedBy,omitempty"`
	}{File: s.File, Kind: s.Kind, Key: s.Key, Line: s.Line, Ignored: s.Ignored, Warning: s.Warning, ReferencedBy: s.ReferencedBy}
	if s.Key != "" || s.Kind == kindTokenFile {
		v.Setting, v.Class, v.Value = s.setting(), s.TokenClass(), s.Redacted()
	}
	if s.Err != nil {
		v.Error = s.Err.Error()
	}
	return json.Marshal(v)
}

// dropInDir is a directory whose matching entries are read in name order.
type dropInDir struct {
	Path string
	// Suffixes an entry must end with; CaseInsensitive for config.yaml.d.
	Suffixes        []string
	CaseInsensitive bool
}

// matches reports whether an entry name of the directory is read.
func (d dropInDir) matches(name string) bool {
	n := name
	if d.CaseInsensitive {
		n = strings.ToLower(n)
	}
	for _, s := range d.Suffixes {
		if strings.HasSuffix(n, s) && len(n) > len(s) {
			return true
		}
	}
	return false
}

// candidateFiles are the fixed files that may define a token on a node:
// the distro env files and install.sh's env file (load order), the unit
// file and config.yaml; on OpenRC, conf.d, /etc/environment, the env file
// and the service script. Absent ones are simply not passed to
// scanTokens. See candidateDirs for the drop-in directories.
func candidateFiles(l Layout) []string {
	files := append([]string{}, l.DistroEnvFiles()...)
	return append(files, l.EnvFile(), l.UnitFile(), l.Config(),
		l.OpenRCConfD(), l.EtcEnvironment(), l.OpenRCEnvFile(), l.ServiceScript())
}

// candidateDirs are the drop-in directories whose matching entries (regular
// files only) must be read too: the unit's <unit>.service.d/*.conf and k3s's
// config.yaml.d/*.yaml|*.yml (k3s: suffix matched case-insensitively,
// docs/k3s-behaviour.md#config-file).
func candidateDirs(l Layout) []dropInDir {
	return []dropInDir{
		{Path: l.UnitDropInDir(), Suffixes: []string{".conf"}},
		{Path: l.configDropInDir(), Suffixes: []string{".yaml", ".yml"}, CaseInsensitive: true},
	}
}

// dropIns lists the files of files that are entries of d, in name order
// (k3s uses os.ReadDir order, systemd sorts drop-ins by name).
func dropIns(d dropInDir, files map[string][]byte) []string {
	var out []string
	for p, c := range files {
		if c != nil && path.Dir(p) == d.Path && d.matches(path.Base(p)) {
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool { return path.Base(out[i]) < path.Base(out[j]) })
	return out
}

// tokenFileTargets builds a kindTokenFile source for every token-file
// reference whose target is in files, and lists the targets still to read.
func tokenFileTargets(srcs []TokenSource, files map[string][]byte) (targets []TokenSource, pending []string) {
	seen := map[string]int{}
	for _, s := range srcs {
		if !s.FileRef || s.Err != nil || s.Value == "" {
			continue
		}
		ref := fmt.Sprintf("%s:%d %s", s.File, s.Line, s.Key)
		if i, ok := seen[s.Value]; ok {
			if i >= 0 {
				targets[i].ReferencedBy = append(targets[i].ReferencedBy, ref)
				targets[i].Agent = targets[i].Agent && s.Agent
			}
			continue
		}
		content, ok := files[s.Value]
		switch {
		case !ok:
			seen[s.Value] = -1
			pending = append(pending, s.Value)
			continue
		case content == nil:
			seen[s.Value] = -1
			continue
		}
		t := parseTokenFile(s.Value, content)
		t.Key, t.Agent, t.ReferencedBy = s.Key, s.Agent, []string{ref}
		seen[s.Value] = len(targets)
		targets = append(targets, t)
	}
	return targets, pending
}

// Precedence classes, lowest first (docs/k3s-behaviour.md#precedence): config
// values are inserted as flags before the real CLI args (later wins), and
// environment variables are only flag defaults. systemd.exec: variables
// from EnvironmentFile= override Environment=.
const (
	clsManagerEnv = iota + 1
	clsEnvironment
	clsEnvFile
	clsConfig
	clsConfigDropIn
	clsExecStart
)

// errNoToken means no definition of the asked-for token takes effect.
var errNoToken = errors.New("no token defined")

// effectiveToken is the definition whose token k3s would use for the
// server token (role server) or the join token (role agent), sources being
// what scanTokens returned, in its order:
//
//   - a token-file setting, when set, beats any token setting, whatever
//     each comes from (k3s reads the file over cfg.Token);
//   - each setting takes its value from the highest of: ExecStart flags >
//     config.yaml.d (later file wins) > config.yaml > environment
//     (EnvironmentFile= in load order > Environment=); within one place the
//     later definition wins;
//   - definitions k3s never sees (Ignored) do not count.
//
// For a token-file setting the kindTokenFile source of its target is
// returned; an error says when that file was not read or is empty.
func effectiveToken(sources []TokenSource, role Role) (TokenSource, error) {
	return effective(sources, settingToken, settingTokenFile)
}

// effectiveAgentToken is the agent-token definition that takes effect on a
// server, by the same rules as effectiveToken. errNoToken means the server
// uses its server token for agents too (k3s getNodePass).
func effectiveAgentToken(sources []TokenSource, role Role) (TokenSource, error) {
	if role == RoleAgent {
		return TokenSource{}, errNoToken
	}
	return effective(sources, settingAgentToken, settingAgentTokenFile)
}

func effective(sources []TokenSource, tokenSetting, fileSetting string) (TokenSource, error) {
	if f, ok := winner(sources, fileSetting); ok {
		if f.Err != nil {
			return f, fmt.Errorf("%s: %w", f, f.Err)
		}
		if f.Value != "" {
			for _, t := range sources {
				if t.Kind == kindTokenFile && t.File == f.Value {
					if t.Err != nil {
						return t, fmt.Errorf("%s: %w", t, t.Err)
					}
					return t, nil
				}
			}
			return f, fmt.Errorf("%s: token file %s was not read or does not exist", f, f.Value)
		}
	}
	t, ok := winner(sources, tokenSetting)
	switch {
	case !ok:
		return TokenSource{}, errNoToken
	case t.Err != nil:
		return t, fmt.Errorf("%s: %w", t, t.Err)
	case t.Value == "":
		return t, errNoToken
	}
	return t, nil
}

// winner is the highest-precedence definition of setting, if any. A
// config key+ (append) that lands on an earlier config value of the same
// setting makes the value a comma-joined string k3s would use as is: that
// is reported as an error rather than guessed.
func winner(sources []TokenSource, setting string) (TokenSource, bool) {
	var best TokenSource
	found := false
	for _, s := range sources {
		if s.Kind == kindTokenFile || s.Ignored != "" || s.Key == "" || s.setting() != setting {
			continue
		}
		if !found || s.cls >= best.cls {
			if found && strings.HasSuffix(s.Key, "+") && isConfig(best.cls) && isConfig(s.cls) {
				s.Err = errors.New("appended (key+:) to an earlier config value: k3s would use both joined by a comma")
			}
			best, found = s, true
		}
	}
	return best, found
}

func isConfig(cls int) bool { return cls == clsConfig || cls == clsConfigDropIn }
