package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
)

// PEM block types. k3s and its contrib scripts write certificates as
// CERTIFICATE, EC keys as SEC1 "EC PRIVATE KEY" (openssl ecparam, k3s's own
// key generator) and RSA keys as PKCS#1 "RSA PRIVATE KEY" (openssl genrsa
// -traditional); PKCS#8 "PRIVATE KEY" is read too.
const (
	pemCertificate  = "CERTIFICATE"
	pemECKey        = "EC PRIVATE KEY"
	pemRSAKey       = "RSA PRIVATE KEY"
	pemPKCS8Key     = "PRIVATE KEY"
	pemPublicKey    = "PUBLIC KEY"
	pemRSAPublicKey = "RSA PUBLIC KEY"
)

// errNoCerts is the text of client-go's certutil.ParseCertsPEM, which k3s
// uses to read CA bundles, when a file holds no certificate.
var errNoCerts = errors.New("data does not contain any valid RSA or ECDSA certificates")

// ParseCerts returns every certificate of a PEM bundle in file order. Like
// client-go's certutil.ParseCertsPEM (what k3s reads bundles with), it skips
// blocks of other types and blocks with PEM headers, fails on a CERTIFICATE
// block that does not parse, and fails when no certificate is found.
func ParseCerts(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for n := 1; ; n++ {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != pemCertificate || len(b.Headers) != 0 {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("PEM block %d: %w", n, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errNoCerts
	}
	return certs, nil
}

// ParseKeys returns every private key of a PEM file in file order: SEC1
// EC, PKCS#1 RSA and PKCS#8 (RSA, ECDSA, Ed25519) blocks. Other blocks are
// skipped; a key block that does not parse is an error, and so is a file
// without any key.
func ParseKeys(data []byte) ([]crypto.Signer, error) {
	var keys []crypto.Signer
	for n := 1; ; n++ {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if !strings.HasSuffix(b.Type, "PRIVATE KEY") {
			continue
		}
		k, err := parseKey(b)
		if err != nil {
			return nil, fmt.Errorf("PEM block %d (%s): %w", n, b.Type, err)
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, errors.New("no private key found")
	}
	return keys, nil
}

func parseKey(b *pem.Block) (crypto.Signer, error) {
	switch b.Type {
	case pemECKey:
		return x509.ParseECPrivateKey(b.Bytes)
	case pemRSAKey:
		return x509.ParsePKCS1PrivateKey(b.Bytes)
	case pemPKCS8Key:
		k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
		if err != nil {
			return nil, err
		}
		s, ok := k.(crypto.Signer) // not X25519 (*ecdh.PrivateKey)
		if !ok {
			return nil, fmt.Errorf("unsupported key type %T", k)
		}
		return s, nil
	}
	return nil, fmt.Errorf("unsupported PEM block type %q", b.Type)
}

// parsePublicKeys returns the public keys of every private or public key
// block of a PEM file, in order, as Kubernetes' keyutil.ParsePublicKeysPEM
// does for the service-account key file (private keys stand for their public
// halves). Unparseable blocks are skipped.
func parsePublicKeys(data []byte) []crypto.PublicKey {
	var pubs []crypto.PublicKey
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return pubs
		}
		switch {
		case strings.HasSuffix(b.Type, "PRIVATE KEY"):
			if k, err := parseKey(b); err == nil {
				pubs = append(pubs, k.Public())
			}
		case b.Type == pemPublicKey:
			if p, err := x509.ParsePKIXPublicKey(b.Bytes); err == nil {
				pubs = append(pubs, p)
			}
		case b.Type == pemRSAPublicKey:
			if p, err := x509.ParsePKCS1PublicKey(b.Bytes); err == nil {
				pubs = append(pubs, p)
			}
		}
	}
}

// encodeCerts returns the PEM bundle of certs, in order.
func encodeCerts(certs ...*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: pemCertificate, Bytes: c.Raw})...)
	}
	return out
}

// encodeKey returns the PEM form of a private key as k3s and its contrib
// scripts write it: SEC1 for ECDSA, PKCS#1 for RSA, PKCS#8 for Ed25519.
func encodeKey(k crypto.Signer) ([]byte, error) {
	var b *pem.Block
	switch k := k.(type) {
	case *ecdsa.PrivateKey:
		der, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			return nil, err
		}
		b = &pem.Block{Type: pemECKey, Bytes: der}
	case *rsa.PrivateKey:
		b = &pem.Block{Type: pemRSAKey, Bytes: x509.MarshalPKCS1PrivateKey(k)}
	default:
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			return nil, err
		}
		b = &pem.Block{Type: pemPKCS8Key, Bytes: der}
	}
	return pem.EncodeToMemory(b), nil
}

// encodeKeys concatenates the PEM forms of keys, in order.
func encodeKeys(keys ...crypto.Signer) ([]byte, error) {
	var out []byte
	for _, k := range keys {
		p, err := encodeKey(k)
		if err != nil {
			return nil, err
		}
		out = append(out, p...)
	}
	return out, nil
}

// describeKey names a public key's algorithm and size: "RSA 2048",
// "ECDSA P-256", "Ed25519".
func describeKey(pub crypto.PublicKey) string {
	switch p := pub.(type) {
	case *rsa.PublicKey:
		return fmt.Sprintf("RSA %d", p.N.BitLen())
	case *ecdsa.PublicKey:
		return "ECDSA " + p.Curve.Params().Name
	case ed25519.PublicKey:
		return "Ed25519"
	}
	return fmt.Sprintf("unknown (%T)", pub)
}

// samePublicKey reports whether a and b are the same public key.
func samePublicKey(a, b crypto.PublicKey) bool {
	ka, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ka.Equal(b)
}
