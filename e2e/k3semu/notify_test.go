package main

import (
	"net"
	"path/filepath"
	"testing"
	"time"
)

func TestSdNotify(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// The socket comes from the Env's environment, not os.Getenv: after
	// the hiding re-exec only the Env still has it.
	t.Setenv("NOTIFY_SOCKET", "")
	e, _, _ := newTestEnv(t, t.TempDir(), map[string]string{"NOTIFY_SOCKET": sock})
	if err := e.sdNotify("READY=1"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	n, err := conn.Read(buf)
	if err != nil || string(buf[:n]) != "READY=1" {
		t.Fatalf("got %q %v", buf[:n], err)
	}
	e, _, _ = newTestEnv(t, t.TempDir(), nil)
	if err := e.sdNotify("READY=1"); err != nil {
		t.Fatal("no socket must be a no-op")
	}
}
