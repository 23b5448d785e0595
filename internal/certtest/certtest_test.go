package certtest

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"strconv"
	"testing"
	"time"
)

// TestChainVerifies: a leaf under an intermediate under a root verifies,
// and ChainPEM lists them leaf first.
func TestChainVerifies(t *testing.T) {
	root := NewCA(Spec{CN: "root", KeyIDAlways: true})
	inter := root.IssueCA(Spec{CN: "inter"})
	leaf := inter.IssueLeaf(Spec{CN: "leaf", Usage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})

	roots, inters := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(root.Cert)
	inters.AddCert(inter.Cert)
	if _, err := leaf.Cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inters}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(root.Cert.AuthorityKeyId, root.Cert.SubjectKeyId) || len(root.Cert.SubjectKeyId) == 0 {
		t.Error("KeyIDAlways: want AuthorityKeyId = SubjectKeyId")
	}
	if !bytes.Equal(inter.Cert.AuthorityKeyId, root.Cert.SubjectKeyId) {
		t.Error("intermediate's AuthorityKeyId is not the root's key id")
	}
	var got [][]byte
	for rest := leaf.ChainPEM(); ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		got = append(got, b.Bytes)
	}
	if len(got) != 3 || !bytes.Equal(got[0], leaf.Cert.Raw) || !bytes.Equal(got[2], root.Cert.Raw) {
		t.Errorf("ChainPEM has %d certificates, want leaf, intermediate, root", len(got))
	}
}

// TestK3sCAs: the CAs are shaped as k3s makes its own, and Files names
// every file of server/tls once.
func TestK3sCAs(t *testing.T) {
	made := time.Now().AddDate(-1, 0, 0).Truncate(time.Second)
	cas := NewK3sCAs(made)
	c := cas["etcd/peer-ca"].Cert
	if c.Subject.CommonName != "etcd-peer-ca@"+strconv.FormatInt(made.Unix(), 10) || c.SerialNumber.Sign() != 0 ||
		!c.IsCA || len(c.AuthorityKeyId) != 0 || !c.NotBefore.Equal(made) || !c.NotAfter.Equal(made.AddDate(10, 0, 0)) {
		t.Errorf("etcd/peer-ca: CN %s, serial %s, CA %v, AKI %x, valid %s to %s",
			c.Subject.CommonName, c.SerialNumber, c.IsCA, c.AuthorityKeyId, c.NotBefore, c.NotAfter)
	}
	files := cas.Files(NewECKey())
	if len(files) != 11 || files["service.key"] == nil || files["etcd/server-ca.key"] == nil {
		t.Errorf("files: %d", len(files))
	}
	if _, err := x509.ParseECPrivateKey(mustDecode(t, files["server-ca.key"])); err != nil {
		t.Error(err)
	}
	if _, err := x509.ParsePKCS1PrivateKey(mustDecode(t, KeyPEM(NewRSAKey(1024)))); err != nil {
		t.Error(err)
	}
}

func mustDecode(t *testing.T, data []byte) []byte {
	t.Helper()
	b, _ := pem.Decode(data)
	if b == nil {
		t.Fatalf("not PEM: %q", data)
	}
	return b.Bytes
}
