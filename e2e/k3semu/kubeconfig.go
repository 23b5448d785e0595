package main

import (
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"

	"go.yaml.in/yaml/v3"
)

// kubeconfig is the small subset of a kubeconfig file the emulator uses.
type kubeconfig struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Clusters   []struct {
		Name    string `yaml:"name"`
		Cluster struct {
			Server                   string `yaml:"server"`
			CertificateAuthority     string `yaml:"certificate-authority,omitempty"`
			CertificateAuthorityData string `yaml:"certificate-authority-data,omitempty"`
		} `yaml:"cluster"`
	} `yaml:"clusters"`
	Users []struct {
		Name string `yaml:"name"`
		User struct {
			ClientCertificate     string `yaml:"client-certificate,omitempty"`
			ClientCertificateData string `yaml:"client-certificate-data,omitempty"`
			ClientKey             string `yaml:"client-key,omitempty"`
			ClientKeyData         string `yaml:"client-key-data,omitempty"`
		} `yaml:"user"`
	} `yaml:"users"`
}

const kubeconfigEmbedded = `apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: %s
    server: %s
  name: default
contexts:
- context:
    cluster: default
    user: default
  name: default
current-context: default
kind: Config
preferences: {}
users:
- name: default
  user:
    client-certificate-data: %s
    client-key-data: %s
`

const kubeconfigFiles = `apiVersion: v1
clusters:
- cluster:
    server: %s
    certificate-authority: %s
  name: local
contexts:
- context:
    cluster: local
    namespace: default
    user: user
  name: Default
current-context: Default
kind: Config
preferences: {}
users:
- name: user
  user:
    client-certificate: %s
    client-key: %s
`

// writeAdminKubeconfig writes /etc/rancher/k3s/k3s.yaml (every start).
func writeAdminKubeconfig(path, serverURL, tlsDir string) error {
	ca, err := os.ReadFile(filepath.Join(tlsDir, "server-ca.crt"))
	if err != nil {
		return err
	}
	crt, err := os.ReadFile(filepath.Join(tlsDir, "client-admin.crt"))
	if err != nil {
		return err
	}
	key, err := os.ReadFile(filepath.Join(tlsDir, "client-admin.key"))
	if err != nil {
		return err
	}
	b64 := base64.StdEncoding.EncodeToString
	content := fmt.Sprintf(kubeconfigEmbedded, b64(ca), serverURL, b64(crt), b64(key))
	return writeFileAtomic(path, []byte(content), 0o600)
}

// writeCredKubeconfigs writes the file-referencing kubeconfigs in server/cred.
func writeCredKubeconfigs(serverDir, serverURL string) error {
	tlsDir := filepath.Join(serverDir, "tls")
	for name, leaf := range map[string]string{
		"admin":            "client-admin",
		"supervisor":       "client-supervisor",
		"controller":       "client-controller",
		"scheduler":        "client-scheduler",
		"api-server":       "client-kube-apiserver",
		"cloud-controller": "client-k3s-cloud-controller",
	} {
		crt := filepath.Join(tlsDir, leaf+".crt")
		if !fileExists(crt) {
			continue
		}
		content := fmt.Sprintf(kubeconfigFiles, serverURL, filepath.Join(tlsDir, "server-ca.crt"), crt, filepath.Join(tlsDir, leaf+".key"))
		if _, err := writeIfChanged(filepath.Join(serverDir, "cred", name+".kubeconfig"), []byte(content), 0o600); err != nil {
			return err
		}
	}
	return nil
}

func readKubeconfig(path string) (*kubeconfig, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var k kubeconfig
	if err := yaml.Unmarshal(b, &k); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(k.Clusters) == 0 || len(k.Users) == 0 {
		return nil, fmt.Errorf("%s: no cluster or user", path)
	}
	return &k, nil
}
