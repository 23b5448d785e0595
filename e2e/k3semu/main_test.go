package main

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestVersion(t *testing.T) {
	root := t.TempDir()
	e, _, out := newTestEnv(t, root, nil)
	if code := run(context.Background(), e, []string{"k3s", "--version"}); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if !strings.HasPrefix(out.String(), "k3s version v1.33.5+k3s1 (") || !strings.Contains(out.String(), "\ngo version go1.") {
		t.Fatalf("got %q", out.String())
	}
	mustWrite(t, filepath.Join(e.EmuDir, "version"), []byte("v1.25.6+k3s1\n"))
	out2 := &syncBuffer{}
	e.Stdout = out2
	run(context.Background(), e, []string{"k3s", "-v"})
	if !strings.HasPrefix(out2.String(), "k3s version v1.25.6+k3s1 (") {
		t.Fatalf("got %q", out2.String())
	}
}

func TestRenewDaysByVersion(t *testing.T) {
	for v, want := range map[string]int{"v1.33.5+k3s1": 120, "v1.33.0+k3s1": 90, "v1.32.5+k3s1": 120, "v1.32.4+k3s1": 90, "v1.30.13+k3s1": 120, "v1.29.15+k3s1": 90, "v1.34.1+k3s1": 120} {
		if got := renewDays(v); got != want {
			t.Errorf("%s: %d want %d", v, got, want)
		}
	}
}

func TestFaultFailStart(t *testing.T) {
	root := t.TempDir()
	e, logs, _ := newTestEnv(t, root, nil)
	mustWrite(t, filepath.Join(e.EmuDir, "fault"), []byte("fail-start\n"))
	if code := run(context.Background(), e, []string{"k3s", "server", "-d", root + "/data", "--token", "x"}); code != 1 {
		t.Fatalf("exit %d", code)
	}
	assertContains(t, logs.String(), "level=error")
	if fileExists(root + "/data/server/token") {
		t.Fatal("fail-start must fail before doing anything")
	}
}

func TestFaultHangStart(t *testing.T) {
	root := t.TempDir()
	e, logs, _ := newTestEnv(t, root, nil)
	mustWrite(t, filepath.Join(e.EmuDir, "fault"), []byte("hang-start"))
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	run(ctx, e, []string{"k3s", "server", "-d", root + "/data", "--token", "x"})
	if strings.Contains(logs.String(), "k3s is up and running") || fileExists(root+"/data/server/token") {
		t.Fatal("hang-start became ready")
	}
}

// TestFaultHangStartCleared: clearing the fault lets a hung start go on.
func TestFaultHangStartCleared(t *testing.T) {
	root := t.TempDir()
	e, logs, _ := newTestEnv(t, root, nil)
	fault := filepath.Join(e.EmuDir, "fault")
	mustWrite(t, fault, []byte("hang-start\n"))
	done := make(chan bool, 1)
	go func() {
		stop, err := applyFault(context.Background(), e)
		done <- stop || err != nil
	}()
	select {
	case <-done:
		t.Fatal("hang-start returned while the fault was set")
	case <-time.After(300 * time.Millisecond):
	}
	mustWrite(t, fault, nil)
	select {
	case stopped := <-done:
		if stopped {
			t.Fatal("a cleared hang-start must go on starting")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("hang-start did not notice its fault was cleared")
	}
	assertContains(t, logs.String(), "hang-start cleared")
}

func TestAgentRequiresTokenAndServer(t *testing.T) {
	root := t.TempDir()
	e, logs, _ := newTestEnv(t, root, nil)
	if code := run(context.Background(), e, []string{"k3s", "agent", "-d", root, "--server", "https://x:6443"}); code != 1 {
		t.Fatalf("exit %d", code)
	}
	assertContains(t, logs.String(), `level=fatal msg="--token is required"`)
	if code := run(context.Background(), e, []string{"k3s", "agent", "-d", root, "--token", "x"}); code != 1 {
		t.Fatalf("exit %d", code)
	}
	assertContains(t, logs.String(), `level=fatal msg="--server is required"`)
}

func TestRotateCARequiresPathAndToken(t *testing.T) {
	root := t.TempDir()
	e, logs, _ := newTestEnv(t, root, nil)
	if code := run(context.Background(), e, []string{"k3s", "certificate", "rotate-ca", "-d", root}); code != 1 {
		t.Fatalf("exit %d", code)
	}
	assertContains(t, logs.String(), `Required flag \"path\" not set`)
	if code := run(context.Background(), e, []string{"k3s", "certificate", "rotate-ca", "-d", root, "--path", root}); code != 1 {
		t.Fatalf("exit %d", code)
	}
	assertContains(t, logs.String(), "open "+root+"/server/token: no such file or directory")
}

// TestFaultTokenHash: token-hash=HASH makes an agent join as if its token
// pinned HASH (its token left on an old CA); servers ignore it.
func TestFaultTokenHash(t *testing.T) {
	h := strings.Repeat("3", 64)
	for in, want := range map[string]string{
		"K10" + strings.Repeat("a", 64) + "::server:pw":               "K10" + h + "::server:pw",
		"K10" + strings.Repeat("a", 64) + "::abcdef.0123456789abcdef": "K10" + h + "::abcdef.0123456789abcdef",
		"pw": "K10" + h + "::server:pw",
	} {
		if got := pinTokenHash(in, h); got != want {
			t.Errorf("pinTokenHash(%q) = %q, want %q", in, got, want)
		}
	}
	root := t.TempDir()
	e, logs, _ := newTestEnv(t, root, nil)
	if tokenHashFault(e) != "" {
		t.Fatal("no fault file: no hash")
	}
	mustWrite(t, filepath.Join(e.EmuDir, "fault"), []byte("token-hash="+h+"\n"))
	if got := tokenHashFault(e); got != h {
		t.Fatalf("tokenHashFault = %q", got)
	}
	if stop, err := applyFault(context.Background(), e); stop || err != nil {
		t.Fatalf("applyFault: stop %v, err %v", stop, err)
	}
	if strings.Contains(logs.String(), "unknown fault") {
		t.Fatalf("token-hash taken for an unknown fault:\n%s", logs.String())
	}
}
