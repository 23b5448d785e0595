package inventory

import (
	"os"
	"path/filepath"
	"testing"

	"go.yaml.in/yaml/v3"
)

// TestExamplesValidate loads every inventory in examples/, so that the
// documentation cannot drift from what the code accepts. Kubernetes
// manifests kept there (top-level apiVersion and kind) are not inventories
// and are skipped.
func TestExamplesValidate(t *testing.T) {
	var files []string
	for _, pattern := range []string{"../examples/*.yaml", "../examples/*.yml"} {
		m, err := filepath.Glob(pattern)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, m...)
	}
	if len(files) == 0 {
		t.Fatal("no examples found")
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			if isKubernetesManifest(data) {
				t.Skip("a Kubernetes manifest, not an inventory")
			}
			inv, err := Parse(file, data)
			if err != nil {
				t.Fatalf("invalid example:\n%v", err)
			}
			if len(inv.Clusters) == 0 {
				t.Fatal("no clusters")
			}
		})
	}
}

func isKubernetesManifest(data []byte) bool {
	var head struct {
		APIVersion string `yaml:"apiVersion"`
		Kind       string `yaml:"kind"`
	}
	return yaml.Unmarshal(data, &head) == nil && head.APIVersion != "" && head.Kind != ""
}
