// Package remote is fleetcert's transport to nodes: SSH connections that are
// dialled once per node and reused, commands run with a context and optional
// sudo, file reads and atomic file writes. Everything above it talks to a
// node through the Host interface, so tests can substitute a fake.
package remote

import (
	"context"
	"fmt"
	"io/fs"
	"strings"
)

// Host is one node as the rest of fleetcert sees it.
type Host interface {
	// Run runs script with `sh -c` on the node, under sudo when the host is
	// configured for it. stdin, which may be nil, is fed to the command; it is
	// how secrets reach a node, never argv. A non-zero exit status is reported
	// in Result.ExitCode and is not an error: err means the command could not
	// be run to completion (connection lost, ctx done, output over the cap).
	Run(ctx context.Context, script string, stdin []byte) (Result, error)
	// ReadFile returns the contents of path; an absent file gives an error
	// that wraps fs.ErrNotExist.
	ReadFile(ctx context.Context, path string) ([]byte, error)
	// WriteFile replaces path atomically (temp file in the same directory,
	// checked against the length and SHA-256 of data, fsync, rename): the
	// file is the old one or the new one, never a mix. An existing file
	// keeps its owner, mode, ACLs and extended attributes; a new one gets
	// mode. The parent directory must exist. With IfUnchanged or IfAbsent,
	// a file that is not as the caller last saw it is left alone and the
	// error wraps ErrChanged.
	WriteFile(ctx context.Context, path string, data []byte, mode fs.FileMode, opts ...WriteOption) error
	// Close releases the connection.
	Close() error
}

// Result is what a remote command produced.
type Result struct {
	Stdout   []byte
	Stderr   []byte
	ExitCode int
}

// Err turns a non-zero exit status into an error that carries the command's
// stderr, for callers that only care whether it worked.
func (r Result) Err() error {
	if r.ExitCode == 0 {
		return nil
	}
	msg := strings.TrimSpace(string(r.Stderr))
	if len(msg) > 500 {
		msg = msg[:500] + "..."
	}
	if msg == "" {
		return fmt.Errorf("exit status %d", r.ExitCode)
	}
	return fmt.Errorf("exit status %d: %s", r.ExitCode, msg)
}

// Output runs script and returns its stdout, failing on a non-zero exit.
func Output(ctx context.Context, h Host, script string) ([]byte, error) {
	res, err := h.Run(ctx, script, nil)
	if err != nil {
		return nil, err
	}
	if err := res.Err(); err != nil {
		return res.Stdout, err
	}
	return res.Stdout, nil
}

// QuickOutput is Output for a short script that only reads files (see
// Client.RunQuick): on a Client it runs without Run's process-group
// wrapper, two shells fewer on the node; any other Host runs it with Run.
func QuickOutput(ctx context.Context, h Host, script string) ([]byte, error) {
	q, ok := h.(interface {
		RunQuick(ctx context.Context, script string) (Result, error)
	})
	if !ok {
		return Output(ctx, h, script)
	}
	res, err := q.RunQuick(ctx, script)
	if err != nil {
		return nil, err
	}
	if err := res.Err(); err != nil {
		return res.Stdout, err
	}
	return res.Stdout, nil
}

// Quote returns s as one word for a POSIX shell: wrapped in single quotes,
// each embedded single quote closed, escaped and reopened:
//
//	it's  ->  'it'\''s'
//
// It is the only way a value may enter a remote command line.
func Quote(s string) string {
	if s == "" {
		return "''"
	}
	if isPlainWord(s) {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// isPlainWord reports whether s needs no quoting at all; keeping such words
// bare makes remote commands in logs and dry-run plans readable.
func isPlainWord(s string) bool {
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
		case strings.ContainsRune("-_./=:@%+,", r):
		default:
			return false
		}
	}
	return true
}

// Quotef formats a command: every argument is passed through Quote, so the
// format string is the only unquoted text.
func Quotef(format string, args ...string) string {
	q := make([]any, len(args))
	for i, a := range args {
		q[i] = Quote(a)
	}
	return fmt.Sprintf(format, q...)
}
