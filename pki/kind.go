package pki

import "fmt"

// Kind is what a server's CA material is, which decides how it can be
// rotated (docs/k3s-behaviour.md#kinds).
type Kind string

const (
	// KindDefault: k3s's own self-signed CA, a single certificate.
	// Rotated by cross-signing.
	KindDefault Kind = "default"
	// KindCrossSigned: a bundle from an earlier cross-signed rotation; the
	// key file's second key belongs to the bundle's second certificate (the
	// previous new root). Rotated by cross-signing again.
	KindCrossSigned Kind = "cross-signed"
	// KindCustom: a multi-certificate bundle whose root key is not on the
	// server. Rotated from the operator's root or intermediate.
	KindCustom Kind = "custom"
	// KindMissing: the certificate is absent or does not parse.
	KindMissing Kind = "missing"
	// KindMixed (overall only): some CAs are custom and others not.
	KindMixed Kind = "mixed"
)

// CrossSignable reports whether the kind is rotated by cross-signing.
func (k Kind) CrossSignable() bool { return k == KindDefault || k == KindCrossSigned }

// kindOf tells what the set's CA of type t is.
func (s CASet) kindOf(t CAType) Kind {
	certs, err := ParseCerts(s[t.CertFile])
	if err != nil {
		return KindMissing
	}
	if len(certs) == 1 {
		return KindDefault
	}
	if keys, err := ParseKeys(s[t.KeyFile]); err == nil && len(keys) >= 2 &&
		samePublicKey(certs[1].PublicKey, keys[1].Public()) {
		return KindCrossSigned
	}
	return KindCustom
}

// Kinds returns kindOf for every CA type, by type name.
func (s CASet) Kinds() map[string]Kind {
	m := map[string]Kind{}
	for _, t := range CATypes {
		m[t.Name] = s.kindOf(t)
	}
	return m
}

// Kind sums up the set: KindMissing if any CA is missing; the common kind
// when all agree; KindCrossSigned for a mix of default and cross-signed
// (cross-signing handles both); KindMixed otherwise.
func (s CASet) Kind() Kind {
	seen := map[Kind]bool{}
	for _, k := range s.Kinds() {
		seen[k] = true
	}
	switch {
	case seen[KindMissing]:
		return KindMissing
	case len(seen) == 1:
		for k := range seen {
			return k
		}
	case len(seen) == 2 && seen[KindDefault] && seen[KindCrossSigned]:
		return KindCrossSigned
	}
	return KindMixed
}

// oldRoot finds the root a cross-signed rotation signs the new root with,
// as the contrib rotate-default-ca-certs.sh does: the single certificate and
// first key of a default CA, or the second certificate and second key of a
// previously cross-signed bundle.
func (s CASet) oldRoot(t CAType) (*authority, error) {
	certs, err := ParseCerts(s[t.CertFile])
	if err != nil {
		return nil, fmt.Errorf("%s: %w", t.CertFile, err)
	}
	keys, err := ParseKeys(s[t.KeyFile])
	if err != nil {
		return nil, fmt.Errorf("%s: %w", t.KeyFile, err)
	}
	i := 0
	switch s.kindOf(t) {
	case KindDefault:
	case KindCrossSigned:
		i = 1
	default:
		return nil, fmt.Errorf("%s: a bundle of %d certificates whose root key is not in %s: a custom CA, rotate it from its root or intermediate", t.CertFile, len(certs), t.KeyFile)
	}
	if !samePublicKey(certs[i].PublicKey, keys[i].Public()) {
		return nil, fmt.Errorf("%s: key %d does not belong to certificate %d of %s", t.KeyFile, i+1, i+1, t.CertFile)
	}
	return &authority{cert: certs[i], key: keys[i]}, nil
}
