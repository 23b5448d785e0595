package k3s

import (
	"errors"
	"fmt"
	"path"
	"slices"
	"sort"
	"strconv"
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
	Role      Role   `json:"role,omitempty"`
	Unit      string `json:"unit"`
	UnitState string `json:"unitState"`
	// ServiceFile defines the service: the unit file systemd loaded, or
	// the OpenRC service script.
	ServiceFile  string `json:"serviceFile,omitempty"`
	DataDir      string `json:"dataDir"`
	EmbeddedEtcd bool   `json:"embeddedEtcd"`
	// Tokens lists every place the node defines a join token, and
	// problems: places that may hold one but cannot be accounted for.
	Tokens []TokenSource `json:"-"`
	// Token and AgentToken are the definitions k3s uses, by its
	// precedence (nil when none); TokenErr and AgentTokenErr say why one
	// cannot be known or is missing.
	Token         *TokenSource `json:"-"`
	TokenErr      error        `json:"-"`
	AgentToken    *TokenSource `json:"-"`
	AgentTokenErr error        `json:"-"`
	// ConfigFile is the k3s config file the node reads, ConfigFrom why.
	ConfigFile string `json:"configFile,omitempty"`
	ConfigFrom string `json:"configFrom,omitempty"`
	// Joins is the setting that makes the node join a cluster (every
	// agent has one): such a node must hold a token.
	Joins string `json:"joins,omitempty"`
	// Binary is the k3s program the unit runs, from its ExecStart.
	Binary string `json:"binary,omitempty"`
	// MainPID is the running k3s process, as systemd tracks it (MainPID)
	// or OpenRC's supervise-daemon records it (child_pid; its pidfile
	// holds the supervisor's own PID).
	MainPID int `json:"mainPID,omitempty"`
	// ClockSkew is the node's clock minus the controller's, measured
	// around the facts round trip (to within about a second): positive
	// when the node is ahead.
	ClockSkew time.Duration `json:"clockSkewNs"`
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
	// NoAccess lists files and directories that exist but could not be
	// read or searched with the privileges fleetcert runs with.
	NoAccess []string `json:"noAccess,omitempty"`
}

// Running reports whether the init system says k3s runs: systemd's
// "active", OpenRC's "started".
func (f NodeFacts) Running() bool {
	return Layout{Init: f.Init}.ServiceRunning(f.UnitState)
}

func (f NodeFacts) noAccess(p string) bool { return slices.Contains(f.NoAccess, p) }

// ScanNode finds the node's token sources in its snapshot and the files
// read after it; Pending says what another round trip must read.
func ScanNode(l Layout, s *Snapshot, read *Snapshot) TokenScan {
	return scanTokens(l, s.NodeFiles(read))
}

// DescribeWith is Describe with the token scan already made.
func DescribeWith(l Layout, s *Snapshot, scan TokenScan) NodeFacts {
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
	f.Tokens = scan.Sources
	f.ConfigFile, f.ConfigFrom, f.Joins, f.Binary = scan.ConfigFile, scan.ConfigFrom, scan.Joins, scan.Binary
	if l.Role == RoleAgent && f.Joins == "" {
		f.Joins = "agent"
	}
	if s.Unit != nil {
		f.MainPID, f.ServiceFile = s.Unit.MainPID, s.Unit.FragmentPath
	}
	if s.Init == InitOpenRC {
		if _, ok := s.Files[l.ServiceScript()]; ok {
			f.ServiceFile = l.ServiceScript()
		}
	}
	if pid, ok := s.Files[l.OpenRCChildPID()]; ok && s.Init == InitOpenRC {
		f.MainPID, _ = strconv.Atoi(strings.TrimSpace(string(pid.Data)))
	}
	t, err := effectiveToken(scan.Sources, l.Role)
	f.Token, f.TokenErr = effectiveOrNil(scan.Sources, t, err)
	t, err = effectiveAgentToken(scan.Sources, l.Role)
	f.AgentToken, f.AgentTokenErr = effectiveOrNil(scan.Sources, t, err)
	// A node without k3s data is reported as such; its missing token is
	// no news.
	if f.Token == nil && errors.Is(f.TokenErr, errNoToken) && f.Joins != "" && f.Role != "" {
		f.TokenErr = fmt.Errorf("the node joins a cluster (%s) but defines no token fleetcert can find; looked in %s",
			f.Joins, strings.Join(scan.looked(), ", "))
	} else if errors.Is(f.TokenErr, errNoToken) {
		f.TokenErr = nil
	}
	if errors.Is(f.AgentTokenErr, errNoToken) {
		f.AgentTokenErr = nil
	}
	f.Certs, f.Unreadable = s.certs()
	for p := range s.Unreadable {
		f.NoAccess = append(f.NoAccess, p)
	}
	sort.Strings(f.NoAccess)
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

// NodeFiles is what the snapshot and the files read after it hold for
// finding token sources: contents by path (nil for a file looked for and
// absent), the directories listed, the unreadable paths and systemd's view.
func (s *Snapshot) NodeFiles(read *Snapshot) NodeFiles {
	in := NodeFiles{Init: s.Init, Unit: s.Unit, ManagerEnv: s.ManagerEnv, Files: map[string][]byte{}, Unreadable: map[string]bool{}}
	for _, snap := range []*Snapshot{s, read} {
		if snap == nil {
			continue
		}
		for p, f := range snap.Files {
			in.Files[p] = f.Data
		}
		for p := range snap.Absent {
			if _, ok := in.Files[p]; !ok {
				in.Files[p] = nil
			}
		}
		for p := range snap.Listed {
			in.Files[p+"/"] = nil
		}
		for p := range snap.Unreadable {
			in.Unreadable[p] = true
		}
	}
	return in
}

// effectiveOrNil is the effective definition, or why there is none. An
// error that is a listed source's own problem is left to that source, so
// that facts, check and preflight report it once.
func effectiveOrNil(sources []TokenSource, t TokenSource, err error) (*TokenSource, error) {
	if err == nil {
		return &t, nil
	}
	for _, s := range sources {
		if s.Err != nil && s.File == t.File && s.Line == t.Line && s.Key == t.Key && s.Kind == t.Kind {
			return nil, nil
		}
	}
	return nil, err
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
