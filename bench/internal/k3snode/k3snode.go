// Package k3snode makes the files of a k3s server node, as k3s and its
// install.sh leave them, for the benchmarks under bench/: every node of a
// benchmark fleet holds them, on disk (real sshd in a chroot) or in
// memory (in-process servers).
//
// The certificates come from orchestrator/fleettest's material (made once,
// shared: five self-signed CAs, leaf files signed by them), laid out as a
// k3s server with embedded etcd keeps them: server/tls with the CAs, their
// keys and .nochain copies, nine client leafs, the apiserver's serving
// leaf, etcd's CAs and leafs, dynamic-cert.json (the :6443 serving cert),
// and agent/ with the CA copies and the kubelet and proxy leafs. 27
// certificate files in all, as many as a real k3s server holds, plus the
// keys, server/token, config.yaml and install.sh's unit and env file.
package k3snode

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"path"
	"sort"
	"strings"

	"github.com/fleetcert/fleetcert/orchestrator/fleettest"
)

// File is one file of a node: its contents and permission bits.
type File struct {
	Data []byte
	Mode uint32
}

// Template is a k3s server's files; Node personalises them per node.
type Template struct {
	m     *fleettest.Material
	files map[string]File
}

// NewTemplate builds the files of one server node from the shared
// material.
func NewTemplate() (*Template, error) {
	m, err := fleettest.Default()
	if err != nil {
		return nil, err
	}
	fl := fleettest.New(m, fleettest.Spec{Clusters: 1, Servers: 1, EmbeddedEtcd: true})
	n := fl.Node(fl.Nodes()[0].ID())
	files := map[string]File{}
	for p, f := range n.Files() {
		files[p] = File{Data: f.Data, Mode: f.Mode}
	}
	tls := "/var/lib/rancher/k3s/server/tls"
	// k3s keeps an unchained copy of the CAs it hands to clients.
	for _, ca := range []string{"server-ca", "client-ca", "request-header-ca"} {
		files[path.Join(tls, ca+".nochain.crt")] = files[path.Join(tls, ca+".crt")]
	}
	// The supervisor's :6443 serving certificate, as dynamiclistener
	// caches it: a JSON Secret with tls.crt and tls.key.
	serving, ok := m.ServerLeafs["serving-kube-apiserver.crt"]
	if !ok {
		return nil, fmt.Errorf("k3snode: no serving certificate in the material")
	}
	secret, err := json.Marshal(map[string]any{
		"metadata": map[string]any{"name": "k3s-serving", "namespace": "kube-system",
			"annotations": map[string]string{"listener.cattle.io/cn-127.0.0.1": "127.0.0.1", "listener.cattle.io/cn-localhost": "localhost"}},
		"type": "kubernetes.io/tls",
		"data": map[string]string{"tls.crt": base64.StdEncoding.EncodeToString(serving), "tls.key": base64.StdEncoding.EncodeToString(m.LeafKey)},
	})
	if err != nil {
		return nil, err
	}
	files[path.Join(tls, "dynamic-cert.json")] = File{Data: secret, Mode: 0o600}
	return &Template{m: m, files: files}, nil
}

// Node returns the files of the node registered as hostname: the
// template's, with a kubelet client certificate of its own (k3s issues
// it for the node's name).
func (t *Template) Node(hostname string) (map[string]File, error) {
	out := make(map[string]File, len(t.files))
	for p, f := range t.files {
		out[p] = f
	}
	out["/var/lib/rancher/k3s/agent/client-kubelet.crt"] = File{Data: t.m.KubeletCert(hostname), Mode: 0o644}
	return out, nil
}

// CertFiles lists the node's certificate files (*.crt and
// dynamic-cert.json), sorted: what a check reads.
func (t *Template) CertFiles() []string {
	var out []string
	for p := range t.files {
		if strings.HasSuffix(p, ".crt") || path.Base(p) == "dynamic-cert.json" {
			out = append(out, p)
		}
	}
	sort.Strings(out)
	return out
}
