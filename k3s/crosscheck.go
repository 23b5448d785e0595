package k3s

import (
	"encoding/json"
	"fmt"
	"path"
	"time"
)

// CheckEntry is one certificate as `k3s certificate check -o json` reports
// it (docs/k3s-behaviour.md#certificate-check). For a NOT YET VALID certificate k3s puts its NotBefore
// in ExpiryTime.
type CheckEntry struct {
	Filename     string        `json:"Filename"`
	Subject      string        `json:"Subject"`
	Issuer       string        `json:"Issuer"`
	Usages       []string      `json:"Usages"`
	ExpiryTime   time.Time     `json:"ExpiryTime"`
	ResidualTime time.Duration `json:"ResidualTime"` // nanoseconds
	Status       CertStatus    `json:"Status"`
}

// ParseCertificateCheck reads `k3s certificate check -o json` output.
func ParseCertificateCheck(out []byte) ([]CheckEntry, error) {
	var list struct {
		Certificates []CheckEntry `json:"Certificates"`
	}
	if err := json.Unmarshal(out, &list); err != nil {
		return nil, fmt.Errorf("k3s certificate check output: %w", err)
	}
	return list.Certificates, nil
}

// CrossCheck compares fleetcert's reading of a node's certificates with
// k3s's own. Each k3s entry is matched by file and subject to a certificate
// fleetcert read (k3s also lists the CA chain inside leaf files, which
// fleetcert counts from the bundles: those entries match nothing and are
// skipped); fleetcert's side is classified again with k3s's own renewal
// threshold for the version, so the WARNING window is the same. It returns
// how many entries were compared and every disagreement, worded for the
// operator.
func CrossCheck(certs []CheckedCert, entries []CheckEntry, now time.Time, v Version) (compared int, disagreements []string) {
	threshold := time.Duration(renewalThresholdDays(v)) * 24 * time.Hour
	byKey := map[string][]CheckedCert{}
	for _, c := range certs {
		k := c.File + "\x00" + c.Subject
		byKey[k] = append(byKey[k], c)
	}
	for _, e := range entries {
		cands := byKey[e.Filename+"\x00"+e.Subject]
		if len(cands) == 0 {
			continue
		}
		compared++
		var match *CheckedCert
		for i, c := range cands {
			want := c.NotAfter
			if e.Status == StatusNotYetValid {
				want = c.NotBefore
			}
			if want.Unix() == e.ExpiryTime.Unix() {
				match = &cands[i]
				break
			}
		}
		if match == nil {
			disagreements = append(disagreements, fmt.Sprintf("%s (%s): k3s reads a certificate ending %s, fleetcert read %s",
				path.Base(e.Filename), e.Subject, e.ExpiryTime.UTC().Format(time.RFC3339), cands[0].NotAfter.UTC().Format(time.RFC3339)))
			continue
		}
		if ours := classify(match.Cert, now, threshold); ours != e.Status {
			disagreements = append(disagreements, fmt.Sprintf("%s (%s): k3s says %s, fleetcert says %s (with k3s's %d-day window)",
				path.Base(e.Filename), e.Subject, e.Status, ours, renewalThresholdDays(v)))
		}
	}
	return compared, disagreements
}
