package remote

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strings"
)

// exitNotExist is ReadFile's script's exit status for "no such file"; cat
// exits 1 on any error, so the two cannot be confused.
const exitNotExist = 44

// ReadFile implements Host. When the connection drops at any point, it is
// redialled and the read repeated once: reading has no side effects.
func (c *Client) ReadFile(ctx context.Context, p string) ([]byte, error) {
	if p == "" {
		return nil, fmt.Errorf("ssh %s: read: empty path", c.name)
	}
	op := &opState{}
	script := readScript(p)
	res, err := c.run(ctx, script, nil, op)
	if errors.Is(err, ErrConnectionLost) && !op.reconnected && ctx.Err() == nil {
		res, err = c.run(ctx, script, nil, op)
	}
	if err != nil {
		return nil, err
	}
	switch res.ExitCode {
	case 0:
		if res.Stdout == nil {
			return []byte{}, nil
		}
		return res.Stdout, nil
	case exitNotExist:
		return nil, fmt.Errorf("ssh %s: %w", c.name, &fs.PathError{Op: "read", Path: p, Err: fs.ErrNotExist})
	}
	return nil, fmt.Errorf("ssh %s: read %s: %w", c.name, p, res.Err())
}

// readScript cats the file, or exits exitNotExist when it is genuinely
// absent. `test -e` alone cannot tell "absent" from "a directory on the way
// is not searchable" (both are false), so the script walks up to the
// nearest searchable ancestor and reports absence only if that ancestor's
// child on the path does not exist; any other failure is left to cat, whose
// message (permission denied, is a directory, ...) reaches the caller.
func readScript(p string) string {
	q := Quote(p)
	var b strings.Builder
	fmt.Fprintf(&b, "[ -e %s ] && exec cat -- %s\nc=%s\nfor d in", q, q, q)
	for _, d := range ancestors(p) {
		b.WriteString(" " + Quote(d))
	}
	fmt.Fprintf(&b, `; do if [ -d "$d" ] && [ -x "$d" ]; then [ -e "$c" ] || exit %d; break; fi; c=$d; done`+"\nexec cat -- %s\n", exitNotExist, q)
	return b.String()
}

// ancestors lists p's parent, grandparent, ... up to "/" (or "." for a
// relative path).
func ancestors(p string) []string {
	var out []string
	for d := path.Dir(path.Clean(p)); ; d = path.Dir(d) {
		out = append(out, d)
		if d == "/" || d == "." {
			return out
		}
	}
}

// WriteFile implements Host, in one round trip. The data travels on stdin
// into a temp file created by mktemp (0600) next to the target, is fsynced,
// takes the target's owner and mode (or mode, for a new file), and is
// renamed over the target; the directory is then synced so the rename
// survives a crash. A symlink target is followed: the file it points to is
// replaced and the link kept. On any failure the temp file is removed and
// the target is untouched. mode 0 means 0600.
func (c *Client) WriteFile(ctx context.Context, p string, data []byte, mode fs.FileMode) error {
	if p == "" {
		return fmt.Errorf("ssh %s: write: empty path", c.name)
	}
	res, err := c.Run(ctx, writeScript(p, mode), data)
	if err != nil {
		return err
	}
	if err := res.Err(); err != nil {
		return fmt.Errorf("ssh %s: write %s: %w", c.name, p, err)
	}
	return nil
}

func writeScript(p string, mode fs.FileMode) string {
	if !path.IsAbs(p) {
		p = "./" + p // keeps mktemp and dirname from taking a leading "-" as an option
	}
	perm := mode.Perm()
	if perm == 0 {
		perm = 0o600
	}
	// stat -c and mktemp TEMPLATE work with GNU coreutils and busybox alike.
	return fmt.Sprintf(`set -e
p=%s
if [ -L "$p" ]; then p=$(readlink -f -- "$p"); fi
if [ -d "$p" ]; then echo "$p: is a directory" >&2; exit 1; fi
d=$(dirname -- "$p")
t=$(mktemp "$d/.fleetcert.XXXXXXXXXX")
trap 'rm -f -- "$t"' EXIT
trap 'exit 1' HUP INT TERM
cat > "$t"
sync -- "$t" 2>/dev/null || sync
if [ -e "$p" ]; then
  s=$(stat -c '%%u:%%g %%a' -- "$p")
  chown "${s%% *}" -- "$t"
  chmod "${s#* }" -- "$t"
else
  chmod %o -- "$t"
fi
mv -f -- "$t" "$p"
trap - EXIT
sync -- "$d" 2>/dev/null || true
`, Quote(p), perm)
}
