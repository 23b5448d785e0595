package remote

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// ErrChanged means WriteFile left a file alone because it no longer was
// what an IfUnchanged or IfAbsent option said: someone else changed it
// since the caller read it. The error wrapping it names the file.
var ErrChanged = errors.New("changed since it was read")

// WriteOption is a condition on Host.WriteFile. The zero WriteOption adds
// none.
type WriteOption struct {
	set func(*WriteOptions)
	err error
}

// IfUnchanged makes WriteFile replace the file only if its current content
// has this SHA-256 (hex, as sha256sum prints it), checked on the node right
// before the rename; otherwise the file is left as it is and the error
// wraps ErrChanged. An absent file does not match. An empty or malformed
// hash is an error that writes nothing: to require that the file not exist,
// use IfAbsent.
func IfUnchanged(sha256hex string) WriteOption {
	h := strings.ToLower(sha256hex)
	if b, err := hex.DecodeString(h); err != nil || len(b) != sha256.Size {
		return WriteOption{err: fmt.Errorf("IfUnchanged(%q): not a hex SHA-256", sha256hex)}
	}
	return WriteOption{set: func(o *WriteOptions) { o.Checked, o.WantSHA256 = true, h }}
}

// IfContent is IfUnchanged for content the caller read: the file is
// replaced only if it still holds exactly those bytes.
func IfContent(read []byte) WriteOption {
	sum := sha256.Sum256(read)
	return IfUnchanged(hex.EncodeToString(sum[:]))
}

// IfAbsent makes WriteFile create the file only if nothing exists at its
// path yet (a dangling symlink counts as nothing at its target), checked on
// the node right before the rename; otherwise the error wraps ErrChanged.
func IfAbsent() WriteOption {
	return WriteOption{set: func(o *WriteOptions) { o.Checked, o.WantSHA256 = true, "" }}
}

// WriteOptions is what a set of WriteOptions asks for, for implementers of
// Host (see WriteOptionsOf).
type WriteOptions struct {
	// Checked says the target must be checked right before it is replaced.
	Checked bool
	// WantSHA256, when Checked, is the lowercase hex SHA-256 the target's
	// content must have; empty means the target must not exist.
	WantSHA256 string
}

// WriteOptionsOf resolves the options given to WriteFile. It fails on an
// invalid option and on more than one condition, which could only be a
// mistake; an implementation of WriteFile returns that error and writes
// nothing.
func WriteOptionsOf(opts ...WriteOption) (WriteOptions, error) {
	var o WriteOptions
	conditions := 0
	for _, opt := range opts {
		if opt.err != nil {
			return WriteOptions{}, opt.err
		}
		if opt.set == nil {
			continue
		}
		opt.set(&o)
		conditions++
	}
	if conditions > 1 {
		return WriteOptions{}, errors.New("more than one of IfUnchanged and IfAbsent given")
	}
	return o, nil
}

// Allows reports whether a target with content current (exists false: no
// file) may be replaced; implementations that can read the target
// atomically with the write use it to honour the options exactly as the
// node's script does.
func (o WriteOptions) Allows(current []byte, exists bool) bool {
	switch {
	case !o.Checked:
		return true
	case o.WantSHA256 == "":
		return !exists
	case !exists:
		return false
	}
	sum := sha256.Sum256(current)
	want, _ := hex.DecodeString(o.WantSHA256)
	return bytes.Equal(sum[:], want)
}
