package certtest

import (
	"crypto"
	"fmt"
	"math/big"
	"time"
)

// K3sCANames are the five CAs of a k3s cluster: File is the name of the
// .crt and .key under server/tls, CN the common name k3s gives the CA it
// makes itself, before "@<unix time>".
var K3sCANames = []struct{ File, CN string }{
	{"server-ca", "k3s-server-ca"},
	{"client-ca", "k3s-client-ca"},
	{"request-header-ca", "k3s-request-header-ca"},
	{"etcd/peer-ca", "etcd-peer-ca"},
	{"etcd/server-ca", "etcd-server-ca"},
}

// K3sCAs is one cluster's CAs by File of K3sCANames.
type K3sCAs map[string]*Cert

// NewK3sCAs makes the CAs a k3s server makes for itself when it first starts
// at made (dynamiclistener's NewSelfSignedCACert): each self-signed, ECDSA
// P-256, CN <name>@<unix time>, serial 0, valid for ten years from made,
// no AuthorityKeyId.
func NewK3sCAs(made time.Time) K3sCAs {
	cas := K3sCAs{}
	for _, n := range K3sCANames {
		cas[n.File] = NewCA(Spec{CN: fmt.Sprintf("%s@%d", n.CN, made.Unix()), NotBefore: made, serial: big.NewInt(0)})
	}
	return cas
}

// Files is server/tls as k3s leaves it, by path relative to it: each CA's
// .crt and .key, and service.key holding serviceKey (the service-account
// signing key, RSA 2048 on k3s; tests that do not read it may pass any key).
func (cas K3sCAs) Files(serviceKey crypto.Signer) map[string][]byte {
	files := map[string][]byte{"service.key": KeyPEM(serviceKey)}
	for name, ca := range cas {
		files[name+".crt"] = ca.CertPEM()
		files[name+".key"] = ca.KeyPEM()
	}
	return files
}
