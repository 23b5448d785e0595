package cmd

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/fleetcert/fleetcert/orchestrator/fleettest"
	"github.com/fleetcert/fleetcert/remote"
)

// TestRotateRenewsExpiredServersTogether: on an HA cluster whose servers'
// certificates have expired, rotate renews and starts every server before
// it waits for any (a lone renewed etcd member cannot reach quorum); on a
// healthy cluster it waits for each server before the next one goes down.
func TestRotateRenewsExpiredServersTogether(t *testing.T) {
	for _, expired := range []bool{true, false} {
		name := map[bool]string{true: "expired", false: "healthy"}[expired]
		t.Run(name, func(t *testing.T) {
			fl, inv := fakeFleetOf(t, fleettest.Spec{Clusters: 1, Servers: 3, Agents: 1})
			servers := []string{"c0001/c0001-s1", "c0001/c0001-s2", "c0001/c0001-s3"}
			if expired {
				for _, id := range servers {
					expireServerLeaf(t, fl, id)
				}
			}
			// What each server is asked, in order, once fleetcert has
			// renewed it (its gates) or when it is renewed.
			var mu sync.Mutex
			var seen []string
			renewedAt := map[string]bool{}
			for _, id := range servers {
				fl.Node(id).BeforeRun = func(_ context.Context, script string) *remote.Result {
					mu.Lock()
					defer mu.Unlock()
					switch {
					case strings.Contains(script, " certificate rotate -d "):
						seen = append(seen, "renew "+id)
						renewedAt[id] = true
					case renewedAt[id]:
						seen = append(seen, "wait "+id)
					}
					return nil
				}
			}
			code, out, stderr := runFake(fl, false, "", "rotate", "-i", inv, "--yes")
			if code != ExitOK {
				t.Fatalf("exit %d\n%s\n%s", code, out, stderr)
			}
			lastRenew, firstWait := -1, len(seen)
			for i, s := range seen {
				if strings.HasPrefix(s, "renew ") {
					lastRenew = i
				} else if i < firstWait {
					firstWait = i
				}
			}
			together := lastRenew < firstWait
			if together != expired {
				t.Errorf("servers renewed together: %v, want %v; order:\n  %s", together, expired, strings.Join(seen, "\n  "))
			}
			if warned := strings.Contains(stderr, "the servers' certificates have expired"); warned != expired {
				t.Errorf("warning about expired servers shown: %v, want %v\n%s", warned, expired, stderr)
			}
		})
	}
}
