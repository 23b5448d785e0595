package pki

import (
	"strings"
	"testing"
	"time"

	"github.com/fleetcert/fleetcert/internal/certtest"
)

// crossSignedRotation is what the orchestrator stages for a default or
// cross-signed cluster: all five CAs cross-signed, plus a new service.key.
func crossSignedRotation(t *testing.T, current CASet) CASet {
	t.Helper()
	env := Env{}
	staged, err := env.CrossSign(current)
	if err != nil {
		t.Fatal(err)
	}
	if staged[ServiceKeyFile], err = env.RotateServiceKey(current[ServiceKeyFile], 0); err != nil {
		t.Fatal(err)
	}
	return staged
}

func errorTexts(r Result) []string {
	var s []string
	for _, p := range r.Errors {
		s = append(s, p.String())
	}
	return s
}

func TestValidateRotatingTwice(t *testing.T) {
	current := k3sDefaultSet()
	for round := 1; round <= 2; round++ {
		staged := crossSignedRotation(t, current)
		r := Env{}.Validate(current, staged)
		if !r.OK() {
			t.Fatalf("round %d: k3s would refuse: %v", round, errorTexts(r))
		}
		current = staged.Overlay(current)
		if k := current.Kind(); k != KindCrossSigned {
			t.Fatalf("round %d: kind %s", round, k)
		}
	}
}

func TestValidateCustom(t *testing.T) {
	base := fastCustom(t, CustomInput{ServiceKey: serviceKey()})
	t.Run("same root is accepted", func(t *testing.T) {
		next := fastCustom(t, CustomInput{Root: base.Root, RootKey: base.RootKey, ServiceKey: base.Set[ServiceKeyFile]})
		if r := (Env{}).Validate(base.Set, next.Set); !r.OK() {
			t.Errorf("refused: %v", errorTexts(r))
		}
	})
	t.Run("unrelated root is refused, every CA listed", func(t *testing.T) {
		other := fastCustom(t, CustomInput{ServiceKey: base.Set[ServiceKeyFile]})
		r := Env{}.Validate(base.Set, other.Set)
		if len(r.Errors) != len(CATypes) {
			t.Fatalf("want one error per CA, got %v", errorTexts(r))
		}
		for i, ct := range CATypes {
			want := ct.CertFile + ": " + ct.Field + ": " + msgNotVerified + ": x509: certificate signed by unknown authority"
			if got := r.Errors[i].String(); !strings.HasPrefix(got, want) {
				t.Errorf("got %q, want %q", got, want)
			}
		}
	})
	t.Run("custom on a default cluster needs force", func(t *testing.T) {
		r := Env{}.Validate(k3sDefaultSet(), base.Set)
		if r.OK() {
			t.Error("a custom root unrelated to the default CAs was accepted")
		}
	})
	t.Run("new root", func(t *testing.T) {
		s, err := Env{}.NewRoot(false)
		if err != nil {
			t.Fatal(err)
		}
		r := Env{}.Validate(k3sDefaultSet(), s)
		if len(r.Errors) != 3 {
			t.Errorf("want the three non-etcd CAs refused, got %v", errorTexts(r))
		}
	})
}

func TestValidateK3sChecks(t *testing.T) {
	current := k3sDefaultSet()
	good := crossSignedRotation(t, current)
	other := crossSignedRotation(t, current)
	tests := []struct {
		name   string
		staged CASet
		want   []string // expected errors, in order
	}{
		{"nothing staged", CASet{}, nil},
		{"only service.key", CASet{ServiceKeyFile: good[ServiceKeyFile]}, nil},
		{"re-staged default CA", CASet{"server-ca.crt": current["server-ca.crt"]},
			[]string{"server-ca.crt: ServerCA: " + msgSingleCert}},
		{"key of another rotation", CASet{"client-ca.crt": good["client-ca.crt"], "client-ca.key": other["client-ca.key"]},
			[]string{"client-ca.key: ClientCAKey: " + msgKeyPair + ": tls: private key does not match public key"}},
		{"new cert, current key kept", CASet{"client-ca.crt": good["client-ca.crt"]},
			[]string{"client-ca.crt: ClientCAKey: " + msgKeyPair + ": tls: private key does not match public key"}},
		{"service.key without the old key", CASet{ServiceKeyFile: serviceKeyOnlyNew(t)},
			[]string{"service.key: ServiceKey: " + msgServiceKey}},
		{"unparseable bundle", CASet{"server-ca.crt": []byte("junk"), "server-ca.key": good["server-ca.key"]},
			[]string{"server-ca.crt: ServerCA: " + errNoCerts.Error(), "server-ca.key: ServerCAKey: " + msgKeyPair}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := errorTexts(Env{}.Validate(current, tt.staged))
			if len(got) != len(tt.want) {
				t.Fatalf("errors %q, want %q", got, tt.want)
			}
			for i := range got {
				if !strings.HasPrefix(got[i], tt.want[i]) {
					t.Errorf("error %d = %q, want %q", i, got[i], tt.want[i])
				}
			}
		})
	}
}

func serviceKeyOnlyNew(t *testing.T) []byte {
	k, err := Env{}.RotateServiceKey(nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func warningTexts(r Result) string {
	var s []string
	for _, p := range r.Warnings {
		s = append(s, p.String())
	}
	return strings.Join(s, "\n")
}

func TestValidateLint(t *testing.T) {
	current := k3sDefaultSet()
	good := crossSignedRotation(t, current)
	r := Env{}.Validate(current, good)
	w := warningTexts(r)
	if notes := warningTexts(Result{Warnings: r.Notes}); !strings.Contains(notes, "expected for a root cross-signed by the old root") {
		t.Errorf("want the cross-signed root's longer life noted, got notes:\n%s", notes)
	}
	if strings.Contains(w, "after its issuer") {
		t.Errorf("a cross-signed root outliving the old root is by design, not a warning:\n%s", w)
	}
	for _, bad := range []string{"expired", "not a CA", "weak", "keyCertSign", "before the current"} {
		if strings.Contains(w, bad) {
			t.Errorf("unexpected warning %q in:\n%s", bad, w)
		}
	}

	// A bundle with an expired, weak, non-CA intermediate that outlives its
	// root and expires before the current CA: k3s may refuse or accept
	// it, the lint must list each problem.
	root := certtest.NewCA(certtest.Spec{CN: "lint-root", NotBefore: time.Now().AddDate(-11, 0, 0)}) // expired last year
	leaf := root.IssueLeaf(certtest.Spec{CN: "lint-leaf", Key: certtest.NewRSAKey(1024),
		NotBefore: time.Now().AddDate(-1, 0, 0), NotAfter: time.Now().AddDate(0, 0, 30)})
	staged := CASet{"server-ca.crt": leaf.ChainPEM(), "server-ca.key": leaf.KeyPEM()}
	r = Env{}.Validate(current, staged)
	w = warningTexts(r)
	for _, want := range []string{
		"certificate 2 (lint-root): expired on",
		"certificate 1 (lint-leaf): not a CA",
		"certificate 1 (lint-leaf): keyUsage lacks keyCertSign",
		"certificate 1 (lint-leaf): weak key: RSA 1024 bits",
		"certificate 1 (lint-leaf): valid until",
		"the new CA expires",
		"server-ca.key: ServerCAKey: key 1: weak key: RSA 1024",
	} {
		if !strings.Contains(w, want) {
			t.Errorf("missing warning %q in:\n%s", want, w)
		}
	}
	if r.OK() {
		t.Error("a bundle chaining to an unrelated root was accepted")
	}

	// Re-staging an unchanged file is flagged, and the unchanged signing key.
	r = Env{}.Validate(current, CASet{ServiceKeyFile: current[ServiceKeyFile]})
	if !r.OK() || !strings.Contains(warningTexts(r), "nothing is rotated") {
		t.Errorf("unchanged service.key: %v / %s", errorTexts(r), warningTexts(r))
	}
}

func TestValidateNotYetValidUsesClock(t *testing.T) {
	current := k3sDefaultSet()
	staged := crossSignedRotation(t, current)
	past := Env{Now: func() time.Time { return time.Now().Add(-48 * time.Hour) }}
	r := past.Validate(current, staged)
	if r.OK() || !strings.Contains(warningTexts(r), "not valid before") {
		t.Errorf("two days ago the new CAs were not yet valid; got errors %v warnings %s", errorTexts(r), warningTexts(r))
	}
}
