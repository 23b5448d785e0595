package cmd

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/fleetcert/fleetcert/internal/certtest"
	"github.com/fleetcert/fleetcert/pki"
	"github.com/fleetcert/fleetcert/remote/sshtest"
)

// factsNode lays out a k3s server under root: data dir with a CA and
// server/token, and a config.yaml defining the join token.
type factsNode struct {
	dataDir, config string
	ca              []byte
	hash            string
}

func newFactsNode(t testing.TB, root string, tokenHash func(caHash string) string) factsNode {
	t.Helper()
	n := factsNode{dataDir: filepath.Join(root, "data"), config: filepath.Join(root, "etc", "config.yaml")}
	n.ca = certtest.NewCA(certtest.Spec{CN: "k3s-server-ca@1"}).CertPEM()
	n.hash = pki.HashCA(n.ca)
	files := map[string]string{
		"data/server/tls/server-ca.crt": string(n.ca),
		"data/server/token":             "K10" + n.hash + "::server:s3cret\n",
		"data/agent/server-ca.crt":      string(n.ca),
		"etc/config.yaml":               "# installed by hand\ntoken: K10" + tokenHash(n.hash) + "::server:s3cret\nwrite-kubeconfig-mode: \"0644\"\n",
	}
	for name, body := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return n
}

// sshFleet serves nodes from in-process SSH servers on 127.0.0.1 and
// writes the identity and known_hosts that reach them.
type sshFleet struct {
	dir, identity, knownHosts, user string
	pub                             ssh.PublicKey
}

func newSSHFleet(t testing.TB) *sshFleet {
	t.Helper()
	dir := t.TempDir()
	id := sshtest.WriteIdentity(t, dir, "id_ed25519", sshtest.ED25519, "")
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	return &sshFleet{dir: dir, identity: id.Path, knownHosts: filepath.Join(dir, "known_hosts"),
		user: u.Username, pub: id.Signer.PublicKey()}
}

func (f *sshFleet) serve(t testing.TB) *sshtest.Server {
	s := sshtest.Start(t, sshtest.Options{AuthorizedKeys: []ssh.PublicKey{f.pub}})
	s.AppendKnownHosts(t, f.knownHosts, false)
	return s
}

func (f *sshFleet) inventoryHeader() string {
	return fmt.Sprintf("defaults:\n  ssh: {user: %s, identityFile: %s, knownHostsFile: %s}\nclusters:\n", f.user, f.identity, f.knownHosts)
}

func TestFactsReportsNodesOverSSH(t *testing.T) {
	fleet := newSSHFleet(t)
	good := newFactsNode(t, filepath.Join(fleet.dir, "s1"), func(h string) string { return h })
	stale := newFactsNode(t, filepath.Join(fleet.dir, "s2"), func(string) string { return strings.Repeat("ab", 32) })
	s1, s2 := fleet.serve(t), fleet.serve(t)
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	deadPort := closed.Addr().(*net.TCPAddr).Port
	closed.Close()

	inv := fleet.inventoryHeader() + fmt.Sprintf(`  - name: c1
    servers:
      - {host: 127.0.0.1, name: s1, ssh: {port: %d}, dataDir: %s, configFile: %s}
      - {host: 127.0.0.1, name: s2, ssh: {port: %d}, dataDir: %s, configFile: %s}
  - name: c2
    servers:
      - {host: 127.0.0.1, name: gone, ssh: {port: %d}}
`, s1.Port(), good.dataDir, good.config, s2.Port(), stale.dataDir, stale.config, deadPort)
	invPath := filepath.Join(fleet.dir, "hosts.yaml")
	os.WriteFile(invPath, []byte(inv), 0o600)

	var out, errb bytes.Buffer
	code := run([]string{"facts", "-i", invPath, "-o", "json", "--timeout", "5s"}, nil, &out, &errb)
	if code != ExitUnreachable {
		t.Fatalf("exit %d, want %d (one node unreachable); stderr:\n%s", code, ExitUnreachable, errb.String())
	}
	var reports []struct {
		Node      string `json:"node"`
		Reachable bool   `json:"reachable"`
		Error     string `json:"error"`
		Facts     struct {
			Role            string `json:"role"`
			CAHash          string `json:"caHash"`
			ServerTokenHash string `json:"serverTokenHash"`
			CAExpiry        time.Time
		} `json:"facts"`
		Tokens []struct {
			File      string `json:"file"`
			Class     string `json:"class"`
			Value     string `json:"value"`
			MatchesCA *bool  `json:"matchesCA"`
		} `json:"tokens"`
	}
	if err := json.Unmarshal(envelope(t, out.Bytes(), "nodes"), &reports); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	if len(reports) != 3 {
		t.Fatalf("got %d reports", len(reports))
	}
	for i, want := range []struct {
		node  string
		hash  string
		match bool
	}{{"s1", good.hash, true}, {"s2", stale.hash, false}} {
		r := reports[i]
		if r.Node != want.node || !r.Reachable || r.Facts.Role != "server" || r.Facts.CAHash != want.hash || r.Facts.ServerTokenHash != want.hash {
			t.Errorf("%s: %+v", want.node, r)
		}
		if len(r.Tokens) != 1 || r.Tokens[0].Class != "secure" || r.Tokens[0].MatchesCA == nil || *r.Tokens[0].MatchesCA != want.match {
			t.Errorf("%s tokens: %+v", want.node, r.Tokens)
		}
	}
	if reports[2].Reachable || reports[2].Error == "" {
		t.Errorf("unreachable node reported as %+v", reports[2])
	}
	if strings.Contains(out.String(), "s3cret") || strings.Contains(errb.String(), "s3cret") {
		t.Error("a token secret leaked into the output")
	}
}
