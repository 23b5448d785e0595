package harness

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"time"

	"github.com/fleetcert/fleetcert/internal/certtest"
)

// The harness makes its own custom CA material with internal/certtest, on
// purpose independent of fleetcert's pki package: a mistake shared by the
// product and its test fleet would hide. The topology and attributes are
// those of k3s's contrib/util/generate-custom-ca-certs.sh (docs/k3s-behaviour.md#custom-cas).

// CustomCA is the operator side of a custom CA install: the root and
// intermediate that never go to a node, as files in the fleet's Dir.
type CustomCA struct {
	RootCert         string // root-ca.pem
	RootKey          string // root-ca.key
	IntermediateCert string // intermediate-ca.pem
	IntermediateKey  string // intermediate-ca.key
}

// makeCustomCA generates the custom CA topology: root RSA 4096 (20 years,
// its AuthorityKeyId its own as openssl writes it), intermediate RSA 4096
// (~10 years), five EC P-256 cluster CAs under the intermediate, each
// <name>.crt = cluster CA + intermediate + root, and an RSA 2048
// service.key. It writes the root and intermediate into dir and returns the
// files for <data-dir>/server/tls.
func makeCustomCA(dir, dataDir string) (*CustomCA, []file, error) {
	now := time.Now()
	stamp := now.Unix()
	spec := func(cn string, days int) certtest.Spec {
		return certtest.Spec{CN: fmt.Sprintf("%s@%d", cn, stamp),
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Duration(days) * 24 * time.Hour)}
	}
	rootSpec := spec("k3s-root-ca", 7300)
	rootSpec.Key, rootSpec.KeyIDAlways = certtest.NewRSAKey(4096), true
	root := certtest.NewCA(rootSpec)
	interSpec := spec("k3s-intermediate-ca", 3700)
	interSpec.Key = certtest.NewRSAKey(4096)
	inter := root.IssueCA(interSpec)

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
		ca.RootCert:         root.CertPEM(),
		ca.RootKey:          root.KeyPEM(),
		ca.IntermediateCert: inter.CertPEM(),
		ca.IntermediateKey:  inter.KeyPEM(),
	} {
		if err := os.WriteFile(p, data, 0o600); err != nil {
			return nil, nil, err
		}
	}

	tls := path.Join(dataDir, "server", "tls")
	var files []file
	for _, c := range certtest.K3sCANames {
		cert := inter.IssueCA(spec(c.CN, 3700))
		files = append(files,
			file{Path: path.Join(tls, c.File+".crt"), Mode: 0o644, Data: cert.ChainPEM()},
			file{Path: path.Join(tls, c.File+".key"), Mode: 0o600, Data: cert.KeyPEM()})
	}
	files = append(files, file{Path: path.Join(tls, "service.key"), Mode: 0o600, Data: certtest.KeyPEM(certtest.NewRSAKey(2048))})
	return ca, files, nil
}
