package pki

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"sync"
	"testing"
	"time"
)

func sha(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

var (
	rsaCustomOnce sync.Once
	rsaCustom     *Custom
)

// defaultCustom is a custom topology with the default RSA 4096 root and
// intermediate, generated once per test binary (RSA 4096 is slow).
func defaultCustom(t testing.TB) *Custom {
	rsaCustomOnce.Do(func() {
		c, err := Env{}.GenerateCustom(CustomInput{})
		if err != nil {
			t.Fatal(err)
		}
		rsaCustom = c
	})
	return rsaCustom
}

func TestHashCA(t *testing.T) {
	def := k3sDefaultSet()
	single := def["server-ca.crt"]
	custom := defaultCustom(t)
	crossed, err := Env{}.CrossSign(def)
	if err != nil {
		t.Fatal(err)
	}
	crossCerts := mustCerts(t, crossed["server-ca.crt"])
	twice, err := Env{}.CrossSign(crossed.Overlay(def))
	if err != nil {
		t.Fatal(err)
	}
	twiceCerts := mustCerts(t, twice["server-ca.crt"])

	// A bundle whose roots are expired: verification fails, k3s hashes the
	// raw bytes.
	old := time.Now().AddDate(-20, 0, 0)
	expired, err := Env{Now: func() time.Time { return old }}.CrossSign(def)
	if err != nil {
		t.Fatal(err)
	}
	// A bundle without its root: nothing to verify against.
	noRoot := encodeCerts(mustCerts(t, custom.Set["server-ca.crt"])[:2]...)

	tests := []struct {
		name   string
		bundle []byte
		want   string
	}{
		{"single cert: raw bytes", single, sha(single)},
		{"single cert: the trailing newline matters", bytes.TrimRight(single, "\n"), sha(bytes.TrimRight(single, "\n"))},
		{"custom: root fingerprint", custom.Set["server-ca.crt"], Fingerprint(custom.Root)},
		{"cross-signed: the new self-signed root", crossed["server-ca.crt"], Fingerprint(crossCerts[1])},
		{"cross-signed twice: the newest self-signed root", twice["server-ca.crt"], Fingerprint(twiceCerts[1])},
		{"expired chain: raw fallback", expired["server-ca.crt"], sha(expired["server-ca.crt"])},
		{"missing root: raw fallback", noRoot, sha(noRoot)},
		{"not PEM: raw bytes", []byte("garbage\n"), sha([]byte("garbage\n"))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := HashCA(tt.bundle); got != tt.want {
				t.Errorf("HashCA = %s, want %s", got, tt.want)
			}
		})
	}
	if HashCA(crossed["server-ca.crt"]) == Fingerprint(crossCerts[0]) {
		t.Error("cross-signed hash is the intermediate's fingerprint, the contrib script's mistake")
	}
	if HashCA(single) == HashCA(bytes.TrimRight(single, "\n")) {
		t.Error("single-cert hash ignores the trailing newline")
	}
	t.Run("openssl agrees on the root fingerprint", func(t *testing.T) {
		if got, want := HashCA(custom.Set["server-ca.crt"]), opensslFingerprint(t, custom.Root); got != want {
			t.Errorf("HashCA = %s, openssl fingerprint of the root = %s", got, want)
		}
		if got, want := HashCA(crossed["server-ca.crt"]), opensslFingerprint(t, crossCerts[1]); got != want {
			t.Errorf("HashCA = %s, openssl fingerprint of the new self-signed root = %s", got, want)
		}
	})
}

func TestHashCASameRootSameHash(t *testing.T) {
	first := defaultCustom(t)
	again := fastCustom(t, CustomInput{Root: first.Root, RootKey: first.RootKey})
	if HashCA(first.Set["server-ca.crt"]) != HashCA(again.Set["server-ca.crt"]) {
		t.Error("a new intermediate under the same root changed the token hash")
	}
	viaInter := fastCustom(t, CustomInput{Root: first.Root, Intermediate: first.Intermediate, IntermediateKey: first.IntermediateKey})
	if HashCA(first.Set["server-ca.crt"]) != HashCA(viaInter.Set["server-ca.crt"]) {
		t.Error("new cluster CAs under the same intermediate changed the token hash")
	}
}

// TestHashCacheKeepsToTheChainsValidity: a remembered hash counts only
// while every certificate of its chain is valid; outside that window
// HashCA verifies again, as k3s would.
func TestHashCacheKeepsToTheChainsValidity(t *testing.T) {
	now := time.Now()
	c := &hashCache{entries: map[[32]byte]hashEntry{}}
	chain := []*x509.Certificate{
		{NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour)},
		{NotBefore: now.Add(-2 * time.Hour), NotAfter: now.Add(10 * time.Hour)},
	}
	var key [32]byte
	c.put(key, "h", chain)
	for _, tc := range []struct {
		at   time.Time
		want bool
	}{{now, true}, {now.Add(2 * time.Hour), false}, {now.Add(-90 * time.Minute), false}} {
		if _, ok := c.get(key, tc.at); ok != tc.want {
			t.Errorf("at %s: remembered %v, want %v", tc.at.Sub(now), ok, tc.want)
		}
	}
}
