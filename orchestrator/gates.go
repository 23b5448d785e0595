package orchestrator

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path"
	"strings"
	"time"

	"github.com/fleetcert/fleetcert/inventory"
	"github.com/fleetcert/fleetcert/k3s"
	"github.com/fleetcert/fleetcert/pki"
	"github.com/fleetcert/fleetcert/remote"
)

const defaultPoll = 2 * time.Second

// gate is one named condition a node must reach after its restart.
type gate struct {
	name  string
	probe probeFunc
}

// serverGates: the restarted server serves the new CA from its running
// process, wrote it into server/token, its apiserver is ready, and its
// disk holds what was loaded (k3s once ignored rotations on joined servers,
// #11233: never trust an exit code).
func (r *loadRotation) serverGates(ctx context.Context, n *Node, t0 time.Time) error {
	gates := []gate{
		{"restarted (server/token rewritten)", func(ctx context.Context) (bool, string, error) {
			return rewrittenSince(ctx, n, n.Layout.ServerToken(), t0)
		}},
		{"serves the new CA", func(ctx context.Context) (bool, string, error) {
			h, via, err := servedHash(ctx, n)
			return h == r.target, fmt.Sprintf("%s hash %s", via, short(h)), err
		}},
		{"server/token pins the new CA", func(ctx context.Context) (bool, string, error) {
			h, err := serverTokenHash(ctx, n)
			return h == r.target, "server/token hash " + short(h), err
		}},
		{"apiserver ready", func(ctx context.Context) (bool, string, error) { return readyz(ctx, n) }},
	}
	if len(r.staged) > 0 {
		gates = append(gates, gate{"CA files on disk match the loaded material", func(ctx context.Context) (bool, string, error) {
			return r.diskMatchesStaged(ctx, n)
		}})
	}
	if ca := r.staged["server-ca.crt"]; len(ca) > 0 && n.Layout.StaticPods() {
		// The apiserver is a static pod the service's restart leaves
		// running: /cacerts comes from the restarted supervisor, so only
		// the chain presented on :6443 shows the pod was replaced.
		gates = append(gates, gate{"apiserver presents a certificate of the new CA", func(ctx context.Context) (bool, string, error) {
			return servesLeafOf(ctx, n, ca)
		}})
	}
	return r.passGates(ctx, n, gates)
}

// agentGates: the agent downloaded the new CA bundle after its restart
// (which it only does once its token validated) and is Ready again. An
// agent unit installed before 2022 is Type=exec ("active" once started),
// and a Type=notify agent's readiness says nothing about which CA it
// fetched, so the unit state alone proves nothing.
func (r *loadRotation) agentGates(ctx context.Context, n *Node, t0 time.Time) error {
	primary := r.run.Primary()
	return r.passGates(ctx, n, []gate{
		{"downloaded the new CA (agent/server-ca.crt)", func(ctx context.Context) (bool, string, error) {
			// The read that proves the rewrite also gives the bundle to
			// hash: one round trip, and the hash is of the file judged.
			f, ok, saw, err := readSince(ctx, n, n.Layout.AgentServerCA(), t0)
			if err == nil && ok {
				h := pki.HashCA(f.Data)
				return h == r.target, "agent/server-ca.crt hash " + short(h), nil
			}
			if mismatch := tokenMismatchSince(ctx, n, t0); mismatch != "" {
				return false, mismatch, stopWaiting(errors.New("the agent's token does not match the CA its server serves"))
			}
			return ok, saw, err
		}},
		{"node Ready", func(ctx context.Context) (bool, string, error) { return nodeReady(ctx, primary, n) }},
	})
}

// servesLeafOf reports whether the certificate the apiserver presents on
// :6443 was signed by the first certificate of bundle (the CA that issues
// the server's leafs). The old leaf would verify against a cross-signed
// bundle too, since the old root stays in it: only its issuer tells.
func servesLeafOf(ctx context.Context, n *Node, bundle []byte) (bool, string, error) {
	certs, err := pki.ParseCerts(bundle)
	if err != nil {
		return false, "", err
	}
	issuer := certs[0]
	chain, err := servingChain(ctx, n)
	if err != nil || len(chain) == 0 {
		return false, "no serving chain", err
	}
	if err := chain[0].CheckSignatureFrom(issuer); err != nil {
		return false, "serving certificate issued by " + chain[0].Issuer.CommonName, nil
	}
	return true, "serving certificate issued by " + issuer.Subject.CommonName, nil
}

// rewrittenSince reports whether file's mtime on the node is at or after
// t0 (node clock): k3s rewrites server/token and the agent's CA copies at
// every start, so this is proof that a start happened.
func rewrittenSince(ctx context.Context, n *Node, file string, t0 time.Time) (bool, string, error) {
	_, ok, saw, err := readSince(ctx, n, file, t0)
	return ok, saw, err
}

// readSince is rewrittenSince that also returns the file it read.
func readSince(ctx context.Context, n *Node, file string, t0 time.Time) (k3s.File, bool, string, error) {
	files, err := k3s.ReadFiles(ctx, n.Conn, []string{file})
	if err != nil {
		return k3s.File{}, false, "", err
	}
	f, ok := files[file]
	if !ok {
		return f, false, path.Base(file) + " absent", nil
	}
	return f, !f.MTime.Before(t0), fmt.Sprintf("%s written %s, restart at %s", path.Base(file),
		f.MTime.UTC().Format(time.TimeOnly), t0.UTC().Format(time.TimeOnly)), nil
}

// tokenMismatchSince returns k3s's mismatch log line if the unit logged
// one since t0.
func tokenMismatchSince(ctx context.Context, n *Node, t0 time.Time) string {
	out, err := remote.Output(ctx, n.Conn, n.Layout.LogSinceCmd(t0, n.logMark))
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, k3s.TokenMismatchLog) {
			return strings.TrimSpace(line)
		}
	}
	return ""
}

// diskMatchesStaged compares the server's CA files with the staged ones.
func (r *loadRotation) diskMatchesStaged(ctx context.Context, n *Node) (bool, string, error) {
	var paths []string
	for _, name := range r.staged.Names() {
		paths = append(paths, path.Join(n.Layout.ServerTLSDir(), name))
	}
	files, err := k3s.ReadFiles(ctx, n.Conn, paths)
	if err != nil {
		return false, "", err
	}
	for _, name := range r.staged.Names() {
		if !bytes.Equal(files[path.Join(n.Layout.ServerTLSDir(), name)].Data, r.staged[name]) {
			return false, name + " differs from the loaded material", nil
		}
	}
	return true, "", nil
}

// verify looks at the cluster's nodes in scope once more after the last
// restart.
func (r *loadRotation) verify(ctx context.Context, scope nodeScope) error {
	if err := refreshAll(ctx, r.run.Nodes); err != nil {
		return err
	}
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	ref := r.run.Primary()
	for _, n := range r.run.Nodes {
		f := n.Facts
		if !scope.covers(n) {
			continue
		}
		if f.CAHash != r.target {
			bad("%s holds CA %s, want %s", n.Name, short(f.CAHash), short(r.target))
		}
		if n.Role == inventory.Server {
			if f.ServerTokenHash != r.target {
				bad("%s: server/token pins %s, want %s", n.Name, short(f.ServerTokenHash), short(r.target))
			}
			for _, name := range pki.Files() {
				if !strings.HasSuffix(name, ".crt") {
					continue
				}
				p, q := path.Join(n.Layout.ServerTLSDir(), name), path.Join(ref.Layout.ServerTLSDir(), name)
				if !bytes.Equal(n.Snapshot.Files[p].Data, ref.Snapshot.Files[q].Data) {
					bad("%s: %s differs from %s's", n.Name, name, ref.Name)
				}
			}
		}
		for _, t := range f.Tokens {
			if t.Secure() && t.Token.CAHash != r.target {
				bad("%s: %s:%d still pins %s", n.Name, t.File, t.Line, short(t.Token.CAHash))
			}
		}
	}
	nodes, err := clusterNodes(ctx, ref)
	if err != nil {
		return err
	}
	ready := map[string]bool{}
	for _, cn := range nodes {
		ready[cn.Name] = cn.Ready
	}
	for _, n := range r.run.Nodes {
		if !ready[n.NodeName()] {
			bad("%s (%s) is not Ready", n.Name, n.NodeName())
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("verification failed:\n  - %s", strings.Join(problems, "\n  - "))
	}
	return nil
}

// collectExport gathers what --export writes for the cluster.
func (r *loadRotation) collectExport(ctx context.Context) error {
	primary := r.run.Primary()
	ex := &Export{ServerCA: primary.Snapshot.Files[primary.Layout.ServerCA()].Data, Hash: r.target}
	if r.exportTokens {
		files, err := k3s.ReadFiles(ctx, primary.Conn, []string{primary.Layout.ServerToken(), primary.Layout.AgentTokenFile()})
		if err != nil {
			return err
		}
		ex.Token = strings.TrimSpace(string(files[primary.Layout.ServerToken()].Data))
		ex.AgentToken = strings.TrimSpace(string(files[primary.Layout.AgentTokenFile()].Data))
	}
	r.report.Export = ex
	return nil
}

// refreshAll gathers every node's facts again, concurrently.
func refreshAll(ctx context.Context, nodes []*Node) error {
	return fanOut(ctx, 0, nodes, func(ctx context.Context, n *Node) error {
		if err := n.refresh(ctx); err != nil {
			return fmt.Errorf("%s: %w", n.Name, err)
		}
		return nil
	})
}
