package pki

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"sync"
	"time"
)

// HashCA returns the CA hash a k3s join token pins for a server CA bundle
// (the bytes of server/tls/server-ca.crt, as served at /cacerts), computed
// as k3s's hashCA (pkg/clientaccess/token.go) does:
//
//   - a bundle with one certificate hashes to the SHA-256 of its raw bytes:
//     the PEM text, whitespace and final newline included;
//   - for a bundle with more, certs[1:] whose AuthorityKeyId is empty or
//     equals their SubjectKeyId are roots and the others intermediates;
//     certs[0] is verified against them at the current time with Go's
//     default options (which check for ServerAuth usage); on success the hash
//     is the SHA-256 of the DER of the last certificate of the first chain,
//     the root's fingerprint;
//   - when that verification fails, k3s silently falls back to the SHA-256
//     of the raw bytes, and so does HashCA.
//
// k3s fails outright on a bundle without a parseable certificate; HashCA
// hashes its raw bytes then. Check with ParseCerts first where that matters.
//
// A verified result is remembered while every certificate of its chain is
// within its validity: a rollout hashes the same few bundles at every read
// and gate, and parsing and verifying them again was a tenth of its CPU.
func HashCA(bundle []byte) string {
	key := sha256.Sum256(bundle)
	if h, ok := verified.get(key, time.Now()); ok {
		return h
	}
	certs, err := ParseCerts(bundle)
	if err == nil && len(certs) > 1 {
		roots, inters := x509.NewCertPool(), x509.NewCertPool()
		for _, c := range certs[1:] {
			if isRootLike(c) {
				roots.AddCert(c)
			} else {
				inters.AddCert(c)
			}
		}
		chains, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inters})
		if err == nil {
			chain := chains[0]
			h := hashBytes(chain[len(chain)-1].Raw)
			verified.put(key, h, chain)
			return h
		}
	}
	return hex.EncodeToString(key[:])
}

// verified remembers HashCA's verified results, each with the window in
// which its chain verifies. It is bounded: a check of a large fleet sees a
// bundle per cluster.
var verified = &hashCache{entries: map[[32]byte]hashEntry{}}

const hashCacheSize = 4096

type hashCache struct {
	mu      sync.Mutex
	entries map[[32]byte]hashEntry
}

type hashEntry struct {
	hash        string
	from, until time.Time
}

func (c *hashCache) get(key [32]byte, now time.Time) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[key]
	if !ok || now.Before(e.from) || now.After(e.until) {
		return "", false
	}
	return e.hash, true
}

func (c *hashCache) put(key [32]byte, hash string, chain []*x509.Certificate) {
	e := hashEntry{hash: hash, until: chain[0].NotAfter}
	for _, cert := range chain {
		if cert.NotBefore.After(e.from) {
			e.from = cert.NotBefore
		}
		if cert.NotAfter.Before(e.until) {
			e.until = cert.NotAfter
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.entries) >= hashCacheSize {
		clear(c.entries)
	}
	c.entries[key] = e
}

// isRootLike is k3s's test, in hashCA and in the rotate-ca validation, for a
// certificate that goes into the roots pool: no AuthorityKeyId, or one equal
// to its SubjectKeyId.
func isRootLike(c *x509.Certificate) bool {
	return len(c.AuthorityKeyId) == 0 || bytes.Equal(c.AuthorityKeyId, c.SubjectKeyId)
}

func hashBytes(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// Fingerprint returns the lower-case hex SHA-256 of a certificate's DER,
// which is what HashCA returns for a verified chain ending at c.
func Fingerprint(c *x509.Certificate) string { return hashBytes(c.Raw) }
