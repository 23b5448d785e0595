package fleettest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"path"
	"strconv"
	"strings"
	"testing"

	"github.com/fleetcert/fleetcert/k3s"
	"github.com/fleetcert/fleetcert/remote"
)

// TestFactsAsFleetcertReadsThem: a fake node's answer to the real facts
// script parses and describes as a stock k3s node: role, running unit,
// embedded etcd, the CA hash its token pins, certificates, key files.
func TestFactsAsFleetcertReadsThem(t *testing.T) {
	ctx := context.Background()
	m, err := Default()
	if err != nil {
		t.Fatal(err)
	}
	f := New(m, Spec{Clusters: 1, Servers: 2, Agents: 1})
	for _, in := range f.Nodes() {
		h, err := f.Dial(ctx, in)
		if err != nil {
			t.Fatal(err)
		}
		l := k3s.Layout{Role: k3s.RoleServer, DataDir: in.DataDir, ConfigFile: in.ConfigFile, Unit: in.Service}
		want := k3s.RoleServer
		if in.Role == "agent" {
			l.Role, want = k3s.RoleAgent, k3s.RoleAgent
		}
		snap, err := k3s.TakeSnapshot(ctx, h, l)
		if err != nil {
			t.Fatalf("%s: %v", in.ID(), err)
		}
		facts := k3s.DescribeWith(l, snap, k3s.ScanNode(l, snap, nil))
		if facts.Role != want || facts.UnitState != "active" || facts.Hostname != in.Name || !facts.Installed {
			t.Errorf("%s: facts %+v", in.ID(), facts)
		}
		if facts.CAHash != m.Hash || len(facts.Certs) == 0 || len(facts.Unreadable) > 0 || len(snap.Keys) == 0 {
			t.Errorf("%s: CA %s, %d certs, unreadable %v, %d keys", in.ID(), facts.CAHash, len(facts.Certs), facts.Unreadable, len(snap.Keys))
		}
		if facts.EmbeddedEtcd != (want == k3s.RoleServer) {
			t.Errorf("%s: embedded etcd %v", in.ID(), facts.EmbeddedEtcd)
		}
		if len(facts.Tokens) != 1 || !facts.Tokens[0].Secure() || facts.Tokens[0].Token.CAHash != m.Hash || facts.Tokens[0].Err != nil {
			t.Errorf("%s: tokens %v", in.ID(), facts.Tokens)
		}
		got, err := k3s.ReadFiles(ctx, h, []string{l.EnvFile(), "/nonexistent"})
		if err != nil || len(got) != 1 || !strings.Contains(string(got[l.EnvFile()].Data), "K3S_TOKEN=") {
			t.Errorf("%s: ReadFiles: %v %v", in.ID(), got, err)
		}
	}
	if u := f.Unknown(); len(u) > 0 {
		t.Fatalf("unknown scripts: %q", u)
	}
}

func TestUnknownScriptFailsAndIsRecorded(t *testing.T) {
	m, err := Default()
	if err != nil {
		t.Fatal(err)
	}
	f := New(m, Spec{Clusters: 1, Servers: 1})
	h, _ := f.Dial(context.Background(), f.Nodes()[0])
	res, err := h.Run(context.Background(), "k3s secrets-encrypt rotate-keys\necho done", nil)
	if err != nil || res.ExitCode != 127 || !strings.Contains(string(res.Stderr), "k3s secrets-encrypt rotate-keys") {
		t.Fatalf("exit %d, %v, stderr %q", res.ExitCode, err, res.Stderr)
	}
	if u := f.Unknown(); len(u) != 1 || u[0] != "k3s secrets-encrypt rotate-keys" {
		t.Fatalf("recorded %q", u)
	}
}

func TestShellWords(t *testing.T) {
	for in, want := range map[string]string{
		`a 'b c' d\ e`:               "a|b c|d e",
		`'it'\''s' x`:                "it's|x",
		`''`:                         "",
		`/etc/x.d/* 'a b'/*.crt; ls`: "/etc/x.d/*|a b/*.crt",
	} {
		var got []string
		for _, w := range shellWords(in) {
			got = append(got, w.s)
		}
		if strings.Join(got, "|") != want {
			t.Errorf("%s: got %q, want %q", in, got, want)
		}
	}
	if w := shellWords(`'a*' b*`); w[0].glob || !w[1].glob {
		t.Errorf("glob flags: %+v", w)
	}
}

// TestWriteFileConditions: a fake node honours IfUnchanged and IfAbsent as
// a real one does, leaving a changed file alone.
func TestWriteFileConditions(t *testing.T) {
	ctx := context.Background()
	m, err := Default()
	if err != nil {
		t.Fatal(err)
	}
	f := New(m, Spec{Clusters: 1, Servers: 1})
	in := f.Nodes()[0]
	h, err := f.Dial(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	p := path.Join(in.DataDir, "server", "fleetcert-test")
	sum := func(s string) string { b := sha256.Sum256([]byte(s)); return hex.EncodeToString(b[:]) }
	steps := []struct {
		data    string
		opt     remote.WriteOption
		changed bool
		want    string
	}{
		{data: "v1", opt: remote.IfUnchanged(sum("v0")), changed: true}, // absent
		{data: "v1", opt: remote.IfAbsent(), want: "v1"},
		{data: "v2", opt: remote.IfAbsent(), changed: true, want: "v1"},
		{data: "v2", opt: remote.IfUnchanged(sum("v0")), changed: true, want: "v1"},
		{data: "v2", opt: remote.IfUnchanged(sum("v1")), want: "v2"},
		{data: "v3", want: "v3"},
	}
	for i, s := range steps {
		err := h.WriteFile(ctx, p, []byte(s.data), 0o600, s.opt)
		if errors.Is(err, remote.ErrChanged) != s.changed || (err != nil && !s.changed) {
			t.Fatalf("step %d: err = %v", i, err)
		}
		if s.changed && !strings.Contains(err.Error(), p) {
			t.Fatalf("step %d: %v does not name the file", i, err)
		}
		got, ok := f.Node(in.ID()).File(p)
		if string(got.Data) != s.want || ok != (s.want != "") {
			t.Fatalf("step %d: file %q (exists %v), want %q", i, got.Data, ok, s.want)
		}
	}
	if err := h.WriteFile(ctx, p, nil, 0o600, remote.IfUnchanged("")); err == nil || errors.Is(err, remote.ErrChanged) {
		t.Fatalf("bad hash: err = %v", err)
	}
}

// TestCertificateRotateIssuesLeafsAtStart: leaf renewal as fleetcert
// scripts it. k3s copies the node's certificates to tls-<unix>, removes
// the leaf files, and the start issues them again, written no earlier than
// the clock the script printed; CA files stay as they were. The prune
// script then keeps only the newest copies.
func TestCertificateRotateIssuesLeafsAtStart(t *testing.T) {
	ctx := context.Background()
	m, err := Default()
	if err != nil {
		t.Fatal(err)
	}
	f := New(m, Spec{Clusters: 1, Servers: 1, Agents: 1})
	for _, in := range f.Nodes() {
		n := f.Node(in.ID())
		l := n.layout
		leaf := path.Join(l.AgentDir(), "client-kube-proxy.crt")
		backups := l.AgentDir()
		if in.Role == "server" {
			leaf, backups = path.Join(l.ServerTLSDir(), "client-admin.crt"), l.ServerDir()
		}
		ca, _ := n.File(l.AgentServerCA())
		n.Put(path.Join(backups, "tls-1000", "client-admin.crt"), []byte("old"), 0o644)
		n.Put(path.Join(backups, "tls-2000", "client-admin.crt"), []byte("older"), 0o644)
		script := l.StopCmd() + " && " + l.CertificateRotateCmd([]string{"kube-proxy"}) + " 2>&1; rc=$?; date +%s; " + l.StartCmd() + "; exit $rc"
		res, err := n.Run(ctx, script, nil)
		if err != nil || res.ExitCode != 0 {
			t.Fatalf("%s: exit %d, %v: %s", in.ID(), res.ExitCode, err, res.Stdout)
		}
		lines := strings.Split(strings.TrimSpace(string(res.Stdout)), "\n")
		t0, err := strconv.ParseInt(lines[len(lines)-1], 10, 64)
		if err != nil || !strings.Contains(lines[0], "Successfully backed up certificates to "+backups+"/tls-") {
			t.Fatalf("%s: output %q", in.ID(), res.Stdout)
		}
		got, ok := n.File(leaf)
		if !ok || got.MTime.Unix() < t0 {
			t.Errorf("%s: %s not issued again at the start (present %v, written %v, rotate at %d)", in.ID(), leaf, ok, got.MTime, t0)
		}
		if after, _ := n.File(l.AgentServerCA()); !bytes.Equal(after.Data, ca.Data) {
			t.Errorf("%s: the CA bundle changed", in.ID())
		}
		if j := n.Journal(); len(j) == 0 || !strings.Contains(j[len(j)-1], "Rotating certificates for kube-proxy") {
			t.Errorf("%s: journal %q", in.ID(), j)
		}
		backup := fmt.Sprintf("%s/tls-%d", backups, t0)
		if _, ok := n.File(path.Join(backup, path.Base(leaf))); !ok {
			t.Errorf("%s: no copy of %s in %s", in.ID(), path.Base(leaf), backup)
		}
		prune := fmt.Sprintf("cd %s || exit 0\nls -d tls-[0-9]* 2>/dev/null | sort -t- -k2 -n | head -n -%d | while read -r d; do rm -rf -- \"$d\"; done", backups, 1)
		if res, err := n.Run(ctx, prune, nil); err != nil || res.ExitCode != 0 {
			t.Fatalf("%s: prune: exit %d, %v", in.ID(), res.ExitCode, err)
		}
		n.mu.Lock()
		kept := []string{}
		for _, d := range []string{"tls-1000", "tls-2000", path.Base(backup)} {
			if n.dirExists(path.Join(backups, d)) {
				kept = append(kept, d)
			}
		}
		n.mu.Unlock()
		if len(kept) != 1 || kept[0] != path.Base(backup) {
			t.Errorf("%s: after pruning to 1 kept %v, want the newest, %s", in.ID(), kept, path.Base(backup))
		}
	}
	if u := f.Unknown(); len(u) > 0 {
		t.Fatalf("unknown scripts: %q", u)
	}
}

// TestFaultControls: BeforeRun answers in the node's place (or lets it
// answer), and DialErr makes the node unreachable.
func TestFaultControls(t *testing.T) {
	ctx := context.Background()
	m, err := Default()
	if err != nil {
		t.Fatal(err)
	}
	f := New(m, Spec{Clusters: 1, Servers: 1})
	in := f.Nodes()[0]
	n := f.Node(in.ID())
	var seen []string
	n.BeforeRun = func(_ context.Context, script string) *remote.Result {
		seen = append(seen, script)
		if script == (k3s.Layout{}).ReadyzCmd() {
			return &remote.Result{ExitCode: 1, Stderr: []byte("connection refused\n")}
		}
		return nil
	}
	if res, _ := n.Run(ctx, (k3s.Layout{}).ReadyzCmd(), nil); res.ExitCode != 1 {
		t.Errorf("readyz answered by the node despite BeforeRun: %+v", res)
	}
	if res, _ := n.Run(ctx, (k3s.Layout{}).NodesCmd(), nil); res.ExitCode != 0 || len(res.Stdout) == 0 {
		t.Errorf("BeforeRun returning nil kept the node from answering: %+v", res)
	}
	if len(seen) != 2 {
		t.Errorf("BeforeRun saw %q", seen)
	}
	down := errors.New("dial tcp: connection refused")
	n.DialErr = down
	if _, err := f.Dial(ctx, in); !errors.Is(err, down) {
		t.Errorf("Dial of an unreachable node: %v", err)
	}
}
