package remote_test

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"

	"github.com/fleetcert/fleetcert/remote"
	"github.com/fleetcert/fleetcert/remote/sshtest"
)

// startAgent serves an in-process ssh-agent holding keys on a unix socket.
func startAgent(t *testing.T, keys ...any) string {
	t.Helper()
	// Unix socket paths are limited to ~100 bytes; t.TempDir() can be longer.
	dir, err := os.MkdirTemp("", "agent")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "s")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	kr := agent.NewKeyring()
	for _, k := range keys {
		if err := kr.Add(agent.AddedKey{PrivateKey: k}); err != nil {
			t.Fatal(err)
		}
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = agent.ServeAgent(kr, c)
			}()
		}
	}()
	return sock
}

func TestAuthAgent(t *testing.T) {
	f := newFixture(t)
	key, err := sshtest.GenerateKey(sshtest.ED25519)
	if err != nil {
		t.Fatal(err)
	}
	s := f.server(sshtest.Options{}, false)
	pub, err := ssh.NewPublicKey(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	s.Authorize(pub)
	cfg := f.config(s)
	cfg.IdentityFile = filepath.Join(f.home, "absent-is-fine-with-agent")
	cfg.AgentSocket = startAgent(t, key)
	mustRun(t, f.dial(cfg), "true", nil)
}

// An encrypted identity file whose key the agent already holds needs no
// passphrase.
func TestAuthEncryptedKeyHeldByAgentNeedsNoPassphrase(t *testing.T) {
	f := newFixture(t)
	id := sshtest.WriteIdentity(t, f.home, "enc", sshtest.ED25519, "secret")
	s := f.server(sshtest.Options{}, false)
	s.Authorize(id.Signer.PublicKey())
	cfg := f.config(s)
	cfg.IdentityFile = id.Path
	cfg.Passphrase = func(string) ([]byte, error) { t.Error("passphrase asked for"); return nil, errors.New("no") }
	// The agent holds the decrypted key; load it from the file for the test.
	key := privateKeyFromFile(t, id.Path, "secret")
	cfg.AgentSocket = startAgent(t, key)
	mustRun(t, f.dial(cfg), "true", nil)
}

func TestAuthEncryptedKeyWithPassphraseFromEnv(t *testing.T) {
	f := newFixture(t)
	id := sshtest.WriteIdentity(t, f.home, "enc", sshtest.ECDSA, "pa$$ phrase")
	s := f.server(sshtest.Options{}, false)
	s.Authorize(id.Signer.PublicKey())
	t.Setenv(remote.PassphraseEnv, "pa$$ phrase")
	cfg := f.config(s)
	cfg.IdentityFile = id.Path
	mustRun(t, f.dial(cfg), "true", nil)
}

func TestAuthEncryptedKeyErrorsNameTheFileNotTheSecret(t *testing.T) {
	f := newFixture(t)
	id := sshtest.WriteIdentity(t, f.home, "enc", sshtest.ED25519, "right")
	s := f.server(sshtest.Options{}, false)
	s.Authorize(id.Signer.PublicKey())

	cfg := f.config(s)
	cfg.IdentityFile = id.Path
	cfg.Passphrase = func(string) ([]byte, error) { return []byte("wrong-passphrase-xyz"), nil }
	_, err := remote.Dial(ctx(t), cfg)
	if !errors.Is(err, remote.ErrAuth) {
		t.Fatalf("err = %v, want ErrAuth", err)
	}
	mustContain(t, err.Error(), id.Path, "wrong passphrase", "tester@127.0.0.1")
	if strings.Contains(err.Error(), "wrong-passphrase-xyz") {
		t.Fatalf("error leaks the passphrase: %v", err)
	}

	id2 := sshtest.WriteIdentity(t, f.home, "enc2", sshtest.ED25519, "right")
	s.Authorize(id2.Signer.PublicKey())
	cfg.IdentityFile = id2.Path
	cfg.Passphrase = nil // default: env (unset here) or a terminal (none in tests)
	t.Setenv(remote.PassphraseEnv, "")
	os.Unsetenv(remote.PassphraseEnv)
	_, err = remote.Dial(ctx(t), cfg)
	if !errors.Is(err, remote.ErrAuth) {
		t.Fatalf("err = %v, want ErrAuth", err)
	}
	mustContain(t, err.Error(), id2.Path, remote.PassphraseEnv)
}

func TestAuthUnencryptedKeyAndDefaultKeys(t *testing.T) {
	f := newFixture(t)
	s := f.server(sshtest.Options{}, false)
	cfg := f.config(s)
	cfg.IdentityFile = "" // falls back to ~/.ssh/id_ed25519, which the fixture wrote
	mustRun(t, f.dial(cfg), "true", nil)

	cfg.IdentityFile = "~/.ssh/id_ed25519" // inventory style
	mustRun(t, f.dial(cfg), "true", nil)
}

func TestAuthRejectedSaysWhatWasTried(t *testing.T) {
	f := newFixture(t)
	s := sshtest.Start(t, sshtest.Options{}) // trusts no key
	s.AppendKnownHosts(t, f.known, false)
	_, err := remote.Dial(ctx(t), f.config(s))
	if !errors.Is(err, remote.ErrAuth) {
		t.Fatalf("err = %v, want ErrAuth", err)
	}
	mustContain(t, err.Error(), fmt.Sprintf("tester@127.0.0.1:%d", s.Port()), "identity file "+f.id.Path)
}

func TestAuthMissingIdentityFile(t *testing.T) {
	f := newFixture(t)
	s := f.server(sshtest.Options{}, false)
	cfg := f.config(s)
	cfg.IdentityFile = filepath.Join(f.home, "nope")
	_, err := remote.Dial(ctx(t), cfg)
	if !errors.Is(err, remote.ErrAuth) {
		t.Fatalf("err = %v", err)
	}
	mustContain(t, err.Error(), filepath.Join(f.home, "nope"), "no such file")
}

func privateKeyFromFile(t *testing.T, path, passphrase string) any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ssh.ParseRawPrivateKeyWithPassphrase(b, []byte(passphrase))
	if err != nil {
		t.Fatal(err)
	}
	return k
}
