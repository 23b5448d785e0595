package remote

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
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

// exitChanged is the write script's exit status when the target no longer
// matches the caller's IfUnchanged or IfAbsent.
const exitChanged = 73

// WriteFile implements Host, in one round trip. The data travels on stdin
// only; its length and SHA-256 travel in the script, which writes stdin to a
// temp file made by mktemp next to the target, checks both on the node, gives
// the temp file the target's owner, mode, ACLs and extended attributes
// (SELinux label included), fsyncs it, checks the condition of any
// IfUnchanged or IfAbsent option, renames it over the target and fsyncs the
// directory. A short or corrupted upload (a connection dropped half way)
// fails before the rename, so the target is either the old file or the new
// one, never a mix. On every failure the temp file is removed.
//
// It refuses a target with more than one hard link (the rename would split
// them from it), one that is not a regular file, and, on a node whose cp
// cannot copy extended attributes (busybox), one that carries extended
// attributes or an SELinux label it can detect. A symlink target is
// followed: the file it points to is replaced and the link kept. mode (0
// meaning 0600) applies only to a new file.
//
// A lost connection gives an error wrapping ErrConnectionLost and is not
// retried: once the whole of the data reached the node the write may have
// completed, so the caller re-reads the file to know.
func (c *Client) WriteFile(ctx context.Context, p string, data []byte, mode fs.FileMode, opts ...WriteOption) error {
	if p == "" {
		return fmt.Errorf("ssh %s: write: empty path", c.name)
	}
	o, err := WriteOptionsOf(opts...)
	if err != nil {
		return fmt.Errorf("ssh %s: write %s: %w", c.name, p, err)
	}
	res, err := c.Run(ctx, writeScript(p, data, mode, o), data)
	if err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	switch res.ExitCode {
	case 0:
		return nil
	case exitChanged:
		return fmt.Errorf("ssh %s: write %s: %w (%s)", c.name, p, ErrChanged, strings.TrimSpace(string(res.Stderr)))
	}
	return fmt.Errorf("ssh %s: write %s: %w", c.name, p, res.Err())
}

// writeScript is WriteFile's script; POSIX sh with GNU coreutils or busybox.
//
// Attributes: GNU cp (any cp whose --help offers --attributes-only) copies
// owner, mode, ACLs and every extended attribute, the SELinux label
// included, onto the filled temp file (--attributes-only leaves its content
// alone); with xattr named explicitly, failing to copy one is an error, not
// a warning. busybox cp cannot, so there the script falls back to chown and
// chmod, which is complete only for a file without extended attributes: it
// refuses a file whose attributes getfattr lists or whose SELinux label
// ls -Z shows, and every file on a node with SELinux enabled. Without
// getfattr (Debian's busybox has none), a busybox node's user.* attributes
// and ACLs cannot be seen and are lost.
//
// The length and hash are checked after the attributes are copied, so
// nothing that touched the temp file can slip a change past them. The
// condition is checked right before the rename; a concurrent writer can
// still slip in between the check and the rename (two commands apart): it
// is a check, not a lock.
func writeScript(p string, data []byte, mode fs.FileMode, o WriteOptions) string {
	if !path.IsAbs(p) {
		p = "./" + p // keeps mktemp and dirname from taking a leading "-" as an option
	}
	perm := mode.Perm()
	if perm == 0 {
		perm = 0o600
	}
	sum := sha256.Sum256(data)
	want := ""
	switch {
	case o.Checked && o.WantSHA256 == "":
		want = "absent"
	case o.Checked:
		want = o.WantSHA256
	}
	return fmt.Sprintf(`p=%s n=%d h=%s w=%s m=%o
die() { printf '%%s\n' "$p: $*" >&2; exit 1; }
if [ -L "$p" ]; then r=$(readlink -f -- "$p") || die "cannot resolve the symlink"; p=$r; fi
[ -d "$p" ] && die "is a directory"
if [ -e "$p" ]; then
  [ -f "$p" ] || die "not a regular file"
  k=$(stat -c %%h -- "$p") || exit 1
  [ "$k" -le 1 ] || die "has $k hard links; replacing it would split them apart, so it is refused"
fi
d=$(dirname -- "$p") || exit 1
t=$(mktemp "$d/.fleetcert.XXXXXXXXXX") || exit 1
trap 'rm -f -- "$t"' EXIT
trap 'exit 1' HUP INT TERM PIPE
cat > "$t" || die "receiving the data failed"
if [ ! -e "$p" ]; then
  chmod "$m" -- "$t" || exit 1
else
  case $(cp --help 2>&1) in
  *--attributes-only*)
    e=$(cp --attributes-only --preserve=mode,ownership,xattr -- "$p" "$t" 2>&1) ||
      die "cannot copy its owner, mode, ACLs and extended attributes to the new file: $e" ;;
  *)
    x=$(getfattr -d -m - -- "$p" 2>/dev/null || getfattr -d -- "$p" 2>/dev/null)
    z=$(ls -Zd -- "$p" 2>/dev/null) && z=${z%%%% *} || z=
    if [ -n "$x" ] || { [ -n "$z" ] && [ "$z" != "?" ]; } || [ -e /sys/fs/selinux/enforce ]; then
      die "carries extended attributes or an SELinux label, which this node's cp (not GNU coreutils) cannot copy; refusing to replace it"
    fi
    s=$(stat -c '%%u:%%g %%a' -- "$p") && chown "${s%%%% *}" -- "$t" && chmod "${s#* }" -- "$t" || exit 1 ;;
  esac
fi
l=$(wc -c < "$t") || exit 1
l=${l##* }
[ "$l" = "$n" ] || die "received $l of $n bytes; left unchanged"
s=$(sha256sum < "$t") || exit 1
s=${s%%%% *}
[ "$s" = "$h" ] || die "received data has SHA-256 $s, not the $h sent; left unchanged"
sync -- "$t" 2>/dev/null || sync
case $w in
'') ;;
absent)
  if [ -e "$p" ] || [ -L "$p" ]; then echo "it exists now, expected it absent" >&2; exit %[6]d; fi ;;
*)
  c=absent
  if [ -e "$p" ]; then c=$(sha256sum < "$p") || exit 1; c=${c%%%% *}; fi
  if [ "$c" != "$w" ]; then echo "its SHA-256 is now $c, expected $w" >&2; exit %[6]d; fi ;;
esac
mv -f -- "$t" "$p" || exit 1
trap - EXIT
sync -- "$d" 2>/dev/null || true
`, Quote(p), len(data), hex.EncodeToString(sum[:]), Quote(want), perm, exitChanged)
}
