package main

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

const (
	caValidity   = 3650 * 24 * time.Hour
	leafValidity = 365 * 24 * time.Hour
)

var errNoCerts = errors.New("data does not contain any valid RSA or ECDSA certificates")

// parseCertsPEM returns every CERTIFICATE block of b, in order.
func parseCertsPEM(b []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errNoCerts
	}
	return certs, nil
}

// parsePrivateKeysPEM returns every private key in b, in order.
func parsePrivateKeysPEM(b []byte) ([]crypto.Signer, error) {
	var keys []crypto.Signer
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			break
		}
		var k any
		var err error
		switch block.Type {
		case "EC PRIVATE KEY":
			k, err = x509.ParseECPrivateKey(block.Bytes)
		case "RSA PRIVATE KEY":
			k, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		case "PRIVATE KEY":
			k, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		default:
			continue
		}
		if err != nil {
			return nil, err
		}
		s, ok := k.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("unsupported private key type %T", k)
		}
		keys = append(keys, s)
	}
	if len(keys) == 0 {
		return nil, errors.New("data does not contain a valid RSA or ECDSA private key")
	}
	return keys, nil
}

// parsePublicKeysPEM returns the public keys of a key file holding private
// and/or public keys (service.key), in order.
func parsePublicKeysPEM(b []byte) ([]crypto.PublicKey, error) {
	var keys []crypto.PublicKey
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			break
		}
		switch block.Type {
		case "PUBLIC KEY":
			k, err := x509.ParsePKIXPublicKey(block.Bytes)
			if err != nil {
				return nil, err
			}
			keys = append(keys, k)
		case "RSA PUBLIC KEY":
			k, err := x509.ParsePKCS1PublicKey(block.Bytes)
			if err != nil {
				return nil, err
			}
			keys = append(keys, k)
		default:
			priv, err := parsePrivateKeysPEM(pem.EncodeToMemory(block))
			if err != nil {
				continue
			}
			keys = append(keys, priv[0].Public())
		}
	}
	if len(keys) == 0 {
		return nil, errors.New("data does not contain any valid RSA or ECDSA public keys")
	}
	return keys, nil
}

// firstPrivateKeyBlock returns the first private key PEM block of b.
func firstPrivateKeyBlock(b []byte) ([]byte, error) {
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			return nil, errors.New("data does not contain a valid RSA or ECDSA private key")
		}
		if strings.HasSuffix(block.Type, "PRIVATE KEY") {
			return pem.EncodeToMemory(block), nil
		}
	}
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	ea, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ea.Equal(b)
}

func encodeCertPEM(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func encodeKeyPEM(k crypto.Signer) ([]byte, error) {
	switch k := k.(type) {
	case *ecdsa.PrivateKey:
		der, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			return nil, err
		}
		return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), nil
	case *rsa.PrivateKey:
		return pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)}), nil
	}
	return nil, fmt.Errorf("unsupported key type %T", k)
}

func newECKey() (*ecdsa.PrivateKey, error) {
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}

func randomSerial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
}

// newSelfSignedCA makes a k3s-style default CA: ECDSA P-256, 10 years,
// CA:true, KU digitalSignature|keyEncipherment|certSign, SKI set.
func newSelfSignedCA(cn string, now time.Time) (certPEM, keyPEM []byte, err error) {
	key, err := newECKey()
	if err != nil {
		return nil, nil, err
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             now.Add(-time.Hour).UTC(),
		NotAfter:              now.Add(caValidity).UTC(),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err = encodeKeyPEM(key)
	if err != nil {
		return nil, nil, err
	}
	return encodeCertPEM(der), keyPEM, nil
}

// signingCA is a CA bundle plus the key of its first cert.
type signingCA struct {
	Cert   *x509.Certificate // first cert of the bundle: the signer
	Bundle []byte            // the whole <type>-ca.crt file
	Key    crypto.Signer     // first key of <type>-ca.key
}

func loadSigningCA(certPath, keyPath string) (*signingCA, error) {
	bundle, err := os.ReadFile(certPath)
	if err != nil {
		return nil, err
	}
	certs, err := parseCertsPEM(bundle)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", certPath, err)
	}
	kb, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, err
	}
	keys, err := parsePrivateKeysPEM(kb)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", keyPath, err)
	}
	return &signingCA{Cert: certs[0], Bundle: bundle, Key: keys[0]}, nil
}

// leafSpec describes one leaf certificate.
type leafSpec struct {
	CN     string
	Orgs   []string
	DNS    []string
	IPs    []net.IP
	Server bool
	Client bool
}

// sign issues a leaf for pub, valid 365 days.
func (ca *signingCA) sign(pub crypto.PublicKey, spec leafSpec, now time.Time) ([]byte, error) {
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	notBefore := now.Add(-time.Hour)
	if ca.Cert.NotBefore.After(notBefore) {
		notBefore = ca.Cert.NotBefore
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: spec.CN, Organization: spec.Orgs},
		NotBefore:    notBefore.UTC(),
		NotAfter:     now.Add(leafValidity).UTC(),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		DNSNames:     spec.DNS,
		IPAddresses:  spec.IPs,
	}
	if spec.Server {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	}
	if spec.Client {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageClientAuth)
	}
	return x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Key)
}

// chainPEM is a leaf file: the leaf followed by the whole CA bundle.
func (ca *signingCA) chainPEM(der []byte) []byte {
	out := encodeCertPEM(der)
	bundle := ca.Bundle
	if len(bundle) > 0 && bundle[len(bundle)-1] != '\n' {
		bundle = append(append([]byte{}, bundle...), '\n')
	}
	return append(out, bundle...)
}

// loadOrCreateKey returns the first key of keyPath, generating and writing
// a new ECDSA key when the file does not exist.
func loadOrCreateKey(keyPath string) (crypto.Signer, bool, error) {
	b, err := os.ReadFile(keyPath)
	if err == nil {
		keys, err := parsePrivateKeysPEM(b)
		if err == nil {
			return keys[0], false, nil
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, false, err
	}
	key, err := newECKey()
	if err != nil {
		return nil, false, err
	}
	pemKey, err := encodeKeyPEM(key)
	if err != nil {
		return nil, false, err
	}
	if err := writeFileAtomic(keyPath, pemKey, 0o600); err != nil {
		return nil, false, err
	}
	return key, true, nil
}

// leafNeedsRegen reports why an existing leaf file must be re-issued
// ("" when it can stay): expiring, signed by another CA, other subject, or
// another key.
func leafNeedsRegen(certPath string, ca *signingCA, key crypto.Signer, spec leafSpec, renewDays int, now time.Time) string {
	b, err := os.ReadFile(certPath)
	if err != nil {
		return "missing"
	}
	certs, err := parseCertsPEM(b)
	if err != nil {
		return "unparsable"
	}
	c := certs[0]
	switch {
	case c.NotAfter.Sub(now) <= time.Duration(renewDays)*24*time.Hour:
		return "expiring"
	case !bytes.Equal(c.AuthorityKeyId, ca.Cert.SubjectKeyId):
		return "issuer changed"
	case c.Subject.CommonName != spec.CN:
		return "subject changed"
	case !publicKeysEqual(c.PublicKey, key.Public()):
		return "key changed"
	}
	return ""
}

// ensureLeaf makes sure certPath/keyPath hold a valid leaf issued by ca,
// reusing the key when present. It reports whether the cert was (re)issued.
func ensureLeaf(certPath, keyPath string, ca *signingCA, spec leafSpec, renewDays int, now time.Time) (bool, error) {
	key, _, err := loadOrCreateKey(keyPath)
	if err != nil {
		return false, err
	}
	if leafNeedsRegen(certPath, ca, key, spec, renewDays, now) == "" {
		return false, nil
	}
	der, err := ca.sign(key.Public(), spec, now)
	if err != nil {
		return false, err
	}
	return true, writeFileAtomic(certPath, ca.chainPEM(der), 0o644)
}

// writeFileAtomic writes via a temp file and rename, creating parent dirs.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// writeIfChanged writes data only when the file content differs, so mtimes
// of unchanged files stay put.
func writeIfChanged(path string, data []byte, mode os.FileMode) (bool, error) {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		return false, nil
	}
	return true, writeFileAtomic(path, data, mode)
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
