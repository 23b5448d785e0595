package remote

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// Host key errors, for errors.Is. Both mean "do not talk to this host".
var (
	// ErrHostKeyUnknown: the host is not in known_hosts and the policy is strict.
	ErrHostKeyUnknown = errors.New("host key unknown")
	// ErrHostKeyMismatch: known_hosts records a different key for the host.
	ErrHostKeyMismatch = errors.New("host key mismatch")
)

// hostKeys verifies server host keys for one Dial against the user's
// known_hosts file and the system-wide one.
type hostKeys struct {
	userFile   string
	systemFile string // "" = none
	policy     HostKeyPolicy
	log        *slog.Logger
}

// probeKey is a key that no host has: checking it against the database makes
// knownhosts report, in KeyError.Want, every key recorded for a host.
var probeKey = func() ssh.PublicKey {
	pub := ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize)).Public()
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		panic(err)
	}
	return k
}()

// load parses the known_hosts files that exist. It returns nil when none do:
// every host is then unknown.
func (h *hostKeys) load() (ssh.HostKeyCallback, []string, error) {
	var files []string
	var version strings.Builder
	for _, f := range []string{h.userFile, h.systemFile} {
		if f == "" {
			continue
		}
		if st, err := os.Stat(f); err == nil {
			files = append(files, f)
			fmt.Fprintf(&version, "%s\x00%d\x00%d\x00", f, st.Size(), st.ModTime().UnixNano())
		} else if !errors.Is(err, os.ErrNotExist) {
			return nil, nil, fmt.Errorf("known_hosts %s: %w", f, err)
		}
	}
	if len(files) == 0 {
		return nil, nil, nil
	}
	// Dialling a fleet parses the same files once per node: keep the last
	// parse while the files stay as they were (accept-new appends, which
	// changes size and mtime, so the next dial parses again).
	knownHostsCache.Lock()
	defer knownHostsCache.Unlock()
	if knownHostsCache.version == version.String() {
		return knownHostsCache.db, files, nil
	}
	db, indexed, err := indexKnownHosts(files)
	if err == nil && !indexed {
		db, err = knownhosts.New(files...)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("known_hosts: %w", err)
	}
	knownHostsCache.version, knownHostsCache.db = version.String(), db
	return db, files, nil
}

// knownHostsCache is the last parsed set of known_hosts files (the parsed
// database is read-only, so dials share it), keyed by path, size and mtime.
var knownHostsCache struct {
	sync.Mutex
	version string
	db      ssh.HostKeyCallback
}

// known returns the keys known_hosts records for addr (host:port), hashed
// and [host]:port entries included.
func known(db ssh.HostKeyCallback, addr string) []knownhosts.KnownKey {
	if db == nil {
		return nil
	}
	var ke *knownhosts.KeyError
	if err := db(addr, fakeAddr, probeKey); errors.As(err, &ke) {
		return ke.Want
	}
	return nil
}

var fakeAddr = &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 22}

// algorithms lists the host key algorithms to offer for keys recorded in
// known_hosts. Offering only these matters: otherwise the server may pick a
// type the file lacks (say ed25519 when only ecdsa is recorded) and the
// check would report a false mismatch. nil (no recorded key) means Go's
// defaults.
func algorithms(keys []knownhosts.KnownKey) []string {
	var out []string
	for _, k := range keys {
		for _, a := range algorithmsForKeyType(k.Key.Type()) {
			if !slices.Contains(out, a) {
				out = append(out, a)
			}
		}
	}
	slices.SortStableFunc(out, func(a, b string) int { return algoRank(a) - algoRank(b) })
	return out
}

// algorithmsForKeyType maps a key type to the signature algorithms that
// prove possession of it: an RSA key signs with SHA-2 or (legacy) SHA-1.
func algorithmsForKeyType(t string) []string {
	if t == ssh.KeyAlgoRSA {
		return []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA}
	}
	return []string{t}
}

// algoRank orders algorithms as OpenSSH prefers them.
func algoRank(a string) int {
	order := []string{
		ssh.KeyAlgoED25519, ssh.KeyAlgoECDSA256, ssh.KeyAlgoECDSA384, ssh.KeyAlgoECDSA521,
		ssh.KeyAlgoSKED25519, ssh.KeyAlgoSKECDSA256,
		ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA,
	}
	if i := slices.Index(order, a); i >= 0 {
		return i
	}
	return len(order)
}

// prepare returns the callback and algorithm list for one hop. The callback
// records its verdict in *verdict so the caller can report it instead of
// the generic "handshake failed".
func (h *hostKeys) prepare(addr string, v *verdict) (ssh.HostKeyCallback, []string, error) {
	if h.policy == PolicyInsecure {
		return func(_ string, _ net.Addr, key ssh.PublicKey) error {
			h.log.Warn("SSH HOST KEY NOT VERIFIED: --host-key-policy insecure lets anyone on the network path impersonate this node",
				"host", addr, "key_type", key.Type(), "fingerprint", ssh.FingerprintSHA256(key))
			return nil
		}, nil, nil
	}
	db, files, err := h.load()
	if err != nil {
		return nil, nil, err
	}
	cb := func(_ string, remote net.Addr, key ssh.PublicKey) error {
		err := h.check(db, files, addr, remote, key)
		v.set(err)
		return err
	}
	return cb, algorithms(known(db, addr)), nil
}

// check applies the policy to the key a server presented.
func (h *hostKeys) check(db ssh.HostKeyCallback, files []string, addr string, remote net.Addr, key ssh.PublicKey) error {
	err := errUnknown
	if db != nil {
		err = db(addr, remote, key)
	}
	var ke *knownhosts.KeyError
	var re *knownhosts.RevokedError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &re):
		return fmt.Errorf("%w: %s presented a key marked @revoked in %s line %d", ErrHostKeyMismatch, addr, re.Revoked.Filename, re.Revoked.Line)
	case errors.As(err, &ke) && len(ke.Want) > 0:
		return mismatchError(addr, key, ke.Want)
	case errors.Is(err, errUnknown) || errors.As(err, &ke):
		if h.policy == PolicyAcceptNew {
			return h.acceptNew(addr, key)
		}
		return h.unknownError(addr, key, files)
	default:
		return fmt.Errorf("known_hosts: %w", err)
	}
}

var errUnknown = errors.New("unknown host")

// verdict keeps the host key callback's error: the ssh package reports only
// "handshake failed", and the user needs to know why. The callback also runs
// on every re-key, from another goroutine, hence the lock.
type verdict struct {
	mu  sync.Mutex
	err error
}

func (v *verdict) set(err error) {
	v.mu.Lock()
	v.err = err
	v.mu.Unlock()
}

func (v *verdict) get() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.err
}

func mismatchError(addr string, key ssh.PublicKey, want []knownhosts.KnownKey) error {
	var recorded []string
	for _, k := range want {
		recorded = append(recorded, fmt.Sprintf("%s line %d (%s %s)", k.Filename, k.Line, k.Key.Type(), ssh.FingerprintSHA256(k.Key)))
	}
	return fmt.Errorf("%w: %s presented %s key %s, but known_hosts records a different key at %s. "+
		"This may be a man-in-the-middle attack, or the node was reinstalled: verify the new key out of band "+
		"before removing the old entry (ssh-keygen -R %s -f %s)",
		ErrHostKeyMismatch, addr, key.Type(), ssh.FingerprintSHA256(key), strings.Join(recorded, ", "),
		Quote(knownhosts.Normalize(addr)), Quote(want[0].Filename))
}

func (h *hostKeys) unknownError(addr string, key ssh.PublicKey, files []string) error {
	host, port := splitAddr(addr)
	searched := h.userFile
	if h.systemFile != "" {
		searched += ", " + h.systemFile
	}
	return fmt.Errorf("%w: %s is not in known_hosts (%s); it presented %s key %s. "+
		"Verify that fingerprint on the node (ssh-keygen -lf /etc/ssh/ssh_host_%s_key.pub), then add it with: "+
		"ssh-keyscan -p %d -t %s %s >> %s — or rerun with --host-key-policy accept-new to record hosts seen for the first time",
		ErrHostKeyUnknown, addr, searched, key.Type(), ssh.FingerprintSHA256(key),
		keyFileKind(key.Type()), port, keyFileKind(key.Type()), Quote(host), Quote(h.userFile))
}

// keyFileKind is the short name ssh-keyscan -t and /etc/ssh file names use.
func keyFileKind(t string) string {
	switch {
	case strings.Contains(t, "ed25519"):
		return "ed25519"
	case strings.Contains(t, "ecdsa"):
		return "ecdsa"
	case strings.Contains(t, "rsa"):
		return "rsa"
	}
	return t
}

func splitAddr(addr string) (string, int) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return addr, defaultPort
	}
	port, _ := strconv.Atoi(p)
	return host, port
}

// knownHostsMu serialises appends to known_hosts files within this process,
// so that many nodes dialled at once under accept-new do not interleave
// lines or record one host twice.
var knownHostsMu sync.Mutex

// acceptNew appends the key to the user's known_hosts in OpenSSH's format
// ("[host]:port" unless the port is 22). Under the lock it re-reads the
// file: another dial may have recorded this host meanwhile, possibly with a
// different key, which must then be a mismatch, not a second entry.
func (h *hostKeys) acceptNew(addr string, key ssh.PublicKey) error {
	knownHostsMu.Lock()
	defer knownHostsMu.Unlock()
	db, _, err := (&hostKeys{userFile: h.userFile}).load()
	if err != nil {
		return err
	}
	if want := known(db, addr); len(want) > 0 {
		for _, k := range want {
			if bytes.Equal(k.Key.Marshal(), key.Marshal()) {
				return nil
			}
		}
		return mismatchError(addr, key, want)
	}
	if err := appendLine(h.userFile, knownhosts.Line([]string{addr}, key)); err != nil {
		return fmt.Errorf("accept-new: recording host key for %s: %w", addr, err)
	}
	h.log.Warn("recorded new SSH host key (--host-key-policy accept-new)",
		"host", addr, "key_type", key.Type(), "fingerprint", ssh.FingerprintSHA256(key), "file", h.userFile)
	return nil
}

// appendLine adds line to file, creating it (0600, parent 0700) when
// missing and starting on a fresh line if the file lacks a final newline.
func appendLine(file, line string) error {
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(file, os.O_RDWR|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	prefix := ""
	if st, err := f.Stat(); err == nil && st.Size() > 0 {
		last := make([]byte, 1)
		if _, err := f.ReadAt(last, st.Size()-1); err != nil && err != io.EOF {
			f.Close()
			return err
		}
		if last[0] != '\n' {
			prefix = "\n"
		}
	}
	if _, err := f.WriteString(prefix + line + "\n"); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
