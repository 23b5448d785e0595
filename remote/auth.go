package remote

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/term"
)

// PassphraseEnv is the environment variable that holds the passphrase of
// an encrypted identity file when Config.Passphrase is nil.
const PassphraseEnv = "FLEETCERT_SSH_PASSPHRASE"

// ErrAuth means no offered credential was accepted.
var ErrAuth = errors.New("authentication failed")

// passphraseFromEnvOrTTY is the default Config.Passphrase: $FLEETCERT_SSH_PASSPHRASE
// if set, else a prompt on /dev/tty when stdin is a terminal, else an error
// that says how to provide one. It is called at most once per key file and
// process (see loadIdentity), however many nodes use that key.
func passphraseFromEnvOrTTY(keyFile string) ([]byte, error) {
	if p, ok := os.LookupEnv(PassphraseEnv); ok {
		return []byte(p), nil
	}
	if !term.IsTerminal(int(os.Stdin.Fd())) {
		return nil, fmt.Errorf("identity file %s is encrypted and there is no terminal to ask for its passphrase: set %s or load the key into ssh-agent", keyFile, PassphraseEnv)
	}
	tty, err := os.OpenFile("/dev/tty", os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("identity file %s is encrypted: opening /dev/tty to ask for its passphrase: %w", keyFile, err)
	}
	defer tty.Close()
	fmt.Fprintf(tty, "Enter passphrase for key '%s': ", keyFile)
	p, err := term.ReadPassword(int(tty.Fd()))
	fmt.Fprintln(tty)
	if err != nil {
		return nil, fmt.Errorf("reading passphrase for %s: %w", keyFile, err)
	}
	return p, nil
}

// identityCache holds parsed identity files for the life of the process:
// a fleet run dials hundreds of nodes with the same key, which must be
// decrypted (and its passphrase asked for) once, and one signer shared by
// every connection keeps per-node memory small. Failures are cached too, so
// a wrong passphrase is not asked for again per node. An entry is reused
// only while the file's size and mtime are unchanged.
var identityCache = struct {
	sync.Mutex
	m map[string]cachedIdentity
}{m: map[string]cachedIdentity{}}

type cachedIdentity struct {
	signer ssh.Signer
	err    error
	mod    time.Time
	size   int64
}

// loadIdentity parses a private key file, asking for a passphrase when it
// is encrypted. Errors name the file, never the passphrase.
func loadIdentity(path string, passphrase func(string) ([]byte, error)) (ssh.Signer, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("identity file: %w", err)
	}
	identityCache.Lock()
	defer identityCache.Unlock()
	if c, ok := identityCache.m[path]; ok && c.mod.Equal(st.ModTime()) && c.size == st.Size() {
		return c.signer, c.err
	}
	signer, err := parseIdentity(path, passphrase)
	identityCache.m[path] = cachedIdentity{signer: signer, err: err, mod: st.ModTime(), size: st.Size()}
	return signer, err
}

func parseIdentity(path string, passphrase func(string) ([]byte, error)) (ssh.Signer, error) {
	pemBytes, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("identity file: %w", err)
	}
	signer, err := ssh.ParsePrivateKey(pemBytes)
	var missing *ssh.PassphraseMissingError
	if !errors.As(err, &missing) {
		if err != nil {
			return nil, fmt.Errorf("identity file %s: %w", path, err)
		}
		return signer, nil
	}
	pass, err := passphrase(path)
	if err != nil {
		return nil, err
	}
	defer clear(pass)
	signer, err = ssh.ParsePrivateKeyWithPassphrase(pemBytes, pass)
	if errors.Is(err, x509.IncorrectPasswordError) {
		return nil, fmt.Errorf("identity file %s: wrong passphrase", path)
	}
	if err != nil {
		return nil, fmt.Errorf("identity file %s: %w", path, err)
	}
	return signer, nil
}

// agentKeys is what ssh-agent offers, fetched once per Dial and shared by
// its hops. The socket is closed when the dial is done.
type agentKeys struct {
	conn    net.Conn
	signers []ssh.Signer
	note    string // for "what was tried"
}

func openAgent(socket string) *agentKeys {
	if socket == "" {
		return &agentKeys{note: "no ssh-agent"}
	}
	conn, err := net.Dial("unix", socket)
	if err != nil {
		return &agentKeys{note: fmt.Sprintf("ssh-agent %s (unreachable: %v)", socket, err)}
	}
	signers, err := agent.NewClient(conn).Signers()
	if err != nil {
		conn.Close()
		return &agentKeys{note: fmt.Sprintf("ssh-agent %s (listing keys: %v)", socket, err)}
	}
	return &agentKeys{conn: conn, signers: signers, note: fmt.Sprintf("ssh-agent %s (%d keys)", socket, len(signers))}
}

func (a *agentKeys) close() {
	if a.conn != nil {
		a.conn.Close()
	}
}

// find returns the agent's signer for pub, if it holds that key.
func (a *agentKeys) find(pub ssh.PublicKey) ssh.Signer {
	for _, s := range a.signers {
		if bytes.Equal(s.PublicKey().Marshal(), pub.Marshal()) {
			return s
		}
	}
	return nil
}

// credentials is the ordered list of keys to offer one endpoint, and a
// description of what was tried for the error when none works.
type credentials struct {
	signers []ssh.Signer
	tried   []string
}

// credentialsFor builds the key list: configured identity files first (via
// the agent when it already holds the key, so an encrypted file needs no
// passphrase), then the remaining agent keys. All keys go into ONE
// publickey method, because the ssh package tries each method name once.
func credentialsFor(ep endpoint, ag *agentKeys, passphrase func(string) ([]byte, error)) credentials {
	var c credentials
	seen := map[string]bool{}
	add := func(s ssh.Signer) {
		k := string(s.PublicKey().Marshal())
		if !seen[k] {
			seen[k] = true
			c.signers = append(c.signers, s)
		}
	}
	for _, f := range ep.identityFiles {
		if s := agentSignerForFile(f, ag); s != nil {
			add(s)
			c.tried = append(c.tried, fmt.Sprintf("identity file %s (via ssh-agent)", f))
			continue
		}
		s, err := loadIdentity(f, passphrase)
		if err != nil {
			c.tried = append(c.tried, fmt.Sprintf("identity file %s (unusable: %v)", f, err))
			continue
		}
		add(s)
		c.tried = append(c.tried, fmt.Sprintf("identity file %s (%s)", f, ssh.FingerprintSHA256(s.PublicKey())))
	}
	for _, s := range ag.signers {
		add(s)
	}
	if ag.note != "" {
		c.tried = append(c.tried, ag.note)
	}
	if len(ep.identityFiles) == 0 && !ep.identityFixed {
		c.tried = append(c.tried, "no default key (~/.ssh/id_ed25519, id_ecdsa, id_rsa) exists")
	}
	return c
}

// agentSignerForFile looks for FILE.pub and returns the agent's signer for
// that key, if the agent holds it.
func agentSignerForFile(file string, ag *agentKeys) ssh.Signer {
	if len(ag.signers) == 0 {
		return nil
	}
	b, err := os.ReadFile(file + ".pub")
	if err != nil {
		return nil
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey(b)
	if err != nil {
		return nil
	}
	return ag.find(pub)
}

// authError turns the ssh package's "unable to authenticate" into an error
// that says which user and what was offered.
func authError(ep endpoint, c credentials, err error) error {
	if !strings.Contains(err.Error(), "unable to authenticate") {
		return err
	}
	tried := strings.Join(c.tried, "; ")
	if tried == "" {
		tried = "no keys"
	}
	return fmt.Errorf("%w as user %s; offered: %s", ErrAuth, ep.user, tried)
}
