package fleettest

import (
	"context"
	"strings"
	"testing"

	"github.com/fleetcert/fleetcert/k3s"
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
		facts := k3s.Describe(l, snap, nil)
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
