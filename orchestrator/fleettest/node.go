package fleettest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io/fs"
	"maps"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fleetcert/fleetcert/inventory"
	"github.com/fleetcert/fleetcert/k3s"
	"github.com/fleetcert/fleetcert/pki"
	"github.com/fleetcert/fleetcert/remote"
)

// File is one file on a fake node. Data is never modified in place: a
// write replaces the File, so slices may be shared between nodes.
type File struct {
	Data  []byte
	Mode  uint32
	MTime time.Time
}

// Node is one fake k3s node, a remote.Host.
type Node struct {
	inv      inventory.Node
	fleet    *Fleet
	cluster  *Cluster
	layout   k3s.Layout
	hostname string
	password string
	runs     atomic.Int64

	// BeforeWrite, when set, runs at the start of every WriteFile: a test
	// can change the file there, as configuration management might
	// between fleetcert's read and its write.
	BeforeWrite func(path string)
	// ClockOffset is added to the clock the node reports (date +%s), as
	// on a node whose time sync is off.
	ClockOffset time.Duration
	// BeforeRun, when set, sees every script before the node answers it,
	// with the caller's context. A non-nil result is the node's answer
	// instead: a command failing as k3s or systemd might. A test can also
	// change the node there, or wait on ctx for an interrupt it delivered
	// to reach the run.
	BeforeRun func(ctx context.Context, script string) *remote.Result
	// DialErr, when set, is what dialling the node fails with: a node
	// that is down or unreachable.
	DialErr error
	// FreeKiB, when set, is the space free where fleetcert keeps its
	// files (default: plenty).
	FreeKiB int

	mu      sync.Mutex
	files   map[string]*File
	dirs    map[string]bool
	units   map[string]string
	journal []journalLine
	// leafs are the leaf certificates and keys k3s issues at a start when
	// they are missing (after `k3s certificate rotate`), by path.
	leafs map[string]File
	// cacerts and serving are what a server's supervisor serves (see
	// Fleet.Supervisor): nil until the first connection after a start.
	cacerts []byte
	serving *tls.Certificate
}

type journalLine struct {
	at   time.Time
	text string
}

var _ remote.Host = (*Node)(nil)

// Inventory is the node's inventory entry.
func (n *Node) Inventory() inventory.Node { return n.inv }

// Runs counts the round trips made to the node (Run, ReadFile, WriteFile).
func (n *Node) Runs() int64 { return n.runs.Load() }

// File returns the file at p.
func (n *Node) File(p string) (File, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	f, ok := n.files[p]
	if !ok {
		return File{}, false
	}
	return *f, true
}

// Files returns a copy of every file of the node, by path.
func (n *Node) Files() map[string]File {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make(map[string]File, len(n.files))
	for p, f := range n.files {
		out[p] = *f
	}
	return out
}

// Journal returns what the node's unit logged.
func (n *Node) Journal() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []string
	for _, l := range n.journal {
		out = append(out, l.text)
	}
	return out
}

func (n *Node) Close() error { return nil }

// ReadFile returns a copy of the file.
func (n *Node) ReadFile(ctx context.Context, p string) ([]byte, error) {
	n.runs.Add(1)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	f, ok := n.files[p]
	if !ok {
		return nil, &fs.PathError{Op: "open", Path: p, Err: fs.ErrNotExist}
	}
	return bytes.Clone(f.Data), nil
}

// WriteFile replaces p; an existing file keeps its mode. IfUnchanged and
// IfAbsent are checked against the file as it is at the moment of the
// write, as the real node's script does right before its rename: a file
// that changed gives an error wrapping remote.ErrChanged and stays as it is.
func (n *Node) WriteFile(ctx context.Context, p string, data []byte, mode fs.FileMode, opts ...remote.WriteOption) error {
	n.runs.Add(1)
	if err := ctx.Err(); err != nil {
		return err
	}
	o, err := remote.WriteOptionsOf(opts...)
	if err != nil {
		return fmt.Errorf("%s: write %s: %w", n.inv.Host, p, err)
	}
	if hook := n.BeforeWrite; hook != nil {
		hook(p)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.dirExists(path.Dir(p)) {
		return &fs.PathError{Op: "write", Path: p, Err: fs.ErrNotExist}
	}
	old, exists := n.files[p]
	var cur []byte
	if exists {
		cur = old.Data
	}
	if !o.Allows(cur, exists) {
		return fmt.Errorf("%s: write %s: %w", n.inv.Host, p, remote.ErrChanged)
	}
	m := uint32(mode.Perm())
	if exists {
		m = old.Mode
	}
	n.files[p] = &File{Data: bytes.Clone(data), Mode: m, MTime: clock()}
	return nil
}

// Run answers the scripts fleetcert sends. Anything else fails with exit
// 127 and is recorded in Fleet.Unknown.
func (n *Node) Run(ctx context.Context, script string, stdin []byte) (remote.Result, error) {
	n.runs.Add(1)
	if hook := n.BeforeRun; hook != nil {
		if res := hook(ctx, script); res != nil {
			return *res, nil
		}
	}
	if err := ctx.Err(); err != nil {
		return remote.Result{}, err
	}
	// fleetcert runs k3s by the path the unit names, or by name on PATH.
	script = strings.ReplaceAll(script, "/usr/local/bin/k3s ", "k3s ")
	script = strings.ReplaceAll(script, k3sPathPrefix+"k3s ", "k3s ")
	switch {
	case strings.HasPrefix(script, "PATH=") && strings.Contains(script, "\necho '@@fleetcert-facts 1'\n"):
		if strings.Contains(script, "\necho @hostname;") {
			return n.facts(script), nil
		}
		return n.readFiles(script), nil
	case strings.Contains(script, `m="$d/lock.mutex"`):
		return n.swapLock(script, stdin), nil
	case strings.HasPrefix(script, "set -e\nb="):
		return n.backup(script), nil
	case strings.HasPrefix(script, "set -e\nd=") && strings.Contains(script, "while read -r name data"):
		return n.stage(script, stdin), nil
	case strings.HasPrefix(script, "find ") && strings.Contains(script, " certificate rotate-ca "):
		return n.rotateCA(script), nil
	case strings.HasPrefix(script, "k3s etcd-snapshot save "):
		return n.etcdSnapshot(script), nil
	case script == k3s.DaemonReloadCmd:
		return remote.Result{}, nil
	case strings.HasPrefix(script, n.layout.StopCmd()+" && ") && strings.Contains(script, " certificate rotate -d "):
		return n.certificateRotate(script), nil
	case strings.HasPrefix(script, "cd ") && strings.Contains(script, "\nls -d tls-[0-9]* "):
		return n.pruneBackups(script), nil
	case strings.HasPrefix(script, "date +%s && ") && strings.HasSuffix(script, n.layout.RestartCmd()):
		return n.restart(script), nil
	case script == "k3s kubectl get --raw=/readyz":
		if n.layout.Role != k3s.RoleServer {
			return fail(1, "The connection to the server localhost:8080 was refused"), nil
		}
		return remote.Result{Stdout: []byte("ok\n")}, nil
	case script == "k3s kubectl get nodes -o json":
		if n.layout.Role != k3s.RoleServer {
			return fail(1, "The connection to the server localhost:8080 was refused"), nil
		}
		return remote.Result{Stdout: n.cluster.nodesJSON}, nil
	case strings.HasPrefix(script, "touch -- "):
		n.Put(unquote(strings.TrimPrefix(script, "touch -- ")), nil, 0o644)
		return remote.Result{}, nil
	case strings.HasPrefix(script, "d=") && strings.Contains(script, "df -Pk"):
		return n.space(), nil
	case strings.HasPrefix(script, "journalctl "):
		return n.journalSince(script), nil
	case strings.HasPrefix(script, "f=") && strings.Contains(script, "tail -c +"):
		return n.logSince(script), nil
	case strings.HasPrefix(script, "rm -rf -- "), strings.HasPrefix(script, "rm -f -- "):
		_, arg, _ := strings.Cut(script, " -- ")
		n.remove(unquote(arg))
		return remote.Result{}, nil
	}
	first, _, _ := strings.Cut(script, "\n")
	n.fleet.recordUnknown(first)
	return fail(127, "fleettest: unknown script: "+first), nil
}

func fail(code int, msg string) remote.Result {
	return remote.Result{ExitCode: code, Stderr: []byte(msg + "\n")}
}

// ---- facts and file reads ---------------------------------------------------

// factsPlan is what a facts script asks for, parsed from its text.
type factsPlan struct {
	units []string
	dirs  []string
	batch []word // g's files and globs to read
	keys  []word // g's globs of key files to list
}

func (f *Fleet) plan(script string) *factsPlan {
	if p, ok := f.plans.Load(script); ok {
		return p.(*factsPlan)
	}
	p := &factsPlan{}
	for _, line := range strings.Split(script, "\n") {
		switch {
		case strings.HasPrefix(line, `printf '@unit %s %s\n' `):
			if w := shellWords(strings.TrimPrefix(line, `printf '@unit %s %s\n' `)); len(w) > 0 {
				p.units = append(p.units, w[0].s)
			}
		case strings.HasPrefix(line, "[ -d ") && strings.Contains(line, "@dir"):
			arg, _, _ := strings.Cut(strings.TrimPrefix(line, "[ -d "), " ]")
			p.dirs = append(p.dirs, unquote(arg))
		case strings.HasPrefix(line, "g "):
			p.keys, p.batch = splitBatch(shellWords(strings.TrimPrefix(line, "g ")))
		}
	}
	f.plans.Store(script, p)
	return p
}

const factsHeader = "@@fleetcert-facts 1\n"

// facts renders the facts script's output from the node's state.
func (n *Node) facts(script string) remote.Result {
	p := n.fleet.plan(script)
	n.mu.Lock()
	defer n.mu.Unlock()
	var b bytes.Buffer
	b.Grow(64 << 10)
	b.WriteString(factsHeader)
	initSys, osName := "systemd", "Ubuntu 24.04.1 LTS"
	if n.layout.OpenRC() {
		initSys, osName = "openrc", "Alpine Linux v3.20"
	}
	fmt.Fprintf(&b, "@hostname\n%s\n@os\n%s\n@init\n%s\n@now\n%d\n", n.hostname, osName, initSys, clock().Add(n.ClockOffset).Unix())
	fmt.Fprintf(&b, "@version\nk3s version %s (0a1b2c3d)\ngo version go1.23.6\n", n.fleet.version)
	for _, u := range p.units {
		state := n.units[u]
		switch {
		case n.layout.OpenRC():
			// is-active prints nothing where systemd does not run;
			// rc-service status gives the state.
			fmt.Fprintf(&b, "@unit %s \n@rc %s %s\n", u, u, openrcState(state))
			continue
		case state == "":
			state = "inactive"
		}
		fmt.Fprintf(&b, "@unit %s %s\n", u, state)
	}
	for _, d := range p.dirs {
		if n.dirExists(d) {
			fmt.Fprintf(&b, "@dir %s\n", d)
		}
	}
	if !n.layout.OpenRC() {
		n.systemdShow(&b)
	}
	n.batch(&b, p.keys, p.batch)
	b.WriteString("@end\n")
	return remote.Result{Stdout: b.Bytes()}
}

// systemdShow answers the facts script's systemctl show and
// show-environment as systemd would for install.sh's unit: the unit file,
// its <unit>.service.d/*.conf drop-ins and the unit's three environment
// files. Called with n.mu held.
func (n *Node) systemdShow(b *bytes.Buffer) {
	l := n.layout
	fmt.Fprintf(b, "@systemd\nLoadState=loaded\nFragmentPath=%s\n", l.UnitFile())
	if dropIns := n.expand(word{s: l.UnitDropInDir() + "/*.conf", glob: true}); len(dropIns) > 0 {
		fmt.Fprintf(b, "DropInPaths=%s\n", strings.Join(dropIns, " "))
	}
	for _, e := range append(l.DistroEnvFiles(), l.EnvFile()) {
		fmt.Fprintf(b, "EnvironmentFiles=%s (ignore_errors=yes)\n", e)
	}
	pid := 0
	if n.units[l.UnitName()] == "active" {
		pid = 4242
	}
	fmt.Fprintf(b, "MainPID=%d\nNeedDaemonReload=no\n@manager-env\nLANG=C.UTF-8\nPATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin\n@files\n", pid)
}

// systemdFiles are the files the facts script's "$@" names: what
// systemdShow lists. Called with n.mu held.
func (n *Node) systemdFiles() []string {
	l := n.layout
	out := []string{l.UnitFile()}
	out = append(out, n.expand(word{s: l.UnitDropInDir() + "/*.conf", glob: true})...)
	return append(out, append(l.DistroEnvFiles(), l.EnvFile())...)
}

// splitBatch splits g's arguments at "--": key globs to list, then
// files and globs to read.
func splitBatch(words []word) (keys, files []word) {
	for i, w := range words {
		if w.s == "--" && !w.glob {
			return words[:i], words[i+1:]
		}
	}
	return nil, words
}

// batch writes g's output for its argument words: absent names, then one
// batch: the keys' stat lines, every file's, and the files' bytes. Called
// with n.mu held.
func (n *Node) batch(b *bytes.Buffer, keyWords, words []word) {
	var keys, batch []string
	for _, w := range keyWords {
		keys = append(keys, n.expand(w)...)
	}
	for _, w := range words {
		if w.s == "$@" {
			if n.layout.OpenRC() {
				continue
			}
			for _, p := range n.systemdFiles() {
				if _, ok := n.files[p]; ok {
					batch = append(batch, p)
				} else {
					fmt.Fprintf(b, "@absent %s\n", p)
				}
			}
			continue
		}
		found := n.expand(w)
		if len(found) == 0 && !w.glob && !n.dirExists(w.s) {
			fmt.Fprintf(b, "@absent %s\n", w.s)
		}
		batch = append(batch, found...)
	}
	if len(keys)+len(batch) == 0 {
		return
	}
	fmt.Fprintf(b, "@batch %d %d\n", len(keys), len(keys)+len(batch))
	for _, fp := range append(keys, batch...) {
		f := n.files[fp]
		fmt.Fprintf(b, "@fsz %o 0 %d %d %s\n", f.Mode, f.MTime.Unix(), len(f.Data), fp)
	}
	b.WriteString("@data\n")
	for _, fp := range batch {
		b.Write(n.files[fp].Data)
	}
	b.WriteString("\n@data-end\n")
}

// expand is the files a word names: itself when it exists, or the sorted
// matches of a glob, as the shell expands them. Called with n.mu held.
func (n *Node) expand(w word) []string {
	if !w.glob {
		if _, ok := n.files[w.s]; ok {
			return []string{w.s}
		}
		return nil
	}
	dir := path.Dir(w.s) + "/"
	var out []string
	for fp := range n.files {
		if !strings.HasPrefix(fp, dir) || strings.IndexByte(fp[len(dir):], '/') >= 0 {
			continue
		}
		if ok, _ := path.Match(w.s, fp); ok {
			out = append(out, fp)
		}
	}
	slices.Sort(out)
	return out
}

// readFiles answers k3s.ReadMore (and ReadFiles): "@listed" lines for
// directories, then one g.
func (n *Node) readFiles(script string) remote.Result {
	n.mu.Lock()
	defer n.mu.Unlock()
	var b bytes.Buffer
	b.WriteString(factsHeader)
	for _, line := range strings.Split(script, "\n") {
		switch {
		case strings.HasPrefix(line, "echo '@listed "):
			fmt.Fprintf(&b, "%s\n", unquote(strings.TrimPrefix(line, "echo ")))
		case strings.HasPrefix(line, "g "):
			keys, files := splitBatch(shellWords(strings.TrimPrefix(line, "g ")))
			n.batch(&b, keys, files)
		}
	}
	b.WriteString("@end\n")
	return remote.Result{Stdout: b.Bytes()}
}

// ---- fleetcert's own operations ---------------------------------------------

// swapLock is the lock script: compare the lock file's hash with expect,
// then write stdin to it or (op release) remove it.
func (n *Node) swapLock(script string, stdin []byte) remote.Result {
	var d, expect, op string
	for _, line := range strings.Split(script, "\n") {
		if !strings.HasPrefix(line, "d=") || !strings.Contains(line, "expect=") {
			continue
		}
		for _, part := range strings.Split(line, "; ") {
			k, v, _ := strings.Cut(part, "=")
			switch k {
			case "d":
				d = unquote(v)
			case "expect":
				expect = unquote(v)
			case "op":
				op = unquote(v)
			}
		}
	}
	if d == "" {
		return fail(2, "fleettest: lock script without a directory")
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.dirs[d] = true
	lock := path.Join(d, "lock")
	cur := ""
	if f, ok := n.files[lock]; ok {
		sum := sha256.Sum256(f.Data)
		cur = hex.EncodeToString(sum[:])
	}
	if cur != expect {
		return remote.Result{ExitCode: 73}
	}
	if op == "release" {
		delete(n.files, lock)
		return remote.Result{}
	}
	n.files[lock] = &File{Data: bytes.Clone(stdin), Mode: 0o600, MTime: clock()}
	return remote.Result{}
}

// backup copies files and directories below the backup directory, unless
// it exists already.
func (n *Node) backup(script string) remote.Result {
	var dir string
	var paths []word
	for _, line := range strings.Split(script, "\n") {
		switch {
		case strings.HasPrefix(line, "b="):
			dir = unquote(strings.TrimPrefix(line, "b="))
		case strings.HasPrefix(line, "for f in ") && strings.HasSuffix(line, "; do"):
			paths = shellWords(strings.TrimSuffix(strings.TrimPrefix(line, "for f in "), "; do"))
		}
	}
	if dir == "" {
		return fail(2, "fleettest: backup script without a directory")
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.dirExists(dir) {
		return remote.Result{}
	}
	n.dirs[dir] = true
	for _, w := range paths {
		if f, ok := n.files[w.s]; ok {
			n.files[dir+w.s] = &File{Data: f.Data, Mode: f.Mode, MTime: f.MTime}
			continue
		}
		prefix := w.s + "/"
		var copied []string
		for fp := range n.files {
			if strings.HasPrefix(fp, prefix) {
				copied = append(copied, fp)
			}
		}
		for _, fp := range copied {
			f := n.files[fp]
			n.files[dir+fp] = &File{Data: f.Data, Mode: f.Mode, MTime: f.MTime}
		}
	}
	return remote.Result{}
}

// stage writes "name base64" lines from stdin into DIR/tls.
func (n *Node) stage(script string, stdin []byte) remote.Result {
	var dir string
	for _, line := range strings.Split(script, "\n") {
		if strings.HasPrefix(line, "d=") {
			dir = unquote(strings.TrimPrefix(line, "d="))
		}
	}
	if dir == "" {
		return fail(2, "fleettest: stage script without a directory")
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.removeLocked(dir)
	n.dirs[path.Join(dir, "tls", "etcd")] = true
	now := clock()
	for _, line := range strings.Split(string(stdin), "\n") {
		if line == "" {
			continue
		}
		name, data, _ := strings.Cut(line, " ")
		if name == "" || strings.Contains(name, "..") || strings.HasPrefix(name, "/") {
			return fail(1, "bad staged name")
		}
		raw, err := base64.StdEncoding.DecodeString(data)
		if err != nil {
			return fail(1, "base64: invalid input")
		}
		n.files[path.Join(dir, "tls", name)] = &File{Data: raw, Mode: 0o600, MTime: now}
	}
	return remote.Result{}
}

// rotateCA is `find DIR -type f -exec touch {} + && k3s certificate
// rotate-ca -d DATA --path=DIR [--force]`: the staged files go into the
// cluster's datastore.
func (n *Node) rotateCA(script string) remote.Result {
	var dir string
	_, cmd, _ := strings.Cut(script, " && ")
	for _, w := range shellWords(cmd) {
		if v, ok := strings.CutPrefix(w.s, "--path="); ok {
			dir = v
		}
	}
	if n.layout.Role != k3s.RoleServer {
		return fail(1, "rotate-ca: not a server")
	}
	n.mu.Lock()
	staged := pki.CASet{}
	now := clock()
	for _, name := range pki.Files() {
		if f, ok := n.files[path.Join(dir, "tls", name)]; ok {
			staged[name] = f.Data
			f.MTime = now
		}
	}
	n.mu.Unlock()
	if len(staged) == 0 {
		return fail(1, "level=fatal msg=\"no certificates found in "+dir+"\"")
	}
	c := n.cluster
	c.mu.Lock()
	for name, data := range staged {
		c.datastore[name] = data
	}
	c.mu.Unlock()
	return remote.Result{Stdout: []byte(k3s.RotateCAOK + "\n")}
}

// etcdSnapshot is `k3s etcd-snapshot save -d DATA --name NAME`.
func (n *Node) etcdSnapshot(script string) remote.Result {
	words := shellWords(script)
	name := ""
	for i, w := range words {
		if w.s == "--name" && i+1 < len(words) {
			name = words[i+1].s
		}
	}
	n.mu.Lock()
	etcd := n.layout.Role == k3s.RoleServer && n.dirExists(n.layout.EtcdDBDir())
	n.mu.Unlock()
	if !etcd {
		return fail(1, "etcd datastore disabled")
	}
	full := fmt.Sprintf("%s-%s-%d", name, n.hostname, clock().Unix())
	n.cluster.mu.Lock()
	n.cluster.snapshots = append(n.cluster.snapshots, full)
	n.cluster.mu.Unlock()
	return remote.Result{Stdout: []byte("Snapshot " + full + " saved.\n")}
}

// agentClientCA is the client CA an agent downloads from its server at
// every start. fleetcert itself never names this file, so k3s.Layout
// does not.
func agentClientCA(l k3s.Layout) string { return path.Join(l.AgentDir(), "client-ca.crt") }

// restart is `date +%s && MARK && RESTART` for the node's own service
// (Run matches the restart command of its layout): the node's clock, where
// its log stands (LogMarkCmd: 0 on systemd, the log file's size on
// OpenRC), then a start (see start).
func (n *Node) restart(script string) remote.Result {
	now := clock()
	n.mu.Lock()
	mark := 0
	if n.layout.OpenRC() {
		mark = n.logSize()
	}
	n.mu.Unlock()
	n.start(now)
	return remote.Result{Stdout: []byte(fmt.Sprintf("%d\n%d\n", now.Unix(), mark))}
}

// openrcState is what rc-service status says for a systemd-like state:
// supervise-daemon keeps a failing k3s "started" while it respawns it.
func openrcState(state string) string {
	switch state {
	case "active", "activating":
		return "started"
	case "":
		return ""
	}
	return "stopped"
}

// start is k3s starting at now. A server comes up when its token pins the
// CA in the datastore: it writes the datastore's CA files to server/tls,
// server/token (and agent-token) with the new hash, and its agent's CA
// copies. An agent comes up when its token pins the CA its server serves:
// it downloads that bundle into agent/server-ca.crt. Otherwise the unit
// logs the mismatch and writes nothing, as k3s does. A node that comes up
// issues the leaf certificates it is missing.
func (n *Node) start(now time.Time) {
	c := n.cluster
	c.mu.Lock()
	defer c.mu.Unlock()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.layout.OpenRC() {
		// supervise-daemon records the new k3s's PID, whether or not
		// that k3s gets anywhere.
		n.files[n.layout.OpenRCChildPID()] = &File{Data: fmt.Appendf(nil, "%d\n", n.fleet.pids.Add(1)), Mode: 0o644, MTime: now}
	}
	pinned := n.tokenHash()
	if n.layout.Role == k3s.RoleServer {
		ca := c.datastore["server-ca.crt"]
		hash := n.fleet.hashCA(ca)
		if pinned != "" && pinned != hash {
			n.log(now, "level=fatal msg=\"starting kubernetes: preparing server: failed to normalize server token; must be in format K10<CA-HASH>::<USERNAME>:<PASSWORD> or <PASSWORD>: token CA hash does not match the Cluster CA certificate hash\"")
			n.units[n.inv.Service] = "activating"
			return
		}
		tls := n.layout.ServerTLSDir()
		for name, data := range c.datastore {
			p := path.Join(tls, name)
			if f, ok := n.files[p]; ok && bytes.Equal(f.Data, data) {
				continue
			}
			mode := uint32(0o644)
			if strings.HasSuffix(name, ".key") {
				mode = 0o600
			}
			n.files[p] = &File{Data: data, Mode: mode, MTime: now}
		}
		token := []byte(pki.FormatToken(hash, "server", n.password) + "\n")
		n.files[n.layout.ServerToken()] = &File{Data: token, Mode: 0o600, MTime: now}
		if _, ok := n.files[n.layout.AgentTokenFile()]; ok {
			n.files[n.layout.AgentTokenFile()] = &File{Data: token, Mode: 0o600, MTime: now}
		}
		c.served = ca
		n.startSupervisor()
		n.files[n.layout.AgentServerCA()] = &File{Data: ca, Mode: 0o644, MTime: now}
		n.files[agentClientCA(n.layout)] = &File{Data: c.datastore["client-ca.crt"], Mode: 0o644, MTime: now}
	} else {
		hash := n.fleet.hashCA(c.served)
		if pinned != "" && pinned != hash {
			n.log(now, "level=error msg=\"failed to get CA certs: "+k3s.TokenMismatchLog+"\"")
			n.units[n.inv.Service] = "active" // Type=exec: active while it retries
			return
		}
		n.files[n.layout.AgentServerCA()] = &File{Data: c.served, Mode: 0o644, MTime: now}
		n.files[agentClientCA(n.layout)] = &File{Data: c.datastore["client-ca.crt"], Mode: 0o644, MTime: now}
	}
	for p, f := range n.leafs {
		if _, ok := n.files[p]; !ok {
			n.files[p] = &File{Data: f.Data, Mode: f.Mode, MTime: now}
		}
	}
	n.units[n.inv.Service] = "active"
}

// certificateRotate is leaf renewal as fleetcert runs it: `systemctl stop
// UNIT && k3s certificate rotate -d DATA [--service S] 2>&1; rc=$?; date
// +%s; systemctl --no-block start UNIT; exit $rc`. k3s copies the node's
// certificates to tls-<unix> (under server/ on servers, agent/ on agents)
// and removes the leaf files; the start issues them anew. The fake removes
// every leaf file whatever --service names (fleetcert's gates read only
// the named services' files) and logs the services it was asked for.
func (n *Node) certificateRotate(script string) remote.Result {
	rotate := strings.TrimPrefix(script, n.layout.StopCmd()+" && ")
	services := "every service"
	words := shellWords(rotate)
	for i, w := range words {
		if w.s == "--service" && i+1 < len(words) {
			services = words[i+1].s
		}
	}
	now := clock()
	n.mu.Lock()
	n.units[n.inv.Service] = "inactive"
	n.log(now, "level=info msg=\"Rotating certificates for "+services+"\"")
	var backup string
	if n.layout.Role == k3s.RoleServer {
		backup = path.Join(n.layout.ServerDir(), fmt.Sprintf("tls-%d", now.Unix()))
		tls := n.layout.ServerTLSDir() + "/"
		for p, f := range n.files {
			if rel, ok := strings.CutPrefix(p, tls); ok {
				n.files[path.Join(backup, rel)] = &File{Data: f.Data, Mode: f.Mode, MTime: now}
			}
		}
	} else {
		backup = path.Join(n.layout.AgentDir(), fmt.Sprintf("tls-%d", now.Unix()))
		for p := range n.leafs {
			if f, ok := n.files[p]; ok {
				n.files[path.Join(backup, path.Base(p))] = &File{Data: f.Data, Mode: f.Mode, MTime: now}
			}
		}
	}
	n.dirs[backup] = true
	for p := range n.leafs {
		delete(n.files, p)
	}
	n.serving = nil // the serving certificate goes with the leafs
	n.mu.Unlock()
	out := "level=info msg=\"Successfully backed up certificates to " + backup +
		", please restart k3s server or agent to rotate certificates\"\n" + strconv.FormatInt(now.Unix(), 10) + "\n"
	n.start(clock())
	return remote.Result{Stdout: []byte(out)}
}

// pruneBackups is `cd DIR || exit 0` and `ls -d tls-[0-9]* | sort -t- -k2
// -n | head -n -N | ... rm -rf`: all but the newest N tls-<unix>
// directories go.
func (n *Node) pruneBackups(script string) remote.Result {
	first, _, _ := strings.Cut(script, "\n")
	dir := unquote(strings.TrimPrefix(first, "cd ")) + "/"
	_, after, _ := strings.Cut(script, "head -n -")
	keep, err := strconv.Atoi(strings.Fields(after + " x")[0])
	if err != nil {
		return fail(2, "fleettest: prune script without a count")
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	found := map[int64]string{}
	look := func(p string) {
		rel, ok := strings.CutPrefix(p, dir)
		name, _, _ := strings.Cut(rel, "/")
		if !ok || !strings.HasPrefix(name, "tls-") {
			return
		}
		if unix, err := strconv.ParseInt(strings.TrimPrefix(name, "tls-"), 10, 64); err == nil {
			found[unix] = dir + name
		}
	}
	for p := range n.files {
		look(p)
	}
	for d := range n.dirs {
		look(d)
	}
	stamps := slices.Sorted(maps.Keys(found))
	for _, s := range stamps[:max(0, len(stamps)-keep)] {
		n.removeLocked(found[s])
	}
	return remote.Result{}
}

// tokenHash is the CA hash the node's token pins, "" for none: the one in
// the unit's env file, or on OpenRC the one in command_args, else in the
// env file. Called with n.mu held.
func (n *Node) tokenHash() string {
	places := []string{n.layout.EnvFile()}
	if n.layout.OpenRC() {
		places = []string{n.layout.ServiceScript(), n.layout.OpenRCEnvFile()}
	}
	for _, p := range places {
		if f, ok := n.files[p]; ok {
			if m := secureHash.FindSubmatch(f.Data); m != nil {
				return string(m[1])
			}
		}
	}
	return ""
}

var secureHash = regexp.MustCompile(`K10([0-9a-f]{64})::`)

// logSize is the size of an OpenRC node's log file, which holds the
// journal's lines. Called with n.mu held.
func (n *Node) logSize() int {
	size := 0
	for _, l := range n.journal {
		size += len(l.text) + 1
	}
	return size
}

// logSince is LogSinceCmd on OpenRC: `f=LOG; m=MARK; ... tail -c +$((m+1))`.
func (n *Node) logSince(script string) remote.Result {
	_, after, _ := strings.Cut(script, "; m=")
	mark, _ := strconv.Atoi(unquote(strings.TrimSuffix(strings.Fields(after + " ;")[0], ";")))
	n.mu.Lock()
	defer n.mu.Unlock()
	var b bytes.Buffer
	for _, l := range n.journal {
		b.WriteString(l.text + "\n")
	}
	if mark > b.Len() {
		mark = 0
	}
	return remote.Result{Stdout: b.Bytes()[mark:]}
}

func (n *Node) log(at time.Time, text string) {
	n.journal = append(n.journal, journalLine{at, text})
}

// journalSince is `journalctl ... --since @UNIX`.
func (n *Node) journalSince(script string) remote.Result {
	var since time.Time
	words := shellWords(script)
	for i, w := range words {
		if w.s == "--since" && i+1 < len(words) {
			if s, err := strconv.ParseInt(strings.TrimPrefix(words[i+1].s, "@"), 10, 64); err == nil {
				since = time.Unix(s, 0)
			}
		}
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	var b bytes.Buffer
	for _, l := range n.journal {
		if !l.at.Before(since) {
			b.WriteString(l.text + "\n")
		}
	}
	return remote.Result{Stdout: b.Bytes()}
}

func (n *Node) remove(p string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.removeLocked(p)
}

// removeLocked is rm -rf: the file, or the directory and all below it.
func (n *Node) removeLocked(p string) {
	delete(n.files, p)
	delete(n.dirs, p)
	prefix := p + "/"
	for fp := range n.files {
		if strings.HasPrefix(fp, prefix) {
			delete(n.files, fp)
		}
	}
	for d := range n.dirs {
		if strings.HasPrefix(d, prefix) {
			delete(n.dirs, d)
		}
	}
}

// dirExists: made explicitly, or holding a file or directory. Called with
// n.mu held.
func (n *Node) dirExists(d string) bool {
	if n.dirs[d] {
		return true
	}
	prefix := d + "/"
	for fp := range n.files {
		if strings.HasPrefix(fp, prefix) {
			return true
		}
	}
	for x := range n.dirs {
		if strings.HasPrefix(x, prefix) {
			return true
		}
	}
	return false
}

// k3sPathPrefix is how fleetcert invokes k3s (see k3s/commands.go): with
// install.sh's directory first on PATH.
const k3sPathPrefix = "PATH=/usr/local/bin:$PATH "

// Put replaces (or creates) the file at p, as someone other than
// fleetcert would.
func (n *Node) Put(p string, data []byte, mode uint32) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.files[p] = &File{Data: bytes.Clone(data), Mode: mode, MTime: clock()}
}

// MkdirAll makes directory p and its parents, for tests that put files on
// a node the way an earlier run would have left them.
func (n *Node) MkdirAll(p string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for d := path.Clean(p); d != "/" && d != "."; d = path.Dir(d) {
		n.dirs[d] = true
	}
}

// space is `df` of fleetcert's directory and `du` of server/tls, in KiB.
func (n *Node) space() remote.Result {
	n.mu.Lock()
	defer n.mu.Unlock()
	free := n.FreeKiB
	if free == 0 {
		free = 1 << 20
	}
	used := 0
	prefix := n.layout.ServerTLSDir() + "/"
	for p, f := range n.files {
		if strings.HasPrefix(p, prefix) {
			used += len(f.Data)
		}
	}
	return remote.Result{Stdout: []byte(fmt.Sprintf("%d\n%d\n", free, (used+1023)/1024))}
}
