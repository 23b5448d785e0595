package cmd

import (
	"fmt"
	"io"
	"path/filepath"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/fleetcert/fleetcert/remote/sshtest"
)

// BenchmarkCheck200Nodes runs `fleetcert check --concurrency 64 -o json`
// end to end over 200 server nodes (40 clusters of 5), each an in-process
// SSH server on 127.0.0.1 holding a k3s server layout of ~30 certificate
// files and their keys. It reports nodes/second (the goal: at least 100 on
// two cores) and SSH exec round trips per node (the goal: at most 2).
func BenchmarkCheck200Nodes(b *testing.B) {
	const clusters, perCluster = 40, 5
	f := newCheckFleet(b)
	p := newClusterPKI()
	layout := writeK3sNode(b, filepath.Join(f.dir, "node"), p, true, p.hash())
	var servers []*sshtest.Server
	for c := range clusters {
		for n := range perCluster {
			s := sshtest.Start(b, sshtest.Options{AuthorizedKeys: []ssh.PublicKey{f.pub}})
			s.AppendKnownHosts(b, f.knownHosts, false)
			servers = append(servers, s)
			f.addPort(fmt.Sprintf("c%02d", c), fmt.Sprintf("s%d", n), "server", s.Port(), layout)
		}
	}
	inv := f.inventory(b)
	nodes := clusters * perCluster
	args := []string{"check", "-i", inv, "-o", "json", "--concurrency", "64", "--timeout", "30s"}
	b.ResetTimer()
	for b.Loop() {
		if code := run(args, nil, io.Discard, io.Discard); code != ExitOK {
			b.Fatalf("check exited %d", code)
		}
	}
	b.StopTimer()
	var execs int64
	for _, s := range servers {
		execs += s.Execs()
	}
	b.ReportMetric(float64(nodes*b.N)/b.Elapsed().Seconds(), "nodes/s")
	b.ReportMetric(float64(execs)/float64(nodes*b.N), "roundtrips/node")
	if execs > int64(2*nodes*b.N) {
		b.Errorf("%d round trips for %d node checks: more than 2 per node", execs, nodes*b.N)
	}
}
