package cmd

import (
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata (schemas, plan) from the current outputs")

// TestJSONSchemas guards the shape of every JSON output: the set of field
// paths each document has, for a fake fleet that exercises them, must be
// the one in testdata/schema. A field that vanishes or is renamed fails
// here; a new one is added with -update and reviewed in the diff.
func TestJSONSchemas(t *testing.T) {
	fl, inv := fakeFleet(t)
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"inventory-list", []string{"inventory", "list", "-i", inv, "-o", "json"}},
		{"facts", []string{"facts", "-i", inv, "-o", "json"}},
		{"check", []string{"check", "-i", inv, "-o", "json"}},
		{"rotate-ca-dry-run", []string{"rotate-ca", "-i", inv, "-o", "json", "--dry-run"}},
		{"rotate-ca", []string{"rotate-ca", "-i", inv, "-o", "json", "--yes", "--health-timeout", "20s"}},
		{"status", []string{"status", "-i", inv, "-o", "json"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, out, stderr := runFake(fl, false, "", tc.args...)
			var doc any
			if err := json.Unmarshal([]byte(out), &doc); err != nil {
				t.Fatalf("not JSON: %v\n%s\n%s", err, out, stderr)
			}
			if m, ok := doc.(map[string]any); !ok || m["schemaVersion"] != float64(1) {
				t.Errorf("no schemaVersion 1 at the top")
			}
			got := strings.Join(shape(doc), "\n") + "\n"
			file := filepath.Join("testdata", "schema", tc.name+".txt")
			if *update {
				if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(file, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(file)
			if err != nil {
				t.Fatalf("%v (run go test ./cmd -run TestJSONSchemas -update)", err)
			}
			for _, p := range strings.Split(strings.TrimSpace(string(want)), "\n") {
				if !strings.Contains("\n"+got, "\n"+p+"\n") {
					t.Errorf("field %s is gone", p)
				}
			}
			for _, p := range strings.Split(strings.TrimSpace(got), "\n") {
				if !strings.Contains("\n"+string(want), "\n"+p+"\n") {
					t.Errorf("new field %s: add it to %s (-update) and to the README", p, file)
				}
			}
		})
	}
}

// shape lists the field paths of a JSON document: a.b for objects, a[].b
// for arrays of objects.
func shape(v any) []string {
	seen := map[string]bool{}
	var walk func(prefix string, v any)
	walk = func(prefix string, v any) {
		switch x := v.(type) {
		case map[string]any:
			for k, e := range x {
				p := k
				if prefix != "" {
					p = prefix + "." + k
				}
				seen[p] = true
				walk(p, e)
			}
		case []any:
			for _, e := range x {
				walk(prefix+"[]", e)
			}
		}
	}
	walk("", v)
	out := make([]string, 0, len(seen))
	for p := range seen {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}
