package remote

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/crypto/ssh"
)

var (
	// ErrClosed is returned by operations on a closed Client.
	ErrClosed = net.ErrClosed
	// ErrConnectionLost means the connection dropped while a command was
	// running: the command may or may not have completed on the node. Run
	// does not retry it; ReadFile does.
	ErrConnectionLost = errors.New("connection lost")
	// ErrForwardingRefused means the node's sshd does not allow direct-tcpip
	// forwarding (AllowTcpForwarding no); callers fall back to other means.
	ErrForwardingRefused = errors.New("port forwarding refused by the node's sshd")
)

// Client is one node's SSH connection, dialled once and shared by every
// command for the whole run. It redials transparently, at most once per
// operation, when the connection has dropped. It is safe for concurrent use.
type Client struct {
	s    *settings
	name string // user@host:port, for errors

	mu     sync.Mutex
	cur    *conn
	closed bool

	dialMu sync.Mutex // one redial at a time

	sudoMu     sync.Mutex
	sudoProbed bool
	sudoMode   sudoMode

	sessions   atomic.Int64
	forwards   atomic.Int64
	reconnects atomic.Int64
}

var _ Host = (*Client)(nil)

// conn is one established connection: the node's client and, behind a
// bastion, the shared bastion connection it runs through (its channel
// there is given back when the node's connection ends). dead is closed
// once the node's connection ends.
type conn struct {
	ssh  *ssh.Client
	jump *jumpConn
	dead chan struct{}
}

func (cn *conn) alive() bool {
	select {
	case <-cn.dead:
		return false
	default:
		return true
	}
}

func (cn *conn) close() { cn.ssh.Close() }

// Dial connects to the node described by cfg, through its bastions if any,
// verifying every host key on the way.
func Dial(ctx context.Context, cfg Config) (*Client, error) {
	s, err := resolve(cfg)
	if err != nil {
		return nil, err
	}
	c := &Client{s: s, name: s.target.String()}
	cn, err := c.connect(ctx)
	if err != nil {
		return nil, err
	}
	c.cur = cn
	return c, nil
}

// String names the node as user@host:port.
func (c *Client) String() string { return c.name }

// Sessions is the number of SSH sessions (command round trips) this client
// has opened, sudo probes included; benchmarks use it to hold callers to
// their round-trip budget.
func (c *Client) Sessions() int64 { return c.sessions.Load() }

// Forwards is the number of direct-tcpip channels opened by DialContext.
func (c *Client) Forwards() int64 { return c.forwards.Load() }

// Reconnects is how many times the connection was re-established.
func (c *Client) Reconnects() int64 { return c.reconnects.Load() }

// Close ends the connection; later operations fail with ErrClosed.
func (c *Client) Close() error {
	c.mu.Lock()
	cn := c.cur
	already := c.closed
	c.closed = true
	c.mu.Unlock()
	if already || cn == nil {
		return nil
	}
	cn.close()
	return nil
}

// connect reaches the node, through its bastions if any, and starts the
// connection's keepalive. Bastion connections come from the jump pool:
// shared with the other nodes behind the same bastions, dialled only when
// none has room.
func (c *Client) connect(ctx context.Context) (*conn, error) {
	s := c.s
	ag := openAgent(s.agentSocket)
	defer ag.close() // signers are only used during the handshakes
	hk := &hostKeys{userFile: s.knownHosts, systemFile: s.systemKnown, policy: s.policy, log: s.log}

	// Keys are loaded before any socket is opened: decrypting one (or a
	// human typing its passphrase) must not eat into ConnectTimeout.
	creds := make([]credentials, len(s.hops)+1)
	for i, ep := range append(s.hops[:len(s.hops):len(s.hops)], s.target) {
		creds[i] = credentialsFor(ep, ag, s.passphrase)
	}
	var jump *jumpConn
	var via *ssh.Client
	if len(s.hops) > 0 {
		dialHop := func(ctx context.Context, i int, via *ssh.Client) (*ssh.Client, error) {
			return c.dialEndpoint(ctx, via, s.hops[i], creds[i], hk)
		}
		var err error
		if jump, err = s.jumps.acquire(ctx, s, len(s.hops)-1, dialHop); err != nil {
			return nil, fmt.Errorf("ssh %s: %w", c.name, err)
		}
		via = jump.client
	}
	nc, err := c.dialEndpoint(ctx, via, s.target, creds[len(s.hops)], hk)
	if err != nil {
		s.jumps.release(jump)
		return nil, fmt.Errorf("ssh %s: %w", c.name, err)
	}
	cn := &conn{ssh: nc, jump: jump, dead: make(chan struct{})}
	go func() {
		_ = nc.Wait()
		s.jumps.release(jump)
		close(cn.dead)
	}()
	if s.keepAlive > 0 {
		go keepAlive(nc, cn.dead, s.keepAlive, s.log, c.name)
	}
	return cn, nil
}

// dialEndpoint opens TCP (directly, or as a direct-tcpip channel through the
// previous hop) and runs the SSH handshake, all within ConnectTimeout.
func (c *Client) dialEndpoint(ctx context.Context, via *ssh.Client, ep endpoint, creds credentials, hk *hostKeys) (*ssh.Client, error) {
	ctx, cancel := context.WithTimeout(ctx, c.s.connectTimeout)
	defer cancel()
	addr := ep.addr()
	var raw net.Conn
	var err error
	if via == nil {
		var d net.Dialer
		raw, err = d.DialContext(ctx, "tcp", addr)
	} else {
		raw, err = via.DialContext(ctx, "tcp", addr)
	}
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", addr, err)
	}
	var v verdict
	cb, algos, err := hk.prepare(addr, &v)
	if err != nil {
		raw.Close()
		return nil, err
	}
	cc := &ssh.ClientConfig{
		User:              ep.user,
		Auth:              []ssh.AuthMethod{ssh.PublicKeys(creds.signers...)},
		HostKeyCallback:   cb,
		HostKeyAlgorithms: algos,
	}
	// The ssh package has no context: closing the socket is how a timeout
	// or cancellation interrupts a stalled handshake.
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	sc, chans, reqs, err := ssh.NewClientConn(raw, addr, cc)
	if !stop() && err == nil {
		sc.Close()
		err = ctx.Err()
	}
	if err != nil {
		raw.Close()
		return nil, handshakeError(ctx, ep, algos, creds, v.get(), err)
	}
	return ssh.NewClient(sc, chans, reqs), nil
}

// handshakeError explains a failed handshake in the user's terms.
func handshakeError(ctx context.Context, ep endpoint, algos []string, creds credentials, hostKeyErr, err error) error {
	switch {
	case hostKeyErr != nil:
		return hostKeyErr
	case ctx.Err() != nil:
		return fmt.Errorf("handshake with %s: %w", ep.addr(), ctx.Err())
	case strings.Contains(err.Error(), "no common algorithm for host key"):
		return fmt.Errorf("%w: known_hosts records only %s keys for %s, and the server offers none of them: "+
			"its host keys changed. This may be a man-in-the-middle attack; verify the node's keys out of band (%v)",
			ErrHostKeyMismatch, strings.Join(algos, "/"), ep.addr(), err)
	}
	return authError(ep, creds, err)
}

// opState is per-operation bookkeeping: each operation redials at most once.
type opState struct{ reconnected bool }

// live returns the current connection, redialling it if it has died.
func (c *Client) live(ctx context.Context, op *opState) (*conn, error) {
	c.mu.Lock()
	cn, closed := c.cur, c.closed
	c.mu.Unlock()
	if closed {
		return nil, fmt.Errorf("ssh %s: %w", c.name, ErrClosed)
	}
	if cn.alive() {
		return cn, nil
	}
	return c.reconnect(ctx, cn, op)
}

// reconnect replaces a dead connection. Concurrent callers that saw the
// same dead connection share one redial.
func (c *Client) reconnect(ctx context.Context, old *conn, op *opState) (*conn, error) {
	if op.reconnected {
		return nil, fmt.Errorf("ssh %s: %w (already redialled once for this operation)", c.name, ErrConnectionLost)
	}
	op.reconnected = true
	c.dialMu.Lock()
	defer c.dialMu.Unlock()
	c.mu.Lock()
	cur, closed := c.cur, c.closed
	c.mu.Unlock()
	if closed {
		return nil, fmt.Errorf("ssh %s: %w", c.name, ErrClosed)
	}
	if cur != old && cur.alive() {
		return cur, nil
	}
	old.close()
	cn, err := c.connect(ctx)
	if err != nil {
		return nil, fmt.Errorf("reconnecting after the connection dropped: %w", err)
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		cn.close()
		return nil, fmt.Errorf("ssh %s: %w", c.name, ErrClosed)
	}
	c.cur = cn
	c.mu.Unlock()
	c.reconnects.Add(1)
	c.s.log.Info("ssh connection re-established", "host", c.name)
	return cn, nil
}

// isRefusal reports whether a channel open failed because the server said
// no, as opposed to the connection being gone.
func isRefusal(err error) bool {
	var oce *ssh.OpenChannelError
	return errors.As(err, &oce)
}

// newSession opens a session on a live connection. When it cannot be opened
// because the connection is gone, nothing has run yet, so it redials (once)
// and tries again.
func (c *Client) newSession(ctx context.Context, op *opState) (*ssh.Session, *conn, error) {
	cn, err := c.live(ctx, op)
	if err != nil {
		return nil, nil, err
	}
	sess, err := openSession(ctx, cn)
	if err != nil && ctx.Err() == nil && !isRefusal(err) {
		if cn, err = c.reconnect(ctx, cn, op); err != nil {
			return nil, nil, err
		}
		sess, err = openSession(ctx, cn)
	}
	if err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return nil, nil, fmt.Errorf("ssh %s: opening session: %w", c.name, err)
	}
	c.sessions.Add(1)
	return sess, cn, nil
}

// openSession is NewSession bounded by ctx (the ssh package waits forever
// for a peer that stopped answering).
func openSession(ctx context.Context, cn *conn) (*ssh.Session, error) {
	type result struct {
		s   *ssh.Session
		err error
	}
	ch := make(chan result, 1)
	go func() {
		s, err := cn.ssh.NewSession()
		ch <- result{s, err}
	}()
	select {
	case r := <-ch:
		return r.s, r.err
	case <-ctx.Done():
		go func() {
			if r := <-ch; r.s != nil {
				r.s.Close()
			}
		}()
		return nil, ctx.Err()
	}
}

// DialContext opens a TCP connection from the node to addr, as a
// direct-tcpip channel through this SSH connection: it reaches ports bound
// to the node's loopback (the k3s supervisor on 127.0.0.1:6443) without
// anything on the node but sshd. A refusal by sshd wraps ErrForwardingRefused.
// The returned conn does not support deadlines (SetDeadline fails, as for
// every SSH channel): bound its use with a context, e.g. an http.Client
// Timeout or a request context, which close the conn when they expire.
func (c *Client) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	op := &opState{}
	cn, err := c.live(ctx, op)
	if err != nil {
		return nil, err
	}
	nc, err := cn.ssh.DialContext(ctx, network, addr)
	if err != nil && ctx.Err() == nil && !isRefusal(err) {
		if cn, err = c.reconnect(ctx, cn, op); err != nil {
			return nil, err
		}
		nc, err = cn.ssh.DialContext(ctx, network, addr)
	}
	if err != nil {
		var oce *ssh.OpenChannelError
		if errors.As(err, &oce) && oce.Reason == ssh.Prohibited {
			return nil, fmt.Errorf("ssh %s: forward to %s: %w: %w", c.name, addr, ErrForwardingRefused, err)
		}
		return nil, fmt.Errorf("ssh %s: forward to %s: %w", c.name, addr, err)
	}
	c.forwards.Add(1)
	return nc, nil
}
