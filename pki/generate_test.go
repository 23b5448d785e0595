package pki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/fleetcert/fleetcert/internal/certtest"
)

var fixedNow = time.Date(2026, 11, 27, 9, 0, 0, 0, time.UTC)

func fixedEnv() Env { return Env{Now: func() time.Time { return fixedNow }} }

// checkCAExtensions checks the contrib scripts' v3_ca section.
func checkCAExtensions(t *testing.T, c *x509.Certificate) {
	t.Helper()
	if !c.BasicConstraintsValid || !c.IsCA || c.MaxPathLen > 0 || c.MaxPathLenZero {
		t.Errorf("%s: want CA:true without pathlen, got valid=%v ca=%v pathlen=%d zero=%v", c.Subject.CommonName, c.BasicConstraintsValid, c.IsCA, c.MaxPathLen, c.MaxPathLenZero)
	}
	want := x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageCertSign
	if c.KeyUsage != want {
		t.Errorf("%s: keyUsage %v, want %v", c.Subject.CommonName, c.KeyUsage, want)
	}
	if len(c.SubjectKeyId) == 0 || len(c.AuthorityKeyId) == 0 {
		t.Errorf("%s: SKI and AKI wanted", c.Subject.CommonName)
	}
	for _, e := range c.Extensions {
		if (e.Id.Equal([]int{2, 5, 29, 19}) || e.Id.Equal([]int{2, 5, 29, 15})) && !e.Critical {
			t.Errorf("%s: extension %v not critical", c.Subject.CommonName, e.Id)
		}
	}
}

func TestGenerateCustomDefaults(t *testing.T) {
	c := defaultCustom(t)
	for _, k := range []any{c.Root.PublicKey, c.Intermediate.PublicKey} {
		if p, ok := k.(*rsa.PublicKey); !ok || p.N.BitLen() != 4096 {
			t.Errorf("root/intermediate key %s, want RSA 4096", describeKey(k))
		}
	}
	if c.RootKey == nil || c.IntermediateKey == nil {
		t.Error("generated root and intermediate keys must be returned to the caller")
	}
	if days := c.Root.NotAfter.Sub(c.Root.NotBefore).Hours() / 24; days < 7299 || days > 7301 {
		t.Errorf("root lives %.1f days, want 7300", days)
	}
	if !strings.HasPrefix(c.Root.Subject.CommonName, "k3s-root-ca@") || !strings.HasPrefix(c.Intermediate.Subject.CommonName, "k3s-intermediate-ca@") {
		t.Errorf("root/intermediate CNs %q %q", c.Root.Subject.CommonName, c.Intermediate.Subject.CommonName)
	}
	checkCAExtensions(t, c.Root)
	checkCAExtensions(t, c.Intermediate)
	checkCustomSet(t, c)
	for _, ct := range CATypes {
		opensslVerify(t, c.Root, mustCerts(t, c.Set[ct.CertFile])[0], c.Intermediate)
	}
	opensslVerify(t, c.Root, c.Intermediate)
}

// checkCustomSet checks the five bundles and keys of a custom topology.
func checkCustomSet(t *testing.T, c *Custom) {
	t.Helper()
	for _, ct := range CATypes {
		certs := mustCerts(t, c.Set[ct.CertFile])
		if len(certs) != 3 || !certs[1].Equal(c.Intermediate) || !certs[2].Equal(c.Root) {
			t.Fatalf("%s: want cluster CA + intermediate + root, got %d certs", ct.CertFile, len(certs))
		}
		ca := certs[0]
		if !strings.HasPrefix(ca.Subject.CommonName, ct.caName()+"@") {
			t.Errorf("%s: CN %q, want %s@<unix>", ct.CertFile, ca.Subject.CommonName, ct.caName())
		}
		if p, ok := ca.PublicKey.(*ecdsa.PublicKey); !ok || p.Curve != elliptic.P256() {
			t.Errorf("%s: key %s, want ECDSA P-256", ct.CertFile, describeKey(ca.PublicKey))
		}
		if err := ca.CheckSignatureFrom(c.Intermediate); err != nil {
			t.Errorf("%s: not signed by the intermediate: %v", ct.CertFile, err)
		}
		if ca.NotAfter.After(c.Intermediate.NotAfter) {
			t.Errorf("%s: outlives the intermediate", ct.CertFile)
		}
		checkCAExtensions(t, ca)
		keys := mustKeys(t, c.Set[ct.KeyFile])
		if len(keys) != 1 || !samePublicKey(keys[0].Public(), ca.PublicKey) {
			t.Errorf("%s: want exactly the cluster CA's key", ct.KeyFile)
		}
		if bytes.Contains(c.Set[ct.KeyFile], []byte("RSA")) {
			t.Errorf("%s holds an RSA key: root or intermediate key leaked", ct.KeyFile)
		}
	}
	if len(c.Set.Names()) != len(Files()) {
		t.Errorf("set has %v, want all of %v", c.Set.Names(), Files())
	}
}

func TestGenerateCustomInputs(t *testing.T) {
	base := fastCustom(t, CustomInput{})
	sk := serviceKey()
	t.Run("root and key", func(t *testing.T) {
		c := fastCustom(t, CustomInput{Root: base.Root, RootKey: base.RootKey, ServiceKey: sk})
		if !c.Root.Equal(base.Root) || c.Intermediate.Equal(base.Intermediate) || c.RootKey != nil || c.IntermediateKey == nil {
			t.Error("want the given root and a new intermediate")
		}
		checkCustomSet(t, c)
		keys := mustKeys(t, c.Set[ServiceKeyFile])
		if len(keys) != 2 || !samePublicKey(keys[1].Public(), mustKeys(t, sk)[0].Public()) {
			t.Error("service.key: want a new key followed by the current one")
		}
		opensslVerify(t, base.Root, mustCerts(t, c.Set["server-ca.crt"])[0], c.Intermediate)
	})
	t.Run("root and intermediate", func(t *testing.T) {
		c := fastCustom(t, CustomInput{Root: base.Root, Intermediate: base.Intermediate, IntermediateKey: base.IntermediateKey})
		if !c.Intermediate.Equal(base.Intermediate) || c.RootKey != nil || c.IntermediateKey != nil {
			t.Error("want the given root and intermediate, no generated keys")
		}
		checkCustomSet(t, c)
		opensslVerify(t, base.Root, mustCerts(t, c.Set["client-ca.crt"])[0], base.Intermediate)
	})
	other := fastCustom(t, CustomInput{})
	errCases := []struct {
		name string
		in   CustomInput
		want string
	}{
		{"intermediate without root", CustomInput{Intermediate: base.Intermediate, IntermediateKey: base.IntermediateKey}, "needs the root"},
		{"root without key", CustomInput{Root: base.Root}, "without the root certificate's private key"},
		{"wrong root key", CustomInput{Root: base.Root, RootKey: other.RootKey}, "root key does not belong"},
		{"intermediate without key", CustomInput{Root: base.Root, Intermediate: base.Intermediate}, "without the intermediate certificate's private key"},
		{"wrong intermediate key", CustomInput{Root: base.Root, Intermediate: base.Intermediate, IntermediateKey: other.IntermediateKey}, "intermediate key does not belong"},
		{"intermediate of another root", CustomInput{Root: base.Root, Intermediate: other.Intermediate, IntermediateKey: other.IntermediateKey}, "does not chain to the root"},
		{"bad service key", CustomInput{ServiceKey: []byte("not a key")}, "holds no private key"},
	}
	for _, tc := range errCases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Env{}.GenerateCustom(tc.in)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestGenerateKeyTypes(t *testing.T) {
	want := map[KeyType]string{RSA2048: "RSA 2048", RSA3072: "RSA 3072", RSA4096: "RSA 4096", ECDSAP256: "ECDSA P-256", ECDSAP384: "ECDSA P-384"}
	for _, kt := range KeyTypes {
		if testing.Short() && kt != ECDSAP384 && kt != RSA2048 {
			continue
		}
		if kt == RSA4096 {
			continue // covered by TestGenerateCustomDefaults
		}
		t.Run(string(kt), func(t *testing.T) {
			c := fastCustom(t, CustomInput{KeyType: kt})
			if got := describeKey(c.Root.PublicKey); got != want[kt] {
				t.Errorf("root key %s, want %s", got, want[kt])
			}
			opensslVerify(t, c.Root, mustCerts(t, c.Set["server-ca.crt"])[0], c.Intermediate)
		})
	}
	if _, err := ParseKeyType("dsa1024"); err == nil {
		t.Error("ParseKeyType accepted dsa1024")
	}
	if kt, err := ParseKeyType("ecdsa-p384"); err != nil || kt != ECDSAP384 {
		t.Errorf("ParseKeyType(ecdsa-p384) = %v, %v", kt, err)
	}
}

func TestClockInCNsAndValidity(t *testing.T) {
	c, err := fixedEnv().GenerateCustom(CustomInput{KeyType: ECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	stamp := fmt.Sprintf("@%d", fixedNow.Unix())
	for _, ct := range CATypes {
		ca := mustCerts(t, c.Set[ct.CertFile])[0]
		if ca.Subject.CommonName != ct.caName()+stamp {
			t.Errorf("CN %q, want %q", ca.Subject.CommonName, ct.caName()+stamp)
		}
		if !ca.NotBefore.Equal(fixedNow.Add(-time.Hour)) {
			t.Errorf("NotBefore %v, want the clock minus an hour", ca.NotBefore)
		}
	}
	if c.Root.Subject.CommonName != "k3s-root-ca"+stamp || !c.Root.NotAfter.Equal(fixedNow.AddDate(0, 0, rootDays)) {
		t.Errorf("root %q until %v", c.Root.Subject.CommonName, c.Root.NotAfter)
	}
}

func TestCrossSign(t *testing.T) {
	def := k3sDefaultSet()
	env := fixedEnv()
	env.Now = time.Now
	got, err := env.CrossSign(def)
	if err != nil {
		t.Fatal(err)
	}
	checkCrossSigned(t, def, got)
	if _, ok := got[ServiceKeyFile]; ok {
		t.Error("CrossSign must leave service.key to RotateServiceKey")
	}
	t.Run("twice", func(t *testing.T) {
		second, err := Env{}.CrossSign(got.Overlay(def))
		if err != nil {
			t.Fatal(err)
		}
		checkCrossSigned(t, got.Overlay(def), second)
	})
	t.Run("some types", func(t *testing.T) {
		server, _ := CATypeByName("server")
		one, err := Env{}.CrossSign(def, server)
		if err != nil {
			t.Fatal(err)
		}
		if names := one.Names(); len(names) != 2 || names[0] != "server-ca.crt" {
			t.Errorf("want only the server CA, got %v", names)
		}
	})
	t.Run("custom is refused", func(t *testing.T) {
		c := fastCustom(t, CustomInput{})
		if _, err := (Env{}).CrossSign(c.Set); err == nil || !strings.Contains(err.Error(), "custom CA") {
			t.Errorf("err = %v, want a custom-CA refusal", err)
		}
	})
	t.Run("missing CA", func(t *testing.T) {
		s := clone(def)
		delete(s, "client-ca.crt")
		if _, err := (Env{}).CrossSign(s); err == nil || !strings.Contains(err.Error(), "client-ca.crt") {
			t.Errorf("err = %v, want one naming client-ca.crt", err)
		}
	})
	t.Run("mismatched key", func(t *testing.T) {
		s := clone(def)
		s["client-ca.key"] = s["server-ca.key"]
		if _, err := (Env{}).CrossSign(s); err == nil || !strings.Contains(err.Error(), "does not belong") {
			t.Errorf("err = %v", err)
		}
	})
}

// checkCrossSigned checks a cross-signed rotation of current, layout and
// chains, with openssl as independent judge.
func checkCrossSigned(t *testing.T, current, got CASet) {
	t.Helper()
	for _, ct := range CATypes {
		old, err := current.oldRoot(ct)
		if err != nil {
			t.Fatal(err)
		}
		certs := mustCerts(t, got[ct.CertFile])
		if len(certs) != 4 {
			t.Fatalf("%s: %d certs, want intermediate + root + cross-signed root + old root", ct.CertFile, len(certs))
		}
		inter, root, xroot, oldRoot := certs[0], certs[1], certs[2], certs[3]
		if !oldRoot.Equal(old.cert) {
			t.Errorf("%s: 4th cert is not the old root", ct.CertFile)
		}
		if !strings.HasPrefix(inter.Subject.CommonName, ct.caName()+"@") || !strings.HasPrefix(root.Subject.CommonName, ct.rootName()+"@") {
			t.Errorf("%s: CNs %q %q", ct.CertFile, inter.Subject.CommonName, root.Subject.CommonName)
		}
		if root.Subject.String() != xroot.Subject.String() || root.Subject.String() == oldRoot.Subject.String() {
			t.Errorf("%s: roots' subjects %q %q old %q", ct.CertFile, root.Subject, xroot.Subject, oldRoot.Subject)
		}
		if !samePublicKey(root.PublicKey, xroot.PublicKey) || !bytes.Equal(root.SubjectKeyId, xroot.SubjectKeyId) {
			t.Errorf("%s: self-signed and cross-signed roots must share key and SKI", ct.CertFile)
		}
		if err := xroot.CheckSignatureFrom(oldRoot); err != nil {
			t.Errorf("%s: cross-signed root not signed by the old root: %v", ct.CertFile, err)
		}
		if !bytes.Equal(root.AuthorityKeyId, root.SubjectKeyId) {
			t.Errorf("%s: self-signed root AKI must equal its SKI", ct.CertFile)
		}
		for _, c := range certs[:3] {
			checkCAExtensions(t, c)
			if p, ok := c.PublicKey.(*ecdsa.PublicKey); !ok || p.Curve != elliptic.P256() {
				t.Errorf("%s: %s", c.Subject.CommonName, describeKey(c.PublicKey))
			}
		}
		keys := mustKeys(t, got[ct.KeyFile])
		if len(keys) != 2 || !samePublicKey(keys[0].Public(), inter.PublicKey) || !samePublicKey(keys[1].Public(), root.PublicKey) {
			t.Errorf("%s: want intermediate key then new root key", ct.KeyFile)
		}
		if got.kindOf(ct) != KindCrossSigned {
			t.Errorf("%s: kind %s", ct.CertFile, got.kindOf(ct))
		}
		// openssl: new intermediate -> cross-signed root -> old root, and
		// new intermediate -> new self-signed root.
		opensslVerify(t, oldRoot, inter, xroot)
		opensslVerify(t, root, inter)
	}
}

func TestNewRoot(t *testing.T) {
	def := k3sDefaultSet()
	for _, etcd := range []bool{false, true} {
		s, err := Env{}.NewRoot(etcd)
		if err != nil {
			t.Fatal(err)
		}
		for _, ct := range CATypes {
			_, has := s[ct.CertFile]
			if has != (etcd || !ct.Etcd) {
				t.Errorf("includeEtcd=%v: %s present=%v", etcd, ct.CertFile, has)
				continue
			}
			if !has {
				continue
			}
			certs := mustCerts(t, s[ct.CertFile])
			if len(certs) != 2 {
				t.Fatalf("%s: %d certs", ct.CertFile, len(certs))
			}
			opensslVerify(t, certs[1], certs[0])
			if old := mustCerts(t, def[ct.CertFile])[0]; certs[0].CheckSignatureFrom(old) == nil || certs[1].CheckSignatureFrom(old) == nil {
				t.Errorf("%s chains to the old root", ct.CertFile)
			}
			if s.kindOf(ct) != KindCrossSigned {
				t.Errorf("%s: kind %s, want cross-signable next time", ct.CertFile, s.kindOf(ct))
			}
		}
	}
}

func TestRotateServiceKey(t *testing.T) {
	env := Env{}
	k1, err := env.RotateServiceKey(nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	if keys := mustKeys(t, k1); len(keys) != 1 || describeKey(keys[0].Public()) != "RSA 2048" {
		t.Fatalf("first service.key: %d keys", len(keys))
	}
	if !bytes.HasPrefix(k1, []byte("-----BEGIN RSA PRIVATE KEY-----")) {
		t.Error("want PKCS#1, as k3s writes service.key")
	}
	k2, _ := env.RotateServiceKey(k1, 0)
	k3, _ := env.RotateServiceKey(k2, 0)
	keys := mustKeys(t, k3)
	if len(keys) != 3 || !bytes.HasSuffix(k3, k2) || !bytes.HasSuffix(k2, k1) {
		t.Fatalf("want new key then every current key byte for byte, got %d keys", len(keys))
	}
	kept, _ := env.RotateServiceKey(k3, 1)
	kk := mustKeys(t, kept)
	if len(kk) != 2 || !samePublicKey(kk[1].Public(), keys[0].Public()) {
		t.Error("keep=1: want the new key and the current signing key")
	}
	if _, err := env.RotateServiceKey(k3, -1); err == nil {
		t.Error("negative keep accepted")
	}
	// PKCS#8 and EC keys in the current file are kept as they are.
	ecKey := certtest.KeyPEM(certtest.NewECKey())
	mixed, err := env.RotateServiceKey(append(bytes.Clone(k1), ecKey...), 0)
	if err != nil || !bytes.HasSuffix(mixed, ecKey) {
		t.Errorf("mixed key file: %v", err)
	}
}
