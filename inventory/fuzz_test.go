package inventory

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// FuzzParse feeds arbitrary bytes to Parse, which must never panic and must
// return either an inventory or *Errors whose problems all name the file.
// `go test` runs the seeds; `go test -fuzz FuzzParse ./inventory` explores.
func FuzzParse(f *testing.F) {
	seeds := []string{
		"",
		"clusters: []",
		fleet,
		"clusters:\n  - name: c\n    servers: [{host: s, ssh: {port: 70000}}]\n",
		"clusters:\n  - &c {name: c, servers: [{host: s}], <<: *c}\n",
		"x: &a [*a]\nclusters: *a\n",
		"defaults: &d {<<: [*d, *d]}\n",
		"clusters:\n  - name: c\n    servers:\n      - {host: \"[fd00::1]\", primary: true, ssh: {bastion: \"a@[fd00::2]:22,b@j\"}}\n    agents: [{host: a, primary: true}]\n",
		"clusters: [{name: c, labels: {a/b: ~, ring: 1}, servers: [{host: s, port: 1}]}]",
		"---\n---\n",
		"{",
		"\t",
		aliasBomb,
	}
	examples, _ := filepath.Glob("../examples/*.yaml")
	for _, p := range examples {
		if data, err := os.ReadFile(p); err == nil {
			seeds = append(seeds, string(data))
		}
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		inv, err := Parse("f.yaml", data)
		if (inv == nil) == (err == nil) {
			t.Fatalf("Parse returned inventory %v and error %v; want exactly one", inv != nil, err)
		}
		if err != nil {
			var errs *Errors
			if !errors.As(err, &errs) || len(errs.Problems) == 0 {
				t.Fatalf("error %T %v is not a non-empty *Errors", err, err)
			}
			for _, p := range errs.Problems {
				if p.File != "f.yaml" || p.Msg == "" {
					t.Fatalf("problem %+v lacks file or message", p)
				}
			}
			return
		}
		for _, c := range inv.Clusters {
			if len(c.servers()) == 0 || !c.Primary().isServer() {
				t.Fatalf("cluster %q resolved without a primary server", c.Name)
			}
		}
	})
}
