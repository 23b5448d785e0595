package remote

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// DefaultJumpChannels bounds the node connections one bastion connection
// carries. Every node behind a bastion is a direct-tcpip channel on it,
// open for as long as the node's connection, and sshd bounds none of
// them: MaxSessions counts only shell and subsystem sessions, MaxStartups
// only unauthenticated connections. One sshd process serves a connection
// (its crypto on one core of the bastion, a socket per channel within that
// process's file limit, often 1024), so a fleet of thousands on one
// connection would make the bastion the bottleneck, or exhaust it. At 64,
// a check at the default concurrency rides one connection, and 1000 nodes
// held open through a rollout take 16 instead of 1000.
const DefaultJumpChannels = 64

// Jumps shares connections to bastions between the nodes behind them, as
// OpenSSH's ControlMaster does: one SSH connection per bastion (per chain
// of hops: a second hop's connection runs inside one to the first) carries
// the nodes' connections as channels, up to MaxChannels each; beyond that
// another connection to the same bastion is opened. A connection is shared
// only between nodes that reach the bastion the same way (user, address,
// keys, known_hosts and host key policy), and closed once no node has used
// it for Linger. The zero value is ready to use, with the defaults.
type Jumps struct {
	// MaxChannels bounds channels per bastion connection (node connections
	// and, for a chain, connections to the next hop); 0 means
	// DefaultJumpChannels.
	MaxChannels int
	// Linger is how long an unused bastion connection stays open for the
	// next node; 0 means 10 s.
	Linger time.Duration

	mu    sync.Mutex
	conns map[string][]*jumpConn // by jumpKey; gone ones removed
}

// DefaultJumps is the pool every Dial uses unless Config.Jumps names
// another.
var DefaultJumps = &Jumps{}

// jumpConn is one connection to a bastion hop.
type jumpConn struct {
	pool   *Jumps
	key    string
	parent *jumpConn // the previous hop it runs through; nil for the first
	client *ssh.Client
	ready  chan struct{} // closed once dialled or failed
	err    error         // set before ready closes
	dead   chan struct{} // closed once the connection ended

	// guarded by pool.mu
	users int         // channels counted against MaxChannels
	gone  bool        // failed, dead or closed: never handed out again
	idle  *time.Timer // closes it after Linger without users
}

// Conns is the number of bastion connections open or being opened.
func (p *Jumps) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, cs := range p.conns {
		n += len(cs)
	}
	return n
}

// CloseIdle closes the bastion connections no node uses now, without
// waiting for Linger.
func (p *Jumps) CloseIdle() {
	p.mu.Lock()
	var idle []*jumpConn
	for _, cs := range p.conns {
		for _, jc := range cs {
			if jc.users == 0 && jc.client != nil {
				idle = append(idle, jc)
			}
		}
	}
	for _, jc := range idle {
		jc.gone = true
		p.remove(jc)
		if jc.idle != nil {
			jc.idle.Stop()
		}
	}
	p.mu.Unlock()
	for _, jc := range idle {
		jc.client.Close()
	}
}

func (p *Jumps) max() int {
	if p.MaxChannels > 0 {
		return p.MaxChannels
	}
	return DefaultJumpChannels
}

func (p *Jumps) linger() time.Duration {
	if p.Linger > 0 {
		return p.Linger
	}
	return 10 * time.Second
}

// jumpKey names hop i of s's chain with everything that decides how it is
// reached and trusted: a connection is reused only by nodes that would
// have made the very same one.
func jumpKey(s *settings, i int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\x00%s\x00%s\x00%s", s.policy, s.knownHosts, s.systemKnown, s.agentSocket)
	for _, ep := range s.hops[:i+1] {
		fmt.Fprintf(&b, "\x00%s\x00%s", ep, strings.Join(ep.identityFiles, "\x01"))
	}
	return b.String()
}

// hopDialer opens the SSH connection to hop i, through via (nil for the
// first hop).
type hopDialer func(ctx context.Context, i int, via *ssh.Client) (*ssh.Client, error)

// acquire returns a connection to hop i of s's chain with a channel
// reserved on it: a live one with room, else a new one (one dial however
// many nodes ask at once; they wait for it). release gives the channel
// back.
func (p *Jumps) acquire(ctx context.Context, s *settings, i int, dial hopDialer) (*jumpConn, error) {
	key := jumpKey(s, i)
	p.mu.Lock()
	if p.conns == nil {
		p.conns = map[string][]*jumpConn{}
	}
	for _, jc := range p.conns[key] {
		if jc.users < p.max() {
			jc.users++
			if jc.idle != nil {
				jc.idle.Stop()
				jc.idle = nil
			}
			p.mu.Unlock()
			select {
			case <-jc.ready:
			case <-ctx.Done():
				p.release(jc)
				return nil, ctx.Err()
			}
			if jc.err != nil {
				p.release(jc)
				return nil, jc.err
			}
			return jc, nil
		}
	}
	jc := &jumpConn{pool: p, key: key, users: 1, ready: make(chan struct{}), dead: make(chan struct{})}
	p.conns[key] = append(p.conns[key], jc)
	p.mu.Unlock()

	// Others may wait for this connection: it must not fail because the
	// node that happened to ask first was cancelled. dial bounds each hop
	// by ConnectTimeout.
	dctx := context.WithoutCancel(ctx)
	var via *ssh.Client
	if i > 0 {
		parent, err := p.acquire(dctx, s, i-1, dial)
		if err != nil {
			p.fail(jc, err)
			return nil, err
		}
		jc.parent, via = parent, parent.client
	}
	client, err := dial(dctx, i, via)
	if err != nil {
		err = fmt.Errorf("via bastion %s: %w", s.hops[i], err)
		p.fail(jc, err)
		return nil, err
	}
	jc.client = client
	close(jc.ready)
	go func() {
		_ = client.Wait()
		p.ended(jc)
	}()
	if s.keepAlive > 0 {
		go keepAlive(client, jc.dead, s.keepAlive, s.log, "bastion "+s.hops[i].String())
	}
	return jc, nil
}

// release gives back a channel; a connection left without users closes
// after Linger unless a node takes it again.
func (p *Jumps) release(jc *jumpConn) {
	if jc == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	jc.users--
	if jc.users > 0 || jc.gone {
		return
	}
	var t *time.Timer
	t = time.AfterFunc(p.linger(), func() {
		p.mu.Lock()
		idle := jc.idle == t && jc.users == 0 && !jc.gone
		if idle {
			jc.gone = true
			p.remove(jc)
		}
		p.mu.Unlock()
		if idle {
			jc.client.Close() // ended() then releases its parent
		}
	})
	jc.idle = t
}

// fail ends a connection that could not be made: its waiters get err.
func (p *Jumps) fail(jc *jumpConn, err error) {
	p.mu.Lock()
	jc.gone, jc.err = true, err
	p.remove(jc)
	p.mu.Unlock()
	close(jc.ready)
	close(jc.dead)
	p.release(jc.parent)
}

// ended forgets a connection that closed; the nodes' channels on it are
// gone with it, and their connections redial.
func (p *Jumps) ended(jc *jumpConn) {
	p.mu.Lock()
	jc.gone = true
	p.remove(jc)
	if jc.idle != nil {
		jc.idle.Stop()
	}
	p.mu.Unlock()
	close(jc.dead)
	p.release(jc.parent)
}

// remove drops jc from the pool's list; p.mu held.
func (p *Jumps) remove(jc *jumpConn) {
	list := slices.DeleteFunc(p.conns[jc.key], func(c *jumpConn) bool { return c == jc })
	if len(list) == 0 {
		delete(p.conns, jc.key)
	} else {
		p.conns[jc.key] = list
	}
}

// keepAlive sends keepalive@openssh.com every interval and closes the
// connection when an answer takes longer than keepAliveCountMax intervals,
// so that a silently dead peer fails the next operation (which redials)
// instead of hanging it.
func keepAlive(c *ssh.Client, dead <-chan struct{}, interval time.Duration, log *slog.Logger, name string) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-dead:
			return
		case <-t.C:
		}
		watchdog := time.AfterFunc(interval*keepAliveCountMax, func() {
			log.Warn("ssh keepalive unanswered, closing connection", "host", name)
			c.Close()
		})
		_, _, err := c.SendRequest("keepalive@openssh.com", true, nil)
		watchdog.Stop()
		if err != nil {
			c.Close()
			return
		}
	}
}
