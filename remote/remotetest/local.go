// Package remotetest provides remote.Host implementations for tests: Local
// runs commands on this machine with sh, so the shell scripts fleetcert
// sends to nodes are exercised for real without SSH.
package remotetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"

	"github.com/fleetcert/fleetcert/remote"
)

// Local is a remote.Host that is this machine.
type Local struct{}

func (l *Local) Run(ctx context.Context, script string, stdin []byte) (remote.Result, error) {
	cmd := exec.CommandContext(ctx, "sh", "-c", script)
	var out, errb bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = bytes.NewReader(stdin), &out, &errb
	err := cmd.Run()
	res := remote.Result{Stdout: out.Bytes(), Stderr: errb.Bytes()}
	var ee *exec.ExitError
	if errors.As(err, &ee) && ctx.Err() == nil {
		res.ExitCode = ee.ExitCode()
		err = nil
	}
	return res, err
}

func (l *Local) ReadFile(ctx context.Context, p string) ([]byte, error) {
	return os.ReadFile(p)
}

// WriteFile is atomic like the SSH host's: temp file beside, rename. It
// honours IfUnchanged and IfAbsent, checking right before the rename.
func (l *Local) WriteFile(ctx context.Context, p string, data []byte, mode fs.FileMode, opts ...remote.WriteOption) error {
	o, err := remote.WriteOptionsOf(opts...)
	if err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	if st, err := os.Stat(p); err == nil {
		mode = st.Mode().Perm()
	}
	tmp := p + ".fleetcert-tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	if err := os.Chmod(tmp, mode); err != nil {
		os.Remove(tmp)
		return err
	}
	if o.Checked {
		cur, err := os.ReadFile(p)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			os.Remove(tmp)
			return err
		}
		if !o.Allows(cur, err == nil) {
			os.Remove(tmp)
			return fmt.Errorf("write %s: %w", p, remote.ErrChanged)
		}
	}
	return os.Rename(tmp, p)
}

func (l *Local) Close() error { return nil }
