package orchestrator

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"

	"github.com/fleetcert/fleetcert/k3s"
	"github.com/fleetcert/fleetcert/pki"
	"github.com/fleetcert/fleetcert/remote"
)

// tunneler is a connection that can open TCP streams from the node itself
// (an SSH direct-tcpip channel): probes reach the server's ports on its own
// loopback (k3s.Layout.SupervisorAddr, APIServerAddr)
// with no curl there and no port open to the controller.
type tunneler interface {
	DialContext(ctx context.Context, network, addr string) (net.Conn, error)
}

// errNoTunnel means the node's sshd refused forwarding; callers fall back
// to reading files.
var errNoTunnel = errors.New("ssh forwarding unavailable")

// fetchCACerts fetches /cacerts from the server's own supervisor. /cacerts is
// cached per k3s process, so it shows which bundle the running process
// loaded: after a restart, proof that the restart took effect. TLS is not
// verified here on purpose: the bundle is judged by its hash.
func fetchCACerts(ctx context.Context, n *Node) ([]byte, error) {
	supervisorAddr := n.Layout.SupervisorAddr()
	t, ok := n.Conn.(tunneler)
	if !ok {
		return nil, errNoTunnel
	}
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return t.DialContext(ctx, "tcp", supervisorAddr)
		},
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // judged by hashCA
		DisableKeepAlives: true,
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+supervisorAddr+"/cacerts", nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		if strings.Contains(err.Error(), "prohibited") {
			return nil, fmt.Errorf("%w: %v", errNoTunnel, err)
		}
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /cacerts: %s", resp.Status)
	}
	return body, nil
}

// servingChain is the certificate chain the server's apiserver presents on
// :6443, in a live TLS handshake from the node itself (through the SSH
// connection). Nothing is verified here: the caller judges the chain.
func servingChain(ctx context.Context, n *Node) ([]*x509.Certificate, error) {
	t, ok := n.Conn.(tunneler)
	if !ok {
		return nil, errNoTunnel
	}
	addr := n.Layout.APIServerAddr()
	raw, err := t.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	defer raw.Close()
	conn := tls.Client(raw, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // the chain is what is judged
	if err := conn.HandshakeContext(ctx); err != nil {
		return nil, fmt.Errorf("TLS handshake with %s: %w", addr, err)
	}
	return conn.ConnectionState().PeerCertificates, nil
}

// servedHash is hashCA of what the server serves. Without forwarding it
// falls back to the hash in server/token, which k3s rewrites at every
// start from the CA it loaded: the same proof, one file read away.
func servedHash(ctx context.Context, n *Node) (hash, via string, err error) {
	ca, err := fetchCACerts(ctx, n)
	if err == nil {
		return pki.HashCA(ca), "/cacerts", nil
	}
	if !errors.Is(err, errNoTunnel) {
		return "", "", err
	}
	h, err := serverTokenHash(ctx, n)
	return h, "server/token", err
}

// serverTokenHash reads the CA hash from the server's server/token.
func serverTokenHash(ctx context.Context, n *Node) (string, error) {
	data, err := n.Conn.ReadFile(ctx, n.Layout.ServerToken())
	if err != nil {
		return "", err
	}
	t, err := pki.ParseToken(strings.TrimSpace(string(data)))
	if err != nil {
		return "", fmt.Errorf("%s: %w", n.Layout.ServerToken(), err)
	}
	return t.CAHash, nil
}

// readyz asks the server's apiserver whether it is ready.
func readyz(ctx context.Context, n *Node) (bool, string, error) {
	res, err := n.Conn.Run(ctx, n.Layout.ReadyzCmd(), nil)
	if err != nil {
		return false, "", err
	}
	out := strings.TrimSpace(string(res.Stdout) + string(res.Stderr))
	return res.ExitCode == 0 && strings.TrimSpace(string(res.Stdout)) == "ok", "readyz: " + firstLine(out), nil
}

// serviceReady asks the init system whether the node's service runs and
// reported ready (systemd "active": past Type=notify's READY=1).
func serviceReady(ctx context.Context, n *Node) (bool, string, error) {
	out, err := remote.Output(ctx, n.Conn, n.Layout.ServiceStateCmd())
	state := n.Layout.ServiceState(string(out))
	if err != nil && state == "" {
		return false, "", err
	}
	return n.Layout.ServiceRunning(state), n.Layout.ServiceLabel() + " is " + state, nil
}

// childPID is the k3s PID supervise-daemon recorded on an OpenRC node; 0
// while there is none (k3s stopped or not yet respawned).
func childPID(ctx context.Context, n *Node) (int, error) {
	files, err := k3s.ReadFiles(ctx, n.Conn, []string{n.Layout.OpenRCChildPID()})
	if err != nil {
		return 0, err
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(files[n.Layout.OpenRCChildPID()].Data)))
	return pid, nil
}

// clusterNode is a node as the cluster's apiserver lists it.
type clusterNode struct {
	Name  string
	Ready bool
}

// clusterNodes lists the nodes the cluster knows, asked through a server.
func clusterNodes(ctx context.Context, n *Node) ([]clusterNode, error) {
	out, err := remote.Output(ctx, n.Conn, n.Layout.NodesCmd())
	if err != nil {
		return nil, fmt.Errorf("list cluster nodes on %s: %w", n.Name, err)
	}
	var list struct {
		Items []struct {
			Metadata struct {
				Name string `json:"name"`
			} `json:"metadata"`
			Status struct {
				Conditions []struct {
					Type   string `json:"type"`
					Status string `json:"status"`
				} `json:"conditions"`
			} `json:"status"`
		} `json:"items"`
	}
	if err := json.Unmarshal(out, &list); err != nil {
		return nil, fmt.Errorf("list cluster nodes on %s: %w", n.Name, err)
	}
	nodes := make([]clusterNode, 0, len(list.Items))
	for _, it := range list.Items {
		cn := clusterNode{Name: it.Metadata.Name}
		for _, c := range it.Status.Conditions {
			if c.Type == "Ready" && c.Status == "True" {
				cn.Ready = true
			}
		}
		nodes = append(nodes, cn)
	}
	return nodes, nil
}

// NodeName is the name a node registered under: from its kubelet client
// certificate (k3s issues it for --node-name, K3S_NODE_NAME or config's
// node-name), else its hostname, k3s's default.
func (n *Node) NodeName() string {
	switch {
	case n.Facts.NodeName != "":
		return n.Facts.NodeName
	case n.Facts.Hostname != "":
		return n.Facts.Hostname
	}
	return n.Name
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}
