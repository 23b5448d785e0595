package k3s

import (
	"fmt"
	"path"
	"sort"
	"strings"
	"time"
)

// CertStatus is a certificate's state, named as `k3s certificate check`
// names it.
type CertStatus string

const (
	StatusOK          CertStatus = "OK"
	StatusWarning     CertStatus = "WARNING"
	StatusExpired     CertStatus = "EXPIRED"
	StatusNotYetValid CertStatus = "NOT YET VALID"
)

// DefaultCheckWithin is k3s's own renewal threshold (120 days since the
// May 2025 releases): a certificate expiring within it is a WARNING.
const DefaultCheckWithin = 120 * 24 * time.Hour

// classify tells a certificate's status at now: NOT YET VALID before its
// NotBefore, EXPIRED at or after its NotAfter, WARNING when it expires
// within the window, OK otherwise.
func classify(c Cert, now time.Time, within time.Duration) CertStatus {
	switch {
	case now.Before(c.NotBefore):
		return StatusNotYetValid
	case !now.Before(c.NotAfter):
		return StatusExpired
	case c.NotAfter.Sub(now) <= within:
		return StatusWarning
	}
	return StatusOK
}

// CheckedCert is a certificate with its status at the time of a check.
type CheckedCert struct {
	Cert
	Residual time.Duration `json:"-"` // NotAfter - now; negative once expired
	Status   CertStatus    `json:"status"`
}

// Finding kinds: what a check reports beyond certificate statuses. Every
// finding makes a check fail (exit 1).
const (
	// FindingCAKey: a root or intermediate CA private key left on a node
	// (k3s's custom CA example script leaves them in server/tls); only the
	// controller or an offline store should hold them.
	FindingCAKey = "caKeyOnNode"
	// FindingKeyMode: a private key that group or others can read.
	FindingKeyMode = "keyReadable"
	// FindingUnreadable: a certificate file that does not parse.
	FindingUnreadable = "unreadableCertificate"
	// FindingNoData: the node has no k3s data dir where the inventory says.
	FindingNoData = "noK3sData"
	// FindingRole: the node is not what the inventory says it is.
	FindingRole = "roleMismatch"
	// FindingTokenMismatch: a secure join token pins another CA than the
	// cluster's servers serve.
	FindingTokenMismatch = "tokenCAMismatch"
	// FindingHeldCAMismatch: the node holds a server CA bundle other than
	// the one the cluster's servers serve.
	FindingHeldCAMismatch = "heldCAMismatch"
	// FindingServersDisagree: the cluster's servers serve different CAs.
	FindingServersDisagree = "serversServeDifferentCAs"
	// FindingEffectiveTokenMismatch: the token k3s uses on the node, by its
	// precedence, pins another CA than the cluster serves: the node runs
	// today but will not come back from its next restart.
	FindingEffectiveTokenMismatch = "effectiveTokenCAMismatch"
	// FindingTokenSource: a place that may hold a token cannot be
	// accounted for (see facts); a rotation would refuse the node.
	FindingTokenSource = "tokenSourceProblem"
	// FindingClockSkew: the node's clock differs from the controller's by
	// more than check's --max-clock-skew: certificates look expired or
	// not yet valid there at other times than fleetcert computes.
	FindingClockSkew = "clockSkew"
	// FindingNoAccess: a file or directory exists but could not be read
	// with the privileges fleetcert runs with: unreadable is not empty.
	FindingNoAccess = "unreadableFile"
)

// Finding is one problem a check found on a node or cluster.
type Finding struct {
	Node    string `json:"node,omitempty"`
	Kind    string `json:"kind"`
	File    string `json:"file,omitempty"`
	Message string `json:"message"`
}

// NodeCheck is what a check concludes about one node from its snapshot
// alone: every certificate classified, and the security findings.
type NodeCheck struct {
	Certs    []CheckedCert
	Findings []Finding
}

// CheckNode classifies every certificate of a node at now (its facts'
// Certs: CA bundles in full, leaf files' own cert, the :6443 serving cert
// in dynamic-cert.json, all parsed once when the facts were gathered), and
// looks in its snapshot for CA keys left behind, keys others can read and
// certificate files that do not parse. Certificates come back sorted by
// residual time, soonest first.
func CheckNode(l Layout, s *Snapshot, f NodeFacts, now time.Time, within time.Duration) NodeCheck {
	var nc NodeCheck
	for _, c := range f.Certs {
		nc.Certs = append(nc.Certs, CheckedCert{Cert: c, Residual: c.NotAfter.Sub(now), Status: classify(c, now, within)})
	}
	sortByResidual(nc.Certs)
	for _, p := range f.Unreadable {
		nc.Findings = append(nc.Findings, Finding{Kind: FindingUnreadable, File: p,
			Message: "certificate file does not parse"})
	}
	for _, p := range f.NoAccess {
		nc.Findings = append(nc.Findings, Finding{Kind: FindingNoAccess, File: p,
			Message: "exists but cannot be read with the privileges fleetcert runs with (set sudo: true)"})
	}
	for _, t := range f.Tokens {
		if t.Err != nil && !f.noAccess(t.File) {
			nc.Findings = append(nc.Findings, Finding{Kind: FindingTokenSource, File: t.File, Message: t.String()})
		}
	}
	for _, err := range []error{f.TokenErr, f.AgentTokenErr} {
		if err != nil {
			nc.Findings = append(nc.Findings, Finding{Kind: FindingTokenSource, Message: err.Error()})
		}
	}
	if s != nil {
		nc.Findings = append(nc.Findings, keyFindings(l, s)...)
	}
	return nc
}

// sortByResidual orders certificates soonest expiry first, then by file.
func sortByResidual(certs []CheckedCert) {
	sort.SliceStable(certs, func(i, j int) bool {
		if !certs[i].NotAfter.Equal(certs[j].NotAfter) {
			return certs[i].NotAfter.Before(certs[j].NotAfter)
		}
		if certs[i].File != certs[j].File {
			return certs[i].File < certs[j].File
		}
		return certs[i].Index < certs[j].Index
	})
}

// keyFindings judges the private keys the snapshot listed (never read):
// offline CA keys in server/tls, and group- or world-readable keys.
func keyFindings(l Layout, s *Snapshot) []Finding {
	paths := make([]string, 0, len(s.Keys))
	for p := range s.Keys {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	tls := l.ServerTLSDir()
	var out []Finding
	for _, p := range paths {
		k := s.Keys[p]
		dir := path.Dir(p)
		if (dir == tls || dir == path.Join(tls, "etcd")) && isOfflineCAKey(path.Base(p)) {
			out = append(out, Finding{Kind: FindingCAKey, File: p,
				Message: "root or intermediate CA private key left on the node: keep it offline and delete it here"})
		}
		if k.Mode&0o077 != 0 {
			out = append(out, Finding{Kind: FindingKeyMode, File: p,
				Message: fmt.Sprintf("private key has mode %04o: readable by group or others (want 0600)", k.Mode)})
		}
	}
	return out
}

// isOfflineCAKey tells the key of a root or intermediate CA (names as
// k3s's contrib/util/generate-custom-ca-certs.sh writes them: root-ca.key,
// intermediate-ca.key, and *-root*.key variants) from the keys k3s itself
// needs in server/tls.
func isOfflineCAKey(name string) bool {
	if !strings.HasSuffix(name, ".key") {
		return false
	}
	return strings.HasPrefix(name, "root") || strings.HasPrefix(name, "intermediate") ||
		strings.Contains(name, "-root")
}
