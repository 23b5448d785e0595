package cmd

import (
	"context"
	"os"

	"github.com/fleetcert/fleetcert/inventory"
	"github.com/fleetcert/fleetcert/orchestrator"
	"github.com/fleetcert/fleetcert/remote"
)

// dialer is how commands reach nodes; tests replace it to serve nodes from
// in-process SSH servers or fakes.
func (a *app) dialer() orchestrator.Dialer {
	if a.dial != nil {
		return a.dial
	}
	home, _ := os.UserHomeDir()
	ssh := orchestrator.SSHDialer(orchestrator.SSHOptions{
		HostKeyPolicy:  a.g.hostKeyPolicy,
		SudoPassword:   os.Getenv("FLEETCERT_SUDO_PASSWORD"),
		ConnectTimeout: a.g.timeout.value(),
		CommandTimeout: a.g.timeout.value(),
		Logger:         a.log,
	})
	return func(ctx context.Context, n inventory.Node) (remote.Host, error) {
		n.SSH = n.SSH.Expand(home)
		return ssh(ctx, n)
	}
}

// connect dials every node of the selected clusters and gathers its facts.
func (a *app) connect(ctx context.Context, clusters []inventory.Cluster) []*orchestrator.Node {
	var nodes []inventory.Node
	for _, c := range clusters {
		nodes = append(nodes, c.Nodes...)
	}
	return orchestrator.Connect(ctx, nodes, a.dialer(), a.g.concurrency)
}
