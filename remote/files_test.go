package remote_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/fleetcert/fleetcert/remote"
	"github.com/fleetcert/fleetcert/remote/sshtest"
)

func TestReadFile(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	c := f.dial(f.config(f.server(sshtest.Options{}, false)))
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	got, err := c.ReadFile(ctx(t), write("a", "data\x00\xff"))
	if err != nil || string(got) != "data\x00\xff" {
		t.Fatalf("got %q, %v", got, err)
	}
	got, err = c.ReadFile(ctx(t), write("empty", ""))
	if err != nil || got == nil || len(got) != 0 {
		t.Fatalf("empty file: %q (nil=%v), %v", got, got == nil, err)
	}
	if err := os.Symlink(filepath.Join(dir, "nowhere"), filepath.Join(dir, "dangling")); err != nil {
		t.Fatal(err)
	}
	for _, missing := range []string{
		filepath.Join(dir, "absent"),
		filepath.Join(dir, "no", "such", "dir", "file"),
		filepath.Join(dir, "dangling"),
	} {
		_, err := c.ReadFile(ctx(t), missing)
		if !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("ReadFile(%s): err = %v, want fs.ErrNotExist", missing, err)
		}
		mustContain(t, err.Error(), missing, "tester@127.0.0.1")
	}
	// Other failures are errors, but not "does not exist".
	for _, bad := range []string{dir, filepath.Join(write("file", "x"), "below-a-file")} {
		_, err := c.ReadFile(ctx(t), bad)
		if err == nil || errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("ReadFile(%s): err = %v", bad, err)
		}
	}
}

// ownedFile makes dir/name holding "old", mode 0640, and, as root, owned
// by 1234:2345, so that a test proves the owner is carried over rather
// than left as root. It returns the path and the owner.
func ownedFile(t *testing.T, dir, name string) (p string, uid, gid int) {
	t.Helper()
	p = filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte("old"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, 0o640); err != nil {
		t.Fatal(err)
	}
	uid, gid = os.Getuid(), os.Getgid()
	if uid == 0 {
		uid, gid = 1234, 2345
		if err := os.Chown(p, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	return p, uid, gid
}

func TestWriteFileReplacesAtomicallyKeepingOwnerAndMode(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	c := f.dial(f.config(f.server(sshtest.Options{}, false)))
	dir := t.TempDir()
	p, uid, gid := ownedFile(t, dir, "config.yaml")
	before := inode(t, p)
	if err := c.WriteFile(ctx(t), p, []byte("new content\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	st := stat(t, p)
	if got := readFile(t, p); got != "new content\n" {
		t.Fatalf("content %q", got)
	}
	if st.Mode&0o7777 != 0o640 || int(st.Uid) != uid || int(st.Gid) != gid {
		t.Fatalf("mode %o owner %d:%d, want 640 %d:%d", st.Mode&0o7777, st.Uid, st.Gid, uid, gid)
	}
	if st.Ino == before {
		t.Fatal("file was rewritten in place, not replaced by rename")
	}
	assertNoTempFiles(t, dir)

	// A new file gets the requested mode.
	np := filepath.Join(dir, "token")
	if err := c.WriteFile(ctx(t), np, []byte("K10..."), 0o600); err != nil {
		t.Fatal(err)
	}
	if m := stat(t, np).Mode & 0o7777; m != 0o600 {
		t.Fatalf("new file mode %o", m)
	}
	assertNoTempFiles(t, dir)
}

func TestWriteFileFollowsSymlink(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	c := f.dial(f.config(f.server(sshtest.Options{}, false)))
	dir := t.TempDir()
	target := filepath.Join(dir, "token")
	link := filepath.Join(dir, "node-token")
	if err := os.WriteFile(target, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("token", link); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteFile(ctx(t), link, []byte("new"), 0o644); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&fs.ModeSymlink == 0 {
		t.Fatalf("symlink replaced: %v %v", fi.Mode(), err)
	}
	if got := readFile(t, target); got != "new" {
		t.Fatalf("target %q", got)
	}
	if m := stat(t, target).Mode & 0o7777; m != 0o600 {
		t.Fatalf("target mode %o", m)
	}
}

func TestWriteFileFailureLeavesTargetAndNoTempFile(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	// A node where the final rename fails.
	bin := t.TempDir()
	if err := os.WriteFile(filepath.Join(bin, "mv"), []byte("#!/bin/sh\necho 'mv: injected failure' >&2\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	c := f.dial(f.config(f.server(sshtest.Options{Env: []string{"PATH=" + bin + ":" + os.Getenv("PATH")}}, false)))
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := os.WriteFile(p, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := c.WriteFile(ctx(t), p, []byte("new"), 0o600)
	if err == nil {
		t.Fatal("WriteFile succeeded")
	}
	mustContain(t, err.Error(), "injected failure", p)
	if got := readFile(t, p); got != "old" {
		t.Fatalf("target changed to %q", got)
	}
	assertNoTempFiles(t, dir)

	// Other failures: missing directory, a directory as target.
	c2 := f.dial(f.config(f.server(sshtest.Options{}, false)))
	for _, bad := range []string{filepath.Join(dir, "no", "dir", "f"), dir} {
		if err := c2.WriteFile(ctx(t), bad, []byte("x"), 0o600); err == nil {
			t.Fatalf("WriteFile(%s) succeeded", bad)
		}
	}
	assertNoTempFiles(t, dir)
}

func TestFilesHostilePathsAndContents(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	s := f.server(sshtest.Options{}, false)
	c := f.dial(f.config(s))
	dir := t.TempDir()
	for i, name := range hostile {
		name = strings.ReplaceAll(name, "/", "_")
		if name == "" || name == "." || name == ".." {
			continue
		}
		p := filepath.Join(dir, name)
		content := []byte(hostile[len(hostile)-1-i] + "\x00\xff\n" + name)
		if err := c.WriteFile(ctx(t), p, content, 0o600); err != nil {
			t.Fatalf("WriteFile(%q): %v", p, err)
		}
		if got, err := os.ReadFile(p); err != nil || !bytes.Equal(got, content) {
			t.Fatalf("local read of %q: %q, %v", p, got, err)
		}
		got, err := c.ReadFile(ctx(t), p)
		if err != nil || !bytes.Equal(got, content) {
			t.Fatalf("ReadFile(%q) = %q, %v", p, got, err)
		}
	}
	if _, err := os.Stat("/tmp/pwned"); err == nil {
		t.Fatal("a hostile string was executed")
	}
	// A relative path that looks like an option, in the remote home (here: the server's cwd).
	rel := "-n ;x"
	s2 := f.server(sshtest.Options{Dir: dir}, false)
	c2 := f.dial(f.config(s2))
	if err := c2.WriteFile(ctx(t), rel, []byte("rel"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := c2.ReadFile(ctx(t), rel); err != nil || string(got) != "rel" {
		t.Fatalf("relative: %q, %v", got, err)
	}
	assertNoTempFiles(t, dir)
}

func TestFilesUnderSudo(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	bin, logs := fakeSudo(t, "")
	cfg := f.config(f.server(sshtest.Options{Env: []string{"PATH=" + bin + ":" + os.Getenv("PATH")}}, false))
	cfg.Sudo = true
	c := f.dial(cfg)
	p := filepath.Join(t.TempDir(), "f")
	if err := c.WriteFile(ctx(t), p, []byte("root data"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := c.ReadFile(ctx(t), p); err != nil || string(got) != "root data" {
		t.Fatalf("%q %v", got, err)
	}
	if _, err := c.ReadFile(ctx(t), p+".absent"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("err = %v", err)
	}
	if argvs, _ := sudoCalls(t, logs); len(argvs) != 3 {
		t.Fatalf("%d sudo calls, want 3", len(argvs))
	}
	if c.Sessions() != 3 {
		t.Fatalf("sessions %d: each file operation must be one round trip", c.Sessions())
	}
}

func assertNoTempFiles(t *testing.T, dir string) {
	t.Helper()
	m, _ := filepath.Glob(filepath.Join(dir, ".fleetcert.*"))
	if len(m) > 0 {
		t.Fatalf("temp files left: %q", m)
	}
}

func stat(t *testing.T, p string) *syscall.Stat_t {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t)
}

func inode(t *testing.T, p string) uint64 { return stat(t, p).Ino }

// upload is data large enough to span many SSH packets and pipe buffers, so
// that a drop "during" it really falls in the middle of the transfer.
func upload() []byte {
	b := make([]byte, 300<<10)
	for i := range b {
		b[i] = byte(i*7 + i>>9)
	}
	return b
}

func sha256Hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// TestWriteFileCutOrCorruptedUpload: whatever happens to the data on its
// way, the target is the old file or, once every byte arrived, the new one,
// whole; never a mix, and never a leftover temp file.
func TestWriteFileCutOrCorruptedUpload(t *testing.T) {
	t.Parallel()
	data := upload()
	n := int64(len(data))
	cutAt := func(at int64) sshtest.Options {
		var done atomic.Bool
		return sshtest.Options{DropStdinAt: func(*sshtest.Exec) int64 {
			if done.Swap(true) {
				return -1
			}
			return at
		}}
	}
	// mangle runs commands with sh, after f has tampered with their stdin.
	mangle := func(f func([]byte) []byte) sshtest.Options {
		return sshtest.Options{Handler: func(ctx context.Context, e *sshtest.Exec) int {
			in, err := io.ReadAll(e.Stdin)
			if err != nil {
				return 255
			}
			e.Stdin = bytes.NewReader(f(in))
			return sshtest.Shell("")(ctx, e)
		}}
	}
	for _, tc := range []struct {
		name   string
		opts   sshtest.Options
		lost   bool   // the error wraps ErrConnectionLost
		msg    string // the error says so
		landed bool   // the new content replaced the old one
	}{
		{name: "dropped before the data", opts: cutAt(0), lost: true},
		{name: "dropped during the data", opts: cutAt(n / 2), lost: true},
		{name: "dropped one byte short", opts: cutAt(n - 1), lost: true},
		// Once the last byte is on the node, nothing there can tell the
		// drop from the end of the data: the write completes, whole, and
		// the error says it may have.
		{name: "dropped after the data", opts: cutAt(n), lost: true, landed: true},
		{name: "a byte lost on the way", opts: mangle(func(b []byte) []byte { return b[:len(b)-1] }),
			msg: fmt.Sprintf("received %d of %d bytes; left unchanged", n-1, n)},
		{name: "a byte added on the way", opts: mangle(func(b []byte) []byte { return append(b, 0) }),
			msg: fmt.Sprintf("received %d of %d bytes; left unchanged", n+1, n)},
		{name: "a byte flipped on the way", opts: mangle(func(b []byte) []byte { b[n/3] ^= 1; return b }),
			msg: "received data has SHA-256"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			s := f.server(tc.opts, false)
			c := f.dial(f.config(s))
			dir := t.TempDir()
			p := filepath.Join(dir, "token")
			old := []byte("old token\n")
			if err := os.WriteFile(p, old, 0o600); err != nil {
				t.Fatal(err)
			}
			err := c.WriteFile(ctx(t), p, data, 0o600)
			if err == nil {
				t.Fatal("WriteFile succeeded")
			}
			if errors.Is(err, remote.ErrConnectionLost) != tc.lost {
				t.Fatalf("err = %v; want connection lost: %v", err, tc.lost)
			}
			mustContain(t, err.Error(), p, tc.msg)
			// The script outlives the connection, as under sshd: judge what
			// it left only once it has finished.
			waitFor(t, "the write script to finish", func() bool { return s.Running() == 0 })
			want := old
			if tc.landed {
				want = data
			}
			if got, err := os.ReadFile(p); err != nil || !bytes.Equal(got, want) {
				t.Fatalf("target holds %d bytes (%v), want %d", len(got), err, len(want))
			}
			assertNoTempFiles(t, dir)
		})
	}
}

// midway calls f once at bytes of r have been read, before any more are.
type midway struct {
	r    io.Reader
	at   int
	f    func()
	read int
}

func (m *midway) Read(p []byte) (int, error) {
	if m.read >= m.at && m.f != nil {
		m.f()
		m.f = nil
	}
	if m.f != nil && len(p) > m.at-m.read {
		p = p[:m.at-m.read]
	}
	n, err := m.r.Read(p)
	m.read += n
	return n, err
}

// TestWriteFileConditions: IfUnchanged and IfAbsent are checked on the node
// after the data arrived, right before the rename, so an edit made while the
// write is already under way is caught and kept.
func TestWriteFileConditions(t *testing.T) {
	t.Parallel()
	const v1, theirs = "token: v1\n", "token: edited by hand\n"
	ours := upload()
	put := func(content string) func(string) error {
		return func(p string) error { return os.WriteFile(p, []byte(content), 0o600) }
	}
	for _, tc := range []struct {
		name    string
		had     func(string) error // the file before; nil: absent
		edit    func(string) error // someone else's change, made while our data is on its way
		opt     remote.WriteOption
		changed bool   // the error wraps ErrChanged
		want    string // the file after; "" means ours
		absent  bool   // the file after is absent
	}{
		{name: "unchanged: replaced", had: put(v1), opt: remote.IfUnchanged(sha256Hex(v1))},
		{name: "upper-case hash", had: put(v1), opt: remote.IfUnchanged(strings.ToUpper(sha256Hex(v1)))},
		{name: "edited since read", had: put(v1), edit: put(theirs), opt: remote.IfUnchanged(sha256Hex(v1)), changed: true, want: theirs},
		{name: "removed since read", had: put(v1), edit: os.Remove, opt: remote.IfUnchanged(sha256Hex(v1)), changed: true, absent: true},
		{name: "never there", opt: remote.IfUnchanged(sha256Hex(v1)), changed: true, absent: true},
		{name: "absent: created", opt: remote.IfAbsent()},
		{name: "created meanwhile", edit: put(theirs), opt: remote.IfAbsent(), changed: true, want: theirs},
		{name: "exists", had: put(v1), opt: remote.IfAbsent(), changed: true, want: v1},
		{name: "no condition: last writer wins", had: put(v1), edit: put(theirs)},
		{name: "zero option: no condition", had: put(v1), edit: put(theirs), opt: remote.WriteOption{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			p := filepath.Join(dir, "config.yaml")
			var editErr error
			f := newFixture(t)
			c := f.dial(f.config(f.server(sshtest.Options{Handler: func(ctx context.Context, e *sshtest.Exec) int {
				if tc.edit != nil {
					// Far enough into the data that the script is past its
					// first checks (a pipe holds 64 KiB), but before the end.
					e.Stdin = &midway{r: e.Stdin, at: len(ours) - 32<<10, f: func() { editErr = tc.edit(p) }}
				}
				return sshtest.Shell("")(ctx, e)
			}}, false)))
			if tc.had != nil {
				if err := tc.had(p); err != nil {
					t.Fatal(err)
				}
			}
			err := c.WriteFile(ctx(t), p, ours, 0o600, tc.opt)
			if editErr != nil {
				t.Fatal(editErr)
			}
			if tc.changed {
				if !errors.Is(err, remote.ErrChanged) {
					t.Fatalf("err = %v, want ErrChanged", err)
				}
				mustContain(t, err.Error(), p, "changed since it was read")
			} else if err != nil {
				t.Fatal(err)
			}
			want := ours
			if tc.want != "" {
				want = []byte(tc.want)
			}
			got, err := os.ReadFile(p)
			switch {
			case tc.absent && !errors.Is(err, fs.ErrNotExist):
				t.Fatalf("file exists (%d bytes, %v), want it absent", len(got), err)
			case !tc.absent && (err != nil || !bytes.Equal(got, want)):
				t.Fatalf("file holds %.40q... (%v), want %.40q...", got, err, want)
			}
			assertNoTempFiles(t, dir)
		})
	}
}

func TestWriteFileBadConditionWritesNothing(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	c := f.dial(f.config(f.server(sshtest.Options{}, false)))
	p := filepath.Join(t.TempDir(), "f")
	for _, opts := range [][]remote.WriteOption{
		{remote.IfUnchanged("")},
		{remote.IfUnchanged("not hex")},
		{remote.IfUnchanged(sha256Hex("x")[:62])},
		{remote.IfUnchanged(sha256Hex("x")), remote.IfAbsent()},
	} {
		err := c.WriteFile(ctx(t), p, []byte("x"), 0o600, opts...)
		if err == nil || errors.Is(err, remote.ErrChanged) {
			t.Fatalf("err = %v", err)
		}
		mustContain(t, err.Error(), p)
	}
	if c.Sessions() != 0 {
		t.Fatalf("%d sessions: a bad condition must not reach the node", c.Sessions())
	}
	if _, err := os.Stat(p); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("written anyway: %v", err)
	}
}

func TestWriteFileRefusesHardLinkedTarget(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	c := f.dial(f.config(f.server(sshtest.Options{}, false)))
	dir := t.TempDir()
	p, q := filepath.Join(dir, "token"), filepath.Join(dir, "token.link")
	if err := os.WriteFile(p, []byte("shared"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(p, q); err != nil {
		t.Fatal(err)
	}
	err := c.WriteFile(ctx(t), p, []byte("new"), 0o600)
	if err == nil {
		t.Fatal("WriteFile replaced a hard-linked file")
	}
	mustContain(t, err.Error(), p, "has 2 hard links")
	for _, x := range []string{p, q} {
		if got := readFile(t, x); got != "shared" {
			t.Fatalf("%s holds %q", x, got)
		}
	}
	if st := stat(t, p); st.Nlink != 2 {
		t.Fatalf("%d links left", st.Nlink)
	}
	assertNoTempFiles(t, dir)
}

// TestWriteFileKeepsAttributes: owner, mode and extended attributes survive
// the rename with GNU cp; with a cp that cannot copy them (busybox) owner
// and mode still do, and a file carrying extended attributes is refused
// rather than stripped.
func TestWriteFileKeepsAttributes(t *testing.T) {
	t.Parallel()
	// A busybox-like cp (no --attributes-only), which the script must not
	// use, and a getfattr that reports an attribute on files named *xattr*.
	busybox := t.TempDir()
	for name, script := range map[string]string{
		"cp":       "#!/bin/sh\n[ \"$1\" = --help ] && { echo 'Usage: cp [-arPLHpfinlsTu] SOURCE... DEST'; exit 0; }\necho \"cp: unexpected call: $*\" >&2\nexit 99\n",
		"getfattr": "#!/bin/sh\nfor a; do f=$a; done\ncase $f in *xattr*) printf '# file: %s\\nuser.fleetcert=\"kept\"\\n\\n' \"$f\";; esac\n",
	} {
		if err := os.WriteFile(filepath.Join(busybox, name), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	busyboxPath := []string{"PATH=" + busybox + ":" + os.Getenv("PATH")}
	for _, tc := range []struct {
		name    string
		env     []string
		file    string
		xattr   bool   // give the file a user.* attribute and expect it kept
		refused string // the write is refused with this message
	}{
		{name: "GNU cp", file: "config.yaml"},
		{name: "GNU cp, extended attribute", file: "config-xattr.yaml", xattr: true},
		{name: "busybox cp", env: busyboxPath, file: "config.yaml"},
		{name: "busybox cp, extended attribute", env: busyboxPath, file: "config-xattr.yaml",
			refused: "carries extended attributes or an SELinux label"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			s := f.server(sshtest.Options{Env: tc.env}, false)
			c := f.dial(f.config(s))
			dir := t.TempDir()
			p, uid, gid := ownedFile(t, dir, tc.file)
			if tc.xattr {
				if err := setXattr(p, "user.fleetcert", "kept"); err != nil {
					t.Skipf("the file system under %s takes no user xattrs: %v", dir, err)
				}
			}
			before := inode(t, p)
			secret := "K10" + strings.Repeat("ab", 32) + "::server:s3cret\n"
			err := c.WriteFile(ctx(t), p, []byte(secret), 0o600)
			for _, r := range s.Records() { // the data itself travels on stdin only
				if strings.Contains(r.Command, "s3cret") || !strings.Contains(r.Command, sha256Hex(secret)) {
					t.Fatalf("command line: %s", r.Command)
				}
			}
			if tc.refused != "" {
				if err == nil {
					t.Fatal("WriteFile succeeded")
				}
				mustContain(t, err.Error(), p, tc.refused)
				if got := readFile(t, p); got != "old" {
					t.Fatalf("target changed to %q", got)
				}
				assertNoTempFiles(t, dir)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			st := stat(t, p)
			if got := readFile(t, p); got != secret || st.Ino == before {
				t.Fatalf("content %q, inode kept: %v", got, st.Ino == before)
			}
			if st.Mode&0o7777 != 0o640 || int(st.Uid) != uid || int(st.Gid) != gid {
				t.Fatalf("mode %o owner %d:%d, want 640 %d:%d", st.Mode&0o7777, st.Uid, st.Gid, uid, gid)
			}
			if tc.xattr {
				if v, err := getXattr(p, "user.fleetcert"); err != nil || v != "kept" {
					t.Fatalf("user.fleetcert = %q, %v", v, err)
				}
			}
			assertNoTempFiles(t, dir)
		})
	}
}

// TestWriteFileUnderBusybox runs the write script with busybox's sh and
// applets alone on PATH (as on a minimal node), when busybox is installed.
func TestWriteFileUnderBusybox(t *testing.T) {
	t.Parallel()
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("busybox is not installed")
	}
	list, err := exec.Command(busybox, "--list").Output()
	if err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	for _, applet := range strings.Fields(string(list)) {
		if err := os.Symlink(busybox, filepath.Join(bin, applet)); err != nil {
			t.Fatal(err)
		}
	}
	uid, gid := os.Getuid(), os.Getgid()
	if uid == 0 {
		uid, gid = 1234, 2345
	}
	old := func(dir string) string {
		p := filepath.Join(dir, "token")
		if err := os.WriteFile(p, []byte("old"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, 0o640); err != nil {
			t.Fatal(err)
		}
		if os.Getuid() == 0 {
			if err := os.Chown(p, uid, gid); err != nil {
				t.Fatal(err)
			}
		}
		return p
	}
	for _, tc := range []struct {
		name   string
		target func(dir string) string // prepares the target, returns the path to write
		opts   []remote.WriteOption
		short  bool   // the upload loses its last byte
		errMsg string // WriteFile fails saying this; "" = succeeds
		want   string // the target's content after
		mode   uint32 // and mode
	}{
		{name: "replace", target: old, want: "new", mode: 0o640},
		{name: "create", target: func(dir string) string { return filepath.Join(dir, "new") }, want: "new", mode: 0o600},
		{name: "through a symlink", target: func(dir string) string {
			old(dir)
			l := filepath.Join(dir, "link")
			if err := os.Symlink("token", l); err != nil {
				t.Fatal(err)
			}
			return l
		}, want: "new", mode: 0o640},
		{name: "unchanged", target: old, opts: []remote.WriteOption{remote.IfUnchanged(sha256Hex("old"))}, want: "new", mode: 0o640},
		{name: "changed", target: old, opts: []remote.WriteOption{remote.IfUnchanged(sha256Hex("older"))},
			errMsg: "changed since it was read", want: "old", mode: 0o640},
		{name: "short upload", target: old, short: true, errMsg: "received 2 of 3 bytes", want: "old", mode: 0o640},
		{name: "hard link", target: func(dir string) string {
			p := old(dir)
			if err := os.Link(p, p+".2"); err != nil {
				t.Fatal(err)
			}
			return p
		}, errMsg: "has 2 hard links", want: "old", mode: 0o640},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			env := []string{"PATH=" + bin}
			f := newFixture(t)
			c := f.dial(f.config(f.server(sshtest.Options{Handler: func(ctx context.Context, e *sshtest.Exec) int {
				if tc.short {
					in, _ := io.ReadAll(e.Stdin)
					e.Stdin = bytes.NewReader(in[:len(in)-1])
				}
				return sshtest.Shell("", env...)(ctx, e)
			}}, false)))
			dir := t.TempDir()
			p := tc.target(dir)
			err := c.WriteFile(ctx(t), p, []byte("new"), 0o600, tc.opts...)
			if tc.errMsg == "" && err != nil {
				t.Fatal(err)
			}
			if tc.errMsg != "" {
				if err == nil {
					t.Fatal("WriteFile succeeded")
				}
				mustContain(t, err.Error(), tc.errMsg)
			}
			st := stat(t, p)
			if got := readFile(t, p); got != tc.want || uint32(st.Mode)&0o7777 != tc.mode {
				t.Fatalf("content %q mode %o, want %q %o", got, st.Mode&0o7777, tc.want, tc.mode)
			}
			if tc.mode == 0o640 && (int(st.Uid) != uid || int(st.Gid) != gid) {
				t.Fatalf("owner %d:%d, want %d:%d", st.Uid, st.Gid, uid, gid)
			}
			assertNoTempFiles(t, dir)
		})
	}
}
