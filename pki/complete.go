package pki

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
)

// Completion is what completing a cross-signed rotation does to a set of
// CAs (docs/k3s-behaviour.md#complete-cross-signed).
type Completion struct {
	// Set holds the bundles that change: intermediate + new self-signed
	// root, the cross-signed and old roots dropped. The keys stay.
	Set CASet
	// Retired are the roots no longer trusted once the set is served: each
	// type's cross-signed root and the old root it chained to.
	Retired []*x509.Certificate
	// Complete lists the CA types already in their completed form.
	Complete []string
}

// ErrNotCrossSigned means no CA of the set comes from a cross-signed
// rotation: there is nothing to complete.
var ErrNotCrossSigned = errors.New("no CA comes from a cross-signed rotation: nothing to complete")

// Complete makes the bundles that retire the old roots after a
// cross-signed rotation. Per CA type, a bundle as CrossSign lays it out
// (intermediate, new self-signed root, the same root cross-signed by the
// old one, old root; the key file holding the intermediate's and the new
// root's keys) becomes intermediate + new self-signed root. A type already
// in that form is left alone, as is a default CA never rotated (the etcd
// CAs a --force rotation keeps); any other layout is an error naming the
// type. When nothing is left to complete, Set is empty and Complete names
// the completed types; ErrNotCrossSigned when there were none either.
//
// The hash tokens pin does not change: hashCA pins the bundle's root,
// which is the new self-signed root both before and after.
func Complete(current CASet) (Completion, error) {
	out := Completion{Set: CASet{}}
	for _, t := range CATypes {
		certs, err := ParseCerts(current[t.CertFile])
		if err != nil {
			return Completion{}, fmt.Errorf("%s: %w", t.CertFile, err)
		}
		state, err := completionState(current, t, certs)
		if err != nil {
			return Completion{}, fmt.Errorf("%s: %w", t.CertFile, err)
		}
		switch state {
		case stateCrossSigned:
			out.Set[t.CertFile] = encodeCerts(certs[0], certs[1])
			out.Retired = append(out.Retired, certs[2], certs[3])
		case stateCompleted:
			out.Complete = append(out.Complete, t.Name)
		}
	}
	if len(out.Set) == 0 && len(out.Complete) == 0 {
		return Completion{}, ErrNotCrossSigned
	}
	return out, nil
}

type completion int

const (
	stateDefault completion = iota
	stateCrossSigned
	stateCompleted
)

// completionState tells a bundle's place in the cross-sign lifecycle.
func completionState(s CASet, t CAType, certs []*x509.Certificate) (completion, error) {
	if len(certs) == 1 {
		return stateDefault, nil
	}
	keys, err := ParseKeys(s[t.KeyFile])
	if err != nil || len(keys) < 2 {
		return 0, errors.New("a multi-certificate bundle whose key file does not hold the root's key: a custom CA, which has no cross-signed root to retire")
	}
	inter, root := certs[0], certs[1]
	switch {
	case !samePublicKey(inter.PublicKey, keys[0].Public()) || !samePublicKey(root.PublicKey, keys[1].Public()):
		return 0, errors.New("the key file does not match the intermediate and root: not a bundle fleetcert or k3s's script made")
	case !selfSigned(root) || inter.CheckSignatureFrom(root) != nil:
		return 0, errors.New("the second certificate is not the self-signed root of the first: not a cross-signed bundle")
	case len(certs) == 2:
		return stateCompleted, nil
	case len(certs) != 4:
		return 0, fmt.Errorf("%d certificates, where a cross-signed bundle has 4", len(certs))
	}
	cross, old := certs[2], certs[3]
	if !bytes.Equal(cross.RawSubject, root.RawSubject) || !samePublicKey(cross.PublicKey, root.PublicKey) ||
		cross.CheckSignatureFrom(old) != nil || !selfSigned(old) {
		return 0, errors.New("the third certificate is not the root cross-signed by the fourth: not a cross-signed bundle")
	}
	return stateCrossSigned, nil
}

// selfSigned reports whether c is signed by its own key under its own name.
func selfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignatureFrom(c) == nil
}
