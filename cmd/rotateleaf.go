package cmd

import (
	"github.com/spf13/cobra"

	"github.com/fleetcert/fleetcert/k3s"
	"github.com/fleetcert/fleetcert/orchestrator"
)

type rotateFlags struct {
	rolloutFlags
	services     []string
	onlyExpiring duration
	keepBackups  int
}

func (a *app) newRotateCmd() *cobra.Command {
	var f rotateFlags
	c := &cobra.Command{
		Use:   "rotate",
		Short: "Renew leaf certificates node by node: stop k3s, k3s certificate rotate, start, gate",
		Long: `rotate renews k3s leaf certificates (365 days) on every selected node:
systemctl stop, k3s certificate rotate [--service ...], start, then health
gates (the renewed certificates written again, readyz on servers, node
Ready). Servers one at a time, then agents in batches. CAs and the
service-account key are never touched; k3s keeps a copy of the old files in
tls-<unix> (reported; --keep-backups N prunes older ones).

--only-expiring-within DURATION touches only nodes holding a leaf
certificate that expires within it: the flag for scheduled jobs.
Unreachable nodes are skipped and reported (exit 1); the others are renewed.`,
		Example: `  fleetcert rotate -i hosts.yaml --only-expiring-within 60d --yes
  fleetcert rotate -i hosts.yaml --service kubelet,kube-proxy --cluster edge-1`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error { return a.runRotate(c, f) },
	}
	fs := c.Flags()
	f.register(fs)
	fs.StringSliceVar(&f.services, "service", nil, "only these services (comma list): "+
		"server: admin, api-server, auth-proxy, cloud-controller, controller-manager, etcd, scheduler, supervisor, k3s-server; "+
		"agent: kube-proxy, kubelet, k3s-controller")
	fs.Var(&f.onlyExpiring, "only-expiring-within", "only nodes holding a leaf certificate that expires within this (e.g. 60d)")
	fs.IntVar(&f.keepBackups, "keep-backups", 0, "keep only the newest N tls-<unix> backups k3s makes (0: keep all)")
	return c
}

func (a *app) runRotate(c *cobra.Command, f rotateFlags) error {
	services, err := k3s.ParseServices(f.services)
	if err != nil {
		return usageErrorf("--service: %v", err)
	}
	if f.keepBackups < 0 {
		return usageErrorf("--keep-backups must be 0 (keep all) or more")
	}
	opts, err := a.rolloutOptions(f.rolloutFlags)
	if err != nil {
		return err
	}
	op := &orchestrator.RotateLeaf{Services: services, OnlyExpiringWithin: f.onlyExpiring.value(), KeepBackups: f.keepBackups}
	return a.rollout(c, op, opts, &f.rolloutFlags, "", "")
}
