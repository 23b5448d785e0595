// Package k3s knows what a k3s node is: where its files live, what its units
// are called, which versions can do what, where its join token is defined and
// how to rewrite it without disturbing anything else. Paths and commands come
// from here only, so that RKE2 (same commands, other names) can follow.
package k3s

import (
	"path"
	"strings"
)

// Role is what a node is in its cluster.
type Role string

const (
	RoleServer Role = "server"
	RoleAgent  Role = "agent"
)

// Init systems fleetcert drives k3s through, as the facts tell which one
// booted the node (docs/k3s-behaviour.md#openrc).
const (
	InitSystemd = "systemd"
	InitOpenRC  = "openrc"
)

// Layout is where one node keeps its k3s (or RKE2) files. Zero fields take
// the product's defaults (product.go), so Layout{} describes a stock
// install.sh k3s server.
type Layout struct {
	// Product is ProductK3s (when empty) or ProductRKE2.
	Product    string
	Role       Role
	DataDir    string
	ConfigFile string
	SystemdDir string
	Unit       string // service name: the systemd unit without .service, or the OpenRC script
	// Init is the init system that runs the node (InitSystemd when
	// empty); the facts set it.
	Init string
	// Binary is the program the service runs, as its unit or service
	// script names it; the facts set it. Commands run it by that path.
	Binary string
}

// OpenRC reports whether OpenRC runs the node's k3s.
func (l Layout) OpenRC() bool { return l.Init == InitOpenRC }

func (l Layout) dataDir() string    { return or(l.DataDir, l.product().dataDir) }
func (l Layout) systemdDir() string { return or(l.SystemdDir, l.product().unitDir) }

// UnitName is the systemd unit without the .service suffix.
func (l Layout) UnitName() string {
	if l.Unit != "" {
		return l.Unit
	}
	if l.Role == RoleAgent {
		return l.product().agentUnit
	}
	return l.product().serverUnit
}

// Config is the k3s config file; configDropInDir holds its drop-ins
// (config.yaml.d/*.yaml|*.yml, read in name order after the main file).
func (l Layout) Config() string          { return or(l.ConfigFile, l.product().configFile) }
func (l Layout) configDropInDir() string { return l.Config() + ".d" }

// UnitFile is the unit install.sh writes; EnvFile the environment file it
// loads last (so it wins over /etc/default and /etc/sysconfig).
func (l Layout) UnitFile() string { return path.Join(l.systemdDir(), l.UnitName()+".service") }
func (l Layout) EnvFile() string {
	return path.Join(l.systemdDir(), strings.Replace(l.product().envFile, "%s", l.UnitName(), 1))
}

// UnitDropInDir holds systemd drop-ins (*.conf) for the unit.
func (l Layout) UnitDropInDir() string { return l.UnitFile() + ".d" }

// DistroEnvFiles are the EnvironmentFile=-/etc/default/%N and
// -/etc/sysconfig/%N lines of install.sh's unit, in load order.
func (l Layout) DistroEnvFiles() []string {
	return []string{path.Join("/etc/default", l.UnitName()), path.Join("/etc/sysconfig", l.UnitName())}
}

// OpenRC places of the service, as install.sh makes them on an OpenRC node
// (create_openrc_service_file): the service script, the env file it
// sources after /etc/environment, the log file its command_args redirect
// k3s's output to, and the conf.d file OpenRC sources before the script.
func (l Layout) ServiceScript() string { return path.Join("/etc/init.d", l.UnitName()) }
func (l Layout) OpenRCEnvFile() string {
	return path.Join("/etc/rancher", l.product().binary, l.UnitName()+".env")
}
func (l Layout) OpenRCConfD() string    { return path.Join("/etc/conf.d", l.UnitName()) }
func (l Layout) LogFile() string        { return path.Join("/var/log", l.UnitName()+".log") }
func (l Layout) EtcEnvironment() string { return "/etc/environment" }
func (l Layout) OpenRCChildPID() string {
	return path.Join("/run/openrc/options", l.UnitName(), "child_pid")
}

// ServiceLabel names the service in messages: "k3s.service" or "OpenRC
// service k3s".
func (l Layout) ServiceLabel() string {
	if l.OpenRC() {
		return "OpenRC service " + l.UnitName()
	}
	return l.UnitName() + ".service"
}

// Server side of the data dir.
func (l Layout) ServerDir() string      { return path.Join(l.dataDir(), "server") }
func (l Layout) ServerTLSDir() string   { return path.Join(l.ServerDir(), "tls") }
func (l Layout) ServerToken() string    { return path.Join(l.ServerDir(), "token") }
func (l Layout) AgentTokenFile() string { return path.Join(l.ServerDir(), "agent-token") }
func (l Layout) ServerCA() string       { return path.Join(l.ServerTLSDir(), "server-ca.crt") }
func (l Layout) EtcdDBDir() string      { return path.Join(l.ServerDir(), "db", "etcd") }

// Agent side of the data dir; servers have one too.
func (l Layout) AgentDir() string      { return path.Join(l.dataDir(), "agent") }
func (l Layout) AgentServerCA() string { return path.Join(l.AgentDir(), "server-ca.crt") }

// FleetcertDir is where fleetcert keeps its lock, run state and backups on
// a server: inside the data dir, so it follows the cluster's own files.
func (l Layout) FleetcertDir() string { return path.Join(l.ServerDir(), "fleetcert") }

// HeldCA is the CA bundle whose hashCA a node's token must carry: the
// server's own bundle on servers, the downloaded copy on agents.
func (l Layout) HeldCA() string {
	if l.Role == RoleAgent {
		return l.AgentServerCA()
	}
	return l.ServerCA()
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
