package fleettest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"path"
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
