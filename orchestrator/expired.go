package orchestrator

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/fleetcert/fleetcert/inventory"
	"github.com/fleetcert/fleetcert/k3s"
)

// A cluster whose servers' leaf certificates have expired (left a year
// without a restart) answers its API only with x509 errors: every kubectl
// step fails, and with embedded etcd the members' expired peer
// certificates keep any one renewed server from reaching quorum alone.
// fleetcert tells this from the certificate files facts read, never from a
// failed API call (docs/k3s-behaviour.md#renewal).

// expiredLeafs lists the leaf certificates of n (a file's own certificate,
// not a CA) that have expired at now.
func expiredLeafs(n *Node, now time.Time) []string {
	var out []string
	for _, c := range n.Facts.Certs {
		if isLeaf(c) && now.After(c.NotAfter) {
			out = append(out, c.File)
		}
	}
	sort.Strings(out)
	return out
}

// isLeaf tells a leaf certificate: a file's own certificate, not a CA (the
// rest of a leaf file is its CA chain).
func isLeaf(c k3s.Cert) bool { return c.Index == 0 && !c.CA && !c.Bundle }

// expiredServers names the servers among nodes holding an expired leaf
// certificate, each with how many.
func expiredServers(nodes []*Node, now time.Time) []string {
	var out []string
	for _, n := range nodes {
		if n.Role != inventory.Server || n.Err != nil {
			continue
		}
		if files := expiredLeafs(n, now); len(files) > 0 {
			out = append(out, fmt.Sprintf("%s (%d expired, e.g. %s)", n.Name, len(files), files[0]))
		}
	}
	return out
}

// ExpiredServers are the cluster's reachable servers whose leaf
// certificates have expired: the cluster is down until `fleetcert rotate`
// renews them.
func (cc *ClusterCheck) ExpiredServers() []string {
	var out []string
	for _, cn := range cc.Nodes {
		if cn.Role != inventory.Server {
			continue
		}
		for _, c := range cn.Certs {
			if isLeaf(c.Cert) && c.Status == k3s.StatusExpired {
				out = append(out, cn.Name)
				break
			}
		}
	}
	return out
}

// expiredRefusal is the preflight problem of an operation that needs the
// cluster's API.
func expiredRefusal(servers []string) string {
	return "the servers' certificates have expired, so the cluster's API answers only with x509 errors: " +
		strings.Join(servers, "; ") + "; renew them first with `fleetcert rotate` (see the README: when the cluster has already expired)"
}
