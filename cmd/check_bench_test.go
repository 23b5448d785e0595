package cmd

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/fleetcert/fleetcert/remote"
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

// BenchmarkCheck200NodesBastion runs the check of BenchmarkCheck200Nodes
// over the same 200 nodes twice per iteration, alternately dialled
// directly and through one bastion (an in-process server forwarding to
// them), and reports the median over the pairs of the ratio of the two
// (the goal: at most 1.2) and the bastion connections each check opened
// (nodes behind it share them, at most remote.DefaultJumpChannels each).
// Every check starts without a pooled bastion connection, as a new
// fleetcert process would.
func BenchmarkCheck200NodesBastion(b *testing.B) {
	const clusters, perCluster = 40, 5
	f := newCheckFleet(b)
	p := newClusterPKI()
	layout := writeK3sNode(b, filepath.Join(f.dir, "node"), p, true, p.hash())
	for c := range clusters {
		for n := range perCluster {
			s := sshtest.Start(b, sshtest.Options{AuthorizedKeys: []ssh.PublicKey{f.pub}})
			s.AppendKnownHosts(b, f.knownHosts, false)
			f.addPort(fmt.Sprintf("c%02d", c), fmt.Sprintf("s%d", n), "server", s.Port(), layout)
		}
	}
	direct := f.inventory(b)
	// The bastion is reached as OpenSSH's ProxyJump reaches it: with the
	// user's own keys (~/.ssh), not the node's identityFile.
	home := filepath.Join(f.dir, "home")
	key, err := os.ReadFile(f.identity)
	var data []byte
	if err != nil {
		b.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(home, ".ssh"), 0o700); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(home, ".ssh", "id_ed25519"), key, 0o600); err != nil {
		b.Fatal(err)
	}
	b.Setenv("HOME", home)
	b.Setenv("SSH_AUTH_SOCK", "")
	bastion := sshtest.Start(b, sshtest.Options{AuthorizedKeys: []ssh.PublicKey{f.pub}})
	bastion.AppendKnownHosts(b, f.knownHosts, false)
	data, err = os.ReadFile(direct)
	if err != nil {
		b.Fatal(err)
	}
	jumped := filepath.Join(f.dir, "hosts-bastion.yaml")
	viaBastion := strings.Replace(string(data), "knownHostsFile: ", "bastion: "+bastion.Addr()+", knownHostsFile: ", 1)
	if err := os.WriteFile(jumped, []byte(viaBastion), 0o600); err != nil {
		b.Fatal(err)
	}
	check := func(inv string) time.Duration {
		start := time.Now()
		args := []string{"check", "-i", inv, "-o", "json", "--concurrency", "64", "--timeout", "30s"}
		var stderr strings.Builder
		if code := run(args, nil, io.Discard, &stderr); code != ExitOK {
			b.Fatalf("check -i %s exited %d\n%.2000s", inv, code, stderr.String())
		}
		remote.DefaultJumps.CloseIdle()
		return time.Since(start)
	}
	var tDirect, tBastion time.Duration
	var ratios []float64 // per pair: a burst of load elsewhere skews a pair, not the median
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		var d, j time.Duration
		if i%2 == 0 {
			d, j = check(direct), check(jumped)
		} else {
			j, d = check(jumped), check(direct)
		}
		tDirect, tBastion = tDirect+d, tBastion+j
		ratios = append(ratios, j.Seconds()/d.Seconds())
	}
	b.StopTimer()
	slices.Sort(ratios)
	b.ReportMetric(float64(tDirect.Milliseconds())/float64(b.N), "ms-direct/op")
	b.ReportMetric(float64(tBastion.Milliseconds())/float64(b.N), "ms-bastion/op")
	b.ReportMetric((ratios[(len(ratios)-1)/2]+ratios[len(ratios)/2])/2, "bastion/direct")
	b.ReportMetric(float64(bastion.Logins())/float64(b.N), "bastion-conns/op")
}
