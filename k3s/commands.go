package k3s

import (
	"fmt"
	"path"
	"strings"
	"time"

	"github.com/fleetcert/fleetcert/remote"
)

// The commands fleetcert runs on nodes, in one place. Every value is quoted.

// RotateCACmd loads staged CA material (stageDir/tls/...) into the cluster
// datastore. -d is always passed: rotate-ca reads its credentials from
// <data-dir>/server/token, not from config.yaml.
func (l Layout) RotateCACmd(stageDir string, force bool) string {
	// The server is named, not left to the default: rotate-ca reads
	// K3S_URL from the environment, and the SSH session may carry one
	// (/etc/environment) that names another server.
	cmd := remote.Quotef(l.bin()+" certificate rotate-ca -s %s -d %s --path=%s", "https://"+l.SupervisorAddr(), l.dataDir(), stageDir)
	if force {
		cmd += " --force"
	}
	return cmd
}

// RotateCAOK is what rotate-ca prints when the datastore took the material.
const RotateCAOK = "certificates saved to datastore"

// EtcdSnapshotCmd takes an on-demand snapshot of embedded etcd.
func (l Layout) EtcdSnapshotCmd(name string) string {
	return remote.Quotef(l.bin()+" etcd-snapshot save -d %s --name %s", l.dataDir(), name)
}

// serviceDeadline bounds an OpenRC stop, start or restart: rc-service
// waits for supervise-daemon to stop k3s, and a hung stop must not hold
// the rollout for ever. Readiness is the gates' to judge, not this.
const serviceDeadline = "120"

// rcService runs rc-service on the node's service, with the deadline.
func (l Layout) rcService(action string) string {
	// rc-service's progress lines go to stderr: callers read stdout.
	return remote.Quotef("timeout "+serviceDeadline+" rc-service %s %s >&2", l.UnitName(), action)
}

// RestartCmd restarts k3s without waiting for it to be ready. On systemd
// it does not block: a Type=notify k3s unit with TimeoutStartSec=0 can
// block `systemctl restart` forever (e.g. while etcd waits for quorum). On
// OpenRC, rc-service returns once supervise-daemon has started k3s again:
// there is no readiness protocol, so readiness is polled with our own
// deadline either way.
func (l Layout) RestartCmd() string {
	if l.OpenRC() {
		return l.rcService("restart")
	}
	return remote.Quotef("systemctl --no-block restart %s", l.UnitName()+".service")
}

// StopCmd and StartCmd are for `certificate rotate`, which needs k3s down.
// On OpenRC, stop succeeds even when k3s ignored SIGTERM and
// supervise-daemon left it running, orphaned: the PID it recorded must be
// gone too.
func (l Layout) StopCmd() string {
	if l.OpenRC() {
		return "(" + remote.Quotef(`p=$(cat %s 2>/dev/null); `, l.OpenRCChildPID()) + l.rcService("stop") +
			` || exit; [ -z "$p" ] || ! [ -d "/proc/$p" ] || { echo "k3s (PID $p) still runs after rc-service stop" >&2; exit 1; })`
	}
	return remote.Quotef("systemctl stop %s", l.UnitName()+".service")
}

func (l Layout) StartCmd() string {
	if l.OpenRC() {
		return l.rcService("start")
	}
	return remote.Quotef("systemctl --no-block start %s", l.UnitName()+".service")
}

// ServiceStateCmd prints the service's state (see ServiceState); it exits
// non-zero when the service does not run.
func (l Layout) ServiceStateCmd() string {
	if l.OpenRC() {
		return remote.Quotef("rc-service %s status", l.UnitName())
	}
	return remote.Quotef("systemctl is-active %s", l.UnitName()+".service")
}

// ServiceState reads ServiceStateCmd's output: systemctl is-active's word,
// or the word after "status: " in rc-service's (" * status: started"; it
// may print other " * " lines).
func (l Layout) ServiceState(out string) string {
	if l.OpenRC() {
		if _, after, ok := strings.Cut(out, "status: "); ok {
			return strings.Fields(after + " ")[0]
		}
		return ""
	}
	return strings.TrimSpace(out)
}

// ServiceRunning reports whether a state means k3s runs: systemd's
// "active", OpenRC's "started".
func (l Layout) ServiceRunning(state string) bool {
	if l.OpenRC() {
		return state == "started"
	}
	return state == "active"
}

// DaemonReloadCmd makes systemd reread edited unit files.
const DaemonReloadCmd = "systemctl daemon-reload"

// ReadyzCmd asks the local apiserver for /readyz with the admin kubeconfig
// k3s writes at every start.
func (l Layout) ReadyzCmd() string { return l.kubectl() + " get --raw=/readyz" }

// NodesCmd lists the cluster's nodes as JSON.
func (l Layout) NodesCmd() string { return l.kubectl() + " get nodes -o json" }

// LogMarkCmd prints where the node's k3s log stands now, for LogSinceCmd:
// nothing on systemd (the journal is read by time), the log file's size
// on OpenRC, where k3s's output goes to a file without timestamps fleetcert
// could compare.
func (l Layout) LogMarkCmd() string {
	if l.OpenRC() {
		return remote.Quotef("wc -c < %s 2>/dev/null || echo 0", l.LogFile())
	}
	return "echo 0"
}

// LogSinceCmd prints k3s's log since t (node clock) or, on OpenRC, from
// byte mark of its log file on (the whole file when it has been truncated
// below mark since: install.sh's logrotate uses copytruncate).
func (l Layout) LogSinceCmd(t time.Time, mark int64) string {
	if l.OpenRC() {
		return remote.Quotef(`f=%s; m=%s; [ -f "$f" ] || exit 0; [ "$(wc -c < "$f")" -ge "$m" ] || m=0; tail -c +$((m+1)) -- "$f"`,
			l.LogFile(), fmt.Sprint(mark))
	}
	return remote.Quotef("journalctl -q --no-pager -o cat -u %s --since %s",
		l.UnitName()+".service", "@"+fmt.Sprint(t.Unix()))
}

// LogHint says where the node's k3s log is, for error messages.
func (l Layout) LogHint() string {
	if l.OpenRC() {
		return l.LogFile()
	}
	return "journalctl -u " + l.UnitName()
}

// TokenMismatchLog is what an agent logs, retrying forever, when its token
// pins another CA than the server serves.
const TokenMismatchLog = "token CA hash does not match"

// CertificateRotateCmd renews leaf certificates (k3s must be stopped).
func (l Layout) CertificateRotateCmd(services []string) string {
	cmd := remote.Quotef(l.bin()+" certificate rotate -d %s", l.dataDir())
	if len(services) > 0 {
		names := make([]string, len(services))
		for i, s := range services {
			names[i] = l.rotateServiceName(s)
		}
		cmd += " --service " + remote.Quote(strings.Join(names, ","))
	}
	return cmd
}

// StageDir is where a run stages new CA material on the primary: inside
// fleetcert's own 0700 directory, never in the live server/tls.
func (l Layout) StageDir(runID string) string {
	return path.Join(l.FleetcertDir(), "stage-"+runID)
}

// BackupDir is where a run keeps copies of the files it changes on a node.
func (l Layout) BackupDir(runID string) string {
	return path.Join(l.nodeStateDir(), "backup-"+runID)
}

// nodeStateDir is fleetcert's directory on any node: the server one on
// servers, a sibling under agent/ on agents, which have no server dir.
func (l Layout) nodeStateDir() string {
	if l.Role == RoleAgent {
		return path.Join(l.AgentDir(), "fleetcert")
	}
	return l.FleetcertDir()
}

// CertificateCheckCmd lists the node's certificates as k3s sees them, as
// JSON (`certificate check --output json`: only where CheckHasOutputFlag).
func (l Layout) CertificateCheckCmd() string {
	return remote.Quotef(l.bin()+" certificate check -d %s --output json", l.dataDir())
}

// SpaceCmd prints two numbers, in KiB: the space free where fleetcert
// keeps its files on a server (its own directory, or the server directory
// before the first run made it) and the size of server/tls, which a
// backup copies.
func (l Layout) SpaceCmd() string {
	return remote.Quotef(`d=%s; [ -d "$d" ] || d=%s; df -Pk -- "$d" | awk 'NR==2 {print $4}'; du -sk -- %s | cut -f1`,
		l.FleetcertDir(), l.ServerDir(), l.ServerTLSDir())
}

// RegenerateServingCertCmd asks k3s for a new :6443 serving certificate at
// its next start, as `k3s certificate rotate` does: dynamiclistener never
// compares the certificate it keeps with the CA, so after a CA rotation a
// server would go on presenting a certificate of the old CA, which agents
// and new kubeconfigs reject once the bundle no longer holds its root
// (k3s #13006; the rotate-ca handler writes the trigger itself only on
// newer releases, and only on the server that handled it).
// docs/k3s-behaviour.md#complete-cross-signed
func (l Layout) RegenerateServingCertCmd() string {
	return remote.Quotef("touch -- %s", path.Join(l.ServerTLSDir(), "dynamic-cert-regenerate"))
}
