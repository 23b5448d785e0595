package remote_test

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fleetcert/fleetcert/remote"
	"github.com/fleetcert/fleetcert/remote/sshtest"
)

// fixture is a fake home directory with a client key and a known_hosts
// file, and servers that trust the key.
type fixture struct {
	t     *testing.T
	home  string
	id    sshtest.Identity
	known string
	logs  *syncBuffer
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	home := t.TempDir()
	f := &fixture{
		t:     t,
		home:  home,
		id:    sshtest.WriteIdentity(t, filepath.Join(home, ".ssh"), "id_ed25519", sshtest.ED25519, ""),
		known: filepath.Join(home, ".ssh", "known_hosts"),
		logs:  &syncBuffer{},
	}
	return f
}

// server starts a server that trusts the fixture's key; it is recorded in
// known_hosts unless unknown is set.
func (f *fixture) server(opts sshtest.Options, unknown bool) *sshtest.Server {
	f.t.Helper()
	opts.AuthorizedKeys = append(opts.AuthorizedKeys, f.id.Signer.PublicKey())
	s := sshtest.Start(f.t, opts)
	if !unknown {
		s.AppendKnownHosts(f.t, f.known, false)
	}
	return s
}

// config is a Config for s that never looks at the real home directory,
// ssh_config, system known_hosts or agent.
func (f *fixture) config(s *sshtest.Server) remote.Config {
	return remote.Config{
		Host:                 s.Host(),
		Port:                 s.Port(),
		User:                 "tester",
		IdentityFile:         f.id.Path,
		HomeDir:              f.home,
		SSHConfigFile:        remote.None,
		SystemKnownHostsFile: remote.None,
		AgentSocket:          remote.None,
		ConnectTimeout:       5 * time.Second,
		Logger:               slog.New(slog.NewTextHandler(f.logs, nil)),
	}
}

func (f *fixture) dial(cfg remote.Config) *remote.Client {
	f.t.Helper()
	c, err := remote.Dial(ctx(f.t), cfg)
	if err != nil {
		f.t.Fatalf("Dial: %v", err)
	}
	f.t.Cleanup(func() { c.Close() })
	return c
}

func ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func mustRun(t *testing.T, h remote.Host, script string, stdin []byte) remote.Result {
	t.Helper()
	res, err := h.Run(ctx(t), script, stdin)
	if err != nil {
		t.Fatalf("Run(%q): %v", script, err)
	}
	return res
}

func mustContain(t *testing.T, s string, subs ...string) {
	t.Helper()
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			t.Errorf("%q\ndoes not contain %q", s, sub)
		}
	}
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// waitFor polls cond for up to 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
