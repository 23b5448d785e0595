package k3s

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/fleetcert/fleetcert/pki"
)

// Cert is one certificate found on a node.
type Cert struct {
	File      string    `json:"file"`
	Index     int       `json:"index"` // position in its file; 0 is the file's own cert
	Subject   string    `json:"subject"`
	Issuer    string    `json:"issuer"`
	NotBefore time.Time `json:"notBefore"`
	NotAfter  time.Time `json:"notAfter"`
	CA        bool      `json:"ca"`
	// Bundle is true for a CA bundle file (server-ca.crt and friends):
	// every cert in it is a CA that k3s trusts or signs with.
	Bundle bool `json:"bundle"`
	// Serial is the serial number in hex. The parsed certificate itself
	// is not kept: a fleet holds tens of them per node for the whole run,
	// at some 2 KiB each.
	Serial string `json:"-"`
}

// dynamicCertFile is the :6443 serving cert cache, a JSON-encoded Secret
// that `k3s certificate check` does not cover.
const dynamicCertFile = "dynamic-cert.json"

// certs lists every certificate in the snapshot: CA bundles in full, and
// for leaf files only their first cert (the rest of a leaf file is the CA
// chain, already counted from the bundles). Unparseable files are skipped
// and reported by name.
func (s *Snapshot) certs() (certs []Cert, unreadable []string) {
	paths := make([]string, 0, len(s.Files))
	for p := range s.Files {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	// A node holds the same bundle in several files (server/tls and the
	// agent's copies): parse each content once. Parsed certificates are
	// read-only, so the files share them.
	parsedBundles := map[string][]*x509.Certificate{}
	for _, p := range paths {
		name := path.Base(p)
		var data []byte
		switch {
		case name == dynamicCertFile:
			d, ok := dynamicCertPEM(s.Files[p].Data)
			if !ok {
				unreadable = append(unreadable, p)
				continue
			}
			data = d
		case strings.HasSuffix(name, ".crt"):
			data = s.Files[p].Data
		default:
			continue
		}
		bundle := isCABundle(name)
		var parsed []*x509.Certificate
		var err error
		if bundle {
			var seen bool
			if parsed, seen = parsedBundles[string(data)]; !seen {
				parsed, err = pki.ParseCerts(data)
				if err == nil {
					parsedBundles[string(data)] = parsed
				}
			}
		} else {
			parsed, err = firstCert(data)
		}
		if err != nil || len(parsed) == 0 {
			unreadable = append(unreadable, p)
			continue
		}
		for i, c := range parsed {
			if i > 0 && !bundle {
				break
			}
			certs = append(certs, Cert{
				File: p, Index: i, Subject: c.Subject.CommonName, Issuer: c.Issuer.CommonName,
				NotBefore: c.NotBefore, NotAfter: c.NotAfter, CA: c.IsCA, Bundle: bundle, Serial: c.SerialNumber.Text(16),
			})
		}
	}
	return certs, unreadable
}

// firstCert parses a leaf file's own certificate, the first CERTIFICATE
// block, and leaves the CA chain after it alone: those CAs are counted
// from the bundles, and a fleet check reads thousands of leaf files.
func firstCert(data []byte) ([]*x509.Certificate, error) {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil, nil
		}
		if b.Type == "CERTIFICATE" && len(b.Headers) == 0 {
			c, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				return nil, err
			}
			return []*x509.Certificate{c}, nil
		}
	}
}

// isCABundle tells CA bundle files from leaf files by name, as k3s names
// them: <type>-ca.crt, their *.nochain.crt copies, and the agent's copies.
func isCABundle(name string) bool {
	return strings.HasSuffix(name, "-ca.crt") || strings.HasSuffix(name, "-ca.nochain.crt")
}

// dynamicCertPEM extracts tls.crt from dynamiclistener's cache file.
func dynamicCertPEM(data []byte) ([]byte, bool) {
	var secret struct {
		Data map[string]string `json:"data"`
	}
	if err := json.Unmarshal(data, &secret); err != nil {
		return nil, false
	}
	crt, err := base64.StdEncoding.DecodeString(secret.Data["tls.crt"])
	return crt, err == nil && len(crt) > 0
}
