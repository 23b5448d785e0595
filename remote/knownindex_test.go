package remote

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

func newTestKey(t *testing.T) ssh.PublicKey {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestIndexedKnownHostsAnswersAsKnownhosts: for plain entries the index
// gives knownhosts' very answers (match, mismatch with the recorded keys,
// unknown); any other kind of entry leaves the file to knownhosts.
func TestIndexedKnownHostsAnswersAsKnownhosts(t *testing.T) {
	dir := t.TempDir()
	a, b, c, other := newTestKey(t), newTestKey(t), newTestKey(t), newTestKey(t)
	line := func(hosts []string, k ssh.PublicKey) string { return knownhosts.Line(hosts, k) + "\n" }
	plain := "# fleet\n\n" + line([]string{"[127.0.0.1]:2201"}, a) + line([]string{"node1", "10.0.0.1"}, b) +
		line([]string{"[127.0.0.1]:2201"}, c) + line([]string{"[::1]:2202", "db.example:2203"}, a)
	f := filepath.Join(dir, "known_hosts")
	if err := os.WriteFile(f, []byte(plain), 0o600); err != nil {
		t.Fatal(err)
	}
	fast, ok, err := indexKnownHosts([]string{f})
	if err != nil || !ok {
		t.Fatalf("plain file not indexed: %v %v", ok, err)
	}
	slow, err := knownhosts.New(f)
	if err != nil {
		t.Fatal(err)
	}
	remote := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 2201}
	for _, addr := range []string{"127.0.0.1:2201", "node1:22", "10.0.0.1:22", "[::1]:2202", "db.example:2203", "node1:2222", "nobody:22", ""} {
		for _, k := range []ssh.PublicKey{a, b, c, other} {
			want, got := slow(addr, remote, k), fast(addr, remote, k)
			var wke, gke *knownhosts.KeyError
			if errors.As(want, &wke) != errors.As(got, &gke) || (want == nil) != (got == nil) {
				t.Fatalf("%s: knownhosts %v, index %v", addr, want, got)
			}
			if wke != nil && !reflect.DeepEqual(wke.Want, gke.Want) {
				t.Fatalf("%s: knownhosts wants %+v, index %+v", addr, wke.Want, gke.Want)
			}
		}
	}
	for name, entry := range map[string]string{
		"hashed":   knownhosts.Line([]string{knownhosts.HashHostname("node1")}, a),
		"wildcard": line([]string{"*.example"}, a),
		"negated":  line([]string{"node*", "!node2"}, a),
		"ca":       "@cert-authority *.example " + string(ssh.MarshalAuthorizedKey(a)),
		"revoked":  "@revoked * " + string(ssh.MarshalAuthorizedKey(a)),
		"broken":   "node1 ssh-ed25519 not-base64\n",
	} {
		g := filepath.Join(dir, name)
		if err := os.WriteFile(g, []byte(plain+entry+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, ok, err := indexKnownHosts([]string{f, g}); ok || err != nil {
			t.Errorf("%s entry: indexed (%v, %v), want knownhosts", name, ok, err)
		}
	}
}
