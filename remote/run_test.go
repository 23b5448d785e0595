package remote_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fleetcert/fleetcert/remote"
	"github.com/fleetcert/fleetcert/remote/sshtest"
)

func TestRunResultAndStdin(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	c := f.dial(f.config(f.server(sshtest.Options{}, false)))
	res := mustRun(t, c, "cat; echo err >&2; exit 3", []byte("in\x00put"))
	if string(res.Stdout) != "in\x00put" || string(res.Stderr) != "err\n" || res.ExitCode != 3 {
		t.Fatalf("got %+v", res)
	}
	mustContain(t, res.Err().Error(), "exit status 3", "err")
	if _, err := remote.Output(ctx(t), c, "exit 1"); err == nil {
		t.Fatal("Output ignored a failure")
	}
	// The login shell does not matter: the script always runs under sh.
	if got := mustRun(t, c, `echo "$0"`, nil); string(got.Stdout) != "fleetcert\n" {
		t.Fatalf("$0 = %q", got.Stdout)
	}
}

func TestRunHostileStringsArriveUnchanged(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	c := f.dial(f.config(f.server(sshtest.Options{}, false)))
	for _, s := range hostile {
		got := mustRun(t, c, "printf %s "+remote.Quote(s), nil)
		if string(got.Stdout) != s {
			t.Errorf("printf %q came back as %q", s, got.Stdout)
		}
	}
}

var hostile = []string{
	"plain", "with space", "it's", `"double"`, "$(touch /tmp/pwned)", "`id`", "a;b", "a\nb", "tab\there",
	`back\slash`, "ünïcödé ✓", "'", "''", "-n", "*", "~root", "a|b&c>d<e", "$HOME", "\\'\"$`",
}

func TestConcurrentRunsShareOneConnection(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	s := f.server(sshtest.Options{}, false)
	c := f.dial(f.config(s))
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := c.Run(ctx(t), "echo "+strconv.Itoa(i), nil)
			if err != nil || string(res.Stdout) != strconv.Itoa(i)+"\n" {
				t.Errorf("run %d: %v %q", i, err, res.Stdout)
			}
		}()
	}
	wg.Wait()
	if s.Logins() != 1 || c.Sessions() != 20 || s.Execs() != 20 {
		t.Fatalf("logins %d, sessions %d, execs %d", s.Logins(), c.Sessions(), s.Execs())
	}
}

func TestRunOutputCap(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	cfg := f.config(f.server(sshtest.Options{}, false))
	cfg.MaxOutput = 1000
	c := f.dial(cfg)
	res := mustRun(t, c, "head -c 1000 /dev/zero", nil)
	if len(res.Stdout) != 1000 {
		t.Fatalf("got %d bytes", len(res.Stdout))
	}
	// Endless writers must be killed, or these would hang.
	for _, script := range []string{"head -c 1001 /dev/zero", "yes", "yes >&2"} {
		_, err := c.Run(ctx(t), script, nil)
		if !errors.Is(err, remote.ErrOutputTooLarge) {
			t.Fatalf("%s: err = %v, want ErrOutputTooLarge", script, err)
		}
	}
	mustRun(t, c, "true", nil) // the connection is still good
}

// TestRunCancelKillsRemoteProcess checks that cancelling Run ends the
// remote command and its children, whether the server signals the process
// group (OpenSSH) or only the command's own process.
func TestRunCancelKillsRemoteProcess(t *testing.T) {
	for _, leaderOnly := range []bool{false, true} {
		t.Run(fmt.Sprintf("leaderOnly=%v", leaderOnly), func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			c := f.dial(f.config(f.server(sshtest.Options{SignalLeaderOnly: leaderOnly}, false)))
			pidFile := filepath.Join(t.TempDir(), "pid")
			runCtx, cancel := context.WithCancel(ctx(t))
			done := make(chan error, 1)
			go func() {
				_, err := c.Run(runCtx, "sleep 1000 & echo $! > "+remote.Quote(pidFile)+"; wait", nil)
				done <- err
			}()
			var pid int
			waitFor(t, "pid file", func() bool {
				b, err := os.ReadFile(pidFile)
				pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
				return err == nil && pid > 0
			})
			cancel()
			if err := <-done; !errors.Is(err, context.Canceled) {
				t.Fatalf("err = %v, want context.Canceled", err)
			}
			waitFor(t, "sleep to die", func() bool { return !processAlive(pid) })
		})
	}
}

// processAlive reports whether pid runs (a zombie awaiting its reaper does not).
func processAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndex(s, ")")
	return i < 0 || i+2 >= len(s) || (s[i+2] != 'Z' && s[i+2] != 'X')
}

func TestReconnectAfterDrop(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	s := f.server(sshtest.Options{}, false)
	c := f.dial(f.config(s))
	dir := t.TempDir()
	file := filepath.Join(dir, "f")
	if err := os.WriteFile(file, []byte("content"), 0o600); err != nil {
		t.Fatal(err)
	}
	mustRun(t, c, "true", nil)

	s.DropConnections()
	got, err := c.ReadFile(ctx(t), file)
	if err != nil || string(got) != "content" {
		t.Fatalf("ReadFile after drop: %q, %v", got, err)
	}
	// A Run whose session could not even be opened is retried too.
	s.DropConnections()
	marker := filepath.Join(dir, "ran")
	mustRun(t, c, "echo x >> "+remote.Quote(marker), nil)
	if got := readFile(t, marker); got != "x\n" {
		t.Fatalf("command ran %d times", strings.Count(got, "x"))
	}
	if c.Reconnects() != 2 || s.Logins() != 3 {
		t.Fatalf("reconnects %d, logins %d", c.Reconnects(), s.Logins())
	}
	mustContain(t, f.logs.String(), "re-established")
}

func TestStartedRunIsNotRetried(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	s := f.server(sshtest.Options{}, false)
	c := f.dial(f.config(s))
	marker := filepath.Join(t.TempDir(), "ran")
	done := make(chan error, 1)
	go func() {
		_, err := c.Run(ctx(t), "echo x >> "+remote.Quote(marker)+"; sleep 1000", nil)
		done <- err
	}()
	waitFor(t, "command start", func() bool { _, err := os.Stat(marker); return err == nil })
	s.DropConnections()
	if err := <-done; !errors.Is(err, remote.ErrConnectionLost) {
		t.Fatalf("err = %v, want ErrConnectionLost", err)
	}
	mustRun(t, c, "true", nil) // the next operation reconnects
	if got := readFile(t, marker); got != "x\n" || s.Execs() != 2 {
		t.Fatalf("marker %q, execs %d: a started command was re-run", got, s.Execs())
	}
}

// TestReadFileRetriedWhenDroppedMidway drops the connection while the
// read is running on the node; ReadFile must redial and read again.
func TestReadFileRetriedWhenDroppedMidway(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	started := make(chan struct{}, 2)
	var s *sshtest.Server
	var calls sync.Mutex
	n := 0
	s = f.server(sshtest.Options{Handler: func(ctx context.Context, e *sshtest.Exec) int {
		calls.Lock()
		n++
		first := n == 1
		calls.Unlock()
		if first {
			started <- struct{}{}
			<-ctx.Done() // hangs until the connection is gone
			return 1
		}
		io.WriteString(e.Stdout, "second read")
		return 0
	}}, false)
	c := f.dial(f.config(s))
	go func() { <-started; s.DropConnections() }()
	got, err := c.ReadFile(ctx(t), "/etc/whatever")
	if err != nil || string(got) != "second read" {
		t.Fatalf("ReadFile: %q, %v", got, err)
	}
	if s.Execs() != 2 || c.Reconnects() != 1 {
		t.Fatalf("execs %d, reconnects %d", s.Execs(), c.Reconnects())
	}
}

func TestClosedClient(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	c := f.dial(f.config(f.server(sshtest.Options{}, false)))
	c.Close()
	if _, err := c.Run(ctx(t), "true", nil); !errors.Is(err, remote.ErrClosed) {
		t.Fatalf("err = %v, want ErrClosed", err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestDialContextForwardsThroughSSH(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "pong")
	}))
	defer web.Close()
	c := f.dial(f.config(f.server(sshtest.Options{}, false)))
	hc := &http.Client{Transport: &http.Transport{DialContext: c.DialContext}}
	resp, err := hc.Get(web.URL + "/ping")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "pong" || c.Forwards() < 1 {
		t.Fatalf("body %q, forwards %d", body, c.Forwards())
	}

	// A node whose sshd forbids forwarding says so recognisably.
	nofwd := f.dial(f.config(f.server(sshtest.Options{NoForwarding: true}, false)))
	_, err = nofwd.DialContext(ctx(t), "tcp", web.Listener.Addr().String())
	if !errors.Is(err, remote.ErrForwardingRefused) {
		t.Fatalf("err = %v, want ErrForwardingRefused", err)
	}
	// A closed port on the node is not a refusal by sshd.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := ln.Addr().String()
	ln.Close()
	if _, err := c.DialContext(ctx(t), "tcp", closed); err == nil || errors.Is(err, remote.ErrForwardingRefused) {
		t.Fatalf("err = %v", err)
	}
}

// fakeSudo writes a `sudo` that logs its argv (NUL-separated) and, with -S,
// the line it read from stdin, then runs the command like sudo would.
// FAKE_SUDO_PASSWORD set means -n fails ("a password is required").
func fakeSudo(t *testing.T, password string) (binDir, logDir string) {
	t.Helper()
	binDir, logDir = t.TempDir(), t.TempDir()
	script := `#!/bin/sh
log=` + remote.Quote(logDir) + `/$$
printf '%s\0' "$@" > "$log.argv"
S=; N=
while [ $# -gt 0 ]; do
  case $1 in
    -n) N=1; shift;;
    -k) shift;;
    -S) S=1; shift;;
    -p) shift 2;;
    --) shift; break;;
    *) break;;
  esac
done
if [ -n "$S" ]; then
  IFS= read -r pw
  printf '%s' "$pw" > "$log.stdin"
  [ "$pw" = "$FAKE_SUDO_PASSWORD" ] || { echo "Sorry, try again." >&2; exit 1; }
elif [ -n "$FAKE_SUDO_PASSWORD" ]; then
  echo "sudo: a password is required" >&2; exit 1
fi
exec "$@"
`
	if err := os.WriteFile(filepath.Join(binDir, "sudo"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return binDir, logDir
}

// sudoCalls returns the argv of each fake sudo call and what it read.
func sudoCalls(t *testing.T, logDir string) (argvs [][]string, stdins []string) {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(logDir, "*.argv"))
	for _, fn := range files {
		argv := strings.Split(strings.TrimSuffix(readFile(t, fn), "\x00"), "\x00")
		argvs = append(argvs, argv)
		if b, err := os.ReadFile(strings.TrimSuffix(fn, ".argv") + ".stdin"); err == nil {
			stdins = append(stdins, string(b))
		}
	}
	return argvs, stdins
}

func TestSudoWithoutPassword(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	bin, logs := fakeSudo(t, "")
	s := f.server(sshtest.Options{Env: []string{"PATH=" + bin + ":" + os.Getenv("PATH")}}, false)
	cfg := f.config(s)
	cfg.Sudo = true
	c := f.dial(cfg)
	if got := mustRun(t, c, "cat", []byte("payload")); string(got.Stdout) != "payload" {
		t.Fatalf("stdout %q", got.Stdout)
	}
	argvs, stdins := sudoCalls(t, logs)
	if len(argvs) != 1 || len(stdins) != 0 {
		t.Fatalf("sudo calls %q, stdin reads %q", argvs, stdins)
	}
	if a := argvs[0]; len(a) != 7 || a[0] != "-n" || a[1] != "--" || a[2] != "sh" || a[3] != "-c" || a[6] != "cat" {
		t.Fatalf("argv %q", a)
	}
	if c.Sessions() != 1 {
		t.Fatalf("%d sessions for one command", c.Sessions())
	}
}

func TestSudoPasswordGoesToStdinOnly(t *testing.T) {
	t.Parallel()
	const password = "s3cr'et $(x)"
	f := newFixture(t)
	bin, logs := fakeSudo(t, password)
	s := f.server(sshtest.Options{Env: []string{"PATH=" + bin + ":" + os.Getenv("PATH"), "FAKE_SUDO_PASSWORD=" + password}}, false)
	cfg := f.config(s)
	cfg.Sudo, cfg.SudoPassword = true, password
	c := f.dial(cfg)
	for range 2 {
		if got := mustRun(t, c, "cat", []byte("payload\nline2")); string(got.Stdout) != "payload\nline2" {
			t.Fatalf("stdout %q", got.Stdout)
		}
	}
	if c.Sessions() != 3 {
		t.Fatalf("sessions = %d, want 3 (one probe, two commands)", c.Sessions())
	}
	argvs, stdins := sudoCalls(t, logs)
	// The probe: sudo -k -n true (refused), sudo -k -S -p '' -- true; then the commands.
	if len(argvs) != 4 || len(stdins) != 3 {
		t.Fatalf("sudo calls %q, stdin reads %d", argvs, len(stdins))
	}
	var sawCommand bool
	for _, a := range argvs {
		joined := strings.Join(a, " ")
		if strings.Contains(joined, "s3cr") {
			t.Fatalf("password on argv: %q", a)
		}
		if a[0] == "-k" && a[1] == "-S" {
			if len(a) < 6 || a[2] != "-p" || a[3] != "" || a[4] != "--" {
				t.Fatalf("argv %q", a)
			}
			sawCommand = sawCommand || a[len(a)-1] == "cat"
		}
	}
	if !sawCommand {
		t.Fatalf("no -S command call in %q", argvs)
	}
	for _, in := range stdins {
		if in != password {
			t.Fatalf("sudo read %q from stdin", in)
		}
	}
	for _, r := range s.Records() {
		if strings.Contains(r.Command, "s3cr") {
			t.Fatalf("password in remote command line %q", r.Command)
		}
	}
	if strings.Contains(f.logs.String(), "s3cr") {
		t.Fatal("password in logs")
	}
}

func TestSudoPasswordNotNeeded(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	bin, logs := fakeSudo(t, "")
	s := f.server(sshtest.Options{Env: []string{"PATH=" + bin + ":" + os.Getenv("PATH")}}, false)
	cfg := f.config(s)
	cfg.Sudo, cfg.SudoPassword = true, "unused"
	c := f.dial(cfg)
	if got := mustRun(t, c, "cat", []byte("payload")); string(got.Stdout) != "payload" {
		t.Fatalf("stdout %q: the password leaked into the command's stdin?", got.Stdout)
	}
	argvs, stdins := sudoCalls(t, logs)
	if len(stdins) != 0 {
		t.Fatalf("sudo read a password although -n works: %q", argvs)
	}
	// The probe (-k -n true), then the command with -n.
	if len(argvs) != 2 {
		t.Fatalf("sudo calls %q", argvs)
	}
	for _, a := range argvs {
		if a[len(a)-1] == "cat" && a[0] != "-n" {
			t.Fatalf("argv %q", a)
		}
	}
}

func TestSudoWrongPassword(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	bin, _ := fakeSudo(t, "right")
	s := f.server(sshtest.Options{Env: []string{"PATH=" + bin + ":" + os.Getenv("PATH"), "FAKE_SUDO_PASSWORD=right"}}, false)
	cfg := f.config(s)
	cfg.Sudo, cfg.SudoPassword = true, "wrong-pw-123"
	c := f.dial(cfg)
	_, err := c.Run(ctx(t), "true", nil)
	if err == nil || strings.Contains(err.Error(), "wrong-pw-123") {
		t.Fatalf("err = %v", err)
	}
	mustContain(t, err.Error(), "sudo")
}

func TestRunStdinLargerThanWindow(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	c := f.dial(f.config(f.server(sshtest.Options{}, false)))
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	res := mustRun(t, c, "wc -c", big)
	if strings.TrimSpace(string(res.Stdout)) != strconv.Itoa(len(big)) {
		t.Fatalf("wc -c = %q", res.Stdout)
	}
	// A command that ignores its stdin still finishes.
	mustRun(t, c, "true", big)
}

// TestCommandTimeoutEndsAHungCommand: with CommandTimeout set, no command
// can hang a run, and the connection stays usable afterwards.
func TestCommandTimeoutEndsAHungCommand(t *testing.T) {
	f := newFixture(t)
	cfg := f.config(f.server(sshtest.Options{}, false))
	cfg.CommandTimeout = 300 * time.Millisecond
	c := f.dial(cfg)
	start := time.Now()
	_, err := c.Run(ctx(t), "sleep 30", nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want context.DeadlineExceeded", err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("a 300ms command timeout took %s", took)
	}
	if res := mustRun(t, c, "echo ok", nil); strings.TrimSpace(string(res.Stdout)) != "ok" {
		t.Fatalf("connection unusable after a timeout: %q", res.Stdout)
	}
}

// TestRunQuick: a read-only script runs as the session's own shell, with
// no wrapper around it: its output and exit status as with Run, sudo and
// a sudo password (on stdin, never argv) as with Run, and a cancelled one
// still ends.
func TestRunQuick(t *testing.T) {
	t.Parallel()
	const password = "s3cr'et"
	f := newFixture(t)
	bin, logs := fakeSudo(t, password)
	s := f.server(sshtest.Options{Env: []string{"PATH=" + bin + ":" + os.Getenv("PATH"), "FAKE_SUDO_PASSWORD=" + password}}, false)
	plain := f.dial(f.config(s))
	out, err := remote.QuickOutput(ctx(t), plain, `echo "$0:$#"; echo 'it'"'"'s'`)
	if err != nil || string(out) != "fleetcert:0\nit's\n" {
		t.Fatalf("QuickOutput: %q, %v", out, err)
	}
	if r := s.Records(); strings.Contains(r[len(r)-1].Command, "trap") {
		t.Errorf("quick command wrapped: %s", r[len(r)-1].Command)
	}
	if res, err := plain.RunQuick(ctx(t), "exit 3"); err != nil || res.ExitCode != 3 {
		t.Fatalf("exit status: %+v, %v", res, err)
	}

	cfg := f.config(s)
	cfg.Sudo, cfg.SudoPassword = true, password
	c := f.dial(cfg)
	if out, err := remote.QuickOutput(ctx(t), c, "echo under sudo"); err != nil || string(out) != "under sudo\n" {
		t.Fatalf("under sudo: %q, %v", out, err)
	}
	argvs, stdins := sudoCalls(t, logs)
	for _, a := range argvs {
		if strings.Contains(strings.Join(a, " "), "s3cr") {
			t.Fatalf("password on argv: %q", a)
		}
	}
	if len(stdins) == 0 || stdins[len(stdins)-1] != password {
		t.Fatalf("sudo read %q", stdins)
	}

	runCtx, cancel := context.WithTimeout(ctx(t), 200*time.Millisecond)
	defer cancel()
	if _, err := plain.RunQuick(runCtx, "sleep 1000"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("cancelled: %v", err)
	}
}
