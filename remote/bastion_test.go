package remote_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/fleetcert/fleetcert/remote"
	"github.com/fleetcert/fleetcert/remote/sshtest"
)

func TestBastionTwoHops(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	b1 := f.server(sshtest.Options{}, false)
	b2 := f.server(sshtest.Options{}, false)
	// The target refuses forwarding: only the bastions need it.
	target := f.server(sshtest.Options{NoForwarding: true}, false)
	cfg := f.config(target)
	cfg.Bastion = fmt.Sprintf("jump1@%s, jump2@%s", b1.Addr(), b2.Addr())
	c := f.dial(cfg)
	if got := mustRun(t, c, "echo $USER", nil); string(got.Stdout) != "tester\n" {
		t.Fatalf("stdout %q", got.Stdout)
	}
	if b1.Forwards() != 1 || b2.Forwards() != 1 || target.Execs() != 1 {
		t.Fatalf("forwards %d/%d, target execs %d", b1.Forwards(), b2.Forwards(), target.Execs())
	}
	if b1.Execs()+b2.Execs() != 0 {
		t.Fatal("a command ran on a bastion")
	}
}

func TestBastionHostKeyIsVerified(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	b := f.server(sshtest.Options{}, true) // not in known_hosts
	target := f.server(sshtest.Options{}, false)
	cfg := f.config(target)
	cfg.Bastion = b.Addr()
	_, err := remote.Dial(ctx(t), cfg)
	if !errors.Is(err, remote.ErrHostKeyUnknown) {
		t.Fatalf("err = %v, want ErrHostKeyUnknown", err)
	}
	mustContain(t, err.Error(), "via bastion", b.Addr())
	if target.Logins() != 0 {
		t.Fatal("reached the target through an unverified bastion")
	}
}

func TestBastionThatForbidsForwarding(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	b := f.server(sshtest.Options{NoForwarding: true}, false)
	target := f.server(sshtest.Options{}, false)
	cfg := f.config(target)
	cfg.Bastion = b.Addr()
	_, err := remote.Dial(ctx(t), cfg)
	if err == nil {
		t.Fatal("dial succeeded")
	}
	mustContain(t, err.Error(), "prohibited")
}

func TestSSHConfigSuppliesUnsetFields(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	id := sshtest.WriteIdentity(t, filepath.Join(f.home, ".ssh"), "custom_key", sshtest.ECDSA, "")
	jump := f.server(sshtest.Options{}, false)
	target := f.server(sshtest.Options{}, false)
	target.Authorize(id.Signer.PublicKey())
	jump.Authorize(id.Signer.PublicKey())
	conf := fmt.Sprintf(`
Host node1
  HostName 127.0.0.1
  Port %d
  User alice
  IdentityFile ~/.ssh/custom_key
  ProxyJump bob@jumphost

Host jumphost
  HostName 127.0.0.1
  Port %d

Host *
  User nobody-default
`, target.Port(), jump.Port())
	if err := os.WriteFile(filepath.Join(f.home, ".ssh", "config"), []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := remote.Config{
		Host:                 "node1",
		HomeDir:              f.home, // ~/.ssh/config and ~/.ssh/known_hosts from here
		SystemKnownHostsFile: remote.None,
		AgentSocket:          remote.None,
		Logger:               f.config(target).Logger,
	}
	c := f.dial(cfg)
	mustRun(t, c, "true", nil)
	if got := c.String(); got != fmt.Sprintf("alice@127.0.0.1:%d", target.Port()) {
		t.Fatalf("client is %s", got)
	}
	if r := target.Records(); len(r) != 1 || r[0].User != "alice" {
		t.Fatalf("target records %+v", r)
	}
	if jump.Forwards() != 1 {
		t.Fatal("ProxyJump not used")
	}

	// Explicit fields win over ssh_config; Bastion "none" overrides ProxyJump.
	cfg.User, cfg.Bastion = "carol", remote.None
	c2 := f.dial(cfg)
	mustRun(t, c2, "true", nil)
	if r := target.Records(); r[len(r)-1].User != "carol" || jump.Forwards() != 1 {
		t.Fatalf("records %+v, jump forwards %d", r, jump.Forwards())
	}
}

// TestBastionConnectionShared: nodes behind one bastion share its
// connection, up to MaxChannels nodes each; a connection nobody uses
// closes after Linger.
func TestBastionConnectionShared(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	b := f.server(sshtest.Options{}, false)
	jumps := &remote.Jumps{MaxChannels: 2, Linger: 50 * time.Millisecond}
	var clients []*remote.Client
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range 5 {
		cfg := f.config(f.server(sshtest.Options{}, false))
		cfg.Bastion, cfg.Jumps = b.Addr(), jumps
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := f.dial(cfg)
			mustRun(t, c, "true", nil)
			mu.Lock()
			clients = append(clients, c)
			mu.Unlock()
		}()
	}
	wg.Wait()
	if b.Logins() != 3 || b.Forwards() != 5 || jumps.Conns() != 3 {
		t.Fatalf("5 nodes, 2 per connection: %d bastion logins, %d forwards, %d pooled connections; want 3, 5, 3",
			b.Logins(), b.Forwards(), jumps.Conns())
	}
	for _, c := range clients {
		c.Close()
	}
	waitFor(t, "idle bastion connections to close", func() bool { return jumps.Conns() == 0 })
}

// TestBastionConcurrentDialsShareOneConnection: nodes dialled all at once
// wait for the one bastion connection being made rather than each making
// its own.
func TestBastionConcurrentDialsShareOneConnection(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	b := f.server(sshtest.Options{}, false)
	jumps := &remote.Jumps{}
	var wg sync.WaitGroup
	for range 20 {
		cfg := f.config(f.server(sshtest.Options{}, false))
		cfg.Bastion, cfg.Jumps = b.Addr(), jumps
		wg.Add(1)
		go func() {
			defer wg.Done()
			mustRun(t, f.dial(cfg), "true", nil)
		}()
	}
	wg.Wait()
	if b.Logins() != 1 || b.Forwards() != 20 {
		t.Fatalf("%d bastion logins, %d forwards; want 1, 20", b.Logins(), b.Forwards())
	}
}

// TestBastionChainsShareTheirCommonHops: one connection per hop, however
// many nodes and chains run through it.
func TestBastionChainsShareTheirCommonHops(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	b1 := f.server(sshtest.Options{}, false)
	b2 := f.server(sshtest.Options{}, false)
	jumps := &remote.Jumps{}
	for _, chain := range []string{b1.Addr() + "," + b2.Addr(), b1.Addr() + "," + b2.Addr(), b1.Addr()} {
		cfg := f.config(f.server(sshtest.Options{}, false))
		cfg.Bastion, cfg.Jumps = chain, jumps
		mustRun(t, f.dial(cfg), "true", nil)
	}
	// b1 carries the connection to b2 and the third node; b2 the first two.
	if b1.Logins() != 1 || b2.Logins() != 1 || b1.Forwards() != 2 || b2.Forwards() != 2 || jumps.Conns() != 2 {
		t.Fatalf("logins %d/%d, forwards %d/%d, pooled %d", b1.Logins(), b2.Logins(), b1.Forwards(), b2.Forwards(), jumps.Conns())
	}
}

// TestBastionDroppedNodesRedial: when the shared bastion connection
// drops, every node behind it redials through a new one.
func TestBastionDroppedNodesRedial(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	b := f.server(sshtest.Options{}, false)
	jumps := &remote.Jumps{}
	var clients []*remote.Client
	for range 3 {
		cfg := f.config(f.server(sshtest.Options{}, false))
		cfg.Bastion, cfg.Jumps = b.Addr(), jumps
		c := f.dial(cfg)
		mustRun(t, c, "true", nil)
		clients = append(clients, c)
	}
	b.DropConnections()
	waitFor(t, "the dropped bastion connection to be forgotten", func() bool { return jumps.Conns() == 0 })
	for _, c := range clients {
		mustRun(t, c, "true", nil)
	}
	if b.Logins() != 2 || jumps.Conns() != 1 {
		t.Fatalf("%d bastion logins, %d pooled; want 2, 1", b.Logins(), jumps.Conns())
	}
}
