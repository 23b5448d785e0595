package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

// Validity periods, in days, of the contrib scripts (docs/k3s-behaviour.md#ca-formats): custom root
// 20 years, intermediate and cluster CAs ~10 years; everything a
// cross-signed rotation makes 20 years.
const (
	rootDays         = 7300
	intermediateDays = 3700
	clusterCADays    = 3700
	crossSignDays    = 7300
)

// notBeforeSkew backdates new certificates, as newer k3s does for its own
// (CalculateNotBefore: max(now-1h, issuer's NotBefore)), so that a node whose
// clock lags the controller does not see them as not yet valid.
const notBeforeSkew = time.Hour

// Backdate is how far before now new certificates are valid from: a node
// whose clock is behind by more would see them as not yet valid.
const Backdate = notBeforeSkew

// KeyType names a key algorithm and size for generated roots and
// intermediates. k3s only ever uses these CAs to verify chains with Go's
// crypto/x509, which accepts them all; its own cluster CAs are ECDSA P-256.
type KeyType string

// The key types fleetcert generates.
const (
	RSA2048   KeyType = "rsa2048"
	RSA3072   KeyType = "rsa3072"
	RSA4096   KeyType = "rsa4096"
	ECDSAP256 KeyType = "ecdsa-p256"
	ECDSAP384 KeyType = "ecdsa-p384"
)

// KeyTypes lists the accepted key types.
var KeyTypes = []KeyType{RSA2048, RSA3072, RSA4096, ECDSAP256, ECDSAP384}

// ParseKeyType checks a key type name.
func ParseKeyType(s string) (KeyType, error) {
	for _, k := range KeyTypes {
		if string(k) == s {
			return k, nil
		}
	}
	names := make([]string, len(KeyTypes))
	for i, k := range KeyTypes {
		names[i] = string(k)
	}
	return "", fmt.Errorf("unknown key type %q (want one of %s)", s, strings.Join(names, ", "))
}

// Env is where generation gets the time and randomness from. The zero value
// uses time.Now and crypto/rand.
//
// Since Go 1.26 key generation and signing always use a secure random source
// and ignore Rand (unless GODEBUG=cryptocustomrand=1); Rand still feeds
// serial numbers. Tests wanting fully deterministic output use
// testing/cryptotest.SetGlobalRandom.
type Env struct {
	Now  func() time.Time
	Rand io.Reader
}

func (e Env) now() time.Time {
	if e.Now != nil {
		return e.Now()
	}
	return time.Now()
}

func (e Env) rand() io.Reader {
	if e.Rand != nil {
		return e.Rand
	}
	return rand.Reader
}

// generateKey makes a new private key of type kt.
func (e Env) generateKey(kt KeyType) (crypto.Signer, error) {
	switch kt {
	case RSA2048:
		return rsa.GenerateKey(e.rand(), 2048)
	case RSA3072:
		return rsa.GenerateKey(e.rand(), 3072)
	case RSA4096:
		return rsa.GenerateKey(e.rand(), 4096)
	case ECDSAP256:
		return ecdsa.GenerateKey(elliptic.P256(), e.rand())
	case ECDSAP384:
		return ecdsa.GenerateKey(elliptic.P384(), e.rand())
	}
	return nil, fmt.Errorf("unknown key type %q", kt)
}

// authority is a CA that can sign: its certificate and private key.
type authority struct {
	cert *x509.Certificate
	key  crypto.Signer
}

// caRequest describes one CA certificate to issue.
type caRequest struct {
	cn   string
	days int
	key  crypto.Signer // the new CA's key
	// issuer signs the certificate; nil makes it self-signed.
	issuer *authority
	// outliveIssuer lets the certificate expire after its issuer, as a
	// cross-signed root legitimately does; others are cut at the issuer's
	// NotAfter.
	outliveIssuer bool
}

// issue creates a CA certificate with the extensions of the contrib
// scripts' v3_ca section: SKI = hash of the key, AKI = issuer's key id,
// critical CA:true without path length, critical digitalSignature,
// keyEncipherment, keyCertSign (also what k3s sets on its own CAs).
func (e Env) issue(r caRequest) (*x509.Certificate, error) {
	now := e.now()
	ski, err := keyID(r.key.Public())
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: r.cn},
		NotBefore:             now.Add(-notBeforeSkew).Truncate(time.Second),
		NotAfter:              now.AddDate(0, 0, r.days).Truncate(time.Second),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		SubjectKeyId:          ski,
	}
	parent, signer := tmpl, r.key
	if r.issuer == nil {
		tmpl.AuthorityKeyId = ski
	} else {
		parent, signer = r.issuer.cert, r.issuer.key
		// Go copies the issuer's SKI into the AKI; an issuer without one
		// (CAs made by old Go versions) gets the key id computed the same way,
		// so that k3s never sorts the new certificate among the roots.
		if tmpl.AuthorityKeyId, err = issuerKeyID(parent); err != nil {
			return nil, err
		}
		if tmpl.NotBefore.Before(parent.NotBefore) {
			tmpl.NotBefore = parent.NotBefore
		}
		if !r.outliveIssuer && tmpl.NotAfter.After(parent.NotAfter) {
			tmpl.NotAfter = parent.NotAfter
		}
	}
	der, err := x509.CreateCertificate(e.rand(), tmpl, parent, r.key.Public(), signer)
	if err != nil {
		return nil, fmt.Errorf("issuing %s: %w", r.cn, err)
	}
	return x509.ParseCertificate(der)
}

// keyID is RFC 5280's method 1 key identifier (SHA-1 of the subject public
// key bits), what openssl's subjectKeyIdentifier=hash and Go compute.
func keyID(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	var spki struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(der, &spki); err != nil {
		return nil, err
	}
	sum := sha1.Sum(spki.PublicKey.Bytes)
	return sum[:], nil
}

func issuerKeyID(c *x509.Certificate) ([]byte, error) {
	if len(c.SubjectKeyId) > 0 {
		return c.SubjectKeyId, nil
	}
	return keyID(c.PublicKey)
}

// stamp is the "@<unix>" suffix of every CN made in one run, as the contrib
// scripts' TIMESTAMP.
func (e Env) stamp() string { return fmt.Sprintf("@%d", e.now().Unix()) }

// CustomInput is what a custom-topology generation starts from. With no
// root, fleetcert generates root and intermediate; with a root and its key,
// a new intermediate; with a root and an intermediate, the intermediate's
// key signs the cluster CAs and the root key is not needed.
type CustomInput struct {
	Root            *x509.Certificate
	RootKey         crypto.Signer
	Intermediate    *x509.Certificate
	IntermediateKey crypto.Signer
	// KeyType of a generated root and intermediate; default RSA4096, as the
	// contrib generate-custom-ca-certs.sh.
	KeyType KeyType
	// ServiceKey is the current service.key; its keys follow the new one.
	ServiceKey []byte
}

// Custom is a generated custom topology.
type Custom struct {
	// Set holds the five bundles and keys plus service.key: what to stage.
	Set CASet
	// Root and Intermediate head every bundle.
	Root, Intermediate *x509.Certificate
	// RootKey and IntermediateKey are set only when generated here; the
	// caller must keep them safe, never on the nodes.
	RootKey, IntermediateKey crypto.Signer
}

// IssuerFiles returns the root and intermediate generated here, named as
// the contrib generate-custom-ca-certs.sh names them (root-ca.pem,
// root-ca.key, intermediate-ca.pem, intermediate-ca.key), for the operator to
// keep off the nodes; only certificates whose key was generated are included.
func (c *Custom) IssuerFiles() (map[string][]byte, error) {
	files := map[string][]byte{}
	for _, it := range []struct {
		name string
		cert *x509.Certificate
		key  crypto.Signer
	}{{"root-ca", c.Root, c.RootKey}, {"intermediate-ca", c.Intermediate, c.IntermediateKey}} {
		if it.key == nil {
			continue
		}
		k, err := encodeKey(it.key)
		if err != nil {
			return nil, err
		}
		files[it.name+".pem"], files[it.name+".key"] = encodeCerts(it.cert), k
	}
	return files, nil
}

// GenerateCustom builds the custom topology of the contrib
// generate-custom-ca-certs.sh: root (RSA 4096, 20 years, CN
// k3s-root-ca@<unix>) -> intermediate (RSA 4096, ~10 years, CN
// k3s-intermediate-ca@<unix>) -> five cluster CAs (ECDSA P-256, ~10 years,
// CN k3s-<type>-ca@<unix>), each <type>-ca.crt = cluster CA + intermediate +
// root and each <type>-ca.key its own key only; service.key = a new RSA 2048
// key followed by the current ones. The same root keeps the token hash.
func (e Env) GenerateCustom(in CustomInput) (*Custom, error) {
	out := &Custom{Set: CASet{}}
	stamp := e.stamp()
	inter, err := e.customIssuers(in, out, stamp)
	if err != nil {
		return nil, err
	}
	for _, t := range CATypes {
		key, err := e.generateKey(ECDSAP256)
		if err != nil {
			return nil, err
		}
		c, err := e.issue(caRequest{cn: t.caName() + stamp, days: clusterCADays, key: key, issuer: inter})
		if err != nil {
			return nil, err
		}
		out.Set[t.CertFile] = encodeCerts(c, out.Intermediate, out.Root)
		if out.Set[t.KeyFile], err = encodeKey(key); err != nil {
			return nil, err
		}
	}
	sk, err := e.RotateServiceKey(in.ServiceKey, 0)
	if err != nil {
		return nil, err
	}
	out.Set[ServiceKeyFile] = sk
	return out, nil
}

// customIssuers resolves (or generates) root and intermediate into out and
// returns the intermediate that signs the cluster CAs.
func (e Env) customIssuers(in CustomInput, out *Custom, stamp string) (*authority, error) {
	kt := in.KeyType
	if kt == "" {
		kt = RSA4096
	}
	switch {
	case in.Root == nil && (in.Intermediate != nil || in.RootKey != nil):
		return nil, errors.New("an intermediate or root key needs the root certificate")
	case in.Root == nil:
		key, err := e.generateKey(kt)
		if err != nil {
			return nil, err
		}
		if out.Root, err = e.issue(caRequest{cn: "k3s-root-ca" + stamp, days: rootDays, key: key}); err != nil {
			return nil, err
		}
		out.RootKey = key
		in.RootKey = key
	default:
		out.Root = in.Root
		if in.RootKey != nil && !samePublicKey(in.Root.PublicKey, in.RootKey.Public()) {
			return nil, errors.New("the root key does not belong to the root certificate")
		}
	}
	if in.Intermediate != nil {
		return e.givenIntermediate(in, out)
	}
	if in.RootKey == nil {
		return nil, errors.New("cannot generate an intermediate certificate without the root certificate's private key")
	}
	key, err := e.generateKey(kt)
	if err != nil {
		return nil, err
	}
	c, err := e.issue(caRequest{cn: "k3s-intermediate-ca" + stamp, days: intermediateDays, key: key,
		issuer: &authority{cert: out.Root, key: in.RootKey}})
	if err != nil {
		return nil, err
	}
	out.Intermediate, out.IntermediateKey = c, key
	return &authority{cert: c, key: key}, nil
}

// givenIntermediate checks an operator's intermediate: key present and
// matching, CA usage, and signed by the root.
func (e Env) givenIntermediate(in CustomInput, out *Custom) (*authority, error) {
	if in.IntermediateKey == nil {
		return nil, errors.New("cannot generate the cluster CAs without the intermediate certificate's private key")
	}
	if !samePublicKey(in.Intermediate.PublicKey, in.IntermediateKey.Public()) {
		return nil, errors.New("the intermediate key does not belong to the intermediate certificate")
	}
	if !in.Intermediate.IsCA || in.Intermediate.KeyUsage&x509.KeyUsageCertSign == 0 && in.Intermediate.KeyUsage != 0 {
		return nil, errors.New("the intermediate certificate is not a CA (CA:true and keyCertSign needed)")
	}
	roots := x509.NewCertPool()
	roots.AddCert(out.Root)
	if _, err := in.Intermediate.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: e.now(),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, fmt.Errorf("the intermediate does not chain to the root: %w", err)
	}
	out.Intermediate = in.Intermediate
	return &authority{cert: in.Intermediate, key: in.IntermediateKey}, nil
}

// CrossSign rotates k3s's default self-signed CAs (or CAs cross-signed
// before) as the contrib rotate-default-ca-certs.sh does, for the given
// types (all five when none): per type, the old root is the single
// certificate and key, or the second certificate and second key of an
// already rotated bundle; a new ECDSA P-256 root (CN k3s-<type>-root@<unix>)
// is self-signed and also cross-signed by the old root (same key and
// subject); a new ECDSA P-256 intermediate (CN k3s-<type>-ca@<unix>) is
// signed by the new root. <type>-ca.crt = intermediate + self-signed root +
// cross-signed root + old root; <type>-ca.key = intermediate key + new root
// key. All 20 years. The result holds only the CA files; rotate the
// service-account key with RotateServiceKey.
func (e Env) CrossSign(current CASet, types ...CAType) (CASet, error) {
	if len(types) == 0 {
		types = CATypes
	}
	olds := make([]*authority, len(types))
	for i, t := range types {
		var err error
		if olds[i], err = current.oldRoot(t); err != nil {
			return nil, err
		}
	}
	stamp := e.distinctStamp(types, olds)
	out := CASet{}
	for i, t := range types {
		if err := e.crossSignOne(out, t, olds[i], stamp); err != nil {
			return nil, fmt.Errorf("%s CA: %w", t.Name, err)
		}
	}
	return out, nil
}

// distinctStamp returns the run's "@<unix>" suffix, moved on by a second
// at a time while a new root would get the same CN as the root it replaces
// (a rotation within the same second as the previous one): a new root named
// like the old one would make the cross-signed root look self-signed.
func (e Env) distinctStamp(types []CAType, olds []*authority) string {
	unix := e.now().Unix()
	for clash := true; clash; {
		clash = false
		for i, t := range types {
			if olds[i].cert.Subject.CommonName == fmt.Sprintf("%s@%d", t.rootName(), unix) {
				clash = true
				unix++
			}
		}
	}
	return fmt.Sprintf("@%d", unix)
}

func (e Env) crossSignOne(out CASet, t CAType, old *authority, stamp string) error {
	rootKey, err := e.generateKey(ECDSAP256)
	if err != nil {
		return err
	}
	rootReq := caRequest{cn: t.rootName() + stamp, days: crossSignDays, key: rootKey}
	selfSigned, err := e.issue(rootReq)
	if err != nil {
		return err
	}
	rootReq.issuer, rootReq.outliveIssuer = old, true
	crossSigned, err := e.issue(rootReq)
	if err != nil {
		return err
	}
	inter, interKey, err := e.intermediateUnder(t, &authority{cert: selfSigned, key: rootKey}, stamp)
	if err != nil {
		return err
	}
	out[t.CertFile] = encodeCerts(inter, selfSigned, crossSigned, old.cert)
	out[t.KeyFile], err = encodeKeys(interKey, rootKey)
	return err
}

// intermediateUnder makes the ECDSA P-256 cluster CA of type t under root.
func (e Env) intermediateUnder(t CAType, root *authority, stamp string) (*x509.Certificate, crypto.Signer, error) {
	key, err := e.generateKey(ECDSAP256)
	if err != nil {
		return nil, nil, err
	}
	c, err := e.issue(caRequest{cn: t.caName() + stamp, days: crossSignDays, key: key, issuer: root})
	return c, key, err
}

// NewRoot makes CAs that do not chain to the current ones, for a forced
// rotation (rotate-ca --force): per type a new self-signed ECDSA P-256 root
// and an intermediate under it, laid out as a cross-signed rotation without
// the cross-signature (bundle = intermediate + root, key = intermediate key +
// root key), so that the next rotation can cross-sign again. The etcd CAs are
// left out unless includeEtcd: on HA embedded etcd, members restarted with a
// new etcd CA and those not yet restarted would stop trusting each other.
func (e Env) NewRoot(includeEtcd bool) (CASet, error) {
	out := CASet{}
	stamp := e.stamp()
	for _, t := range CATypes {
		if t.Etcd && !includeEtcd {
			continue
		}
		rootKey, err := e.generateKey(ECDSAP256)
		if err != nil {
			return nil, err
		}
		root, err := e.issue(caRequest{cn: t.rootName() + stamp, days: crossSignDays, key: rootKey})
		if err != nil {
			return nil, err
		}
		inter, interKey, err := e.intermediateUnder(t, &authority{cert: root, key: rootKey}, stamp)
		if err != nil {
			return nil, err
		}
		out[t.CertFile] = encodeCerts(inter, root)
		if out[t.KeyFile], err = encodeKeys(interKey, rootKey); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// RotateServiceKey returns a new service.key: a new RSA 2048 key (k3s's own
// service-account key type) first, then the keys of current, the signing key
// first, kept byte for byte. k3s signs with the first key and the apiserver
// accepts tokens signed by any, and rotate-ca requires the old first key to
// be in the new file. keep > 0 keeps only the first keep current keys,
// dropping the oldest; it never drops the current signing key.
func (e Env) RotateServiceKey(current []byte, keep int) ([]byte, error) {
	if keep < 0 {
		return nil, fmt.Errorf("keep must not be negative, got %d", keep)
	}
	blocks, err := keyBlocks(current)
	if err != nil {
		return nil, err
	}
	if keep > 0 && len(blocks) > keep {
		blocks = blocks[:keep]
	}
	key, err := e.generateKey(RSA2048)
	if err != nil {
		return nil, err
	}
	out, err := encodeKey(key)
	if err != nil {
		return nil, err
	}
	for _, b := range blocks {
		out = append(out, pem.EncodeToMemory(b)...)
	}
	return out, nil
}

// keyBlocks returns the private-key PEM blocks of a key file, each checked
// to parse. An empty file has none; a non-empty one without keys is an error.
func keyBlocks(data []byte) ([]*pem.Block, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, nil
	}
	var blocks []*pem.Block
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if !strings.HasSuffix(b.Type, "PRIVATE KEY") {
			continue
		}
		if _, err := parseKey(b); err != nil {
			return nil, fmt.Errorf("current %s, key %d: %w", ServiceKeyFile, len(blocks)+1, err)
		}
		blocks = append(blocks, b)
	}
	if len(blocks) == 0 {
		return nil, fmt.Errorf("current %s holds no private key", ServiceKeyFile)
	}
	return blocks, nil
}
