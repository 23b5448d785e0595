// Package certtest makes CA and leaf certificates and their keys for tests,
// shaped like the ones k3s and its contrib scripts make.
//
// It uses only the standard library: pki's own tests use it, and the e2e
// harness makes the fleet's custom CAs with it on purpose without fleetcert's
// pki, so that a mistake in pki cannot hide behind the same mistake in the
// fixtures.
//
// The functions panic instead of returning errors. Generating keys and
// signing with crypto/rand fail only on a broken machine or a template the
// test got wrong, and a panic fails the test as plainly as t.Fatal would,
// without an error check at every call.
package certtest

import (
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
	"fmt"
	"math/big"
	"time"
)

// Cert is a certificate with its private key and the CA that issued it.
type Cert struct {
	Cert   *x509.Certificate
	Key    crypto.Signer
	Issuer *Cert // nil when self-signed
}

// Spec says what to make. A zero field takes the default named beside it.
type Spec struct {
	CN string
	// NotBefore defaults to now; NotAfter to ten years after NotBefore for
	// a CA (k3s's CA lifetime), one year for a leaf (k3s's leaf lifetime).
	NotBefore, NotAfter time.Time
	// Key defaults to a new ECDSA P-256 key, what k3s generates. Passing
	// one key for many certificates keeps large fixtures fast; passing a CA's
	// key to another issuer cross-signs it.
	Key crypto.Signer
	// Usage is a leaf's extended key usage; nil means client and server
	// authentication both.
	Usage []x509.ExtKeyUsage
	// KeyIDAlways gives a self-signed CA an AuthorityKeyId equal to its
	// SubjectKeyId, as openssl's authorityKeyIdentifier=keyid:always does in
	// k3s's generate-custom-ca-certs.sh; Go, and so k3s itself, leave it out.
	KeyIDAlways bool

	serial *big.Int // nil: random; k3s gives its own CAs serial 0
}

// NewCA makes a self-signed CA: critical CA:true without a path length,
// keyUsage digitalSignature, keyEncipherment and keyCertSign (what k3s and
// its scripts set), and the SubjectKeyId Go derives from the key.
func NewCA(s Spec) *Cert { return issue(s, nil, true) }

// IssueCA makes a CA signed by ca: an intermediate, or with s.Key another
// CA's key, a cross-signed copy of that CA.
func (ca *Cert) IssueCA(s Spec) *Cert { return issue(s, ca, true) }

// IssueLeaf makes a leaf certificate signed by ca, with keyUsage
// digitalSignature and keyEncipherment as k3s's leafs have.
func (ca *Cert) IssueLeaf(s Spec) *Cert { return issue(s, ca, false) }

func issue(s Spec, issuer *Cert, isCA bool) *Cert {
	if s.Key == nil {
		s.Key = NewECKey()
	}
	if s.NotBefore.IsZero() {
		s.NotBefore = time.Now()
	}
	if s.NotAfter.IsZero() {
		years := 1
		if isCA {
			years = 10
		}
		s.NotAfter = s.NotBefore.AddDate(years, 0, 0)
	}
	if s.serial == nil {
		s.serial = randomSerial()
	}
	tmpl := &x509.Certificate{
		SerialNumber: s.serial,
		Subject:      pkix.Name{CommonName: s.CN},
		NotBefore:    s.NotBefore.UTC(),
		NotAfter:     s.NotAfter.UTC(),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
	}
	if isCA {
		tmpl.KeyUsage |= x509.KeyUsageCertSign
		tmpl.BasicConstraintsValid, tmpl.IsCA = true, true
	} else {
		tmpl.ExtKeyUsage = s.Usage
		if tmpl.ExtKeyUsage == nil {
			tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}
		}
	}
	parent, signer := tmpl, s.Key
	if issuer != nil {
		parent, signer = issuer.Cert, issuer.Key
	} else if s.KeyIDAlways {
		// Go makes a CA's SubjectKeyId itself, but AuthorityKeyId needs it
		// now: openssl's way (subjectKeyIdentifier=hash).
		tmpl.SubjectKeyId = keyID(s.Key.Public())
		tmpl.AuthorityKeyId = tmpl.SubjectKeyId
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, s.Key.Public(), signer)
	if err != nil {
		panic(fmt.Sprintf("certtest: issuing %q: %v", s.CN, err))
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		panic(err)
	}
	return &Cert{Cert: c, Key: s.Key, Issuer: issuer}
}

// CertPEM is the certificate alone, PEM-encoded.
func (c *Cert) CertPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Cert.Raw})
}

// ChainPEM is the certificate followed by its issuers up to the self-signed
// one, the way k3s writes a leaf file (leaf, then CA) and a custom CA's
// bundle (cluster CA, intermediate, root).
func (c *Cert) ChainPEM() []byte {
	var out []byte
	for ; c != nil; c = c.Issuer {
		out = append(out, c.CertPEM()...)
	}
	return out
}

// KeyPEM is the certificate's key as KeyPEM encodes it.
func (c *Cert) KeyPEM() []byte { return KeyPEM(c.Key) }

// NewECKey makes an ECDSA P-256 key.
func NewECKey() *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	return k
}

// NewRSAKey makes an RSA key of the given size.
func NewRSAKey(bits int) *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		panic(err)
	}
	return k
}

// KeyPEM encodes a key as k3s and openssl write it: SEC1 "EC PRIVATE KEY"
// for ECDSA, PKCS#1 "RSA PRIVATE KEY" for RSA.
func KeyPEM(k crypto.Signer) []byte {
	switch k := k.(type) {
	case *ecdsa.PrivateKey:
		der, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			panic(err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
	case *rsa.PrivateKey:
		return pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)})
	}
	panic(fmt.Sprintf("certtest: no PEM form for a %T", k))
}

func randomSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err)
	}
	return n
}

// keyID is the SHA-1 of the subject public key bits (RFC 5280 4.2.1.2,
// method 1).
func keyID(pub crypto.PublicKey) []byte {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		panic(err)
	}
	var spki struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(der, &spki); err != nil {
		panic(err)
	}
	sum := sha1.Sum(spki.PublicKey.Bytes)
	return sum[:]
}
