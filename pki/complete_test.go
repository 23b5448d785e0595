package pki

import (
	"errors"
	"strings"
	"testing"
)

func TestCompleteRetiresTheOldRoots(t *testing.T) {
	def := k3sDefaultSet()
	once, err := Env{}.CrossSign(def)
	if err != nil {
		t.Fatal(err)
	}
	once = once.Overlay(def)
	twice, err := Env{}.CrossSign(once)
	if err != nil {
		t.Fatal(err)
	}
	twice = twice.Overlay(once)
	for name, current := range map[string]CASet{"once": once, "twice": twice} {
		t.Run(name, func(t *testing.T) {
			c, err := Complete(current)
			if err != nil {
				t.Fatal(err)
			}
			if len(c.Set) != len(CATypes) || len(c.Retired) != 2*len(CATypes) || len(c.Complete) != 0 {
				t.Fatalf("staged %v, %d retired, complete %v", c.Set.Names(), len(c.Retired), c.Complete)
			}
			for _, ct := range CATypes {
				before := mustCerts(t, current[ct.CertFile])
				after := mustCerts(t, c.Set[ct.CertFile])
				if len(after) != 2 || !after[0].Equal(before[0]) || !after[1].Equal(before[1]) {
					t.Errorf("%s: want the intermediate and self-signed root of the current bundle", ct.CertFile)
				}
				if _, ok := c.Set[ct.KeyFile]; ok {
					t.Errorf("%s staged: the keys do not change", ct.KeyFile)
				}
			}
			// k3s accepts it, and tokens keep their hash.
			if res := (Env{}).Validate(current, c.Set); !res.OK() {
				t.Fatalf("k3s would refuse the completed set: %v", res.Errors)
			}
			server := serverCA(t)
			if got, want := HashCA(c.Set[server]), HashCA(current[server]); got != want {
				t.Errorf("hash changed: %s -> %s", want, got)
			}
			// Done once, there is nothing left to do.
			again, err := Complete(c.Set.Overlay(current))
			if err != nil || len(again.Set) != 0 || len(again.Complete) != len(CATypes) {
				t.Errorf("completing a completed set: %v, staged %v, complete %v", err, again.Set.Names(), again.Complete)
			}
		})
	}
}

func TestCompleteRetiresExactlyTheCrossSignedAndOldRoots(t *testing.T) {
	def := k3sDefaultSet()
	next, err := Env{}.CrossSign(def)
	if err != nil {
		t.Fatal(err)
	}
	c, err := Complete(next.Overlay(def))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range c.Retired {
		for _, name := range c.Set.Names() {
			for _, kept := range mustCerts(t, c.Set[name]) {
				if kept.Equal(r) {
					t.Errorf("%s still holds retired %s", name, r.Subject.CommonName)
				}
			}
		}
	}
	for _, ct := range CATypes {
		old := mustCerts(t, def[ct.CertFile])[0]
		found := false
		for _, r := range c.Retired {
			found = found || r.Equal(old)
		}
		if !found {
			t.Errorf("the old %s root is not among the retired", ct.Name)
		}
	}
}

func TestCompleteRefusesWhatIsNotCrossSigned(t *testing.T) {
	t.Run("never rotated", func(t *testing.T) {
		if _, err := Complete(k3sDefaultSet()); !errors.Is(err, ErrNotCrossSigned) {
			t.Errorf("err = %v, want ErrNotCrossSigned", err)
		}
	})
	t.Run("custom CA", func(t *testing.T) {
		c := fastCustom(t, CustomInput{})
		_, err := Complete(c.Set)
		if err == nil || !strings.Contains(err.Error(), "custom CA") {
			t.Errorf("err = %v, want a custom-CA refusal", err)
		}
	})
	t.Run("tampered bundle", func(t *testing.T) {
		def := k3sDefaultSet()
		next, err := Env{}.CrossSign(def)
		if err != nil {
			t.Fatal(err)
		}
		s := next.Overlay(def)
		server := serverCA(t)
		certs := mustCerts(t, s[server])
		// The old root swapped for another CA's: the cross-signature no
		// longer checks out.
		other := mustCerts(t, def["client-ca.crt"])[0]
		s[server] = encodeCerts(certs[0], certs[1], certs[2], other)
		if _, err := Complete(s); err == nil || !strings.Contains(err.Error(), server) {
			t.Errorf("err = %v, want a refusal naming %s", err, server)
		}
	})
	t.Run("three certificates", func(t *testing.T) {
		def := k3sDefaultSet()
		next, err := Env{}.CrossSign(def)
		if err != nil {
			t.Fatal(err)
		}
		s := next.Overlay(def)
		server := serverCA(t)
		certs := mustCerts(t, s[server])
		s[server] = encodeCerts(certs[:3]...)
		if _, err := Complete(s); err == nil || !strings.Contains(err.Error(), "3 certificates") {
			t.Errorf("err = %v", err)
		}
	})
}

func serverCA(t *testing.T) string {
	t.Helper()
	ct, ok := CATypeByName("server")
	if !ok {
		t.Fatal("no server CA type")
	}
	return ct.CertFile
}
