package sshtest

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

func client(t *testing.T, s *Server, user string, key ssh.Signer) *ssh.Client {
	t.Helper()
	c, err := ssh.Dial("tcp", s.Addr(), &ssh.ClientConfig{
		User:            user,
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(key)},
		HostKeyCallback: ssh.FixedHostKey(s.HostKeys()[0]),
		Timeout:         5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestExecEnvAndRecords(t *testing.T) {
	key := NewSigner(t, ED25519)
	s := Start(t, Options{AuthorizedKeys: []ssh.PublicKey{key.PublicKey()}, AcceptEnv: true, Env: []string{"FIXED=1"}})
	sess, err := client(t, s, "alice", key).NewSession()
	if err != nil {
		t.Fatal(err)
	}
	if err := sess.Setenv("FROM_CLIENT", "2"); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	sess.Stdout, sess.Stdin = &out, strings.NewReader("in")
	err = sess.Run(`printf '%s %s %s ' "$USER" "$FIXED" "$FROM_CLIENT"; cat; exit 7`)
	var ee *ssh.ExitError
	if !errors.As(err, &ee) || ee.ExitStatus() != 7 {
		t.Fatalf("err = %v", err)
	}
	if out.String() != "alice 1 2 in" {
		t.Fatalf("out %q", out.String())
	}
	if r := s.Records(); len(r) != 1 || r[0].User != "alice" || s.Execs() != 1 || s.Logins() != 1 {
		t.Fatalf("records %+v", r)
	}
}

func TestUnauthorizedKeyRejected(t *testing.T) {
	s := Start(t, Options{})
	_, err := ssh.Dial("tcp", s.Addr(), &ssh.ClientConfig{
		User: "x", Auth: []ssh.AuthMethod{ssh.PublicKeys(NewSigner(t, ED25519))},
		HostKeyCallback: ssh.InsecureIgnoreHostKey(), //nolint:gosec // test of the server
	})
	if err == nil {
		t.Fatal("unauthorized key accepted")
	}
}

func TestSignalKillsProcessGroup(t *testing.T) {
	key := NewSigner(t, ED25519)
	s := Start(t, Options{AuthorizedKeys: []ssh.PublicKey{key.PublicKey()}})
	sess, err := client(t, s, "u", key).NewSession()
	if err != nil {
		t.Fatal(err)
	}
	if err := sess.Start("sleep 1000; true"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	if err := sess.Signal(ssh.SIGTERM); err != nil {
		t.Fatal(err)
	}
	err = sess.Wait()
	var ee *ssh.ExitError
	if !errors.As(err, &ee) || ee.Signal() != "TERM" {
		t.Fatalf("err = %v", err)
	}
}

func TestHandlerAndForwarding(t *testing.T) {
	key := NewSigner(t, ED25519)
	s := Start(t, Options{
		AuthorizedKeys: []ssh.PublicKey{key.PublicKey()},
		Handler: func(ctx context.Context, e *Exec) int {
			_, _ = e.Stdout.Write([]byte("node " + e.User))
			return 3
		},
	})
	c := client(t, s, "n42", key)
	out, err := mustSession(t, c).Output("anything")
	var ee *ssh.ExitError
	if string(out) != "node n42" || !errors.As(err, &ee) || ee.ExitStatus() != 3 {
		t.Fatalf("%q %v", out, err)
	}
	// Forward to the server's own port: a bastion in one line.
	nc, err := c.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	banner := make([]byte, 4)
	if _, err := nc.Read(banner); err != nil || string(banner) != "SSH-" {
		t.Fatalf("banner %q %v", banner, err)
	}
	nc.Close()

	off := Start(t, Options{AuthorizedKeys: []ssh.PublicKey{key.PublicKey()}, NoForwarding: true})
	_, err = client(t, off, "u", key).Dial("tcp", s.Addr())
	var oce *ssh.OpenChannelError
	if !errors.As(err, &oce) || oce.Reason != ssh.Prohibited {
		t.Fatalf("err = %v", err)
	}
}

func TestKnownHostsLines(t *testing.T) {
	s := Start(t, Options{HostKeyTypes: []KeyType{ED25519, ECDSA}})
	lines := strings.Split(strings.TrimSpace(s.knownHosts(false)), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "[127.0.0.1]:") {
		t.Fatalf("%q", lines)
	}
	hashed := s.knownHosts(true, ECDSA)
	if !strings.HasPrefix(hashed, "|1|") || !strings.Contains(hashed, "ecdsa-sha2-nistp256") || strings.Count(hashed, "\n") != 1 {
		t.Fatalf("%q", hashed)
	}
	// knownhosts itself accepts the hashed line for the server's address.
	f := t.TempDir() + "/kh"
	s.AppendKnownHosts(t, f, true)
	cb, err := knownhosts.New(f)
	if err != nil {
		t.Fatal(err)
	}
	if err := cb(s.Addr(), &net.TCPAddr{}, s.HostKeys()[1]); err != nil {
		t.Fatal(err)
	}
}

func TestDropConnections(t *testing.T) {
	key := NewSigner(t, ED25519)
	s := Start(t, Options{AuthorizedKeys: []ssh.PublicKey{key.PublicKey()}})
	c := client(t, s, "u", key)
	s.DropConnections()
	done := make(chan error, 1)
	go func() { done <- c.Wait() }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("connection not dropped")
	}
}

func mustSession(t *testing.T, c *ssh.Client) *ssh.Session {
	t.Helper()
	s, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestShellHandlerPerUser(t *testing.T) {
	key := NewSigner(t, ED25519)
	dirs := map[string]string{"n1": t.TempDir(), "n2": t.TempDir()}
	s := Start(t, Options{
		AuthorizedKeys: []ssh.PublicKey{key.PublicKey()},
		Handler: func(ctx context.Context, e *Exec) int {
			return Shell(dirs[e.User], "NODE="+e.User)(ctx, e)
		},
	})
	for user, dir := range dirs {
		out, err := mustSession(t, client(t, s, user, key)).Output(`printf '%s %s' "$NODE" "$PWD"`)
		if err != nil || string(out) != user+" "+dir {
			t.Fatalf("%s: %q %v", user, out, err)
		}
	}
}

func TestDropStdinAt(t *testing.T) {
	key := NewSigner(t, ED25519)
	out := t.TempDir() + "/got"
	s := Start(t, Options{
		AuthorizedKeys: []ssh.PublicKey{key.PublicKey()},
		DropStdinAt:    func(*Exec) int64 { return 3 },
	})
	c := client(t, s, "u", key)
	sess := mustSession(t, c)
	sess.Stdin = strings.NewReader("abcdef")
	// The command outlives the connection and sees only what got through.
	err := sess.Run("cat > " + out)
	if err == nil {
		t.Fatal("session survived the drop")
	}
	deadline := time.Now().Add(10 * time.Second)
	for s.Running() > 0 {
		if time.Now().After(deadline) {
			t.Fatal("command still running")
		}
		time.Sleep(10 * time.Millisecond)
	}
	got, err := os.ReadFile(out)
	if err != nil || string(got) != "abc" {
		t.Fatalf("command got %q, %v", got, err)
	}
}
