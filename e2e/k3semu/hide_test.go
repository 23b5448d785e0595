package main

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestHiddenSubcommand: k3s sets its process title in `server` and `agent`
// only; every other subcommand keeps its argv.
func TestHiddenSubcommand(t *testing.T) {
	cases := []struct {
		argv []string
		want string
	}{
		{[]string{"/usr/local/bin/k3s", "server", "--token", "x"}, "server"},
		{[]string{"/usr/local/bin/k3s", "agent"}, "agent"},
		{[]string{"/usr/local/bin/k3s", "--debug", "server"}, "server"},
		{[]string{"/usr/local/bin/k3s", "certificate", "rotate-ca", "--path", "/x"}, ""},
		{[]string{"/usr/local/bin/k3s", "kubectl", "get", "nodes"}, ""},
		{[]string{"/usr/local/bin/kubectl", "server"}, ""},
		{[]string{"/usr/local/bin/k3s", "token", "rotate"}, ""},
		{[]string{"/usr/local/bin/k3s", "etcd-snapshot", "save"}, ""},
		{[]string{"/usr/local/bin/k3s", "--version"}, ""},
		{[]string{"/usr/local/bin/k3s"}, ""},
		{[]string{"/usr/local/bin/k3s", "--token", "server"}, ""},
	}
	for _, c := range cases {
		if got := hiddenSubcommand(c.argv); got != c.want {
			t.Errorf("%q: %q, want %q", c.argv, got, c.want)
		}
	}
}

// TestProcTitleArgv: after gspt.SetProcTitle(os.Args[0] + " server") the
// kernel shows the original argv area: the title (one string, a space
// before the subcommand) and NULs up to the original length.
func TestProcTitleArgv(t *testing.T) {
	cases := []struct {
		argv []string
		sub  string
	}{
		{[]string{"/usr/local/bin/k3s", "server"}, "server"},
		{[]string{"/usr/local/bin/k3s", "server", "--token", "K10abc::server:secret", "--cluster-init"}, "server"},
		{[]string{"/usr/local/bin/k3s", "--debug", "agent", "-t=x"}, "agent"},
		{[]string{"k3s", "agent", "--server", "https://10.0.0.1:6443"}, "agent"},
		{[]string{"/" + strings.Repeat("x", 300), "server"}, "server"},
	}
	for _, c := range cases {
		orig := strings.Join(c.argv, "\x00") + "\x00"
		title := c.argv[0] + " " + c.sub
		if len(title) > 255 {
			title = title[:255]
		}
		want := title + strings.Repeat("\x00", len(orig)-len(title))
		got := strings.Join(procTitleArgv(c.argv, c.sub), "\x00") + "\x00"
		if got != want {
			t.Errorf("%q: cmdline %q, want %q", c.argv, got, want)
		}
	}
}

func TestArgumentBlockRoundTrip(t *testing.T) {
	argv := []string{"/usr/local/bin/k3s", "server", "", "--token=a=b", "\xff\x00bin"}
	env := []string{"K3S_TOKEN=x", "EMPTY=", "NOTIFY_SOCKET=@/org/freedesktop/systemd1/notify", strings.Repeat("Z", 70000)}
	lists, err := decodeLists(encodeLists(argv, env), 2)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(lists[0], argv) || !slices.Equal(lists[1], env) {
		t.Fatalf("round trip changed the lists")
	}
	if _, err := decodeLists(encodeLists(argv, env)[:20], 2); err == nil {
		t.Fatal("truncated block accepted")
	}
}

// clip shortens /proc contents for error messages.
func clip(b []byte) []byte {
	if len(b) > 400 {
		return append(b[:400:400], "..."...)
	}
	return b
}

// buildEmulator builds this package (CGO_ENABLED=0, as the node image
// does) into a temp dir.
func buildEmulator(t *testing.T) string {
	t.Helper()
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command to build the emulator")
	}
	bin := filepath.Join(t.TempDir(), "k3s")
	cmd := exec.Command(gobin, "build", "-o", bin, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// listenNotify is a systemd-like notify socket that reports the sender's
// PID (SO_PASSCRED), as systemd checks it against MainPID.
func listenNotify(t *testing.T, path string) *net.UnixConn {
	t.Helper()
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	raw, err := conn.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_PASSCRED, 1)
	}); err != nil || serr != nil {
		t.Fatal(err, serr)
	}
	return conn
}

func readNotify(conn *net.UnixConn, timeout time.Duration) (msg string, pid int32, err error) {
	buf, oob := make([]byte, 256), make([]byte, 256)
	conn.SetReadDeadline(time.Now().Add(timeout))
	n, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
	if err != nil {
		return "", 0, err
	}
	msgs, err := syscall.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) == 0 {
		return "", 0, fmt.Errorf("no credentials: %v", err)
	}
	cred, err := syscall.ParseUnixCredentials(&msgs[0])
	if err != nil {
		return "", 0, err
	}
	return string(buf[:n]), cred.Pid, nil
}

// TestHiddenProcessArguments runs the built emulator as `k3s server` with a
// token on the command line, another in K3S_TOKEN and its data dir in a
// config file named by K3S_CONFIG_FILE, like a unit would. Real k3s hides
// all of that from /proc (SetProcTitle): /proc/<pid>/cmdline shows only
// "<argv0> server" and /proc/<pid>/environ gives nothing away. Yet the
// server must still run by its real arguments and environment: the
// config file's data dir, the CLI token over K3S_TOKEN, and READY=1 to
// $NOTIFY_SOCKET from the PID systemd started (MainPID).
func TestHiddenProcessArguments(t *testing.T) {
	if _, err := os.Stat("/proc/self/cmdline"); err != nil {
		t.Skip("no /proc")
	}
	bin := buildEmulator(t)
	root := t.TempDir()
	dataDir := filepath.Join(root, "data")
	cfgFile := filepath.Join(root, "config.yaml")
	mustWrite(t, cfgFile, []byte("data-dir: "+dataDir+"\ntoken: from-config-secret\n"))
	notify := listenNotify(t, filepath.Join(root, "notify"))
	addr := freePort(t)

	argv := []string{bin, "server", "--token=cli-secret-1234", "--node-name", "hidden-node"}
	cmd := exec.Command(bin, argv[1:]...)
	cmd.Env = []string{
		"PATH=/usr/bin:/bin",
		"K3S_TOKEN=env-secret-5678",
		"K3S_CONFIG_FILE=" + cfgFile,
		"NOTIFY_SOCKET=" + filepath.Join(root, "notify"),
		"K3SEMU_SHARED_DIR=" + filepath.Join(root, "shared"),
		"K3SEMU_ETC_DIR=" + filepath.Join(root, "etc-k3semu"),
		"K3SEMU_KUBECONFIG=" + filepath.Join(root, "k3s.yaml"),
		"K3SEMU_LISTEN=" + addr,
		"K3SEMU_LOCAL_URL=https://" + addr,
		// More than a pipe holds by default (64 KiB): the hand-over grows it.
		"BIG=" + strings.Repeat("b", 100<<10),
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop := func() error {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			exited <- err
			return err
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			return fmt.Errorf("no exit 10 s after SIGTERM")
		}
	}
	defer func() {
		stop()
		if t.Failed() {
			t.Logf("emulator stderr:\n%s", stderr.String())
		}
	}()

	msg, pid, err := readNotify(notify, 30*time.Second)
	if err != nil {
		t.Fatalf("no notification: %v", err)
	}
	if msg != "READY=1" || int(pid) != cmd.Process.Pid {
		t.Fatalf("notification %q from pid %d, want READY=1 from %d (the started PID)", msg, pid, cmd.Process.Pid)
	}

	proc := "/proc/" + strconv.Itoa(cmd.Process.Pid)
	cmdline, err := os.ReadFile(proc + "/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	orig := len(strings.Join(argv, "\x00")) + 1
	if want := bin + " server" + strings.Repeat("\x00", orig-len(bin+" server")); string(cmdline) != want {
		t.Errorf("cmdline %q, want %q", clip(cmdline), clip([]byte(want)))
	}
	environ, err := os.ReadFile(proc + "/environ")
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{"K3S_TOKEN", "secret", "K3S_CONFIG_FILE", cfgFile, "NOTIFY_SOCKET", "K3SEMU_LISTEN"} {
		if bytes.Contains(environ, []byte(secret)) || bytes.Contains(cmdline, []byte(secret)) {
			t.Errorf("/proc shows %q: cmdline %q environ %q", secret, clip(cmdline), clip(environ))
		}
	}
	if !bytes.HasPrefix(environ, []byte(hiddenFDVar+"=")) || bytes.Count(environ, []byte{0}) != 1 {
		t.Errorf("environ %q, want only %s", clip(environ), hiddenFDVar)
	}

	// It still behaves by its real arguments: the data dir from the config
	// file K3S_CONFIG_FILE names, the CLI token over config and K3S_TOKEN.
	tok, err := os.ReadFile(filepath.Join(dataDir, "server", "token"))
	if err != nil {
		t.Fatalf("server token not written where the config file says: %v", err)
	}
	if !strings.HasSuffix(strings.TrimSpace(string(tok)), "::server:cli-secret-1234") {
		t.Errorf("server/token %q does not hold the --token password", tok)
	}

	if err := stop(); err != nil {
		t.Errorf("stopping: %v", err)
	}
}
