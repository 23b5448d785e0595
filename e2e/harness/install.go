package harness

import (
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strconv"
	"strings"

	"github.com/fleetcert/fleetcert/internal/installsh"
)

// This file renders the files install.sh leaves on a k3s node (docs/k3s-behaviour.md#install-sh,
// and #openrc on OpenRC nodes), byte for byte where fleetcert parses or
// rewrites them. It is pure: the harness copies the result into the
// containers.

// Paths of a stock install.sh node.
const (
	systemdDir       = "/etc/systemd/system"
	configFile       = "/etc/rancher/k3s/config.yaml"
	configDropInDir  = configFile + ".d"
	tokenDropIn      = configDropInDir + "/50-token.yaml"
	tokenFilePath    = "/etc/rancher/k3s/token"
	defaultDataDir   = "/var/lib/rancher/k3s"
	emuVersionFile   = "/etc/k3semu/version"
	emuFaultFile     = "/etc/k3semu/fault"
	emuClockFile     = "/etc/k3semu/clock"
	nodeClockFile    = "/etc/k3semu/node-clock"
	authorizedKeys   = "/etc/ssh/authorized_keys/" + sshUser
	sshUser          = "fleet"
	sharedDatastore  = "/var/lib/k3semu/shared"
	defaultServerSvc = "k3s"
	defaultAgentSvc  = "k3s-agent"
	initDir          = "/etc/init.d"
	rancherDir       = "/etc/rancher/k3s"
	etcEnvironment   = "/etc/environment"
)

// openRCEnvFile is the env file the OpenRC service script sources.
func openRCEnvFile(svc string) string { return rancherDir + "/" + svc + ".env" }

// openRCLog is where the OpenRC service script sends k3s's output.
func openRCLog(svc string) string { return installsh.OpenRC{Service: svc}.Log() }

// Where the token places an operator chooses by hand live.
const (
	configByEnv  = "/etc/k3s-custom/by-env.yaml"
	configByFlag = "/etc/k3s-custom/by-flag.yaml"
	dotDropIn    = configDropInDir + "/.token.yaml"
)

// envDropIn is a systemd drop-in in dir that sets K3S_TOKEN, as
// `systemctl edit` leaves one.
func envDropIn(dir, token string) file {
	return file{path.Join(dir, "50-token.conf"), 0o600, []byte("[Service]\nEnvironment=\"K3S_TOKEN=" + token + "\"\n")}
}

// file is one file to put on a node; with Mode modeSymlink, a symbolic
// link to Data (see symlink).
type file struct {
	Path string
	Mode int64
	Data []byte
}

// modeSymlink marks a file that is a symbolic link.
const modeSymlink = int64(fs.ModeSymlink)

// symlink is a link at p to target.
func symlink(p, target string) file { return file{p, modeSymlink, []byte(target)} }

// installation is what install.sh would be given for one node: the role,
// the arguments after it (INSTALL_K3S_EXEC plus script arguments) and the
// K3S_* variables it saves into the unit's env file, plus what an operator
// adds by hand (config.yaml, drop-ins, a token file).
type installation struct {
	Unit string            // unit name without .service, or OpenRC service name
	Role Role              // server or agent
	Init string            // InitSystemd or InitOpenRC
	Args []string          // after the role, in ExecStart (command_args) order
	Env  map[string]string // written to <unit>.service.env (<service>.env on OpenRC)
	// EtcEnv is written to /etc/environment as NAME=value lines (none when
	// empty; OpenRC only).
	EtcEnv  map[string]string
	Distro  map[string]string // written to /etc/default/<unit> (none when empty)
	Config  []string          // lines of /etc/rancher/k3s/config.yaml (none when empty)
	DropIn  []string          // lines of config.yaml.d/50-token.yaml (none when empty)
	TokFile string            // content of /etc/rancher/k3s/token (none when empty)
	// Extra are further files an operator put there by hand (drop-ins,
	// config files elsewhere).
	Extra []file
	// Template: the unit file is <prefix>@.service for the instance Unit.
	Template bool
	// ExecType: Type=exec for an agent (installs from before 2022).
	ExecType bool
}

// files renders the installation.
func (in installation) files() []file {
	if in.Init == InitOpenRC {
		return in.openRCFiles()
	}
	unitFile := path.Join(systemdDir, in.Unit+".service")
	unitPath := unitFile
	if in.Template {
		prefix, _, _ := strings.Cut(in.Unit, "@")
		unitPath = path.Join(systemdDir, prefix+"@.service")
	}
	fs := []file{
		{unitPath, 0o644, []byte(unitText(in.Role, in.Unit, in.ExecType, in.Args))},
		// install.sh always creates the env file, mode 0600 (it may hold the
		// token), even when no K3S_ variable was set.
		{unitFile + ".env", 0o600, []byte(installsh.EnvFile(in.Env))},
	}
	if len(in.Distro) > 0 {
		fs = append(fs, file{path.Join("/etc/default", in.Unit), 0o600, []byte(installsh.EnvFile(in.Distro))})
	}
	return append(fs, in.common()...)
}

// openRCFiles renders the installation as install.sh writes it on OpenRC
// (create_openrc_service_file, create_env_file): the service script,
// 0755, and the env file it sources, 0600, always created.
func (in installation) openRCFiles() []file {
	envFile := openRCEnvFile(in.Unit)
	script := installsh.OpenRC{Role: string(in.Role), Service: in.Unit, EnvFile: envFile, Args: in.Args}
	fs := []file{
		{path.Join(initDir, in.Unit), 0o755, []byte(script.Text())},
		{envFile, 0o600, []byte(installsh.EnvFile(in.Env))},
	}
	if len(in.EtcEnv) > 0 {
		fs = append(fs, file{etcEnvironment, 0o644, []byte(etcEnvironmentText(in.EtcEnv))})
	}
	return append(fs, in.common()...)
}

// etcEnvironmentText renders /etc/environment: NAME=value lines, sorted,
// as an operator writes them (pam_env's format, which sh sources too); a
// value with characters sh would take apart is single-quoted.
func etcEnvironmentText(env map[string]string) string {
	names := make([]string, 0, len(env))
	for k := range env {
		names = append(names, k)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, k := range names {
		v := env[k]
		if strings.Trim(v, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789:._-/") != "" {
			v = shQuote(v)
		}
		b.WriteString(k + "=" + v + "\n")
	}
	return b.String()
}

// common renders what is the same on both init systems: config.yaml, its
// drop-in, the token file and the operator's extra files.
func (in installation) common() []file {
	var fs []file
	if len(in.Config) > 0 {
		fs = append(fs, file{configFile, 0o600, []byte(strings.Join(in.Config, "\n") + "\n")})
	}
	if len(in.DropIn) > 0 {
		fs = append(fs, file{tokenDropIn, 0o600, []byte(strings.Join(in.DropIn, "\n") + "\n")})
	}
	if in.TokFile != "" {
		fs = append(fs, file{tokenFilePath, 0o600, []byte(in.TokFile + "\n")})
	}
	return append(fs, in.Extra...)
}

// unitText is the systemd unit install.sh writes for the node's unit:
// Type=notify, or Type=exec for an agent installed before 2022 (execType).
func unitText(role Role, unit string, execType bool, args []string) string {
	u := installsh.Unit{Role: string(role), EnvFile: path.Join(systemdDir, unit+".service.env"), Args: args}
	if role == Agent && execType {
		u.Type = "exec"
	}
	return u.Text()
}

// yamlString quotes a value for config.yaml. A token holds ':' (K10…::server:…),
// so it is always double-quoted, in JSON's escaping, which YAML accepts.
func yamlString(s string) string {
	return strconv.Quote(s)
}

// installFor computes the installation of one node.
//
// Token placement follows the ways operators install k3s (docs/k3s-behaviour.md#token-places):
// K3S_TOKEN in the env file, --token/-t/--token= in ExecStart, token: in
// config.yaml or a drop-in, or --token-file / token-file: naming a 0600 file.
// Every place asked for gets the same token, so a node may define it in
// several places at once, as real nodes do.
func installFor(n *Node, c *Cluster, token string) installation {
	in := installation{
		Unit:     n.Unit,
		Role:     n.Role,
		Init:     n.Init,
		Env:      map[string]string{},
		Template: n.spec.Template,
		ExecType: n.spec.LegacyExecType,
	}
	if n.Role == Server {
		if n == c.Servers[0] {
			if c.embeddedEtcd() {
				in.Args = append(in.Args, "--cluster-init")
			}
		} else {
			in.Args = append(in.Args, "--server", c.url())
		}
	} else {
		// install.sh with K3S_URL set saves it in the env file, and that is
		// how agents are installed by the k3s quick-start.
		in.Env["K3S_URL"] = c.url()
	}
	if n.DataDir != defaultDataDir {
		in.Args = append(in.Args, "--data-dir", n.DataDir)
	}
	if token != "" {
		for _, p := range n.spec.TokenIn {
			switch p {
			case InEnvFile:
				in.Env["K3S_TOKEN"] = token
			case InDistroEnvFile:
				if in.Distro == nil {
					in.Distro = map[string]string{}
				}
				in.Distro["K3S_TOKEN"] = token
			case InExecStart:
				in.Args = append(in.Args, "--token", token)
			case InExecStartEquals:
				in.Args = append(in.Args, "--token="+token)
			case InExecStartShort:
				in.Args = append(in.Args, "-t", token)
			case InConfig:
				in.Config = append(in.Config, "token: "+yamlString(token))
			case InConfigDropIn:
				in.DropIn = append(in.DropIn, "token: "+yamlString(token))
			case InTokenFileArg:
				in.TokFile = token
				in.Args = append(in.Args, "--token-file", tokenFilePath)
			case InTokenFileConfig:
				in.TokFile = token
				in.Config = append(in.Config, "token-file: "+yamlString(tokenFilePath))
			case InRuntimeDropIn:
				in.Extra = append(in.Extra, envDropIn(path.Join("/run/systemd/system", n.Unit+".service.d"), token))
			case InPrefixDropIn:
				prefix, _, _ := strings.Cut(n.Unit, "-")
				in.Extra = append(in.Extra, envDropIn(path.Join(systemdDir, prefix+"-.service.d"), token))
			case InConfigByEnv:
				in.Env["K3S_CONFIG_FILE"] = configByEnv
				in.Extra = append(in.Extra, file{configByEnv, 0o600, []byte("token: " + yamlString(token) + "\n")})
			case InConfigByFlag:
				in.Args = append(in.Args, "--config", configByFlag)
				in.Extra = append(in.Extra, file{configByFlag, 0o600, []byte("token: " + yamlString(token) + "\n")})
			case InConfigDotDropIn:
				in.Extra = append(in.Extra, file{dotDropIn, 0o600, []byte("token: " + yamlString(token) + "\n")})
			case InTokenFileNBSP:
				in.TokFile = "\u00a0" + token
				in.Args = append(in.Args, "--token-file", tokenFilePath)
			case InCommandArgs:
				in.Args = append(in.Args, "--token", token)
			case InEtcEnvironment:
				if in.EtcEnv == nil {
					in.EtcEnv = map[string]string{}
				}
				in.EtcEnv["K3S_TOKEN"] = token
			default:
				panic(fmt.Sprintf("harness: unknown token place %d", p))
			}
		}
	}
	in.Args = append(in.Args, n.spec.ExtraArgs...)
	return in
}
