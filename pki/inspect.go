package pki

import (
	"crypto/x509"
	"strings"
	"time"
)

// CertInfo describes one certificate of a bundle.
type CertInfo struct {
	Subject   string    `json:"subject"`
	Issuer    string    `json:"issuer"`
	NotBefore time.Time `json:"notBefore"`
	NotAfter  time.Time `json:"notAfter"`
	KeyType   string    `json:"keyType"`
	IsCA      bool      `json:"isCA"`
	// SelfSigned: subject and issuer are the same and the certificate's own
	// key verifies its signature.
	SelfSigned bool `json:"selfSigned"`
	// SHA256 is the lower-case hex fingerprint of the DER, the form a k3s
	// token pins.
	SHA256 string `json:"sha256"`
}

// KeyInfo describes one private key of a key file, never the key itself.
type KeyInfo struct {
	KeyType string `json:"keyType"`
}

// FileInfo describes one file of a set.
type FileInfo struct {
	File  string     `json:"file"`
	Field string     `json:"field"`
	Certs []CertInfo `json:"certs,omitempty"`
	Keys  []KeyInfo  `json:"keys,omitempty"`
	// CAHash is, for server-ca.crt, the hash join tokens pin (HashCA).
	CAHash string `json:"caHash,omitempty"`
	// Kind is, for a CA certificate file, what kindOf tells.
	Kind Kind `json:"kind,omitempty"`
	// Error says why the file could not be read.
	Error string `json:"error,omitempty"`
}

// Inspect describes every file of the set, in Files order.
func (s CASet) Inspect() []FileInfo {
	var out []FileInfo
	for _, f := range s.Names() {
		fi := FileInfo{File: f, Field: fieldOf(f)}
		if isCertFile(f) {
			inspectCerts(&fi, s[f])
		} else {
			inspectKeys(&fi, s[f])
		}
		out = append(out, fi)
	}
	for i := range out {
		for _, t := range CATypes {
			if out[i].File == t.CertFile && out[i].Error == "" {
				out[i].Kind = s.kindOf(t)
			}
		}
		if out[i].File == "server-ca.crt" && out[i].Error == "" {
			out[i].CAHash = HashCA(s[out[i].File])
		}
	}
	return out
}

func isCertFile(f string) bool {
	return strings.HasSuffix(f, ".crt")
}

func inspectCerts(fi *FileInfo, data []byte) {
	certs, err := ParseCerts(data)
	if err != nil {
		fi.Error = err.Error()
		return
	}
	for _, c := range certs {
		fi.Certs = append(fi.Certs, describeCert(c))
	}
}

func inspectKeys(fi *FileInfo, data []byte) {
	keys, err := ParseKeys(data)
	if err != nil {
		fi.Error = err.Error()
		return
	}
	for _, k := range keys {
		fi.Keys = append(fi.Keys, KeyInfo{KeyType: describeKey(k.Public())})
	}
}

// describeCert summarises a certificate.
func describeCert(c *x509.Certificate) CertInfo {
	return CertInfo{
		Subject:    c.Subject.String(),
		Issuer:     c.Issuer.String(),
		NotBefore:  c.NotBefore.UTC(),
		NotAfter:   c.NotAfter.UTC(),
		KeyType:    describeKey(c.PublicKey),
		IsCA:       c.BasicConstraintsValid && c.IsCA,
		SelfSigned: string(c.RawSubject) == string(c.RawIssuer) && c.CheckSignatureFrom(c) == nil,
		SHA256:     Fingerprint(c),
	}
}
