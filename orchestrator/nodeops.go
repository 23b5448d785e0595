package orchestrator

import (
	"context"
	"encoding/base64"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/fleetcert/fleetcert/k3s"
	"github.com/fleetcert/fleetcert/pki"
	"github.com/fleetcert/fleetcert/remote"
)

// Operations on one node. Each is a single round trip where it can be and
// is called through clusterRun.Wet by the phases.

// backupScript copies files and directories into a run's backup directory,
// keeping their absolute paths below it, modes and owners. A backup that
// already exists (a resumed run) is kept: it holds the state before the
// run began, which is the one worth having.
const backupScript = `set -e
b=%s
[ -d "$b" ] && exit 0
umask 077; mkdir -p "$b.tmp"
for f in %s; do
  [ -e "$f" ] || continue
  mkdir -p "$b.tmp$(dirname "$f")"
  cp -a "$f" "$b.tmp$f"
done
mv "$b.tmp" "$b"
`

// backupPaths copies paths on n into its backup directory for runID.
func backupPaths(ctx context.Context, n *Node, runID string, paths []string) error {
	quoted := make([]string, len(paths))
	for i, p := range paths {
		quoted[i] = remote.Quote(p)
	}
	return runOK(ctx, n, fmt.Sprintf(backupScript, remote.Quote(n.Layout.BackupDir(runID)), strings.Join(quoted, " ")))
}

// stageScript writes CA material into DIR/tls from stdin, one "name base64"
// line per file, with fresh mtimes: k3s stores each file's mtime in the
// datastore, and a server whose disk copy is 3 s newer than that refuses
// to start. Secrets travel on stdin only.
const stageScript = `set -e
d=%s
umask 077
rm -rf "$d"; mkdir -p "$d/tls/etcd"
while read -r name data; do
  case "$name" in ""|*..*|/*) echo "bad staged name" >&2; exit 1;; esac
  printf '%%s' "$data" | base64 -d > "$d/tls/$name"
done
find "$d" -type f -exec touch {} +
`

// stageFiles writes set into dir/tls on the primary, as rotate-ca --path reads it.
func stageFiles(ctx context.Context, n *Node, dir string, set pki.CASet) error {
	var in strings.Builder
	for _, name := range set.Names() {
		fmt.Fprintf(&in, "%s %s\n", name, base64.StdEncoding.EncodeToString(set[name]))
	}
	res, err := n.Conn.Run(ctx, fmt.Sprintf(stageScript, remote.Quote(dir)), []byte(in.String()))
	if err != nil {
		return err
	}
	return res.Err()
}

// loadCA runs rotate-ca on the primary with the staged dir, touching the
// files first for the 3-second rule.
func loadCA(ctx context.Context, n *Node, dir string, force bool) error {
	script := remote.Quotef("find %s -type f -exec touch {} + && ", dir) + n.Layout.RotateCACmd(dir, force)
	res, err := n.Conn.Run(ctx, script, nil)
	if err != nil {
		return err
	}
	out := string(res.Stdout) + string(res.Stderr)
	if res.ExitCode != 0 {
		return fmt.Errorf("k3s certificate rotate-ca failed (the reason is in the server log: %s): %s",
			n.Layout.LogHint(), lastLines(out, 3))
	}
	if !strings.Contains(out, k3s.RotateCAOK) {
		return fmt.Errorf("k3s certificate rotate-ca did not confirm (%q missing): %s", k3s.RotateCAOK, lastLines(out, 3))
	}
	return nil
}

// removeDir removes a directory fleetcert made.
func removeDir(ctx context.Context, n *Node, dir string) error {
	return runOK(ctx, n, "rm -rf -- "+remote.Quote(dir))
}

// restartUnit restarts the node's k3s without waiting for it to be ready
// and returns the node's clock at that moment, to judge later which files
// k3s rewrote since. It notes where k3s's log stood (n.logMark), so that
// gates read only what the restarted k3s logged.
func restartUnit(ctx context.Context, n *Node) (time.Time, error) {
	res, err := n.Conn.Run(ctx, "date +%s && "+n.Layout.LogMarkCmd()+" && "+n.Layout.RestartCmd(), nil)
	if err != nil {
		return time.Time{}, err
	}
	if err := res.Err(); err != nil {
		return time.Time{}, err
	}
	lines := strings.Fields(string(res.Stdout))
	if len(lines) < 2 {
		return time.Time{}, fmt.Errorf("restart: unexpected output %q", lastLines(string(res.Stdout), 2))
	}
	n.logMark, _ = strconv.ParseInt(lines[1], 10, 64)
	return parseUnix(lines[0])
}

// tokenFiles is every file of n that defines or holds a token, with its
// contents as last read, and systemd's view: the input of a token rewrite.
func tokenFiles(n *Node) k3s.NodeFiles { return n.Snapshot.NodeFiles(n.more) }

// fileMode is the mode of a file as last read from n.
func fileMode(n *Node, p string) uint32 {
	if f, ok := n.Snapshot.Files[p]; ok {
		return f.Mode
	}
	if n.more != nil {
		return n.more.Files[p].Mode
	}
	return 0
}

// planTokens plans rewriting every secure token of n to pin target, for
// tokens currently pinning one of old.
func planTokens(n *Node, target string, old []string) ([]k3s.FileRewrite, error) {
	plan, err := k3s.PlanTokenRewrites(n.Layout, tokenFiles(n), k3s.RewriteOptions{NewHash: target, OldHashes: old})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", n.Name, err)
	}
	return plan, nil
}

// tokenPaths lists the files a token rewrite of n may touch, for backups.
func tokenPaths(n *Node) []string {
	var paths []string
	for _, s := range n.Facts.Tokens {
		paths = append(paths, s.File)
	}
	sort.Strings(paths)
	return slices.Compact(paths)
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// runOK runs a script on n that has nothing to say but whether it worked.
func runOK(ctx context.Context, n *Node, script string) error {
	_, err := remote.Output(ctx, n.Conn, script)
	return err
}
