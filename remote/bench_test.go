package remote_test

import (
	"context"
	"log/slog"
	"runtime"
	"testing"

	"github.com/fleetcert/fleetcert/remote"
	"github.com/fleetcert/fleetcert/remote/sshtest"
)

// BenchmarkRunRoundTrip is one Run of `true` on an established connection
// to an in-process server that really forks sh: the floor of any remote
// step's latency.
func BenchmarkRunRoundTrip(b *testing.B) {
	home := b.TempDir()
	id := sshtest.WriteIdentity(b, home, "id", sshtest.ED25519, "")
	s := sshtest.Start(b, sshtest.Options{AuthorizedKeys: nil})
	s.Authorize(id.Signer.PublicKey())
	c := benchDial(b, s, home, id)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		res, err := c.Run(b.Context(), "true", nil)
		if err != nil || res.ExitCode != 0 {
			b.Fatal(err, res.ExitCode)
		}
	}
	b.ReportMetric(float64(c.Sessions())/float64(b.N), "sessions/op")
}

// BenchmarkRunRoundTripNoFork is the same against a Go handler instead of
// sh: the transport's own cost (session open, exec, exit status, close).
func BenchmarkRunRoundTripNoFork(b *testing.B) {
	home := b.TempDir()
	id := sshtest.WriteIdentity(b, home, "id", sshtest.ED25519, "")
	s := sshtest.Start(b, sshtest.Options{Handler: func(context.Context, *sshtest.Exec) int { return 0 }})
	s.Authorize(id.Signer.PublicKey())
	c := benchDial(b, s, home, id)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Run(b.Context(), "true", nil); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkClientMemory reports the heap held per connected, idle Client.
// Client and server live in one process here, so the figure covers both
// ends of each connection; the client's share is roughly half.
func BenchmarkClientMemory(b *testing.B) {
	const n = 50
	home := b.TempDir()
	id := sshtest.WriteIdentity(b, home, "id", sshtest.ED25519, "")
	servers := make([]*sshtest.Server, n)
	for i := range servers {
		servers[i] = sshtest.Start(b, sshtest.Options{AuthorizedKeys: nil})
		servers[i].Authorize(id.Signer.PublicKey())
	}
	for b.Loop() {
		clients := make([]*remote.Client, n)
		before := heapInUse()
		for i, s := range servers {
			clients[i] = benchDial(b, s, home, id)
		}
		after := heapInUse()
		b.ReportMetric(float64(after-before)/n, "heapB/client")
		for _, c := range clients {
			c.Close()
		}
	}
}

func heapInUse() uint64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&m)
	return m.HeapInuse + m.StackInuse
}

// TestClientMemoryBudget holds connected clients to the memory target:
// well under 200 KiB per node for the client side. Measured with both ends
// in this process, so the bound checked is twice that.
func TestClientMemoryBudget(t *testing.T) {
	const n = 20
	home := t.TempDir()
	id := sshtest.WriteIdentity(t, home, "id", sshtest.ED25519, "")
	var servers []*sshtest.Server
	for range n {
		s := sshtest.Start(t, sshtest.Options{})
		s.Authorize(id.Signer.PublicKey())
		servers = append(servers, s)
	}
	// Warm up: the first dial pays for one-time allocations (key cache, ...).
	benchDial(t, servers[0], home, id).Close()
	before := heapInUse()
	var clients []*remote.Client
	for _, s := range servers {
		c := benchDial(t, s, home, id)
		if _, err := c.Run(t.Context(), "true", nil); err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
	}
	per := int64(heapInUse()-before) / n
	t.Logf("heap+stacks per connected client (both ends): %d bytes", per)
	if per > 400<<10 {
		t.Errorf("%d bytes per connected client (both ends), budget 400 KiB", per)
	}
	for _, c := range clients {
		c.Close()
	}
}

func benchDial(tb testing.TB, s *sshtest.Server, home string, id sshtest.Identity) *remote.Client {
	tb.Helper()
	c, err := remote.Dial(tb.Context(), remote.Config{
		Host: s.Host(), Port: s.Port(), User: "bench", IdentityFile: id.Path,
		HomeDir: home, SSHConfigFile: remote.None, SystemKnownHostsFile: remote.None, AgentSocket: remote.None,
		HostKeyPolicy: remote.PolicyAcceptNew, Logger: discardLogger,
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

var discardLogger = slog.New(slog.DiscardHandler)
