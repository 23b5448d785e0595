package orchestrator

import (
	"context"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"runtime"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/fleetcert/fleetcert/inventory"
	"github.com/fleetcert/fleetcert/remote"
	"github.com/fleetcert/fleetcert/remote/sshtest"
)

// BenchmarkFacts200Nodes connects to 200 nodes served by in-process SSH
// servers on 127.0.0.1 and gathers their facts, as `fleetcert facts` does.
// It reports nodes/second, SSH round trips per node (the goal: at most 2)
// and heap held per connected node (the goal: under 200 KiB).
func BenchmarkFacts200Nodes(b *testing.B) {
	const nodes = 200
	dir := b.TempDir()
	id := sshtest.WriteIdentity(b, dir, "id", sshtest.ED25519, "")
	kh := filepath.Join(dir, "known_hosts")
	layout := filepath.Join(dir, "node")
	for name, body := range map[string]string{
		"data/server/tls/server-ca.crt": "not parsed here\n",
		"data/server/token":             "K10" + fmt.Sprintf("%064x", 1) + "::server:pw\n",
		"etc/config.yaml":               "token: K10" + fmt.Sprintf("%064x", 1) + "::server:pw\n",
	} {
		p := filepath.Join(layout, name)
		os.MkdirAll(filepath.Dir(p), 0o700)
		os.WriteFile(p, []byte(body), 0o600)
	}
	u, _ := user.Current()
	var invNodes []inventory.Node
	for i := range nodes {
		s := sshtest.Start(b, sshtest.Options{AuthorizedKeys: []ssh.PublicKey{id.Signer.PublicKey()}})
		s.AppendKnownHosts(b, kh, false)
		invNodes = append(invNodes, inventory.Node{Cluster: "c", Name: fmt.Sprintf("n%d", i), Host: "127.0.0.1",
			Role: inventory.Server, SSH: inventory.SSH{User: u.Username, Port: s.Port(), IdentityFile: id.Path, KnownHostsFile: kh},
			DataDir: filepath.Join(layout, "data"), ConfigFile: filepath.Join(layout, "etc", "config.yaml")})
	}
	dial := SSHDialer(SSHOptions{HostKeyPolicy: "strict"})
	b.ResetTimer()
	var sessions int64
	var heldPerNode float64
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		got := Connect(context.Background(), invNodes, dial, 64)
		runtime.GC()
		runtime.ReadMemStats(&after)
		heldPerNode = float64(after.HeapAlloc-before.HeapAlloc) / nodes
		sessions = 0
		for _, n := range got {
			if n.Err != nil {
				b.Fatalf("%s: %v", n.Name, n.Err)
			}
			sessions += n.Conn.(*remote.Client).Sessions()
		}
		CloseAll(got)
	}
	b.ReportMetric(float64(nodes*b.N)/b.Elapsed().Seconds(), "nodes/s")
	b.ReportMetric(float64(sessions)/nodes, "roundtrips/node")
	b.ReportMetric(heldPerNode/1024, "KiB-held/node")
	if sessions > 2*nodes {
		b.Errorf("%d round trips for %d nodes: more than 2 per node", sessions, nodes)
	}
}
