package harness

import (
	"context"
	"fmt"
	"strconv"
	"strings"
)

// OpenRC nodes (NodeSpec.Init "openrc"): what differs from systemd nodes
// in how the harness finds and drives k3s there. The facts behind it are
// docs/k3s-behaviour.md#openrc and e2e/README.md ("OpenRC nodes").

// BusyboxApplets are the commands a Busybox node runs as busybox applets, as
// Alpine does: links to /bin/busybox. The image is merged-/usr (/bin is a
// link to usr/bin), so /bin/sh and /bin/cp are /usr/bin/sh and /usr/bin/cp.
var BusyboxApplets = []string{"/usr/bin/sh", "/usr/bin/stat", "/usr/bin/base64", "/usr/bin/cp"}

// busyboxLinks are the files that make a node's applets busybox's.
func busyboxLinks() []file {
	var fs []file
	for _, p := range BusyboxApplets {
		fs = append(fs, symlink(p, "/bin/busybox"))
	}
	return fs
}

// openRCChildPID is where OpenRC records the PID of the process that
// supervise-daemon runs for the service (the pidfile holds the
// supervisor's own PID). It is removed when the service stops, and keeps
// a dead child's PID until supervise-daemon respawns it.
func openRCChildPID(svc string) string { return "/run/openrc/options/" + svc + "/child_pid" }

// ServicePID is the PID of the node's k3s process as its init system
// records it: systemd's MainPID, or on OpenRC the child_pid OpenRC keeps
// for supervise-daemon (not the supervisor's pidfile). 0 when k3s is not
// running (a dead child that supervise-daemon has not respawned yet still
// reads as its old PID on OpenRC; ProcessAlive tells).
func (f *Fleet) ServicePID(ctx context.Context, node string) (int, error) {
	n, err := f.node(node)
	if err != nil {
		return 0, err
	}
	return f.servicePID(ctx, n)
}

func (f *Fleet) servicePID(ctx context.Context, n *Node) (int, error) {
	cmd := "systemctl show -p MainPID --value " + n.Unit
	if n.Init == InitOpenRC {
		cmd = "cat " + openRCChildPID(n.Unit) + " 2>/dev/null || echo 0"
	}
	r, err := execIn(ctx, f.cli, n.id, nil, "sh", "-c", cmd)
	if err == nil {
		err = r.Err()
	}
	if err != nil {
		return 0, fmt.Errorf("%s: PID of %s: %w", n.Name, n.Unit, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(r.Stdout))
	if err != nil {
		return 0, fmt.Errorf("%s: PID of %s: %q", n.Name, n.Unit, r.Stdout)
	}
	return pid, nil
}

// LogFile is where the node's k3s log is on an OpenRC node
// (/var/log/<service>.log, command_args' redirection); "" on systemd
// nodes, whose log is the journal.
func (n *Node) LogFile() string {
	if n.Init != InitOpenRC {
		return ""
	}
	return openRCLog(n.Unit)
}

// ServiceFile is the file that defines the node's k3s service: the unit
// file, or on OpenRC the service script in /etc/init.d.
func (n *Node) ServiceFile() string {
	switch {
	case n.Init == InitOpenRC:
		return initDir + "/" + n.Unit
	case n.spec.Template:
		prefix, _, _ := strings.Cut(n.Unit, "@")
		return systemdDir + "/" + prefix + "@.service"
	}
	return systemdDir + "/" + n.Unit + ".service"
}

// Busybox tells whether the node's sh, stat, base64 and cp are busybox's.
func (n *Node) Busybox() bool { return n.spec.Busybox }
