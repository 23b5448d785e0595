package k3s

import (
	"path"
	"strings"
	"time"

	"github.com/fleetcert/fleetcert/pki"
)

// NodeFacts is what fleetcert knows about a node from its snapshot: what
// `fleetcert facts` shows and what preflight checks decide on.
type NodeFacts struct {
	Hostname string `json:"hostname"`
	// NodeName is the name the node registered under in its cluster: the
	// CN of its kubelet client certificate (system:node:<name>), which k3s
	// issues for --node-name, K3S_NODE_NAME or config's node-name, else
	// the hostname.
	NodeName  string `json:"nodeName,omitempty"`
	OS        string `json:"os"`
	Init      string `json:"init"`
	Installed bool   `json:"installed"`
	Version   string `json:"version,omitempty"`
	// Role is what the node is as found on it: server when it has a server
	// data dir, agent when it has only an agent one, empty when neither.
	Role         Role   `json:"role,omitempty"`
	Unit         string `json:"unit"`
	UnitState    string `json:"unitState"`
	DataDir      string `json:"dataDir"`
	EmbeddedEtcd bool   `json:"embeddedEtcd"`
	// Tokens lists every place the node defines a join token.
	Tokens []TokenSource `json:"-"`
	// CAHash is hashCA of the CA bundle the node holds: the server's own
	// server-ca.crt, or an agent's downloaded copy.
	CAHash string `json:"caHash,omitempty"`
	// ServerTokenHash is the hash in server/token, which k3s rewrites at
	// every server start: proof of what the running server pinned.
	ServerTokenHash string    `json:"serverTokenHash,omitempty"`
	CAExpiry        time.Time `json:"caExpiry,omitzero"`
	LeafExpiry      time.Time `json:"leafExpiry,omitzero"`
	Certs           []Cert    `json:"-"`
	Unreadable      []string  `json:"unreadableFiles,omitempty"`
}

// Describe derives a node's facts from its snapshot and the contents of
// the token files its configuration points to (read in a second round trip
// when there are any).
func Describe(l Layout, s *Snapshot, tokenFiles map[string]File) NodeFacts {
	sources, _ := FindTokenSources(l, contents(s.Files, tokenFiles))
	return DescribeWith(l, s, sources)
}

// DescribeWith is Describe with the token sources already found (the
// first result of TokenSourcesToRead when it asks for no more files), so
// that a caller that just parsed them does not parse every token file
// again.
func DescribeWith(l Layout, s *Snapshot, sources []TokenSource) NodeFacts {
	f := NodeFacts{
		Hostname: s.Hostname, OS: s.OS, Init: s.Init,
		Installed: s.VersionText != "",
		Version:   versionWord(s.VersionText),
		Unit:      l.UnitName(), UnitState: s.UnitStates[l.UnitName()],
		DataDir:      l.dataDir(),
		EmbeddedEtcd: s.Dirs[l.EtcdDBDir()],
	}
	switch {
	case s.Dirs[l.ServerDir()]:
		f.Role = RoleServer
	case s.Dirs[l.AgentDir()]:
		f.Role = RoleAgent
	}
	held := l
	if f.Role != "" {
		held.Role = f.Role
	}
	if ca, ok := s.Files[held.HeldCA()]; ok {
		f.CAHash = pki.HashCA(ca.Data)
	}
	if tok, ok := s.Files[l.ServerToken()]; ok {
		if t, err := pki.ParseToken(strings.TrimSpace(string(tok.Data))); err == nil {
			f.ServerTokenHash = t.CAHash
		}
	}
	f.Tokens = sources
	f.Certs, f.Unreadable = s.Certs()
	kubelet := path.Join(l.AgentDir(), "client-kubelet.crt")
	for _, c := range f.Certs {
		if c.File == kubelet && c.Index == 0 {
			f.NodeName, _ = strings.CutPrefix(c.Subject, "system:node:")
		}
		if c.Bundle {
			f.CAExpiry = earliest(f.CAExpiry, c.NotAfter)
		} else {
			f.LeafExpiry = earliest(f.LeafExpiry, c.NotAfter)
		}
	}
	return f
}

// TokenSourcesToRead returns the token sources found so far and the files
// the node's token configuration points to (token-file targets, extra
// EnvironmentFile= files) that neither the snapshot nor read hold yet:
// what another round trip must read. Once nothing is pending, the sources
// are the node's, as Describe finds them.
func TokenSourcesToRead(l Layout, s *Snapshot, read map[string]File) ([]TokenSource, []string) {
	return FindTokenSources(l, contents(s.Files, read))
}

// contents maps paths to file data; a file recorded as absent (nil data)
// stays in the map as nil, which tells the token finder it was looked for.
func contents(sets ...map[string]File) map[string][]byte {
	out := map[string][]byte{}
	for _, set := range sets {
		for p, f := range set {
			out[p] = f.Data
		}
	}
	return out
}

// versionWord picks v1.2.3+k3s1 out of `k3s --version` output
// ("k3s version v1.31.1+k3s1 (abc123)").
func versionWord(text string) string {
	first, _, _ := strings.Cut(text, "\n")
	for _, w := range strings.Fields(first) {
		if len(w) > 1 && w[0] == 'v' && w[1] >= '0' && w[1] <= '9' {
			return w
		}
	}
	return ""
}

func earliest(cur, t time.Time) time.Time {
	if cur.IsZero() || t.Before(cur) {
		return t
	}
	return cur
}
