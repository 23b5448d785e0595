package remote

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// ErrOutputTooLarge means a command wrote more than Config.MaxOutput bytes
// to stdout or stderr; it was killed.
var ErrOutputTooLarge = errors.New("command output exceeds the limit")

// killGrace is how long a cancelled command gets between SIGTERM (which the
// wrapper turns into SIGKILL for its whole process group) and a SIGKILL
// sent to the session itself.
const killGrace = 2 * time.Second

// wrapper is the shell that runs every script. It exists so that a signal
// kills the whole command, not just one process: OpenSSH delivers a
// `signal` request to the session's process (group), and sudo relays it only
// to its direct child, so a script's own children (say `sleep`) could
// outlive a cancelled Run. The wrapper runs the script in the background
// (with stdin passed through fd 3, since a background job's stdin is
// otherwise /dev/null), waits for it, and on TERM/HUP/INT kills its
// process group — which is the command's and nothing else, as sshd starts
// each session in a new session and process group. (As for any background
// job of a non-interactive shell, the script starts with SIGINT and SIGQUIT
// ignored; fleetcert itself only ever sends TERM and KILL.)
const wrapper = `trap 'kill -s KILL 0' TERM HUP INT; exec 3<&0; sh -c "$1" "$0" <&3 3<&- & exec 3<&-; wait "$!"`

type sudoMode int

const (
	noSudo       sudoMode = iota
	sudoNoPrompt          // sudo -n
	sudoStdin             // sudo -k -S -p '' with the password as stdin's first line
)

// command is the remote command line for script under mode. The script is
// one quoted argument of `sh -c`, so the user's login shell only ever
// parses a fixed, simple line; `exec` replaces that shell, so a signal from
// sshd reaches sudo or the wrapper and not a bystander shell.
func command(mode sudoMode, script string) string {
	return sudoPrefix(mode, "sh -c "+Quote(wrapper)+" fleetcert "+Quote(script))
}

// quickCommand is command without the wrapper, for RunQuick: the script is
// the session's own process (under sudo, sudo's child).
func quickCommand(mode sudoMode, script string) string {
	return sudoPrefix(mode, "sh -c "+Quote(script)+" fleetcert")
}

func sudoPrefix(mode sudoMode, cmd string) string {
	switch mode {
	case sudoNoPrompt:
		cmd = "sudo -n -- " + cmd
	case sudoStdin:
		cmd = "sudo -k -S -p '' -- " + cmd
	}
	return "exec " + cmd
}

// Run implements Host. The command is never retried once its session was
// opened: a lost connection mid-command gives ErrConnectionLost.
func (c *Client) Run(ctx context.Context, script string, stdin []byte) (Result, error) {
	return c.run(ctx, script, stdin, &opState{})
}

func (c *Client) run(ctx context.Context, script string, stdin []byte, op *opState) (Result, error) {
	return c.runAs(ctx, command, script, stdin, op)
}

// runAs runs script as the command line line(mode, script) makes of it,
// with the sudo password, when one is needed, ahead of stdin.
func (c *Client) runAs(ctx context.Context, line func(sudoMode, string) string, script string, stdin []byte, op *opState) (Result, error) {
	if c.s.commandTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.s.commandTimeout)
		defer cancel()
	}
	mode, err := c.sudo(ctx, op)
	if err != nil {
		return Result{}, err
	}
	var in io.Reader = bytes.NewReader(stdin)
	if mode == sudoStdin {
		in = io.MultiReader(&secretLine{s: c.s.sudoPassword}, in)
	}
	return c.exec(ctx, line(mode, script), in, op)
}

// RunQuick runs a short script that only reads, such as the facts
// script, like Run but without the wrapper: the node starts one shell for
// it instead of three. What the wrapper is for, killing a cancelled
// command's whole process tree, does not matter for such a script: once
// its shell is signalled, what it started (a stat, a cat) ends on its own
// within moments. Use Run for anything that changes a node or may run
// long.
func (c *Client) RunQuick(ctx context.Context, script string) (Result, error) {
	return c.runAs(ctx, quickCommand, script, nil, &opState{})
}

// secretLine yields password+"\n" without the password ever being copied
// into a long-lived buffer of ours.
type secretLine struct {
	s    string
	done bool
}

func (r *secretLine) Read(p []byte) (int, error) {
	if r.done {
		return 0, io.EOF
	}
	if len(p) < len(r.s)+1 {
		return 0, io.ErrShortBuffer
	}
	n := copy(p, r.s)
	p[n] = '\n'
	r.done = true
	return n + 1, nil
}

// sudo decides, once per client, how commands get root. With a password
// configured it first asks whether `sudo -n` is enough (NOPASSWD), since
// feeding a password that sudo does not ask for would hand it to the
// command as input; and it checks the password once, with nothing else on
// stdin, so a wrong one fails clearly instead of sudo reading the caller's
// data as further password attempts.
func (c *Client) sudo(ctx context.Context, op *opState) (sudoMode, error) {
	switch {
	case !c.s.sudo:
		return noSudo, nil
	case c.s.sudoPassword == "":
		return sudoNoPrompt, nil
	}
	c.sudoMu.Lock()
	defer c.sudoMu.Unlock()
	if c.sudoProbed {
		return c.sudoMode, nil
	}
	// -k: only a NOPASSWD rule counts, not credentials cached by an earlier
	// sudo that would expire in the middle of the run. The probe runs the
	// very command real commands run (sh -c), so that a sudoers rule for sh
	// but not for true cannot make sudo skip the password we then feed:
	// it would become the first line of the command's stdin.
	const probe = `sudo -k -n -- sh -c : 2>/dev/null && exit 0; sudo -k -S -p '' -- sh -c : 2>/dev/null && exit 10; exit 20`
	res, err := c.exec(ctx, command(noSudo, probe), &secretLine{s: c.s.sudoPassword}, op)
	if err != nil {
		return 0, fmt.Errorf("ssh %s: probing sudo: %w", c.name, err)
	}
	switch res.ExitCode {
	case 0:
		c.sudoMode = sudoNoPrompt
	case 10:
		c.sudoMode = sudoStdin
	default:
		return 0, fmt.Errorf("ssh %s: sudo refused: neither `sudo -n` nor the configured sudo password works for this user", c.name)
	}
	c.sudoProbed = true
	return c.sudoMode, nil
}

// exec runs one command line in a new session and collects its output. When
// ctx ends or the output exceeds the cap, the remote command is killed.
func (c *Client) exec(ctx context.Context, cmd string, stdin io.Reader, op *opState) (Result, error) {
	sess, cn, err := c.newSession(ctx, op)
	if err != nil {
		return Result{}, err
	}
	defer sess.Close()

	exited := make(chan struct{})
	var killOnce sync.Once
	kill := func() { killOnce.Do(func() { go terminate(sess, exited) }) }
	stdout := &cappedBuffer{max: c.s.maxOutput, onOverflow: kill}
	stderr := &cappedBuffer{max: c.s.maxOutput, onOverflow: kill}
	sess.Stdout, sess.Stderr = stdout, stderr
	// Feed stdin ourselves: with Session.Stdin, a command that exits without
	// reading all of it makes Wait report the failed copy (EOF) instead of
	// the exit status.
	stdinPipe, err := sess.StdinPipe()
	if err != nil {
		return Result{}, fmt.Errorf("ssh %s: %w", c.name, err)
	}
	go func() {
		_, _ = io.Copy(stdinPipe, stdin)
		_ = stdinPipe.Close()
	}()

	stop := context.AfterFunc(ctx, kill)
	startErr := sess.Start(cmd)
	err = startErr
	if err == nil {
		err = sess.Wait()
	}
	close(exited)
	cancelled := !stop()
	res := Result{Stdout: stdout.Bytes(), Stderr: stderr.Bytes()}

	var exitErr *ssh.ExitError
	switch {
	case cancelled:
		return res, fmt.Errorf("ssh %s: command interrupted: %w", c.name, context.Cause(ctx))
	case startErr != nil:
		// The exec request was refused or went unanswered: the command
		// most likely never started, but this is not retried either.
		return res, fmt.Errorf("ssh %s: starting command: %w", c.name, startErr)
	case stdout.overflow() || stderr.overflow():
		return res, fmt.Errorf("ssh %s: %w (%d bytes)", c.name, ErrOutputTooLarge, c.s.maxOutput)
	case err == nil:
		return res, nil
	case errors.As(err, &exitErr):
		res.ExitCode = exitErr.ExitStatus()
		return res, nil
	}
	// No exit status: the channel or the connection went away under the
	// command. Drop the connection so that the next operation redials.
	cn.close()
	return res, fmt.Errorf("ssh %s: %w while the command ran (it may or may not have completed): %v", c.name, ErrConnectionLost, err)
}

// terminate ends a running command for real. Closing the channel alone is
// not enough: OpenSSH leaves a command without a tty running. So: TERM
// (the wrapper kills its process group), then KILL if the session has not
// ended within killGrace (the wrapper or an older sshd ignored TERM), then
// close the channel so Wait returns regardless.
func terminate(sess *ssh.Session, exited <-chan struct{}) {
	_ = sess.Signal(ssh.SIGTERM)
	select {
	case <-exited:
	case <-time.After(killGrace):
		_ = sess.Signal(ssh.SIGKILL)
	}
	_ = sess.Close()
}

// cappedBuffer keeps at most max bytes. Beyond that it keeps draining (so
// the channel does not stall) but discards, and calls onOverflow once.
type cappedBuffer struct {
	mu         sync.Mutex
	buf        bytes.Buffer
	max        int64
	over       bool
	onOverflow func()
}

func (b *cappedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.over {
		return len(p), nil
	}
	if int64(b.buf.Len())+int64(len(p)) > b.max {
		b.over = true
		b.onOverflow()
		return len(p), nil
	}
	return b.buf.Write(p)
}

// copyBufs recycles the buffers that drain stdout and stderr; without
// ReadFrom, io.Copy would allocate 32 KiB per stream per command.
var copyBufs = sync.Pool{New: func() any { return new([32 << 10]byte) }}

// ReadFrom lets io.Copy drain the session into b with a pooled buffer.
func (b *cappedBuffer) ReadFrom(r io.Reader) (int64, error) {
	buf := copyBufs.Get().(*[32 << 10]byte)
	defer copyBufs.Put(buf)
	var total int64
	for {
		n, err := r.Read(buf[:])
		if n > 0 {
			total += int64(n)
			_, _ = b.Write(buf[:n])
		}
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

func (b *cappedBuffer) overflow() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.over
}

// Bytes returns the content; nil when empty, so results compare simply.
func (b *cappedBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.buf.Len() == 0 {
		return nil
	}
	return b.buf.Bytes()
}
