package remote_test

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

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

func TestWriteFileReplacesAtomicallyKeepingOwnerAndMode(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	c := f.dial(f.config(f.server(sshtest.Options{}, false)))
	dir := t.TempDir()
	p := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(p, []byte("old"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, 0o640); err != nil {
		t.Fatal(err)
	}
	uid, gid := os.Getuid(), os.Getgid()
	if uid == 0 { // as root, prove the owner is carried over, not just left as root
		uid, gid = 1234, 2345
		if err := os.Chown(p, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
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
