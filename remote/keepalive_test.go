package remote_test

import (
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fleetcert/fleetcert/remote"
	"github.com/fleetcert/fleetcert/remote/sshtest"
)

// blackhole is a TCP proxy that, once frozen, silently swallows everything
// on the connections it already carries — a peer that vanished without a
// FIN or RST, which only keepalives can detect.
type blackhole struct {
	ln     net.Listener
	frozen atomic.Bool
	mu     sync.Mutex
	conns  []net.Conn
}

func newBlackhole(t *testing.T, target string) *blackhole {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &blackhole{ln: ln}
	t.Cleanup(func() {
		ln.Close()
		b.mu.Lock()
		for _, c := range b.conns {
			c.Close()
		}
		b.mu.Unlock()
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			b.mu.Lock()
			b.conns = append(b.conns, c, u)
			b.mu.Unlock()
			frozenAtStart := b.frozen.Load()
			go b.pipe(u, c, frozenAtStart)
			go b.pipe(c, u, frozenAtStart)
		}
	}()
	return b
}

// pipe copies src to dst until the proxy freezes; connections made while
// frozen are not affected (the "network" recovered for new connections).
func (b *blackhole) pipe(dst, src net.Conn, exempt bool) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && (exempt || !b.frozen.Load()) {
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func TestKeepAliveDetectsSilentlyDeadPeer(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	s := f.server(sshtest.Options{}, true)
	bh := newBlackhole(t, s.Addr())
	port := bh.ln.Addr().(*net.TCPAddr).Port
	cfg := f.config(s)
	cfg.Port = port
	cfg.HostKeyPolicy = remote.PolicyAcceptNew
	cfg.KeepAlive = 50 * time.Millisecond
	c := f.dial(cfg)
	mustRun(t, c, "true", nil)

	bh.frozen.Store(true)
	waitFor(t, "keepalive to give up", func() bool { return strings.Contains(f.logs.String(), "keepalive unanswered") })
	// New connections go through again; the old one was declared dead by
	// keepalive, so Run redials instead of hanging on it.
	mustRun(t, c, "true", nil)
	if c.Reconnects() != 1 {
		t.Fatalf("reconnects = %d", c.Reconnects())
	}
}

func TestConnectTimeout(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() { // accepts and never speaks SSH
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	f := newFixture(t)
	outer := ctx(t)
	_, err = remote.Dial(outer, remote.Config{
		Host: "127.0.0.1", Port: ln.Addr().(*net.TCPAddr).Port, User: "u", HomeDir: f.home,
		SSHConfigFile: remote.None, SystemKnownHostsFile: remote.None, AgentSocket: remote.None,
		ConnectTimeout: 200 * time.Millisecond,
	})
	if err == nil {
		t.Fatal("dial succeeded")
	}
	if outer.Err() != nil {
		t.Fatal("Dial ended by the test's context, not by ConnectTimeout")
	}
	mustContain(t, err.Error(), "deadline exceeded", "u@127.0.0.1:")
}
