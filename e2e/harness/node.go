package harness

import (
	"context"
	"embed"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	mnetwork "github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"
)

// Helpers for tests. Node arguments are node names (= hostnames). Commands
// run as root through `docker exec`, never through SSH: tests judge what
// fleetcert did from outside its own transport.

// Node returns the node with that name, or nil.
func (f *Fleet) Node(name string) *Node { return f.nodes[name] }

// Cluster returns the cluster with that name, or nil.
func (f *Fleet) Cluster(name string) *Cluster {
	for _, c := range f.Clusters {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// Nodes returns every node of the fleet, cluster by cluster.
func (f *Fleet) Nodes() []*Node {
	var out []*Node
	for _, c := range f.Clusters {
		out = append(out, c.Nodes()...)
	}
	return out
}

func (f *Fleet) node(name string) (*Node, error) {
	n := f.nodes[name]
	if n == nil {
		return nil, fmt.Errorf("harness: no node %q in fleet %s", name, f.Name)
	}
	return n, nil
}

// Exec runs a shell command (sh -c) as root on the node. A non-zero exit is
// not an error; use ExecResult.Err for that.
func (f *Fleet) Exec(ctx context.Context, node, cmd string) (ExecResult, error) {
	n, err := f.node(node)
	if err != nil {
		return ExecResult{}, err
	}
	return execIn(ctx, f.cli, n.id, nil, "sh", "-c", cmd)
}

// ExecStdin is Exec with data on the command's standard input.
func (f *Fleet) ExecStdin(ctx context.Context, node, cmd string, stdin []byte) (ExecResult, error) {
	n, err := f.node(node)
	if err != nil {
		return ExecResult{}, err
	}
	if stdin == nil {
		stdin = []byte{}
	}
	return execIn(ctx, f.cli, n.id, stdin, "sh", "-c", cmd)
}

// ReadFile returns a file's content (following a symlink once). It works on
// a stopped node too.
func (f *Fleet) ReadFile(ctx context.Context, node, path string) ([]byte, error) {
	n, err := f.node(node)
	if err != nil {
		return nil, err
	}
	data, err := readFile(ctx, f.cli, n.id, path)
	if err != nil {
		return nil, fmt.Errorf("%s:%s: %w", node, path, err)
	}
	return data, nil
}

// WriteFile writes a file owned by root with the given mode, creating
// missing parent directories.
func (f *Fleet) WriteFile(ctx context.Context, node, path string, data []byte, mode os.FileMode) error {
	n, err := f.node(node)
	if err != nil {
		return err
	}
	return putFiles(ctx, f.cli, n.id, []file{{Path: path, Mode: int64(mode.Perm()), Data: data}})
}

// StopNode stops the node's container (systemd shuts down on SIGRTMIN+3;
// openrc-init runs the shutdown runlevel on SIGTERM, stopping k3s through
// supervise-daemon, which takes about 3.5 s).
func (f *Fleet) StopNode(ctx context.Context, node string) error {
	n, err := f.node(node)
	if err != nil {
		return err
	}
	timeout := 10 * time.Second
	return n.container.Stop(ctx, &timeout)
}

// StartNode starts a stopped node's container and waits until systemd (or
// OpenRC) has booted and sshd runs; k3s starts on its own (the unit is
// enabled, the OpenRC service is in the default runlevel), use WaitReady to
// wait for it. The SSH port and host keys stay the same.
func (f *Fleet) StartNode(ctx context.Context, node string) error {
	n, err := f.node(node)
	if err != nil {
		return err
	}
	if err := n.container.Start(ctx); err != nil {
		return err
	}
	return f.waitBooted(ctx, n)
}

// RestartNode stops and starts the node's container (a reboot).
func (f *Fleet) RestartNode(ctx context.Context, node string) error {
	if err := f.StopNode(ctx, node); err != nil {
		return err
	}
	return f.StartNode(ctx, node)
}

// Disconnect cuts the node off the fleet network: its peers cannot reach it
// and its published sshd port stops answering, as when a machine drops off
// the network. Processes inside keep running.
func (f *Fleet) Disconnect(ctx context.Context, node string) error {
	n, err := f.node(node)
	if err != nil {
		return err
	}
	_, err = f.cli.NetworkDisconnect(ctx, f.net.ID, client.NetworkDisconnectOptions{Container: n.id, Force: true})
	return err
}

// Reconnect undoes Disconnect; the node keeps its name on the network and its
// SSH port.
func (f *Fleet) Reconnect(ctx context.Context, node string) error {
	n, err := f.node(node)
	if err != nil {
		return err
	}
	_, err = f.cli.NetworkConnect(ctx, f.net.ID, client.NetworkConnectOptions{
		Container:      n.id,
		EndpointConfig: &mnetwork.EndpointSettings{Aliases: []string{n.Name}},
	})
	return err
}

// RestartUnit restarts the node's k3s unit as fleetcert does (daemon-reload,
// `systemctl --no-block restart`) and waits until systemd has really started
// a new run of it (a new InvocationID), so that a following health check
// cannot see the old process. On OpenRC: `rc-service <service> restart`
// (it returns once supervise-daemon has stopped the old k3s and started a
// new one), then waits until OpenRC records a new child PID that runs. It
// does not wait for health: see WaitReady.
func (f *Fleet) RestartUnit(ctx context.Context, node string) error {
	n, err := f.node(node)
	if err != nil {
		return err
	}
	if n.Init == InitOpenRC {
		return f.restartOpenRC(ctx, n)
	}
	show := "systemctl show -p InvocationID --value " + n.Unit
	r, err := execIn(ctx, f.cli, n.id, nil, "sh", "-c", show+" && systemctl daemon-reload && systemctl --no-block restart "+n.Unit)
	if err == nil {
		err = r.Err()
	}
	if err != nil {
		return fmt.Errorf("%s: restart %s: %w", node, n.Unit, err)
	}
	old := strings.TrimSpace(r.Stdout)
	return f.poll(ctx, func(ctx context.Context) (bool, error) {
		r, err := execIn(ctx, f.cli, n.id, nil, "sh", "-c", show)
		id := strings.TrimSpace(r.Stdout)
		return err == nil && id != "" && id != old, err
	})
}

// restartOpenRC is RestartUnit on an OpenRC node.
func (f *Fleet) restartOpenRC(ctx context.Context, n *Node) error {
	old, err := f.servicePID(ctx, n)
	if err != nil {
		return err
	}
	r, err := execIn(ctx, f.cli, n.id, nil, "rc-service", n.Unit, "restart")
	if err == nil {
		err = r.Err()
	}
	if err != nil {
		return fmt.Errorf("%s: rc-service %s restart: %w", n.Name, n.Unit, err)
	}
	return f.poll(ctx, func(ctx context.Context) (bool, error) {
		pid, err := f.servicePID(ctx, n)
		if err != nil || pid == 0 || pid == old {
			return false, err
		}
		r, err := execIn(ctx, f.cli, n.id, nil, "test", "-d", fmt.Sprintf("/proc/%d", pid))
		return err == nil && r.ExitCode == 0, err
	})
}

// Logs returns the log of the node's k3s: the journal of its unit, or on
// OpenRC the log file the service script sends k3s's output to
// (/var/log/<service>.log; "" before k3s first started).
func (f *Fleet) Logs(ctx context.Context, node string) (string, error) {
	n, err := f.node(node)
	if err != nil {
		return "", err
	}
	if n.Init == InitOpenRC {
		r, err := execIn(ctx, f.cli, n.id, nil, "sh", "-c", `[ ! -e "$1" ] || cat -- "$1"`, "sh", openRCLog(n.Unit))
		if err != nil {
			return "", err
		}
		return r.Stdout, r.Err()
	}
	r, err := execIn(ctx, f.cli, n.id, nil, "journalctl", "-u", n.Unit, "--no-pager", "-o", "short-iso")
	if err != nil {
		return "", err
	}
	return r.Stdout, r.Err()
}

// shQuote quotes a word for sh: in single quotes, a single quote is closed,
// escaped and reopened:
//
//	'it'\''s'
func shQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// Checksums returns "mode sha256" for every regular file under the given
// paths (files or directories; missing ones are skipped), keyed by path: two
// equal maps mean nothing was added, removed, rewritten with other content
// or re-moded. mtimes are left out on purpose: k3s rewrites some files with
// identical content at every start.
func (f *Fleet) Checksums(ctx context.Context, node string, paths ...string) (map[string]string, error) {
	var quoted []string
	for _, p := range paths {
		quoted = append(quoted, shQuote(p))
	}
	r, err := f.Exec(ctx, node, "for p in "+strings.Join(quoted, " ")+
		`; do [ -e "$p" ] && find "$p" -type f -exec sh -c 'for f; do printf "%s %s %s\n" "$(stat -c %a "$f")" "$(sha256sum < "$f" | cut -d" " -f1)" "$f"; done' sh {} +; done; true`)
	if err != nil {
		return nil, err
	}
	if err := r.Err(); err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(r.Stdout), "\n") {
		fields := strings.SplitN(line, " ", 3)
		if len(fields) == 3 {
			out[fields[2]] = fields[0] + " " + fields[1]
		}
	}
	return out, nil
}

// DiffChecksums lists the paths whose entries differ between two Checksums
// results, for test failure messages.
func DiffChecksums(before, after map[string]string) []string {
	var diff []string
	for p, v := range before {
		if w, ok := after[p]; !ok {
			diff = append(diff, "removed "+p)
		} else if w != v {
			diff = append(diff, "changed "+p)
		}
	}
	for p := range after {
		if _, ok := before[p]; !ok {
			diff = append(diff, "added "+p)
		}
	}
	sort.Strings(diff)
	return diff
}

// SetClockOffset makes the node's clock look off by d (whole seconds) to
// whatever reads it through date or stat, as fleetcert does. Containers
// share the host's clock and cannot set their own, so it installs shims as
// /usr/local/bin/date and /usr/local/bin/stat (clockshim/; first in every
// PATH) that add the seconds in /etc/k3semu/node-clock to the time date
// shows and to file modification times (stat's %Y), which fleetcert's
// restart gates compare; k3s (the emulator) follows the file too. The
// kernel, journald and the node's other programs keep the real clock. 0
// removes the offset and the shims (nodes without an offset never pay for
// them).
func (f *Fleet) SetClockOffset(ctx context.Context, node string, d time.Duration) error {
	n, err := f.node(node)
	if err != nil {
		return err
	}
	if d == 0 {
		r, err := execIn(ctx, f.cli, n.id, nil, "rm", "-f", nodeClockFile, shimDir+"/date", shimDir+"/stat")
		if err == nil {
			err = r.Err()
		}
		return err
	}
	files := []file{{Path: nodeClockFile, Mode: 0o644, Data: []byte(fmt.Sprintf("%d\n", int64(d.Round(time.Second)/time.Second)))}}
	for _, name := range []string{"date", "stat"} {
		data, err := clockShims.ReadFile("clockshim/" + name)
		if err != nil {
			return err
		}
		files = append(files, file{Path: shimDir + "/" + name, Mode: 0o755, Data: data})
	}
	return putFiles(ctx, f.cli, n.id, files)
}

// clockShims are the date and stat SetClockOffset installs.
//
//go:embed clockshim/date clockshim/stat
var clockShims embed.FS

// shimDir comes before /usr/bin and /bin in every PATH on a node.
const shimDir = "/usr/local/bin"

// SetK3sClock sets /etc/k3semu/clock: k3s (the emulator) judges and issues
// certificates at the real time plus d, read at every use, so a running
// k3s follows at once; the node's clock stays right. 0 removes it.
func (f *Fleet) SetK3sClock(ctx context.Context, node string, d time.Duration) error {
	return f.setSwitch(ctx, node, emuClockFile, d != 0, d.String())
}

func (f *Fleet) setSwitch(ctx context.Context, node, path string, set bool, value string) error {
	if set {
		return f.WriteFile(ctx, node, path, []byte(value+"\n"), 0o644)
	}
	r, err := f.Exec(ctx, node, "rm -f "+shQuote(path))
	if err == nil {
		err = r.Err()
	}
	return err
}

// InventoryPath is the fleetcert inventory (hosts.yaml) of the fleet.
func (f *Fleet) InventoryPath() string { return f.inv }

// KnownHostsPath is the known_hosts file with every node's host keys.
func (f *Fleet) KnownHostsPath() string { return f.kh }

// SSHKeyPath is the private key (ed25519, OpenSSH format) of user fleet.
func (f *Fleet) SSHKeyPath() string { return f.keyPath }

// Image is the node image the fleet runs.
func (f *Fleet) Image() string { return f.imageTag }
