package harness

import "strings"

// DemoClusters is the fleet of `make demo` and of the smoke suite:
//
//   - alpha: 3 servers (embedded etcd) + 2 agents, every node holding a
//     secure token, each in another place an install can leave it: the
//     first server in config.yaml (installed short, then reinstalled with the
//     secure token as an operator would after the first start), the others
//     in ExecStart (--token X), a config.yaml.d drop-in, the unit's .env
//     file and a --token-file.
//   - beta: 1 server (no embedded etcd) + 1 agent sharing a short token,
//     in the .env file and as ExecStart -t; the agent was installed before
//     2022, so its unit is Type=exec (current install.sh writes notify).
//   - gamma: 1 server + 1 agent on OpenRC (as on Alpine: openrc-init,
//     supervise-daemon, install.sh's /etc/init.d script), both with secure
//     tokens: the server's in command_args (installed short, then
//     reinstalled with the secure token), the agent's in its
//     /etc/rancher/k3s/k3s-agent.env; the agent's sh, stat, base64 and cp
//     are busybox applets, as on Alpine (DemoGamma).
//   - delta: RKE2 (DemoDelta).
func DemoClusters() []ClusterSpec {
	return []ClusterSpec{{
		Name: "alpha",
		Servers: []NodeSpec{
			{Token: SecureToken, TokenIn: []TokenPlace{InConfig}},
			{TokenIn: []TokenPlace{InExecStart}},
			{TokenIn: []TokenPlace{InConfigDropIn}},
		},
		Agents: []NodeSpec{
			{TokenIn: []TokenPlace{InEnvFile}},
			{TokenIn: []TokenPlace{InTokenFileArg}},
		},
	}, {
		Name:    "beta",
		Servers: []NodeSpec{{TokenIn: []TokenPlace{InEnvFile}}},
		Agents:  []NodeSpec{{Token: ShortToken, TokenIn: []TokenPlace{InExecStartShort}, LegacyExecType: true}},
	}, DemoGamma(), DemoDelta()}
}

// DemoGamma is the demo's OpenRC cluster, as on Alpine: one server and one
// agent, secure tokens, the server's in command_args, the agent's in its
// .env file, the agent's sh, stat, base64 and cp busybox applets.
func DemoGamma() ClusterSpec {
	return ClusterSpec{
		Name:    "gamma",
		Servers: []NodeSpec{{Init: InitOpenRC, Token: SecureToken, TokenIn: []TokenPlace{InCommandArgs}}},
		Agents:  []NodeSpec{{Init: InitOpenRC, Busybox: true, TokenIn: []TokenPlace{InEnvFile}}},
	}
}

// DemoDelta is the demo's RKE2 cluster: one server and one agent, secure
// tokens in /etc/rancher/rke2/config.yaml (where RKE2 operators keep them).
func DemoDelta() ClusterSpec {
	return ClusterSpec{
		Name:    "delta",
		Servers: []NodeSpec{{Product: ProductRKE2, Token: SecureToken, TokenIn: []TokenPlace{InConfig}}},
		Agents:  []NodeSpec{{Product: ProductRKE2, Token: SecureToken, TokenIn: []TokenPlace{InConfig}}},
	}
}

// TokenPlaces returns where the node's token was installed.
func (n *Node) TokenPlaces() []TokenPlace { return append([]TokenPlace(nil), n.spec.TokenIn...) }

// ExpectUnready tells whether the spec said the node must not become Ready.
func (n *Node) ExpectUnready() bool { return n.spec.ExpectUnready }

// Version is the k3s version the node's emulator reports, "" for the
// emulator's default.
func (n *Node) Version() string { return n.spec.Version }

// TokenFile is the file on the node that holds the token when installed at
// place p.
func (n *Node) TokenFile(p TokenPlace) string {
	if isRKE2(n.spec.Product) {
		return rke2TokenPlace(n, p)
	}
	switch p {
	case InEnvFile:
		if n.Init == InitOpenRC {
			return openRCEnvFile(n.Unit)
		}
		return systemdDir + "/" + n.Unit + ".service.env"
	case InCommandArgs:
		return initDir + "/" + n.Unit
	case InEtcEnvironment:
		return etcEnvironment
	case InDistroEnvFile:
		return "/etc/default/" + n.Unit
	case InExecStart, InExecStartEquals, InExecStartShort:
		return systemdDir + "/" + n.Unit + ".service"
	case InConfig:
		return configFile
	case InConfigDropIn:
		return tokenDropIn
	case InTokenFileArg, InTokenFileConfig, InTokenFileNBSP:
		return tokenFilePath
	case InRuntimeDropIn:
		return "/run/systemd/system/" + n.Unit + ".service.d/50-token.conf"
	case InPrefixDropIn:
		prefix, _, _ := strings.Cut(n.Unit, "-")
		return systemdDir + "/" + prefix + "-.service.d/50-token.conf"
	case InConfigByEnv:
		return configByEnv
	case InConfigByFlag:
		return configByFlag
	case InConfigDotDropIn:
		return dotDropIn
	}
	return ""
}

// UnitType is the Type= of the node's unit: notify, as current install.sh
// writes it, or exec for an agent installed before 2022; "" on OpenRC.
func (n *Node) UnitType() string {
	if isRKE2(n.spec.Product) {
		return "notify"
	}
	if n.Init == InitOpenRC {
		return ""
	}
	if n.Role == Agent && n.spec.LegacyExecType {
		return "exec"
	}
	return "notify"
}

// Describe is a one-line account of where and what token a node holds,
// with the secret part redacted.
func (n *Node) Describe() string {
	kind := "no token"
	switch {
	case len(n.Token) > 3 && n.Token[:3] == "K10":
		kind = "secure token"
	case n.Token != "":
		kind = "short token"
	}
	places := ""
	for i, p := range n.spec.TokenIn {
		if i > 0 {
			places += "+"
		}
		places += p.String()
	}
	if n.Init == InitOpenRC {
		places += ", OpenRC"
		if n.spec.Busybox {
			places += " with busybox"
		}
	}
	return kind + " in " + places
}
