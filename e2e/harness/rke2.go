package harness

import (
	"fmt"
	"path"
	"strings"

	"github.com/fleetcert/fleetcert/internal/installsh"
)

// RKE2 nodes (NodeSpec.Product "rke2"), installed as RKE2's tarball
// install.sh leaves them (docs/k3s-behaviour.md#rke2): the binary
// /usr/local/bin/rke2 (the emulator, which behaves as rke2 by that name),
// units rke2-server/rke2-agent in /usr/local/lib/systemd/system with their
// .env file beside them, config in /etc/rancher/rke2/config.yaml, kubectl
// at /var/lib/rancher/rke2/bin/kubectl, agents joining the supervisor on
// :9345. The harness then enables and starts the unit, as the RKE2 docs
// tell operators to.

// ProductRKE2 is NodeSpec.Product for an RKE2 node ("" is k3s).
const ProductRKE2 = "rke2"

const (
	rke2UnitDir      = "/usr/local/lib/systemd/system"
	rke2Bin          = "/usr/local/bin/rke2"
	rke2DataDir      = "/var/lib/rancher/rke2"
	rke2ConfigFile   = "/etc/rancher/rke2/config.yaml"
	rke2TokenDropIn  = rke2ConfigFile + ".d/50-token.yaml"
	rke2Kubectl      = rke2DataDir + "/bin/kubectl"
	rke2Kubeconfig   = "/etc/rancher/rke2/rke2.yaml"
	rke2Supervisor   = 9345
	rke2ServerSvc    = "rke2-server"
	rke2AgentSvc     = "rke2-agent"
	rke2TokenFile    = "/etc/rancher/rke2/token"
	rke2InstallShell = "if [ -e /usr/local/bin/k3s ]; then mv /usr/local/bin/k3s " + rke2Bin + "; fi; " +
		"mkdir -p " + rke2DataDir + "/bin && ln -sf " + rke2Bin + " " + rke2Kubectl + "; "
)

func isRKE2(product string) bool { return product == ProductRKE2 }

// clusterProduct is the product of the cluster's nodes; validateProducts
// made sure they agree.
func (c *Cluster) product() string { return c.Servers[0].spec.Product }

// Product is "" (k3s) or ProductRKE2.
func (c *Cluster) Product() string { return c.product() }

// validateProducts checks one product per cluster and fills RKE2 defaults
// (data dir; tokens in config.yaml) where the spec left them empty.
func validateProducts(c *ClusterSpec) error {
	p := c.Servers[0].Product
	for _, list := range [][]NodeSpec{c.Servers, c.Agents} {
		for i := range list {
			n := &list[i]
			if n.Product != p {
				return fmt.Errorf("cluster %s: node %s is %q, the cluster %q: one product per cluster", c.Name, n.Name, n.Product, p)
			}
			switch n.Product {
			case "":
			case ProductRKE2:
				if n.DataDir == "" {
					n.DataDir = rke2DataDir
				}
				if len(n.TokenIn) == 0 {
					n.TokenIn = []TokenPlace{InConfig}
				}
				for _, tp := range n.TokenIn {
					if !rke2Places[tp] {
						return fmt.Errorf("node %s: token place %s is not modelled for RKE2", n.Name, tp)
					}
				}
			default:
				return fmt.Errorf("node %s: unknown product %q", n.Name, n.Product)
			}
		}
	}
	return nil
}

var rke2Places = map[TokenPlace]bool{InConfig: true, InConfigDropIn: true, InEnvFile: true, InDistroEnvFile: true,
	InExecStart: true, InExecStartEquals: true, InTokenFileConfig: true}

func defaultUnit(product string, role Role) string {
	if isRKE2(product) {
		return map[Role]string{Server: rke2ServerSvc, Agent: rke2AgentSvc}[role]
	}
	return map[Role]string{Server: defaultServerSvc, Agent: defaultAgentSvc}[role]
}

func defaultDataDirOf(product string) string {
	if isRKE2(product) {
		return rke2DataDir
	}
	return defaultDataDir
}

// rke2Unit is rke2-server.service / rke2-agent.service as the tarball
// ships them (the facts in docs/k3s-behaviour.md#rke2).
func rke2Unit(role Role, args []string) string {
	other := rke2AgentSvc
	if role == Agent {
		other = rke2ServerSvc
	}
	var b strings.Builder
	fmt.Fprintf(&b, "[Unit]\nDescription=Rancher Kubernetes Engine v2 (%s)\nDocumentation=https://github.com/rancher/rke2#readme\n", role)
	b.WriteString("Wants=network-online.target\nAfter=network-online.target\n\n[Install]\nWantedBy=multi-user.target\n\n[Service]\nType=notify\n")
	b.WriteString("EnvironmentFile=-/etc/default/%N\nEnvironmentFile=-/etc/sysconfig/%N\nEnvironmentFile=-" + rke2UnitDir + "/%N.env\n")
	b.WriteString("KillMode=process\nDelegate=yes\nLimitNOFILE=1048576\nLimitNPROC=infinity\nLimitCORE=infinity\nTasksMax=infinity\n")
	b.WriteString("TimeoutStartSec=0\nRestart=always\nRestartSec=5s\n")
	fmt.Fprintf(&b, "ExecCondition=/bin/sh -c 'if systemctl is-active --quiet %s.service; then echo \"Error: %s is running!\"; exit 1; fi'\n", other, other)
	b.WriteString("ExecStartPre=-/sbin/modprobe br_netfilter\nExecStartPre=-/sbin/modprobe overlay\n")
	b.WriteString("ExecStart=" + rke2Bin + " " + string(role))
	for _, a := range args {
		b.WriteString(" " + a)
	}
	b.WriteString("\n")
	return b.String()
}

// rke2Install is installFor for an RKE2 node.
func rke2Install(n *Node, c *Cluster, token string) []file {
	var args, config, dropIn []string
	env := map[string]string{"HOME": "/root"}
	var distro map[string]string
	var extra []file
	supervisor := fmt.Sprintf("https://%s:%d", c.Servers[0].Name, rke2Supervisor)
	if n != c.Servers[0] {
		config = append(config, "server: "+yamlString(supervisor))
	}
	if n.DataDir != rke2DataDir {
		config = append(config, "data-dir: "+yamlString(n.DataDir))
	}
	if token != "" {
		for _, p := range n.spec.TokenIn {
			switch p {
			case InConfig:
				config = append(config, "token: "+yamlString(token))
			case InConfigDropIn:
				dropIn = append(dropIn, "token: "+yamlString(token))
			case InEnvFile:
				env["RKE2_TOKEN"] = token
			case InDistroEnvFile:
				distro = map[string]string{"RKE2_TOKEN": token}
			case InExecStart:
				args = append(args, "--token", token)
			case InExecStartEquals:
				args = append(args, "--token="+token)
			case InTokenFileConfig:
				config = append(config, "token-file: "+yamlString(rke2TokenFile))
				extra = append(extra, file{rke2TokenFile, 0o600, []byte(token + "\n")})
			}
		}
	}
	args = append(args, n.spec.ExtraArgs...)
	unit := n.Unit
	fs := []file{
		{path.Join(rke2UnitDir, unit+".service"), 0o644, []byte(rke2Unit(n.Role, args))},
		{path.Join(rke2UnitDir, unit+".env"), 0o600, []byte(installsh.EnvFile(env))},
	}
	if distro != nil {
		fs = append(fs, file{path.Join("/etc/default", unit), 0o600, []byte(installsh.EnvFile(distro))})
	}
	if len(config) > 0 {
		fs = append(fs, file{rke2ConfigFile, 0o600, []byte(strings.Join(config, "\n") + "\n")})
	}
	if len(dropIn) > 0 {
		fs = append(fs, file{rke2TokenDropIn, 0o600, []byte(strings.Join(dropIn, "\n") + "\n")})
	}
	return append(fs, extra...)
}

// kubectlCmd is how the harness asks a server's API: k3s's kubectl, or
// RKE2's with the kubeconfig it must be given.
func kubectlCmd(n *Node) []string {
	if isRKE2(n.spec.Product) {
		return []string{rke2Kubectl, "--kubeconfig", rke2Kubeconfig}
	}
	return []string{"k3s", "kubectl"}
}

// rke2TokenPlace is Node.TokenFile for an RKE2 node.
func rke2TokenPlace(n *Node, p TokenPlace) string {
	switch p {
	case InConfig:
		return rke2ConfigFile
	case InConfigDropIn:
		return rke2TokenDropIn
	case InEnvFile:
		return path.Join(rke2UnitDir, n.Unit+".env")
	case InDistroEnvFile:
		return "/etc/default/" + n.Unit
	case InExecStart, InExecStartEquals:
		return path.Join(rke2UnitDir, n.Unit+".service")
	case InTokenFileConfig:
		return rke2TokenFile
	}
	return ""
}

// UnitFile is where the node's unit file is installed.
func (n *Node) UnitFile() string {
	if isRKE2(n.spec.Product) {
		return path.Join(rke2UnitDir, n.Unit+".service")
	}
	return path.Join(systemdDir, n.Unit+".service")
}

// Product is the node's product: "" (k3s) or ProductRKE2.
func (n *Node) Product() string { return n.spec.Product }
