package main

import (
	"net"
	"net/url"
	"path/filepath"
	"strings"
)

// product is what differs between k3s and RKE2 where both run the same
// certificate code (docs/k3s-behaviour.md#rke2): names, places, ports and
// whether the control plane runs as static pods. The emulator picks it by
// the base name it is run as (argv[0]): `rke2` is RKE2, anything else k3s;
// a `kubectl` link under /var/lib/rancher/rke2/bin is RKE2's kubectl.
type product struct {
	Name           string // k3s | rke2: binary, /v1-<name>/ routes, <name>-server service
	EnvPrefix      string // K3S_ | RKE2_
	DataDir        string
	ConfigFile     string
	Kubeconfig     string
	Listen         string // supervisor (k3s: supervisor and apiserver on one port)
	LocalURL       string // how local commands reach the supervisor
	APIListen      string // RKE2: the kube-apiserver static pod; "" = Listen
	APILocalURL    string
	EtcdHealth     string // RKE2: etcd's local health listener (etcd's 2381)
	DefaultVersion string
	// StaticPods: etcd and kube-apiserver run as static pods the
	// supervisor writes manifests for (staticpods.go); embedded etcd always.
	StaticPods bool
}

var k3sProduct = &product{
	Name: "k3s", EnvPrefix: "K3S_",
	DataDir: defaultDataDir, ConfigFile: defaultConfigFile, Kubeconfig: defaultKubeconfig,
	Listen: defaultListen, LocalURL: defaultLocalURL, APILocalURL: defaultLocalURL,
	DefaultVersion: defaultVersion,
}

var rke2Product = &product{
	Name: "rke2", EnvPrefix: "RKE2_",
	DataDir:        "/var/lib/rancher/rke2",
	ConfigFile:     "/etc/rancher/rke2/config.yaml",
	Kubeconfig:     "/etc/rancher/rke2/rke2.yaml",
	Listen:         "0.0.0.0:9345",
	LocalURL:       "https://127.0.0.1:9345",
	APIListen:      "0.0.0.0:6443",
	APILocalURL:    "https://127.0.0.1:6443",
	EtcdHealth:     "127.0.0.1:2381",
	DefaultVersion: "v1.33.5+rke2r1",
	StaticPods:     true,
}

// productFor picks the product by the name the binary runs as.
func productFor(argv0 string) *product {
	switch base := filepath.Base(argv0); {
	case base == "rke2", base == staticPodEtcd, base == staticPodAPIServer:
		return rke2Product
	case base == "kubectl" && strings.Contains(argv0, "/rancher/rke2/"):
		return rke2Product
	}
	return k3sProduct
}

// prod is the product this Env emulates (k3s when unset, as in tests
// written before RKE2).
func (e *Env) prod() *product {
	if e.Product == nil {
		return k3sProduct
	}
	return e.Product
}

// envName is a K3S_* variable under this product's prefix (RKE2_TOKEN...),
// as rke2 builds k3s's CLI with its own program name.
func (e *Env) envName(k3sName string) string {
	if rest, ok := strings.CutPrefix(k3sName, "K3S_"); ok {
		return e.prod().EnvPrefix + rest
	}
	return k3sName
}

// flagDefault maps the k3s defaults in shared flag tables to this
// product's (data dir, the supervisor URL local commands use).
func (e *Env) flagDefault(def string) string {
	switch def {
	case defaultDataDir:
		return e.prod().DataDir
	case defaultLocalURL:
		return e.LocalURL
	}
	return def
}

// routePrefix is the supervisor's route prefix, /v1-k3s or /v1-rke2.
func (e *Env) routePrefix() string { return "/v1-" + e.prod().Name }

// serviceName maps k3s's program-named certificate services (k3s-server,
// k3s-controller) to this product's (rke2-server, rke2-controller).
func (e *Env) serviceName(k3sName string) string {
	if rest, ok := strings.CutPrefix(k3sName, "k3s-"); ok {
		return e.prod().Name + "-" + rest
	}
	return k3sName
}

// k3sServiceNames maps a --service list in this product's names back to
// the emulator's table (k3s names); a k3s-* name is unknown to rke2.
func (e *Env) k3sServiceNames(flag string) string {
	if e.prod().Name == "k3s" || flag == "" {
		return flag
	}
	parts := strings.Split(flag, ",")
	for i, p := range parts {
		p = strings.TrimSpace(p)
		switch {
		case strings.HasPrefix(p, "k3s-"):
			parts[i] = "unknown-" + p
		case strings.HasPrefix(p, e.prod().Name+"-"):
			parts[i] = "k3s-" + strings.TrimPrefix(p, e.prod().Name+"-")
		}
	}
	return strings.Join(parts, ",")
}

// apiURL is where a node reaches the API of the server at serverURL: the
// same URL with k3s, the apiserver port on the same host with RKE2.
func (e *Env) apiURL(serverURL string) string {
	u := strings.TrimRight(serverURL, "/")
	if !e.prod().StaticPods {
		return u
	}
	_, port, err := net.SplitHostPort(e.APIListenAddr)
	parsed, perr := url.Parse(u)
	if err != nil || perr != nil {
		return u
	}
	parsed.Host = net.JoinHostPort(parsed.Hostname(), port)
	return parsed.String()
}
