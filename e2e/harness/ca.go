package harness

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path"
	"path/filepath"
	"time"
)

// The harness makes its own custom CA material with Go's crypto, on purpose
// independent of fleetcert's pki package: a mistake shared by the product and
// its test fleet would hide. The topology and attributes are those of k3s's
// contrib/util/generate-custom-ca-certs.sh (docs/k3s-behaviour.md#custom-cas).

// CustomCA is the operator side of a custom CA install: the root and
// intermediate that never go to a node, as files in the fleet's Dir.
type CustomCA struct {
	RootCert         string // root-ca.pem
	RootKey          string // root-ca.key
	IntermediateCert string // intermediate-ca.pem
	IntermediateKey  string // intermediate-ca.key
}

// clusterCAs are the five CA files k3s keeps in server/tls, by path there.
var clusterCAs = []struct{ file, cn string }{
	{"server-ca", "k3s-server-ca"},
	{"client-ca", "k3s-client-ca"},
	{"request-header-ca", "k3s-request-header-ca"},
	{"etcd/peer-ca", "etcd-peer-ca"},
	{"etcd/server-ca", "etcd-server-ca"},
}

// makeCustomCA generates the custom CA topology: root RSA 4096 (20 years),
// intermediate RSA 4096 (~10 years), five EC P-256 cluster CAs under the
// intermediate, each <name>.crt = cluster CA + intermediate + root, and an
// RSA 2048 service.key. It writes the root and intermediate into dir and
// returns the files for <data-dir>/server/tls.
func makeCustomCA(dir, dataDir string) (*CustomCA, []file, error) {
	now := time.Now()
	stamp := now.Unix()
	rootKey, err := rsa.GenerateKey(rand.Reader, 4096)
	if err != nil {
		return nil, nil, err
	}
	root, err := signCA(fmt.Sprintf("k3s-root-ca@%d", stamp), rootKey, nil, nil, now, 7300)
	if err != nil {
		return nil, nil, err
	}
	interKey, err := rsa.GenerateKey(rand.Reader, 4096)
	if err != nil {
		return nil, nil, err
	}
	inter, err := signCA(fmt.Sprintf("k3s-intermediate-ca@%d", stamp), interKey, root, rootKey, now, 3700)
	if err != nil {
		return nil, nil, err
	}

	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, err
	}
	ca := &CustomCA{
		RootCert:         filepath.Join(dir, "root-ca.pem"),
		RootKey:          filepath.Join(dir, "root-ca.key"),
		IntermediateCert: filepath.Join(dir, "intermediate-ca.pem"),
		IntermediateKey:  filepath.Join(dir, "intermediate-ca.key"),
	}
	for p, data := range map[string][]byte{
		ca.RootCert:         certPEM(root),
		ca.RootKey:          pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rootKey)}),
		ca.IntermediateCert: certPEM(inter),
		ca.IntermediateKey:  pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(interKey)}),
	} {
		if err := os.WriteFile(p, data, 0o600); err != nil {
			return nil, nil, err
		}
	}

	tls := path.Join(dataDir, "server", "tls")
	var files []file
	for _, c := range clusterCAs {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, nil, err
		}
		cert, err := signCA(fmt.Sprintf("%s@%d", c.cn, stamp), key, inter, interKey, now, 3700)
		if err != nil {
			return nil, nil, err
		}
		der, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			return nil, nil, err
		}
		bundle := append(append(certPEM(cert), certPEM(inter)...), certPEM(root)...)
		files = append(files,
			file{Path: path.Join(tls, c.file+".crt"), Mode: 0o644, Data: bundle},
			file{Path: path.Join(tls, c.file+".key"), Mode: 0o600, Data: pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})})
	}
	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, nil, err
	}
	files = append(files, file{Path: path.Join(tls, "service.key"), Mode: 0o600,
		Data: pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(saKey)})})
	return ca, files, nil
}

// signCA makes a CA certificate for key, self-signed when parent is nil:
// critical CA:true without pathlen, critical keyUsage digitalSignature,
// keyEncipherment, keyCertSign, SKI from the key, AKI = the parent's SKI.
func signCA(cn string, key crypto.Signer, parent *x509.Certificate, parentKey crypto.Signer, now time.Time, days int) (*x509.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	pub, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return nil, err
	}
	ski := sha1.Sum(pub)
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(time.Duration(days) * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            -1,
		SubjectKeyId:          ski[:],
	}
	if parent == nil {
		parent, parentKey = tmpl, key
		tmpl.AuthorityKeyId = ski[:]
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentKey)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

func certPEM(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}
