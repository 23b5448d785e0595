package cmd

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/fleetcert/fleetcert/orchestrator/fleettest"
)

// expireServerLeaf replaces a server's client-admin.crt with a certificate
// that expired a day ago, as a cluster left a year without a restart has.
func expireServerLeaf(t *testing.T, fl *fleettest.Fleet, node string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "system:admin"},
		NotBefore: now.AddDate(-1, 0, -1), NotAfter: now.AddDate(0, 0, -1),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	fl.Node(node).Put("/var/lib/rancher/k3s/server/tls/client-admin.crt", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

// TestCheckMarksAnExpiredCluster: a server whose leaf certificates have
// expired marks its cluster EXPIRED, with the command that renews it; the
// other cluster is not marked.
func TestCheckMarksAnExpiredCluster(t *testing.T) {
	fl, inv := fakeFleet(t)
	expireServerLeaf(t, fl, "c0001/c0001-s1")
	code, out, stderr := runFake(fl, false, "", "check", "-i", inv)
	want := "EXPIRED: the certificates of server(s) c0001-s1 have expired: the cluster's API is down until they are renewed; run: fleetcert rotate -i " + inv + " --cluster c0001"
	if code != ExitFailed || !strings.Contains(out, want) || strings.Count(out, "EXPIRED: the certificates") != 1 {
		t.Errorf("exit %d, want 1 and one cluster marked with\n  %s\n%s\n%s", code, want, out, stderr)
	}
	_, js, _ := runFake(fl, false, "", "check", "-i", inv, "-o", "json")
	var rep struct {
		Clusters []struct {
			Name    string `json:"name"`
			Expired *struct {
				Servers []string `json:"servers"`
				Fix     string   `json:"fix"`
			} `json:"expired"`
		} `json:"clusters"`
	}
	if err := json.Unmarshal([]byte(js), &rep); err != nil {
		t.Fatal(err)
	}
	for _, c := range rep.Clusters {
		switch {
		case c.Name == "c0001" && (c.Expired == nil || len(c.Expired.Servers) != 1 || !strings.HasPrefix(c.Expired.Fix, "fleetcert rotate ")):
			t.Errorf("c0001: expired %+v", c.Expired)
		case c.Name != "c0001" && c.Expired != nil:
			t.Errorf("%s marked expired: %+v", c.Name, c.Expired)
		}
	}
}

// TestRotateCARefusesAnExpiredCluster: rotate-ca needs the cluster's API;
// on an expired cluster it refuses (exit 3, nothing changed) and says how
// to renew.
func TestRotateCARefusesAnExpiredCluster(t *testing.T) {
	fl, inv := fakeFleet(t)
	expireServerLeaf(t, fl, "c0001/c0001-s1")
	before := fleetFiles(fl)
	code, out, stderr := runFake(fl, false, "", "rotate-ca", "-i", inv, "--cluster", "c0001", "--yes")
	if code != ExitRefused || !strings.Contains(out+stderr, "renew them first with `fleetcert rotate`") {
		t.Errorf("exit %d, want 3 and the way out\n%s\n%s", code, out, stderr)
	}
	if !sameFiles(before, fleetFiles(fl)) {
		t.Error("a refused rotate-ca changed files")
	}
}
