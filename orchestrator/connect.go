package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/fleetcert/fleetcert/inventory"
	"github.com/fleetcert/fleetcert/k3s"
	"github.com/fleetcert/fleetcert/remote"
)

// Dialer opens the connection to one node. The SSH dialer is the real one;
// tests and benchmarks substitute fakes.
type Dialer func(ctx context.Context, n inventory.Node) (remote.Host, error)

// SSHOptions are the connection settings that come from flags and the
// environment rather than from the inventory.
type SSHOptions struct {
	HostKeyPolicy  string
	SudoPassword   string
	ConnectTimeout time.Duration
	// CommandTimeout bounds each remote command (health waits have their
	// own deadlines and poll with short commands).
	CommandTimeout time.Duration
	Logger         *slog.Logger
}

// SSHDialer dials nodes over SSH with settings from the inventory and opts.
func SSHDialer(opts SSHOptions) Dialer {
	return func(ctx context.Context, n inventory.Node) (remote.Host, error) {
		c, err := remote.Dial(ctx, remote.Config{
			Host:           n.Host,
			Port:           n.SSH.Port,
			User:           n.SSH.User,
			IdentityFile:   n.SSH.IdentityFile,
			KnownHostsFile: n.SSH.KnownHostsFile,
			Bastion:        n.SSH.Bastion,
			Sudo:           n.Sudo,
			SudoPassword:   opts.SudoPassword,
			HostKeyPolicy:  remote.HostKeyPolicy(opts.HostKeyPolicy),
			ConnectTimeout: opts.ConnectTimeout,
			CommandTimeout: opts.CommandTimeout,
			Logger:         opts.Logger,
		})
		if err != nil {
			return nil, err // not a typed nil inside the interface
		}
		return c, nil
	}
}

// Node is an inventory node at run time: its connection (nil when it could
// not be reached), where its files are, and what was found on it.
type Node struct {
	inventory.Node
	Conn     remote.Host
	Layout   k3s.Layout
	Snapshot *k3s.Snapshot
	Facts    k3s.NodeFacts
	// Err is why the node could not be reached or read.
	Err error

	// more is what was read after the snapshot: files the node's token
	// configuration points to (token files, a config file chosen by
	// K3S_CONFIG_FILE, its drop-ins).
	more *k3s.Snapshot
	// logMark is where k3s's log stood at the node's last restart
	// (k3s.Layout.LogMarkCmd).
	logMark int64
}

// layoutOf is where an inventory node keeps its k3s files.
func layoutOf(n inventory.Node) k3s.Layout {
	role := k3s.RoleServer
	if n.Role == inventory.Agent {
		role = k3s.RoleAgent
	}
	return k3s.Layout{Product: n.Product, Role: role, DataDir: n.DataDir, ConfigFile: n.ConfigFile, Unit: n.Service}
}

// Connect dials every node, at most limit at once, and gathers its facts
// in the same pass: one connection per node, one round trip for the
// snapshot and a second only when the node's configuration points to token
// files. A node that fails keeps its error; the others go on.
func Connect(ctx context.Context, nodes []inventory.Node, dial Dialer, limit int) []*Node {
	out := make([]*Node, len(nodes))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(limit)
	for i, n := range nodes {
		rn := &Node{Node: n, Layout: layoutOf(n)}
		out[i] = rn
		g.Go(func() error {
			rn.connect(gctx, dial)
			return nil
		})
	}
	_ = g.Wait()
	return out
}

func (n *Node) connect(ctx context.Context, dial Dialer) {
	h, err := dial(ctx, n.Node)
	if err != nil {
		n.Err = fmt.Errorf("connect: %w", err)
		return
	}
	n.Conn = h
	n.Err = n.refresh(ctx)
}

// refresh gathers the node's facts again, e.g. after a restart.
func (n *Node) refresh(ctx context.Context) error {
	sent := time.Now()
	snap, err := k3s.TakeSnapshot(ctx, n.Conn, n.Layout)
	if err != nil {
		return err
	}
	// What booted the node decides how k3s is run there; preflight
	// refuses a node that is neither or both.
	if snap.Init == k3s.InitOpenRC || snap.Init == k3s.InitSystemd {
		n.Layout.Init = snap.Init
	}
	// The node read its clock during the round trip: compare with the
	// controller's at its middle.
	mid := sent.Add(time.Since(sent) / 2)
	more, scan, err := readReferenced(ctx, n.Conn, n.Layout, snap)
	if err != nil {
		return err
	}
	n.Snapshot, n.more, n.Facts = snap, more, k3s.DescribeWith(n.Layout, snap, scan)
	// Commands run the program the service runs, by the path its unit
	// or service script names (RKE2 may live under /opt/rke2).
	n.Layout.Binary = scan.Binary
	if !snap.Now.IsZero() {
		n.Facts.ClockSkew = snap.Now.Sub(mid).Round(time.Second)
	}
	return nil
}

// release closes the node's connection and drops what was read from it,
// once nothing more is needed from the node (CheckFleet).
func (n *Node) release() {
	if n.Conn != nil {
		n.Conn.Close()
		n.Conn = nil
	}
	n.Snapshot, n.more = nil, nil
}

// CloseAll closes every open connection.
func CloseAll(nodes []*Node) error {
	var errs []error
	for _, n := range nodes {
		if n.Conn != nil {
			errs = append(errs, n.Conn.Close())
		}
	}
	return errors.Join(errs...)
}

// maxReferenceRounds bounds the chain of files a node's configuration can
// point to (K3S_CONFIG_FILE naming a config file that sets a token-file...).
const maxReferenceRounds = 3

// readReferenced reads the files a node's token configuration points to,
// beyond those in the snapshot: usually none, otherwise one more round
// trip (two when a config file named by K3S_CONFIG_FILE itself names a
// token file). It returns what it read and the scan of the last look; a
// scan that still asks for files after the last round keeps them pending,
// which refuses the node.
func readReferenced(ctx context.Context, h remote.Host, l k3s.Layout, snap *k3s.Snapshot) (*k3s.Snapshot, k3s.TokenScan, error) {
	var read *k3s.Snapshot
	scan := k3s.ScanNode(l, snap, nil)
	for round := 0; round < maxReferenceRounds && len(scan.Pending) > 0; round++ {
		got, err := k3s.ReadMore(ctx, h, scan.Pending)
		if err != nil {
			return nil, k3s.TokenScan{}, err
		}
		for _, p := range scan.Pending {
			if _, ok := got.Files[p]; !ok && !got.Unreadable[p] && !strings.HasSuffix(p, "/") {
				got.Absent[p] = true
			}
		}
		read = read.Merge(got)
		scan = k3s.ScanNode(l, snap, read)
	}
	return read, scan, nil
}
