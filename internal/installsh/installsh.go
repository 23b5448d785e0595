// Package installsh renders the files k3s's install.sh writes on a systemd
// node (docs/k3s-behaviour.md#install-sh), byte for byte where fleetcert parses or
// rewrites them. The e2e harness installs them on its containers, the fake
// fleet (orchestrator/fleettest) serves them, and k3s's tests parse them: one
// text, so that all three agree with install.sh and with each other.
package installsh

import (
	"sort"
	"strings"
)

// binPath is where install.sh puts the k3s binary.
const binPath = "/usr/local/bin/k3s"

// Unit is what a unit file install.sh writes depends on.
type Unit struct {
	Role string // "server" or "agent"
	// Type is the service type: "" for notify, what current install.sh
	// writes; "exec" for agents installed before 2022.
	Type string
	// EnvFile is the .env file beside the unit
	// (/etc/systemd/system/<unit>.service.env).
	EnvFile string
	// Args are the arguments after the role (INSTALL_K3S_EXEC and the
	// script's own), in ExecStart order, unquoted.
	Args []string
}

// Text is the unit file as install.sh writes it
// (create_systemd_service_file). The details fleetcert depends on:
//
//   - Type=notify: k3s sends READY=1 once it is up, so a blocking
//     `systemctl restart k3s` waits for it, possibly forever, which is why
//     fleetcert uses --no-block. With Type=exec "active" only means the
//     binary was started.
//   - EnvironmentFile lines in this order, each optional ("-"): /etc/default,
//     /etc/sysconfig, then the .env file beside the unit; the last one to set
//     a variable wins. %N is the unit name without ".service".
//   - KillMode=process: stopping k3s leaves containers (pods) running.
//   - Restart=always, RestartSec=5s: a k3s that exits fatally (a token with the
//     wrong CA hash on a server, a file newer than the datastore) is restarted
//     every 5 s, and TimeoutStartSec=0 lets a start wait for etcd for ever.
//   - ExecStart continuation lines (see execStart).
//   - The ExecStartPre lines: the nm-cloud-setup guard (a quoted shell line a
//     unit parser must survive), and modprobe lines "-" prefixed, ignored
//     when modprobe is missing.
func (u Unit) Text() string {
	typ := u.Type
	if typ == "" {
		typ = "notify"
	}
	return `[Unit]
Description=Lightweight Kubernetes
Documentation=https://k3s.io
Wants=network-online.target
After=network-online.target

[Install]
WantedBy=multi-user.target

[Service]
Type=` + typ + `
EnvironmentFile=-/etc/default/%N
EnvironmentFile=-/etc/sysconfig/%N
EnvironmentFile=-` + u.EnvFile + `
KillMode=process
Delegate=yes
User=root
# Having non-zero Limit*s causes performance problems due to accounting overhead
# in the kernel. We recommend using cgroups to do container-local accounting.
LimitNOFILE=1048576
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity
TimeoutStartSec=0
Restart=always
RestartSec=5s
ExecStartPre=/bin/sh -xc '! /usr/bin/systemctl is-enabled --quiet nm-cloud-setup.service 2>/dev/null'
ExecStartPre=-/sbin/modprobe br_netfilter
ExecStartPre=-/sbin/modprobe overlay
` + execStart(u.Role, u.Args)
}

// execStart renders the ExecStart of install.sh: the binary on the first
// line, the role on the second indented by four spaces, then every argument
// single-quoted on its own TAB-indented line; every line but the last ends in
// " \", and the last argument line is followed by an empty line, which ends
// the continuation for systemd. install.sh's quote() writes a single quote
// inside a value as:
//
//	'it'\''s'
func execStart(role string, args []string) string {
	var b strings.Builder
	b.WriteString("ExecStart=" + binPath + " \\\n")
	b.WriteString("    " + role + " \\\n")
	for _, a := range args {
		b.WriteString("\t'" + strings.ReplaceAll(a, "'", `'\''`) + "' \\\n")
	}
	b.WriteString("\n")
	return b.String()
}

// EnvFile renders variables as install.sh saves them in the unit's .env
// file: it runs `sh -c export` (dash on Debian, busybox on Alpine) and keeps
// the K3S_ lines without the "export " prefix, so each is NAME='value',
// sorted by name, a single quote written '"'"' as dash's export -p does.
// systemd's EnvironmentFile parser removes the quotes.
func EnvFile(env map[string]string) string {
	names := make([]string, 0, len(env))
	for k := range env {
		names = append(names, k)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, k := range names {
		b.WriteString(k + "='" + strings.ReplaceAll(env[k], "'", `'"'"'`) + "'\n")
	}
	return b.String()
}

// OpenRC is what the service script install.sh writes on an OpenRC node
// depends on (create_openrc_service_file; docs/k3s-behaviour.md#openrc).
type OpenRC struct {
	Role string // "server" or "agent"
	// Service is the script's name: k3s, k3s-agent, or k3s-<name> for
	// INSTALL_K3S_NAME installs. It names the log file too.
	Service string
	// EnvFile is the file the script sources after /etc/environment
	// (/etc/rancher/k3s/<service>.env).
	EnvFile string
	// Args are the arguments after the role, unquoted.
	Args []string
}

// Log is the file the script sends k3s's output to, the only place an
// OpenRC node's k3s log exists.
func (o OpenRC) Log() string { return "/var/log/" + o.Service + ".log" }

// Text is /etc/init.d/<service> as install.sh writes it. The details
// fleetcert depends on:
//
//   - command_args is a double-quoted assignment: the role, then every
//     argument single-quoted (a ' inside written '\”) on its own
//     TAB-indented continuation line, a " written \" (escape_dq); nothing
//     else is escaped, so a $ in a value is expanded when OpenRC sources
//     the script. It ends with the log redirection, which is real: OpenRC
//     evals command_args (supervise-daemon.sh).
//   - supervise-daemon supervises k3s; its pidfile holds its own PID, not
//     k3s's, and it respawns k3s after 5 s for ever.
//   - /etc/environment, then the env file, are sourced with allexport: both
//     reach k3s as environment variables, the env file winning.
func (o OpenRC) Text() string {
	var args strings.Builder
	args.WriteString(o.Role + " \\\n")
	for _, a := range o.Args {
		q := "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		args.WriteString("\t" + strings.ReplaceAll(q, `"`, `\"`) + " \\\n")
	}
	return `#!/sbin/openrc-run

depend() {
    after network-online
    want cgroups
}

start_pre() {
    rm -f /tmp/k3s.*
}

supervisor=supervise-daemon
name=` + o.Service + `
command="` + binPath + `"
command_args="` + args.String() + `    >>` + o.Log() + ` 2>&1"

output_log=` + o.Log() + `
error_log=` + o.Log() + `

pidfile="/var/run/` + o.Service + `.pid"
respawn_delay=5
respawn_max=0

set -o allexport
if [ -f /etc/environment ]; then . /etc/environment; fi
if [ -f ` + o.EnvFile + ` ]; then . ` + o.EnvFile + `; fi
set +o allexport
`
}
