// Package sshtest is an in-process SSH server for tests and benchmarks. It
// listens on 127.0.0.1, authenticates public keys, and really runs exec
// requests with `sh -c` on the local machine (stdin, stdout, stderr, exit
// status and signals wired as OpenSSH does), or hands them to a Go handler
// that emulates a node. It forwards direct-tcpip channels, so a server is
// also a bastion, and can drop every connection on demand to exercise
// reconnects, or drop one in the middle of a command's stdin
// (Options.DropStdinAt) to exercise uploads cut short. Servers are cheap:
// one goroutine per listener plus a few per connection, so a benchmark can
// run hundreds; or one server can stand for many nodes, told apart by login
// user (see Shell).
//
// Typical use:
//
//	id := sshtest.WriteIdentity(t, home+"/.ssh", "id_ed25519", sshtest.ED25519, "")
//	srv := sshtest.Start(t, sshtest.Options{AuthorizedKeys: []ssh.PublicKey{id.Signer.PublicKey()}})
//	srv.AppendKnownHosts(t, home+"/.ssh/known_hosts", false)
//	c, err := remote.Dial(ctx, remote.Config{Host: srv.Host(), Port: srv.Port(),
//		IdentityFile: id.Path, HomeDir: home, SSHConfigFile: remote.None,
//		SystemKnownHostsFile: remote.None, AgentSocket: remote.None})
package sshtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// Exec is one exec request, as a Handler sees it.
type Exec struct {
	User    string   // login user of the connection
	Command string   // the command line exactly as the client sent it
	Env     []string // variables from env requests (when Options.AcceptEnv)
	Stdin   io.Reader
	Stdout  io.Writer
	Stderr  io.Writer
}

// Handler runs an exec request instead of `sh -c` and returns its exit
// status. ctx ends when the client sends a signal, the session closes or
// the server shuts down.
type Handler func(ctx context.Context, e *Exec) int

// Options configures a Server; the zero value is an ed25519 host that runs
// commands with sh and forwards ports, and accepts no key until Authorize.
type Options struct {
	// HostKeyTypes are the host keys generated for the server (default
	// ed25519). Ignored when HostSigners is set.
	HostKeyTypes []KeyType
	// HostSigners are explicit host keys, e.g. to present a key that
	// differs from a known_hosts entry.
	HostSigners []ssh.Signer
	// AuthorizedKeys may log in as any user.
	AuthorizedKeys []ssh.PublicKey
	// NoForwarding refuses direct-tcpip, as sshd with AllowTcpForwarding no.
	NoForwarding bool
	// AcceptEnv accepts env requests; they are refused otherwise, as sshd
	// does without AcceptEnv.
	AcceptEnv bool
	// Env is added to the environment of commands (e.g. a PATH whose first
	// directory holds fake tools). Later entries win.
	Env []string
	// Dir is the working directory of commands ("" = the test's).
	Dir string
	// Handler, when set, serves exec requests instead of sh.
	Handler Handler
	// SignalLeaderOnly delivers `signal` requests to the command's process
	// only, not its process group; use it to prove that a client kills
	// whole process trees without relying on the server to do so.
	SignalLeaderOnly bool
	// DropStdinAt, when set, is asked for every exec request how many bytes
	// of its stdin to hand to the command before the connection is dropped,
	// as a network failure at that point of an upload would: once that many
	// bytes have been passed on, the connection is closed abruptly and the
	// command sees EOF on stdin (as under sshd, it keeps running; see
	// Running). A negative answer, or one beyond the end of the client's
	// stdin, leaves the request alone.
	DropStdinAt func(e *Exec) int64
}

// Record is one exec request the server received.
type Record struct {
	User    string
	Command string
}

// Server is a running test SSH server.
type Server struct {
	opts     Options
	ln       net.Listener
	config   *ssh.ServerConfig
	hostKeys []ssh.Signer

	authMu     sync.RWMutex
	authorized map[string]bool

	mu      sync.Mutex
	conns   map[net.Conn]struct{}
	procs   map[*exec.Cmd]struct{}
	records []Record
	closed  bool

	wg         sync.WaitGroup
	execs      atomic.Int64
	logins     atomic.Int64
	forwarded  atomic.Int64
	maxRecords int
}

// Start starts a server for a test or benchmark and stops it at cleanup.
func Start(tb testing.TB, opts Options) *Server {
	tb.Helper()
	s, err := newServer(opts)
	if err != nil {
		tb.Fatalf("sshtest: %v", err)
	}
	tb.Cleanup(s.close)
	return s
}

// newServer starts a server; the caller must close it.
func newServer(opts Options) (*Server, error) {
	s := &Server{
		opts:       opts,
		authorized: map[string]bool{},
		conns:      map[net.Conn]struct{}{},
		procs:      map[*exec.Cmd]struct{}{},
		maxRecords: 1024,
	}
	s.hostKeys = opts.HostSigners
	if len(s.hostKeys) == 0 {
		types := opts.HostKeyTypes
		if len(types) == 0 {
			types = []KeyType{ED25519}
		}
		for _, t := range types {
			k, err := generateSigner(t)
			if err != nil {
				return nil, err
			}
			s.hostKeys = append(s.hostKeys, k)
		}
	}
	for _, k := range opts.AuthorizedKeys {
		s.Authorize(k)
	}
	s.config = &ssh.ServerConfig{PublicKeyCallback: s.checkKey}
	for _, k := range s.hostKeys {
		s.config.AddHostKey(k)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s.ln = ln
	s.wg.Add(1)
	go s.serve()
	return s, nil
}

// Addr is "127.0.0.1:PORT".
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Host is "127.0.0.1".
func (s *Server) Host() string { return "127.0.0.1" }

// Port is the listening port.
func (s *Server) Port() int { return s.ln.Addr().(*net.TCPAddr).Port }

// HostKeys are the server's public host keys.
func (s *Server) HostKeys() []ssh.PublicKey {
	out := make([]ssh.PublicKey, len(s.hostKeys))
	for i, k := range s.hostKeys {
		out[i] = k.PublicKey()
	}
	return out
}

// Authorize lets key log in, as any user.
func (s *Server) Authorize(key ssh.PublicKey) {
	s.authMu.Lock()
	s.authorized[string(key.Marshal())] = true
	s.authMu.Unlock()
}

func (s *Server) checkKey(_ ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
	s.authMu.RLock()
	ok := s.authorized[string(key.Marshal())]
	s.authMu.RUnlock()
	if !ok {
		return nil, errors.New("key not authorized")
	}
	return &ssh.Permissions{}, nil
}

// Execs is the number of exec requests received.
func (s *Server) Execs() int64 { return s.execs.Load() }

// Logins is the number of connections that completed authentication.
func (s *Server) Logins() int64 { return s.logins.Load() }

// Forwards is the number of direct-tcpip channels accepted.
func (s *Server) Forwards() int64 { return s.forwarded.Load() }

// Running is the number of commands started with sh (not a Handler) that
// have not exited yet; after a dropped connection, wait for it to reach 0
// before judging what a command left behind.
func (s *Server) Running() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.procs)
}

// Records returns the last exec requests (up to 1024), oldest first.
func (s *Server) Records() []Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Record(nil), s.records...)
}

// DropConnections closes every client connection abruptly, as a network
// failure or sshd restart would. Running commands are left running, as
// OpenSSH leaves commands without a tty; they end when the test does.
func (s *Server) DropConnections() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		c.Close()
	}
}

// close stops the server, drops all connections and kills every command
// still running.
func (s *Server) close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.ln.Close()
	for c := range s.conns {
		c.Close()
	}
	for cmd := range s.procs {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
	}
}

func (s *Server) serve() {
	defer s.wg.Done()
	for {
		nc, err := s.ln.Accept()
		if err != nil {
			return
		}
		if !s.track(nc) {
			nc.Close()
			return
		}
		s.wg.Add(1)
		go s.handleConn(nc)
	}
}

func (s *Server) track(nc net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[nc] = struct{}{}
	return true
}

func (s *Server) untrack(nc net.Conn) {
	s.mu.Lock()
	delete(s.conns, nc)
	s.mu.Unlock()
}

func (s *Server) handleConn(nc net.Conn) {
	defer s.wg.Done()
	defer s.untrack(nc)
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
	sc, chans, reqs, err := ssh.NewServerConn(nc, s.config)
	if err != nil {
		return
	}
	_ = nc.SetDeadline(time.Time{})
	s.logins.Add(1)
	// Global requests (keepalive@openssh.com) get "failure", as from OpenSSH.
	go ssh.DiscardRequests(reqs)
	for nch := range chans {
		switch nch.ChannelType() {
		case "session":
			s.wg.Add(1)
			go s.session(nc, sc.User(), nch)
		case "direct-tcpip":
			s.wg.Add(1)
			go s.forward(nch)
		default:
			_ = nch.Reject(ssh.UnknownChannelType, "unsupported channel type")
		}
	}
}

// session serves one session channel: env, exec and signal requests.
func (s *Server) session(nc net.Conn, user string, nch ssh.NewChannel) {
	defer s.wg.Done()
	ch, reqs, err := nch.Accept()
	if err != nil {
		return
	}
	defer ch.Close()
	// A Handler's context ends with the session, as well as on a signal.
	hctx, hcancel := context.WithCancel(context.Background())
	defer hcancel()
	var (
		env     []string
		started bool
		sigMu   sync.Mutex
		signal  func(string)
		done    = make(chan struct{})
	)
	setSignal := func(f func(string)) { sigMu.Lock(); signal = f; sigMu.Unlock() }
	for req := range reqs {
		switch req.Type {
		case "env":
			var kv struct{ Name, Value string }
			ok := s.opts.AcceptEnv && ssh.Unmarshal(req.Payload, &kv) == nil
			if ok {
				env = append(env, kv.Name+"="+kv.Value)
			}
			reply(req, ok)
		case "exec":
			var p struct{ Command string }
			if started || ssh.Unmarshal(req.Payload, &p) != nil {
				reply(req, false)
				continue
			}
			started = true
			s.record(user, p.Command)
			reply(req, true)
			e := &Exec{User: user, Command: p.Command, Env: env, Stdin: ch, Stdout: ch, Stderr: ch.Stderr()}
			if s.opts.DropStdinAt != nil {
				if n := s.opts.DropStdinAt(e); n >= 0 {
					e.Stdin = &dropAfter{r: ch, left: n, drop: func() { nc.Close() }}
				}
			}
			go func() {
				defer close(done)
				s.runExec(hctx, hcancel, ch, e, setSignal)
			}()
		case "signal":
			var p struct{ Signal string }
			if ssh.Unmarshal(req.Payload, &p) == nil {
				sigMu.Lock()
				if signal != nil {
					signal(p.Signal)
				}
				sigMu.Unlock()
			}
			reply(req, true)
		default: // pty-req, shell, subsystem, x11-req ...
			reply(req, false)
		}
	}
	hcancel()
	if started {
		<-done
	}
}

// dropAfter passes on left bytes of r, then drops the connection and
// reports EOF.
type dropAfter struct {
	r    io.Reader
	left int64
	drop func()
	once sync.Once
}

func (d *dropAfter) Read(p []byte) (int, error) {
	if d.left <= 0 {
		d.once.Do(d.drop)
		return 0, io.EOF
	}
	if int64(len(p)) > d.left {
		p = p[:d.left]
	}
	n, err := d.r.Read(p)
	d.left -= int64(n)
	return n, err
}

func reply(req *ssh.Request, ok bool) {
	if req.WantReply {
		_ = req.Reply(ok, nil)
	}
}

func (s *Server) record(user, cmd string) {
	s.execs.Add(1)
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.records) >= s.maxRecords {
		s.records = append(s.records[:0], s.records[1:]...)
	}
	s.records = append(s.records, Record{User: user, Command: cmd})
}

// runExec runs the request, then reports its end as sshd does: EOF,
// exit-status or exit-signal, close.
func (s *Server) runExec(ctx context.Context, cancel func(), ch ssh.Channel, e *Exec, setSignal func(func(string))) {
	var status int
	var sig string
	if s.opts.Handler != nil {
		setSignal(func(string) { cancel() })
		status = s.opts.Handler(ctx, e)
	} else {
		status, sig = s.runShell(e, setSignal)
	}
	_ = ch.CloseWrite()
	if sig != "" {
		_, _ = ch.SendRequest("exit-signal", false, ssh.Marshal(struct {
			Signal     string
			CoreDumped bool
			Error      string
			Lang       string
		}{Signal: sig}))
	} else {
		_, _ = ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{uint32(status)}))
	}
	_ = ch.Close()
}

// runShell runs `sh -c COMMAND` in a new session and process group (as
// sshd does), with stdin fed from the channel until the client's EOF.
func (s *Server) runShell(e *Exec, setSignal func(func(string))) (int, string) {
	cmd := exec.Command("sh", "-c", e.Command)
	cmd.Dir = s.opts.Dir
	cmd.Env = append(append(append(os.Environ(), "USER="+e.User, "LOGNAME="+e.User), s.opts.Env...), e.Env...)
	cmd.Stdout, cmd.Stderr = e.Stdout, e.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		fmt.Fprintf(e.Stderr, "sshtest: %v\n", err)
		return 255, ""
	}
	if err := s.startTracked(cmd); err != nil {
		fmt.Fprintf(e.Stderr, "sshtest: %v\n", err)
		return 127, ""
	}
	defer s.untrackProc(cmd)
	// Not waited for: a command that exits without reading stdin must not
	// hang until the client closes its side.
	go func() {
		_, _ = io.Copy(stdin, e.Stdin)
		stdin.Close()
	}()
	pid := cmd.Process.Pid
	setSignal(func(name string) {
		if sig, ok := signals[name]; ok {
			if s.opts.SignalLeaderOnly {
				_ = syscall.Kill(pid, sig)
			} else {
				_ = syscall.Kill(-pid, sig)
			}
		}
	})
	err = cmd.Wait()
	setSignal(nil)
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 0, signalName(ws.Signal())
		}
		return ee.ExitCode(), ""
	}
	if err != nil {
		return 255, ""
	}
	return 0, ""
}

func (s *Server) startTracked(cmd *exec.Cmd) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("server closed")
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	s.procs[cmd] = struct{}{}
	return nil
}

func (s *Server) untrackProc(cmd *exec.Cmd) {
	s.mu.Lock()
	delete(s.procs, cmd)
	s.mu.Unlock()
}

var signals = map[string]syscall.Signal{
	"ABRT": syscall.SIGABRT, "ALRM": syscall.SIGALRM, "FPE": syscall.SIGFPE, "HUP": syscall.SIGHUP,
	"ILL": syscall.SIGILL, "INT": syscall.SIGINT, "KILL": syscall.SIGKILL, "PIPE": syscall.SIGPIPE,
	"QUIT": syscall.SIGQUIT, "SEGV": syscall.SIGSEGV, "TERM": syscall.SIGTERM, "USR1": syscall.SIGUSR1,
	"USR2": syscall.SIGUSR2,
}

func signalName(sig syscall.Signal) string {
	for n, s := range signals {
		if s == sig {
			return n
		}
	}
	return strconv.Itoa(int(sig))
}

// forward serves a direct-tcpip channel by dialling the target from here.
func (s *Server) forward(nch ssh.NewChannel) {
	defer s.wg.Done()
	if s.opts.NoForwarding {
		_ = nch.Reject(ssh.Prohibited, "port forwarding is disabled")
		return
	}
	var d struct {
		Host       string
		Port       uint32
		OriginHost string
		OriginPort uint32
	}
	if err := ssh.Unmarshal(nch.ExtraData(), &d); err != nil {
		_ = nch.Reject(ssh.ConnectionFailed, "bad direct-tcpip request")
		return
	}
	target, err := net.DialTimeout("tcp", net.JoinHostPort(d.Host, strconv.Itoa(int(d.Port))), 5*time.Second)
	if err != nil {
		_ = nch.Reject(ssh.ConnectionFailed, err.Error())
		return
	}
	defer target.Close()
	ch, reqs, err := nch.Accept()
	if err != nil {
		return
	}
	defer ch.Close()
	s.forwarded.Add(1)
	go ssh.DiscardRequests(reqs)
	done := make(chan struct{}, 2)
	go func() {
		_, _ = io.Copy(target, ch)
		if tc, ok := target.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		done <- struct{}{}
	}()
	go func() {
		_, _ = io.Copy(ch, target)
		_ = ch.CloseWrite()
		done <- struct{}{}
	}()
	<-done
	<-done
}

// Shell returns a Handler that runs commands with sh as the default server
// does, in dir ("" = the test's) with env added. It lets one server stand
// for many nodes, choosing each node's directory and environment by login
// user:
//
//	Handler: func(ctx context.Context, e *sshtest.Exec) int {
//		return sshtest.Shell(nodeDirs[e.User])(ctx, e)
//	}
//
// When ctx ends (signal, session closed, server closed) the command's
// process group is killed; a command killed by a signal reports 128+signal.
func Shell(dir string, env ...string) Handler {
	return func(ctx context.Context, e *Exec) int {
		cmd := exec.Command("sh", "-c", e.Command)
		cmd.Dir = dir
		cmd.Env = append(append(append(os.Environ(), "USER="+e.User, "LOGNAME="+e.User), env...), e.Env...)
		cmd.Stdout, cmd.Stderr = e.Stdout, e.Stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		stdin, err := cmd.StdinPipe()
		if err == nil {
			err = cmd.Start()
		}
		if err != nil {
			fmt.Fprintf(e.Stderr, "sshtest: %v\n", err)
			return 127
		}
		go func() {
			_, _ = io.Copy(stdin, e.Stdin)
			stdin.Close()
		}()
		stop := context.AfterFunc(ctx, func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) })
		defer stop()
		err = cmd.Wait()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				return 128 + int(ws.Signal())
			}
			return ee.ExitCode()
		}
		if err != nil {
			return 255
		}
		return 0
	}
}
