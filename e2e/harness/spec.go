package harness

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"
)

// Spec declares a fleet: its clusters, their nodes, and how each node was
// installed. The zero value of every optional field gives a stock install.sh
// node.
type Spec struct {
	// Name prefixes container, network and volume names and labels them, so
	// leftovers can be found (RemoveLeftovers). Default: "e2e-<random>".
	Name string
	// Clusters, brought up in parallel.
	Clusters []ClusterSpec
	// Dir receives the inventory, known_hosts, the SSH key and custom CA
	// material. Default: a new temporary directory, removed by Close.
	Dir string
	// Image is the node image of systemd nodes. Default: build.Ensure
	// (built when missing).
	Image string
	// OpenRCImage is the node image of OpenRC nodes (NodeSpec.Init).
	// Default: build.Ensure with Init openrc, only when a node needs it.
	OpenRCImage string
	// ReadyTimeout bounds the wait for each readiness step. Default 2 min.
	ReadyTimeout time.Duration
}

// ClusterSpec is one k3s cluster.
type ClusterSpec struct {
	Name    string     // DNS label; also the inventory cluster name
	Servers []NodeSpec // at least one; the first one starts the cluster
	Agents  []NodeSpec
	// Token is what the first server is installed with; a random short
	// token (a bare password) when empty. It may also be a secure token of a
	// custom CA, whose hash is known before the first start.
	Token string
	// ClusterInit gives a lone server embedded etcd (--cluster-init); a
	// cluster of several servers always has it, since servers can only join
	// an etcd cluster.
	ClusterInit bool
	// CustomCA installs a custom CA topology (root RSA → intermediate →
	// five EC cluster CAs) in the first server's server/tls before its first
	// start, as k3s's generate-custom-ca-certs.sh does. The root and
	// intermediate stay outside the nodes, in Dir (see Cluster.CA).
	CustomCA bool
}

// NodeSpec is one node: a container whose hostname is the node name.
type NodeSpec struct {
	// Name is the hostname and k3s node name; unique in the fleet.
	// Default: "<cluster>-s<N>" or "<cluster>-a<N>".
	Name string
	// TokenIn lists where the join token is installed (every place gets the
	// same token). Default: InEnvFile.
	TokenIn []TokenPlace
	// Token chooses which token is installed. Default: DefaultToken.
	Token TokenKind
	// TokenValue, when set, is installed verbatim instead (Token ignored).
	TokenValue string
	// DataDir is a custom --data-dir; default /var/lib/rancher/k3s.
	DataDir string
	// Unit is the systemd unit name without .service, or the OpenRC
	// service name, as INSTALL_K3S_NAME makes it (k3s-<name>); default k3s
	// or k3s-agent.
	Unit string
	// Init is the node's init system: "" or InitSystemd, systemd as PID 1
	// (the default), or InitOpenRC: OpenRC as PID 1 (openrc-init), k3s
	// installed as install.sh does on OpenRC (/etc/init.d/<service> under
	// supervise-daemon, /etc/rancher/k3s/<service>.env, the log in
	// /var/log/<service>.log). A cluster may mix both.
	Init string
	// Busybox (OpenRC nodes only): sh, stat, base64 and cp are busybox
	// applets, as on Alpine (/bin/sh, /usr/bin/stat, /usr/bin/base64 and
	// /bin/cp are links to /bin/busybox from the first boot on).
	Busybox bool
	// Version is what the emulator reports (/etc/k3semu/version); empty
	// leaves the emulator's default.
	Version string
	// Fault is written to /etc/k3semu/fault: fail-start, hang-start or
	// crash-after=SECONDS.
	Fault string
	// K3sClock is written to /etc/k3semu/clock before the first start: k3s
	// (the emulator) runs this far from the real time, e.g. -366 days to
	// bring a cluster up as it was a year and a day ago. SetK3sClock(node,
	// 0) later is the time passing. The node's own clock is untouched.
	K3sClock time.Duration
	// ExpectUnready: Start does not wait for this node to become Ready
	// (a node that must fail to join, or a fault).
	ExpectUnready bool
	// ExtraArgs are appended to ExecStart (command_args on OpenRC).
	ExtraArgs []string
	// Template installs the unit as a template, <prefix>@.service, and runs
	// the instance Unit names (Unit must be "<prefix>@<instance>").
	// systemd only.
	Template bool
	// LegacyExecType writes an agent unit as install.sh did before 2022
	// (Type=exec); current install.sh writes Type=notify for agents too.
	// systemd only.
	LegacyExecType bool

	// Product is "" for k3s or ProductRKE2; every node of a cluster has
	// the same (rke2.go). RKE2 nodes default to their token in config.yaml.
	Product string
}

// The init systems of NodeSpec.Init.
const (
	InitSystemd = "systemd"
	InitOpenRC  = "openrc"
)

// TokenPlace is where an install put a node's join token. Some places
// exist only on systemd nodes, some only on OpenRC nodes (openRCPlaces);
// the others mean the same file on both.
type TokenPlace int

const (
	// InEnvFile: K3S_TOKEN='…' in the env file install.sh writes, what
	// `curl … | K3S_TOKEN=… sh -` leaves: /etc/systemd/system/<unit>.service.env,
	// or /etc/rancher/k3s/<service>.env on OpenRC.
	InEnvFile TokenPlace = iota
	// InDistroEnvFile: K3S_TOKEN='…' in /etc/default/<unit> (the first
	// EnvironmentFile of the unit).
	InDistroEnvFile
	// InExecStart: '--token' '…' as two ExecStart lines.
	InExecStart
	// InExecStartEquals: '--token=…' on one ExecStart line.
	InExecStartEquals
	// InExecStartShort: '-t' '…'.
	InExecStartShort
	// InConfig: token: in /etc/rancher/k3s/config.yaml.
	InConfig
	// InConfigDropIn: token: in /etc/rancher/k3s/config.yaml.d/50-token.yaml.
	InConfigDropIn
	// InTokenFileArg: the token in /etc/rancher/k3s/token (0600), named by
	// '--token-file' in ExecStart.
	InTokenFileArg
	// InTokenFileConfig: the same file named by token-file: in config.yaml.
	InTokenFileConfig
	// InRuntimeDropIn: Environment=K3S_TOKEN=… in a runtime drop-in,
	// /run/systemd/system/<unit>.service.d/50-token.conf, where
	// `systemctl edit --runtime` writes.
	InRuntimeDropIn
	// InPrefixDropIn: Environment=K3S_TOKEN=… in the prefix drop-in
	// directory /etc/systemd/system/k3s-.service.d/, which systemd applies
	// to every unit named k3s-* (not to k3s.service itself).
	InPrefixDropIn
	// InConfigByEnv: token: in /etc/k3s-custom/by-env.yaml, which
	// K3S_CONFIG_FILE in the unit's env file names.
	InConfigByEnv
	// InConfigByFlag: token: in /etc/k3s-custom/by-flag.yaml, which
	// '--config' in ExecStart names.
	InConfigByFlag
	// InConfigDotDropIn: token: in the dotfile
	// /etc/rancher/k3s/config.yaml.d/.token.yaml (k3s reads dotfiles).
	InConfigDotDropIn
	// InTokenFileNBSP: the token file named by '--token-file' starts with a
	// no-break space (U+00A0), which k3s's strings.TrimSpace removes.
	InTokenFileNBSP
	// InCommandArgs (OpenRC): '--token' '…' as two continuation lines of
	// command_args in /etc/init.d/<service>, as install.sh writes
	// `sh -s - server --token …`.
	InCommandArgs
	// InEtcEnvironment (OpenRC): K3S_TOKEN=… in /etc/environment, which the
	// service script install.sh writes sources (before the env file).
	InEtcEnvironment
)

// openRCPlaces says, for each place, whether it exists on OpenRC nodes
// (true), only there (InCommandArgs, InEtcEnvironment: refused on
// systemd), or only on systemd nodes (absent: refused on OpenRC). The
// places that name a systemd unit or its drop-ins make no sense where
// there is no systemd; ExecStart's token arguments are InCommandArgs there.
var openRCPlaces = map[TokenPlace]bool{
	InEnvFile: true, InConfig: true, InConfigDropIn: true, InTokenFileArg: true, InTokenFileConfig: true,
	InConfigByEnv: true, InConfigByFlag: true, InConfigDotDropIn: true, InTokenFileNBSP: true,
	InCommandArgs: true, InEtcEnvironment: true,
}

// openRCOnly are the places that exist on OpenRC nodes only.
var openRCOnly = map[TokenPlace]bool{InCommandArgs: true, InEtcEnvironment: true}

var placeNames = map[TokenPlace]string{
	InEnvFile: "env-file", InDistroEnvFile: "etc-default", InExecStart: "execstart",
	InExecStartEquals: "execstart-equals", InExecStartShort: "execstart-short",
	InConfig: "config", InConfigDropIn: "config-dropin", InTokenFileArg: "token-file-arg",
	InTokenFileConfig: "token-file-config", InRuntimeDropIn: "runtime-dropin", InPrefixDropIn: "prefix-dropin",
	InConfigByEnv: "config-by-env", InConfigByFlag: "config-by-flag", InConfigDotDropIn: "config-dot-dropin",
	InTokenFileNBSP: "token-file-nbsp", InCommandArgs: "command-args", InEtcEnvironment: "etc-environment",
}

func (p TokenPlace) String() string {
	if s, ok := placeNames[p]; ok {
		return s
	}
	return fmt.Sprintf("TokenPlace(%d)", int(p))
}

// TokenKind is which token a node is installed with.
type TokenKind int

const (
	// DefaultToken: the cluster token (short unless ClusterSpec.Token is
	// secure) on the first server, the secure token on every other node.
	DefaultToken TokenKind = iota
	// SecureToken: K10<hash of the server CA>::server:<password>, read from
	// the first server's server/token. On the first server itself the token
	// is only known after its first start: it is installed with the cluster
	// token, then reinstalled with the secure one and restarted.
	SecureToken
	// ShortToken: the bare password, no CA pin.
	ShortToken
	// WrongHashToken: a secure token whose hash pins another CA; an agent
	// with it must never join (docs/k3s-behaviour.md#tokens).
	WrongHashToken
	// NoToken: no token anywhere.
	NoToken
)

// Role is what a node is in its cluster.
type Role string

// The two roles.
const (
	Server Role = "server"
	Agent  Role = "agent"
)

var dnsLabel = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,40}[a-z0-9])?$`)

// validate checks the spec and fills in defaults.
func (s *Spec) validate() error {
	if s.Name == "" {
		s.Name = "e2e-" + randomHex(3)
	}
	if !dnsLabel.MatchString(s.Name) {
		return fmt.Errorf("fleet name %q: want lower-case letters, digits and dashes", s.Name)
	}
	if s.ReadyTimeout == 0 {
		s.ReadyTimeout = 2 * time.Minute
	}
	if len(s.Clusters) == 0 {
		return errors.New("spec has no cluster")
	}
	names := map[string]bool{}
	for i := range s.Clusters {
		c := &s.Clusters[i]
		if !dnsLabel.MatchString(c.Name) {
			return fmt.Errorf("cluster %d: name %q: want lower-case letters, digits and dashes", i, c.Name)
		}
		if len(c.Servers) == 0 {
			return fmt.Errorf("cluster %s: no server", c.Name)
		}
		fill := func(list []NodeSpec, letter string) error {
			for j := range list {
				n := &list[j]
				if n.Name == "" {
					n.Name = fmt.Sprintf("%s-%s%d", c.Name, letter, j+1)
				}
				if !dnsLabel.MatchString(n.Name) {
					return fmt.Errorf("cluster %s: node name %q: want lower-case letters, digits and dashes", c.Name, n.Name)
				}
				if names[n.Name] {
					return fmt.Errorf("node name %q used twice", n.Name)
				}
				names[n.Name] = true
				if len(n.TokenIn) == 0 && !isRKE2(n.Product) {
					n.TokenIn = []TokenPlace{InEnvFile}
				}
				for _, p := range n.TokenIn {
					if _, ok := placeNames[p]; !ok {
						return fmt.Errorf("node %s: unknown token place %d", n.Name, p)
					}
				}
				if err := n.validateInit(); err != nil {
					return fmt.Errorf("node %s: %w", n.Name, err)
				}
				if n.DataDir == "" {
					n.DataDir = defaultDataDirOf(n.Product)
				}
			}
			return nil
		}
		if err := fill(c.Servers, "s"); err != nil {
			return err
		}
		if err := fill(c.Agents, "a"); err != nil {
			return err
		}
		if err := validateProducts(c); err != nil {
			return err
		}
		if c.Token == "" {
			c.Token = randomHex(16)
		}
	}
	return nil
}

// validateInit checks what the node's init system allows and normalizes
// Init ("" is systemd).
func (n *NodeSpec) validateInit() error {
	switch n.Init {
	case "", InitSystemd:
		n.Init = InitSystemd
		for _, p := range n.TokenIn {
			if openRCOnly[p] {
				return fmt.Errorf("token place %s exists only on OpenRC nodes", p)
			}
		}
		if n.Busybox {
			return errors.New("Busybox needs an OpenRC node (the systemd image has no busybox)")
		}
	case InitOpenRC:
		if isRKE2(n.Product) {
			return errors.New("RKE2 installs systemd units only: no RKE2 on OpenRC nodes")
		}
		for _, p := range n.TokenIn {
			if !openRCPlaces[p] {
				return fmt.Errorf("token place %s makes no sense on an OpenRC node (no systemd unit there)", p)
			}
		}
		switch {
		case n.Template:
			return errors.New("Template: OpenRC has no unit templates")
		case n.LegacyExecType:
			return errors.New("LegacyExecType: OpenRC has no unit Type")
		case strings.ContainsAny(n.Unit, "@/ "):
			return fmt.Errorf("service name %q: not a script name for /etc/init.d", n.Unit)
		}
	default:
		return fmt.Errorf("unknown init system %q (want %q or %q)", n.Init, InitSystemd, InitOpenRC)
	}
	return nil
}
