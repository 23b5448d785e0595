package pki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"time"
)

// The texts of k3s's rotate-ca validation errors (pkg/server/handlers/cert.go;
// "X590" is k3s's typo, kept so that operators can search for it).
const (
	msgSingleCert  = "new CA bundle contains only a single certificate but should include root or intermediate CA certificates"
	msgNotVerified = "new CA cert cannot be verified using old CA chain"
	msgKeyPair     = "new CA cert and key cannot be loaded as X590KeyPair"
	msgServiceKey  = "old ServiceAccount signing key not in new ServiceAccount key list"
)

// Problem is one finding about one staged file.
type Problem struct {
	// File is the file name under DIR/tls, e.g. "etcd/peer-ca.crt".
	File string `json:"file"`
	// Field is k3s's name for it, e.g. "ETCDPeerCA" or "ETCDPeerCAKey".
	Field string `json:"field"`
	// Message is, for errors, k3s's own text.
	Message string `json:"message"`
}

// String shows the problem as "<file>: <Field>: <message>", the part after
// the file name being what k3s logs.
func (p Problem) String() string { return p.File + ": " + p.Field + ": " + p.Message }

// Result is the outcome of Validate.
type Result struct {
	// Errors are the failures of k3s's own rotate-ca checks: any of them
	// makes rotate-ca fail unless --force is given.
	Errors []Problem `json:"errors"`
	// Warnings are lint findings k3s does not check; they never make
	// rotate-ca fail.
	Warnings []Problem `json:"warnings"`
	// Notes are observations that are expected by design, such as a
	// cross-signed root outliving the old root that signed it: shown by
	// `ca verify`, left out of rotation reports where they would be noise.
	Notes []Problem `json:"notes"`
}

// OK reports whether k3s would accept the material without --force.
func (r Result) OK() bool { return len(r.Errors) == 0 }

func (r *Result) fail(file, field, msg string) {
	r.Errors = append(r.Errors, Problem{File: file, Field: field, Message: msg})
}

func (r *Result) warn(file, field, format string, args ...any) {
	r.Warnings = append(r.Warnings, Problem{File: file, Field: field, Message: fmt.Sprintf(format, args...)})
}

// Validate checks staged material against the current set with exactly the
// checks of k3s's rotate-ca endpoint (validateBootstrap), then lints it. As
// k3s does, it checks every file present in staged, even one identical to the
// current file, and files absent from staged keep the current ones. All
// problems are collected; verification uses e's clock (k3s uses the current
// time).
func (e Env) Validate(current, staged CASet) Result {
	var r Result
	for _, t := range CATypes {
		e.validateType(&r, current, staged, t)
		if t.Name == "client" { // k3s's field order: ClientCA(Key), ServiceKey, RequestHeaderCA(Key)
			validateServiceKey(&r, current, staged)
		}
	}
	return r
}

func (e Env) validateType(r *Result, current, staged CASet, t CAType) {
	newCert, certStaged := staged[t.CertFile]
	newKey, keyStaged := staged[t.KeyFile]
	if certStaged {
		if err := e.validateCA(current[t.CertFile], newCert); err != nil {
			r.fail(t.CertFile, t.Field, err.Error())
		}
		e.lintBundle(r, t, current[t.CertFile], newCert)
	}
	if certStaged || keyStaged {
		if !certStaged {
			newCert = current[t.CertFile]
		}
		if !keyStaged {
			newKey = current[t.KeyFile]
		}
		file := t.KeyFile
		if !keyStaged {
			file = t.CertFile
		}
		// k3s: tls.LoadX509KeyPair(newCA, newKey), which pairs the first
		// certificate with the first private key block.
		if _, err := tls.X509KeyPair(newCert, newKey); err != nil {
			r.fail(file, t.KeyField, msgKeyPair+": "+err.Error())
		}
	}
	if keyStaged {
		lintKeys(r, t.KeyFile, t.KeyField, newKey)
	}
	if certStaged && bytes.Equal(newCert, current[t.CertFile]) {
		r.warn(t.CertFile, t.Field, "identical to the current file; k3s validates it anyway, stage only the files that change")
	}
}

// validateCA is k3s's validateCA: more than one certificate; certs[0]
// verifies with roots = the old certificates whose AKI is empty or equals
// their SKI, intermediates = the other old certificates plus the new
// certs[1:] that carry an AKI; Go's default verify options.
func (e Env) validateCA(oldPEM, newPEM []byte) error {
	oldCerts, err := ParseCerts(oldPEM)
	if err != nil {
		return fmt.Errorf("current file: %w", err)
	}
	newCerts, err := ParseCerts(newPEM)
	if err != nil {
		return err
	}
	if len(newCerts) == 1 {
		return errors.New(msgSingleCert)
	}
	roots, inters := x509.NewCertPool(), x509.NewCertPool()
	for _, c := range oldCerts {
		if isRootLike(c) {
			roots.AddCert(c)
		} else {
			inters.AddCert(c)
		}
	}
	for _, c := range newCerts[1:] {
		if len(c.AuthorityKeyId) != 0 {
			inters.AddCert(c)
		}
	}
	_, err = newCerts[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inters, CurrentTime: e.now()})
	if err != nil {
		return fmt.Errorf("%s: %w", msgNotVerified, err)
	}
	return nil
}

// validateServiceKey is k3s's validateServiceKey: the first private key of
// the current service.key must be among the keys of the new one.
func validateServiceKey(r *Result, current, staged CASet) {
	newData, ok := staged[ServiceKeyFile]
	if !ok {
		return
	}
	lintKeys(r, ServiceKeyFile, serviceKeyField, newData)
	oldKeys, err := ParseKeys(current[ServiceKeyFile])
	if err != nil {
		r.fail(ServiceKeyFile, serviceKeyField, "current file: "+err.Error())
		return
	}
	newPubs := parsePublicKeys(newData)
	for _, p := range newPubs {
		if samePublicKey(oldKeys[0].Public(), p) {
			if samePublicKey(oldKeys[0].Public(), newPubs[0]) {
				r.warn(ServiceKeyFile, serviceKeyField, "the signing (first) key is the current one: nothing is rotated")
			}
			return
		}
	}
	r.fail(ServiceKeyFile, serviceKeyField, msgServiceKey)
}

// lintBundle warns about what k3s accepts but operators should know about a
// new CA bundle.
func (e Env) lintBundle(r *Result, t CAType, oldPEM, newPEM []byte) {
	certs, err := ParseCerts(newPEM)
	if err != nil {
		return
	}
	now := e.now()
	for i, c := range certs {
		w := func(format string, args ...any) {
			r.warn(t.CertFile, t.Field, "certificate %d (%s): %s", i+1, c.Subject.CommonName, fmt.Sprintf(format, args...))
		}
		lintCert(w, c, now)
		if !outlivesAny(c, certs) {
			// Whatever issuer findIssuer would find, c does not outlive
			// it: skip its signature checks (a fleet validates thousands
			// of bundles).
			continue
		}
		if issuer := findIssuer(c, certs); issuer != nil && c.NotAfter.After(issuer.NotAfter) {
			msg := fmt.Sprintf("certificate %d (%s): valid until %s, after its issuer %s (%s); chains through it end then",
				i+1, c.Subject.CommonName, day(c.NotAfter), issuer.Subject.CommonName, day(issuer.NotAfter))
			if note := crossSignNote(c, issuer); note != "" {
				r.Notes = append(r.Notes, Problem{File: t.CertFile, Field: t.Field, Message: msg + note})
			} else {
				r.warn(t.CertFile, t.Field, "%s", msg)
			}
		}
	}
	if old, err := ParseCerts(oldPEM); err == nil && certs[0].NotAfter.Before(old[0].NotAfter) {
		r.warn(t.CertFile, t.Field, "the new CA expires %s, before the current one (%s)", day(certs[0].NotAfter), day(old[0].NotAfter))
	}
}

func crossSignNote(c, issuer *x509.Certificate) string {
	if !bytes.Equal(c.RawSubject, issuer.RawSubject) && bytes.Equal(c.RawIssuer, issuer.RawSubject) && c.IsCA {
		return " (expected for a root cross-signed by the old root)"
	}
	return ""
}

// lintCert reports validity, CA flags and weak keys or signatures.
func lintCert(w func(string, ...any), c *x509.Certificate, now time.Time) {
	switch {
	case now.After(c.NotAfter):
		w("expired on %s", c.NotAfter.UTC().Format(time.RFC3339))
	case now.Before(c.NotBefore):
		w("not valid before %s", c.NotBefore.UTC().Format(time.RFC3339))
	}
	if !c.BasicConstraintsValid || !c.IsCA {
		w("not a CA: basicConstraints CA:true is missing")
	}
	if c.KeyUsage&x509.KeyUsageCertSign == 0 {
		w("keyUsage lacks keyCertSign")
	}
	if weak := weakKey(c.PublicKey); weak != "" {
		w("%s", weak)
	}
	switch c.SignatureAlgorithm {
	case x509.MD5WithRSA, x509.SHA1WithRSA, x509.ECDSAWithSHA1, x509.DSAWithSHA1:
		w("weak signature algorithm %s", c.SignatureAlgorithm)
	}
}

// lintKeys warns about weak keys in a key file.
func lintKeys(r *Result, file, field string, data []byte) {
	keys, err := ParseKeys(data)
	if err != nil {
		return
	}
	for i, k := range keys {
		if weak := weakKey(k.Public()); weak != "" {
			r.warn(file, field, "key %d: %s", i+1, weak)
		}
	}
}

// weakKey describes a key below today's minimums (RSA 2048 bits, 256-bit
// curves), "" for a good one.
func weakKey(pub any) string {
	switch p := pub.(type) {
	case *rsa.PublicKey:
		if p.N.BitLen() < 2048 {
			return fmt.Sprintf("weak key: RSA %d bits (at least 2048 wanted)", p.N.BitLen())
		}
	case *ecdsa.PublicKey:
		if p.Curve.Params().BitSize < 256 {
			return "weak key: " + describeKey(p)
		}
	}
	return ""
}

// outlivesAny reports whether c expires after some certificate of pool
// that findIssuer could return for it (same subject as c's issuer).
func outlivesAny(c *x509.Certificate, pool []*x509.Certificate) bool {
	for _, p := range pool {
		if p != c && bytes.Equal(p.RawSubject, c.RawIssuer) && c.NotAfter.After(p.NotAfter) {
			return true
		}
	}
	return false
}

// findIssuer returns the certificate among pool that signed c, other than
// c itself (a self-signed certificate has no other issuer).
func findIssuer(c *x509.Certificate, pool []*x509.Certificate) *x509.Certificate {
	for _, p := range pool {
		if p == c || bytes.Equal(p.Raw, c.Raw) || !bytes.Equal(p.RawSubject, c.RawIssuer) {
			continue
		}
		if c.CheckSignatureFrom(p) == nil {
			return p
		}
	}
	return nil
}

func day(t time.Time) string { return t.UTC().Format("2006-01-02") }
