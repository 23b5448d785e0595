package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"
)

func TestParseToken(t *testing.T) {
	hash := strings.Repeat("ab", 32)
	cases := []struct {
		in             string
		hash, user, pw string
		err            string
	}{
		{in: "secret", pw: "secret"},
		{in: "K10" + hash + "::server:pw", hash: hash, user: "server", pw: "pw"},
		{in: "K10" + hash + "::node:p:w", hash: hash, user: "node", pw: "p:w"},
		{in: "abcdef.0123456789abcdef", pw: "abcdef.0123456789abcdef"},
		{in: "K10abc::server:pw", err: "invalid token CA hash length"},
		{in: "K10" + hash + "::server:", err: "invalid token format"},
	}
	for _, c := range cases {
		tok, err := parseToken(c.in)
		if c.err != "" {
			if err == nil || err.Error() != c.err {
				t.Errorf("%q: err %v, want %q", c.in, err, c.err)
			}
			continue
		}
		if err != nil || tok.CAHash != c.hash || tok.Username != c.user || tok.Password != c.pw {
			t.Errorf("%q: got %+v %v", c.in, tok, err)
		}
	}
}

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func TestHashCASingleCertIsRawBytes(t *testing.T) {
	ca := makeCA(t, "k3s-server-ca@1", nil, nil)
	// Whitespace counts: the hash is over the file bytes, not the DER.
	withNL := append(append([]byte{}, ca.PEM...), '\n')
	if got := hashCA(ca.PEM); got != sum(ca.PEM) {
		t.Fatalf("single cert: %s", got)
	}
	if hashCA(withNL) == hashCA(ca.PEM) {
		t.Fatal("an extra newline must change the legacy hash")
	}
	if hashCA(ca.PEM) == sum(ca.Cert.Raw) {
		t.Fatal("single cert must not hash the DER")
	}
}

func TestHashCAChainIsRootDER(t *testing.T) {
	root := makeCA(t, "k3s-root-ca@1", nil, nil)
	inter := makeCA(t, "k3s-intermediate-ca@1", nil, root)
	server := makeCA(t, "k3s-server-ca@1", nil, inter)
	bundle := bytes.Join([][]byte{server.PEM, inter.PEM, root.PEM}, nil)
	if got := hashCA(bundle); got != sum(root.Cert.Raw) {
		t.Fatalf("custom CA chain: got %s want root DER hash %s", got, sum(root.Cert.Raw))
	}
	// Cross-signed default rotation pins the NEW self-signed root, not the
	// intermediate (the script's printed value) nor the old root.
	old := makeCA(t, "k3s-server-ca@0", nil, nil)
	cs := crossSign(t, old, "server")
	got := hashCA(cs.Bundle)
	if got != sum(cs.SelfSigned.Cert.Raw) {
		t.Fatalf("cross-signed: got %s want new root %s", got, sum(cs.SelfSigned.Cert.Raw))
	}
	if got == sum(cs.Intermediate.Cert.Raw) || got == sum(old.Cert.Raw) {
		t.Fatal("cross-signed hash must be the new self-signed root")
	}
}

func TestHashCAFallsBackToRawBytes(t *testing.T) {
	inter := makeCA(t, "k3s-server-ca@1", nil, makeCA(t, "root-a", nil, nil))
	unrelated := makeCA(t, "root-b", nil, nil)
	bundle := append(append([]byte{}, inter.PEM...), unrelated.PEM...)
	if got := hashCA(bundle); got != sum(bundle) {
		t.Fatalf("unverifiable bundle must hash raw bytes, got %s", got)
	}
}

func TestFormatToken(t *testing.T) {
	ca := makeCA(t, "k3s-server-ca@1", nil, nil)
	if got, want := formatToken(ca.PEM, "server", "pw"), "K10"+sum(ca.PEM)+"::server:pw"; got != want {
		t.Fatalf("got %s want %s", got, want)
	}
}
