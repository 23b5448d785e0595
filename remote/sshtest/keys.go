package sshtest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// KeyType names a key algorithm for host and client keys.
type KeyType string

const (
	ED25519 KeyType = "ed25519"
	ECDSA   KeyType = "ecdsa" // P-256
	RSA     KeyType = "rsa"   // 2048 bits
)

// GenerateKey returns a new private key of type t.
func GenerateKey(t KeyType) (crypto.Signer, error) {
	switch t {
	case ED25519:
		_, k, err := ed25519.GenerateKey(rand.Reader)
		return k, err
	case ECDSA:
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case RSA:
		return rsa.GenerateKey(rand.Reader, 2048)
	}
	return nil, fmt.Errorf("sshtest: unknown key type %q", t)
}

// generateSigner returns a new SSH signer of type t.
func generateSigner(t KeyType) (ssh.Signer, error) {
	k, err := GenerateKey(t)
	if err != nil {
		return nil, err
	}
	return ssh.NewSignerFromSigner(k)
}

// NewSigner returns a new SSH signer of type t; it fails the test when it
// cannot.
func NewSigner(tb testing.TB, t KeyType) ssh.Signer {
	tb.Helper()
	s, err := generateSigner(t)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// Identity is a client key written to disk as OpenSSH writes it.
type Identity struct {
	Signer ssh.Signer
	Path   string // private key (0600); Path+".pub" holds the public key
}

// WriteIdentity generates a key of type t and writes it to dir/name in
// OpenSSH format, encrypted when passphrase is not empty.
func WriteIdentity(tb testing.TB, dir, name string, t KeyType, passphrase string) Identity {
	tb.Helper()
	k, err := GenerateKey(t)
	if err != nil {
		tb.Fatal(err)
	}
	var block *pem.Block
	if passphrase == "" {
		block, err = ssh.MarshalPrivateKey(k, "sshtest")
	} else {
		block, err = ssh.MarshalPrivateKeyWithPassphrase(k, "sshtest", []byte(passphrase))
	}
	if err != nil {
		tb.Fatal(err)
	}
	signer, err := ssh.NewSignerFromSigner(k)
	if err != nil {
		tb.Fatal(err)
	}
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(p, pem.EncodeToMemory(block), 0o600); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(p+".pub", ssh.MarshalAuthorizedKey(signer.PublicKey()), 0o644); err != nil {
		tb.Fatal(err)
	}
	return Identity{Signer: signer, Path: p}
}

// KnownHostsLine is a known_hosts line for key at addr ("host:port"),
// "[host]:port" form unless the port is 22, hostname hashed (|1|...) when
// hashed is true.
func KnownHostsLine(addr string, key ssh.PublicKey, hashed bool) string {
	if !hashed {
		return knownhosts.Line([]string{addr}, key)
	}
	return knownhosts.HashHostname(knownhosts.Normalize(addr)) + " " + strings.TrimSpace(string(ssh.MarshalAuthorizedKey(key)))
}

// knownHosts returns known_hosts lines (newline-terminated) for the
// server's host keys, or only those of the given types.
func (s *Server) knownHosts(hashed bool, types ...KeyType) string {
	var b strings.Builder
	for _, k := range s.HostKeys() {
		if len(types) > 0 && !hasType(k, types) {
			continue
		}
		b.WriteString(KnownHostsLine(s.Addr(), k, hashed) + "\n")
	}
	return b.String()
}

func hasType(k ssh.PublicKey, types []KeyType) bool {
	for _, t := range types {
		if strings.Contains(k.Type(), string(t)) {
			return true
		}
	}
	return false
}

// AppendKnownHosts appends known_hosts lines for the server's host keys
// (or only those of the given types) to file.
func (s *Server) AppendKnownHosts(tb testing.TB, file string, hashed bool, types ...KeyType) {
	tb.Helper()
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(s.knownHosts(hashed, types...)); err != nil {
		tb.Fatal(err)
	}
}
