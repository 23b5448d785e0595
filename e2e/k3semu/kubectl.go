package main

import (
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// ---- server side: a tiny slice of the Kubernetes API ----

type nodeList struct {
	APIVersion string     `json:"apiVersion"`
	Kind       string     `json:"kind"`
	Items      []nodeJSON `json:"items"`
}

type nodeJSON struct {
	Metadata struct {
		Name              string            `json:"name"`
		CreationTimestamp time.Time         `json:"creationTimestamp"`
		Labels            map[string]string `json:"labels,omitempty"`
	} `json:"metadata"`
	Status struct {
		Conditions []nodeCondition `json:"conditions"`
		NodeInfo   struct {
			KubeletVersion string `json:"kubeletVersion"`
		} `json:"nodeInfo"`
	} `json:"status"`
}

type nodeCondition struct {
	Type              string    `json:"type"`
	Status            string    `json:"status"`
	LastHeartbeatTime time.Time `json:"lastHeartbeatTime"`
}

// nodesJSON renders the registry; Ready = heartbeat within window.
func nodesJSON(nodes []nodeRecord, now time.Time, window time.Duration) nodeList {
	list := nodeList{APIVersion: "v1", Kind: "List", Items: []nodeJSON{}}
	for _, n := range nodes {
		var item nodeJSON
		item.Metadata.Name = n.Name
		item.Metadata.CreationTimestamp = n.Created.UTC()
		item.Metadata.Labels = map[string]string{}
		for _, r := range strings.Split(n.Roles, ",") {
			if r != "" && r != "<none>" {
				item.Metadata.Labels["node-role.kubernetes.io/"+r] = "true"
			}
		}
		status := "False"
		if now.Sub(n.LastHeartbeat) <= window {
			status = "True"
		}
		item.Status.Conditions = []nodeCondition{{Type: "Ready", Status: status, LastHeartbeatTime: n.LastHeartbeat.UTC()}}
		item.Status.NodeInfo.KubeletVersion = n.Version
		list.Items = append(list.Items, item)
	}
	return list
}

func (s *server) handleNodes(w http.ResponseWriter, r *http.Request) {
	nodes, err := s.ds.listNodes()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(nodesJSON(nodes, time.Now(), s.env.ReadyWindow))
}

// ---- client side: k3s kubectl ----

var kubectlFlags = []flagDef{
	{Name: "kubeconfig"},
	{Name: "output", Aliases: []string{"o"}},
	{Name: "raw"},
	{Name: "request-timeout"},
}

// kubectlClient builds an HTTPS client from the kubeconfig.
func kubectlClient(e *Env, path string) (*http.Client, string, error) {
	k, err := readKubeconfig(path)
	if err != nil {
		return nil, "", err
	}
	c, u := k.Clusters[0].Cluster, k.Users[0].User
	load := func(data, file string) ([]byte, error) {
		if data != "" {
			return base64.StdEncoding.DecodeString(data)
		}
		return os.ReadFile(file)
	}
	ca, err := load(c.CertificateAuthorityData, c.CertificateAuthority)
	if err != nil {
		return nil, "", err
	}
	crt, err := load(u.ClientCertificateData, u.ClientCertificate)
	if err != nil {
		return nil, "", err
	}
	key, err := load(u.ClientKeyData, u.ClientKey)
	if err != nil {
		return nil, "", err
	}
	pair, err := tls.X509KeyPair(crt, key)
	if err != nil {
		return nil, "", err
	}
	return tlsClient(e.now, &tls.Config{RootCAs: poolFromPEM(ca), Certificates: []tls.Certificate{pair}}), strings.TrimRight(c.Server, "/"), nil
}

func cmdKubectl(e *Env, args []string) error {
	vals, pos, err := parseArgs(kubectlFlags, args)
	if err != nil {
		return err
	}
	path := e.KubeconfigPath
	if e.prod().Name != "k3s" {
		// RKE2 ships plain kubectl: it does not know rke2.yaml, so without
		// --kubeconfig or KUBECONFIG it reads ~/.kube/config.
		path = filepath.Join(e.Getenv("HOME"), ".kube", "config")
	}
	if v := e.Getenv("KUBECONFIG"); v != "" {
		path = v
	}
	if v := vals["kubeconfig"]; v != "" {
		path = v
	}
	if len(pos) == 0 || pos[0] != "get" {
		return errors.New("k3s emulator: only `kubectl get nodes` and `kubectl get --raw PATH` are supported")
	}
	client, base, err := kubectlClient(e, path)
	if err != nil {
		return err
	}
	get := func(p string) ([]byte, error) {
		resp, err := client.Get(base + p)
		if err != nil {
			// kubectl names a certificate it cannot verify (a server still
			// presenting a cert from a replaced CA); anything else reads as
			// a refused connection here.
			var verr *tls.CertificateVerificationError
			if errors.As(err, &verr) {
				return nil, fmt.Errorf("Unable to connect to the server: %v", verr)
			}
			host := strings.TrimPrefix(base, "https://")
			return nil, fmt.Errorf("The connection to the server %s was refused - did you specify the right host or port?", host)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		switch resp.StatusCode {
		case http.StatusOK:
		case http.StatusUnauthorized:
			// What kubectl says when the apiserver rejects its client
			// certificate (expired, or from another CA).
			return nil, errors.New("error: You must be logged in to the server (Unauthorized)")
		case http.StatusServiceUnavailable:
			return nil, fmt.Errorf("Error from server (ServiceUnavailable): %s", strings.TrimSpace(string(b)))
		default:
			return nil, fmt.Errorf("Error from server: %s: %s", resp.Status, strings.TrimSpace(string(b)))
		}
		return b, nil
	}
	if raw := vals["raw"]; raw != "" {
		b, err := get(raw)
		if err != nil {
			return err
		}
		fmt.Fprint(e.Stdout, string(b))
		if !strings.HasSuffix(string(b), "\n") {
			fmt.Fprintln(e.Stdout)
		}
		return nil
	}
	if len(pos) < 2 || !(pos[1] == "nodes" || pos[1] == "node" || pos[1] == "no") {
		return errors.New("k3s emulator: only `kubectl get nodes` is supported")
	}
	b, err := get("/api/v1/nodes")
	if err != nil {
		return err
	}
	var list nodeList
	if err := json.Unmarshal(b, &list); err != nil {
		return err
	}
	switch vals["output"] {
	case "json":
		out, _ := json.MarshalIndent(list, "", "    ")
		fmt.Fprintln(e.Stdout, string(out))
		return nil
	case "", "wide":
		if len(list.Items) == 0 {
			fmt.Fprintln(os.Stderr, "No resources found")
			return nil
		}
		printNodeTable(e.Stdout, list, time.Now())
		return nil
	}
	return fmt.Errorf("unable to match a printer suitable for the output format %q", vals["output"])
}

func printNodeTable(w io.Writer, list nodeList, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 8, 3, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSTATUS\tROLES\tAGE\tVERSION")
	for _, n := range list.Items {
		status := "NotReady"
		for _, c := range n.Status.Conditions {
			if c.Type == "Ready" && c.Status == "True" {
				status = "Ready"
			}
		}
		var roles []string
		for l := range n.Metadata.Labels {
			if r, ok := strings.CutPrefix(l, "node-role.kubernetes.io/"); ok {
				roles = append(roles, r)
			}
		}
		role := "<none>"
		if len(roles) > 0 {
			sort.Strings(roles)
			role = strings.Join(roles, ",")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", n.Metadata.Name, status, role, humanAge(now.Sub(n.Metadata.CreationTimestamp)), n.Status.NodeInfo.KubeletVersion)
	}
	tw.Flush()
}

// humanAge formats like kubectl's AGE column (coarsely).
func humanAge(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < 2*time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < 10*time.Minute:
		s := int(d.Seconds()) % 60
		if s == 0 {
			return fmt.Sprintf("%dm", int(d.Minutes()))
		}
		return fmt.Sprintf("%dm%ds", int(d.Minutes()), s)
	case d < 3*time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}
