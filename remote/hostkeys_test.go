package remote_test

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/fleetcert/fleetcert/remote"
	"github.com/fleetcert/fleetcert/remote/sshtest"
)

func TestHostKeyKnownHostConnects(t *testing.T) {
	f := newFixture(t)
	s := f.server(sshtest.Options{}, false)
	c := f.dial(f.config(s))
	if got := mustRun(t, c, "echo hello", nil); string(got.Stdout) != "hello\n" {
		t.Fatalf("stdout %q", got.Stdout)
	}
}

func TestHostKeyUnknownStrictTellsHowToFix(t *testing.T) {
	f := newFixture(t)
	s := f.server(sshtest.Options{}, true)
	for _, policy := range []remote.HostKeyPolicy{"", remote.PolicyStrict} {
		cfg := f.config(s)
		cfg.HostKeyPolicy = policy
		_, err := remote.Dial(ctx(t), cfg)
		if !errors.Is(err, remote.ErrHostKeyUnknown) {
			t.Fatalf("policy %q: err = %v, want ErrHostKeyUnknown", policy, err)
		}
		mustContain(t, err.Error(),
			fmt.Sprintf("ssh-keyscan -p %d -t ed25519 127.0.0.1 >> %s", s.Port(), f.known),
			ssh.FingerprintSHA256(s.HostKeys()[0]),
			"--host-key-policy accept-new",
			"tester@127.0.0.1:")
	}
	if _, err := os.Stat(f.known); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("strict policy created known_hosts: %v", err)
	}
}

func TestHostKeyAcceptNewRecordsAsOpenSSH(t *testing.T) {
	f := newFixture(t)
	s := f.server(sshtest.Options{}, true)
	cfg := f.config(s)
	cfg.HostKeyPolicy = remote.PolicyAcceptNew
	f.dial(cfg).Close()

	key := s.HostKeys()[0]
	want := fmt.Sprintf("[127.0.0.1]:%d %s", s.Port(), strings.TrimSpace(string(ssh.MarshalAuthorizedKey(key))))
	if got := readFile(t, f.known); got != want+"\n" {
		t.Fatalf("known_hosts = %q, want %q", got, want+"\n")
	}
	mustContain(t, f.logs.String(), ssh.FingerprintSHA256(key), "accept-new")

	// The recorded key now satisfies strict checking, and accept-new does
	// not record it twice.
	cfg.HostKeyPolicy = remote.PolicyStrict
	f.dial(cfg).Close()
	cfg.HostKeyPolicy = remote.PolicyAcceptNew
	f.dial(cfg).Close()
	if got := readFile(t, f.known); got != want+"\n" {
		t.Fatalf("known_hosts after redial = %q", got)
	}
}

func TestHostKeyAcceptNewAppendsAfterUnterminatedLine(t *testing.T) {
	f := newFixture(t)
	s := f.server(sshtest.Options{}, true)
	other := sshtest.NewSigner(t, sshtest.ED25519).PublicKey()
	if err := os.WriteFile(f.known, []byte(sshtest.KnownHostsLine("10.9.9.9:22", other, false)), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := f.config(s)
	cfg.HostKeyPolicy = remote.PolicyAcceptNew
	f.dial(cfg).Close()
	lines := strings.Split(strings.TrimSpace(readFile(t, f.known)), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[1], fmt.Sprintf("[127.0.0.1]:%d ssh-ed25519 ", s.Port())) {
		t.Fatalf("known_hosts lines: %q", lines)
	}
}

func TestHostKeyMismatchIsFatalUnlessInsecure(t *testing.T) {
	f := newFixture(t)
	s := f.server(sshtest.Options{}, true)
	impostor := sshtest.NewSigner(t, sshtest.ED25519).PublicKey()
	line := sshtest.KnownHostsLine(s.Addr(), impostor, false)
	if err := os.WriteFile(f.known, []byte("# comment\n"+line+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, policy := range []remote.HostKeyPolicy{remote.PolicyStrict, remote.PolicyAcceptNew} {
		cfg := f.config(s)
		cfg.HostKeyPolicy = policy
		_, err := remote.Dial(ctx(t), cfg)
		if !errors.Is(err, remote.ErrHostKeyMismatch) {
			t.Fatalf("policy %s: err = %v, want ErrHostKeyMismatch", policy, err)
		}
		mustContain(t, err.Error(), "man-in-the-middle", f.known+" line 2",
			ssh.FingerprintSHA256(s.HostKeys()[0]), ssh.FingerprintSHA256(impostor))
	}
	if got := readFile(t, f.known); got != "# comment\n"+line+"\n" {
		t.Fatalf("accept-new changed known_hosts on a mismatch: %q", got)
	}

	cfg := f.config(s)
	cfg.HostKeyPolicy = remote.PolicyInsecure
	c := f.dial(cfg)
	mustRun(t, c, "true", nil)
	mustContain(t, f.logs.String(), "level=WARN", "NOT VERIFIED", s.Addr())
}

func TestHostKeyInsecureAcceptsUnknownWithWarning(t *testing.T) {
	f := newFixture(t)
	s := f.server(sshtest.Options{}, true)
	cfg := f.config(s)
	cfg.HostKeyPolicy = remote.PolicyInsecure
	mustRun(t, f.dial(cfg), "true", nil)
	mustContain(t, f.logs.String(), "level=WARN", "NOT VERIFIED", ssh.FingerprintSHA256(s.HostKeys()[0]))
	if _, err := os.Stat(f.known); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("insecure policy wrote known_hosts")
	}
}

// A host recorded with one key type must not be reported as a mismatch
// because the server prefers another type it also has.
func TestHostKeyOnlyRecordedTypesAreNegotiated(t *testing.T) {
	for _, recorded := range []sshtest.KeyType{sshtest.ECDSA, sshtest.RSA, sshtest.ED25519} {
		t.Run(string(recorded), func(t *testing.T) {
			f := newFixture(t)
			s := f.server(sshtest.Options{HostKeyTypes: []sshtest.KeyType{sshtest.ED25519, sshtest.ECDSA, sshtest.RSA}}, true)
			s.AppendKnownHosts(t, f.known, false, recorded)
			mustRun(t, f.dial(f.config(s)), "true", nil)
		})
	}
}

// When the server has none of the recorded key types any more, that is a
// changed host key, reported as such.
func TestHostKeyRecordedTypeGoneIsMismatch(t *testing.T) {
	f := newFixture(t)
	s := f.server(sshtest.Options{HostKeyTypes: []sshtest.KeyType{sshtest.ED25519}}, true)
	old := sshtest.NewSigner(t, sshtest.ECDSA).PublicKey()
	if err := os.WriteFile(f.known, []byte(sshtest.KnownHostsLine(s.Addr(), old, false)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := remote.Dial(ctx(t), f.config(s))
	if !errors.Is(err, remote.ErrHostKeyMismatch) {
		t.Fatalf("err = %v, want ErrHostKeyMismatch", err)
	}
	mustContain(t, err.Error(), "ecdsa-sha2-nistp256", "man-in-the-middle")
}

func TestHostKeyHashedEntries(t *testing.T) {
	f := newFixture(t)
	s := f.server(sshtest.Options{HostKeyTypes: []sshtest.KeyType{sshtest.ED25519, sshtest.ECDSA}}, true)
	s.AppendKnownHosts(t, f.known, true, sshtest.ECDSA)
	if !strings.HasPrefix(readFile(t, f.known), "|1|") {
		t.Fatalf("not hashed: %q", readFile(t, f.known))
	}
	mustRun(t, f.dial(f.config(s)), "true", nil)

	// A hashed entry with another key is a mismatch too.
	f2 := newFixture(t)
	s2 := f2.server(sshtest.Options{}, true)
	other := sshtest.NewSigner(t, sshtest.ED25519).PublicKey()
	if err := os.WriteFile(f2.known, []byte(sshtest.KnownHostsLine(s2.Addr(), other, true)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := remote.Dial(ctx(t), f2.config(s2)); !errors.Is(err, remote.ErrHostKeyMismatch) {
		t.Fatalf("err = %v, want ErrHostKeyMismatch", err)
	}
}

// Entries are per port: a key recorded for the host on port 22 ("host key")
// or another port does not vouch for this one.
func TestHostKeyEntriesArePerPort(t *testing.T) {
	f := newFixture(t)
	s := f.server(sshtest.Options{}, true)
	key := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(s.HostKeys()[0])))
	content := "127.0.0.1 " + key + "\n[127.0.0.1]:1 " + key + "\n"
	if err := os.WriteFile(f.known, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := remote.Dial(ctx(t), f.config(s)); !errors.Is(err, remote.ErrHostKeyUnknown) {
		t.Fatalf("err = %v, want ErrHostKeyUnknown", err)
	}
	content += fmt.Sprintf("[127.0.0.1]:%d %s\n", s.Port(), key)
	if err := os.WriteFile(f.known, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	mustRun(t, f.dial(f.config(s)), "true", nil)
}

func TestHostKeySystemKnownHostsIsReadOnly(t *testing.T) {
	f := newFixture(t)
	s := f.server(sshtest.Options{}, true)
	system := f.home + "/ssh_known_hosts"
	s.AppendKnownHosts(t, system, false)
	cfg := f.config(s)
	cfg.SystemKnownHostsFile = system
	cfg.HostKeyPolicy = remote.PolicyAcceptNew
	mustRun(t, f.dial(cfg), "true", nil)
	if _, err := os.Stat(f.known); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("a host known system-wide was recorded again in the user file")
	}
}
