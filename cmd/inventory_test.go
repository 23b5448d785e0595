package cmd

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// runInventoryCmd runs fleetcert with args and stdin in an environment
// without config file or FLEETCERT_* variables, returning exit code, stdout
// and stderr.
func runInventoryCmd(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	t.Setenv("HOME", t.TempDir())
	t.Setenv("FLEETCERT_CONFIG", "")
	t.Setenv("FLEETCERT_INVENTORY", "")
	var out, errOut bytes.Buffer
	code := run(args, strings.NewReader(stdin), &out, &errOut)
	return code, out.String(), errOut.String()
}

// writeInventory writes src to hosts.yaml in a fresh directory.
func writeInventory(t *testing.T, src string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "hosts.yaml")
	if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

const testFleet = `defaults:
  ssh: {user: root}
clusters:
  - name: berlin
    labels: {ring: canary, region: eu}
    servers:
      - {host: 10.1.0.10, name: b-s1}
      - {host: 10.1.0.11, name: b-s2, primary: true, ssh: {port: 2222}}
    agents:
      - {host: 10.1.0.20, name: b-a1, service: k3s-gpu}
  - name: ohio
    labels: {ring: main, region: us}
    ssh: {user: ""}
    dataDir: /srv/k3s
    servers:
      - {host: ohio-s1.example.com}
`

func TestInventoryValidate(t *testing.T) {
	path := writeInventory(t, testFleet)
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantOut  string
		wantErr  string
	}{
		{"valid", []string{"inventory", "validate", "-i", path}, 0,
			path + ": valid: 2 clusters, 3 servers, 1 agent\n", ""},
		{"valid with selection", []string{"inventory", "validate", "-i", path, "--selector", "ring=main"}, 0,
			path + ": valid: 2 clusters (1 selected), 3 servers, 1 agent\n", ""},
		{"unknown cluster", []string{"inventory", "validate", "-i", path, "--cluster", "berln"}, 2,
			"", `Error: unknown cluster "berln" (did you mean "berlin"?); the inventory has berlin, ohio` + "\n"},
		{"no -i", []string{"inventory", "validate"}, 2,
			"", "Error: no inventory: pass -i/--inventory FILE (- for standard input) or set FLEETCERT_INVENTORY\n"},
		{"missing file", []string{"inventory", "validate", "-i", path + ".nope"}, 2,
			"", "Error: inventory: open " + path + ".nope: no such file or directory\n"},
		{"no subcommand", []string{"inventory"}, 2,
			"", "Error: inventory needs a subcommand: validate or list\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errOut := runInventoryCmd(t, "", tt.args...)
			if code != tt.wantCode || out != tt.wantOut || errOut != tt.wantErr {
				t.Errorf("exit %d\nstdout %q\nstderr %q\nwant exit %d\nstdout %q\nstderr %q", code, out, errOut, tt.wantCode, tt.wantOut, tt.wantErr)
			}
		})
	}
}

func TestInventoryValidateListsEveryProblem(t *testing.T) {
	path := writeInventory(t, `clusters:
  - name: a
    servers:
      - {host: "a b", ssh: {port: 70000}}
    agents:
      - {host: c, primary: true}
`)
	code, out, errOut := runInventoryCmd(t, "", "inventory", "validate", "-i", path)
	want := "Error: invalid inventory, 3 problems:\n" +
		path + `:4: clusters[0].servers[0].host: "a b" is not a hostname, IPv4 or IPv6 address` + "\n" +
		path + ":4: clusters[0].servers[0].ssh.port: 70000 is out of range 1-65535\n" +
		path + ":6: clusters[0].agents[0].primary: only a server can be primary; this is an agent\n"
	if code != ExitUsage || out != "" || errOut != want {
		t.Errorf("exit %d, stdout %q, stderr:\n%s\nwant:\n%s", code, out, errOut, want)
	}
}

func TestInventoryFromStdinAndEnvironment(t *testing.T) {
	code, out, errOut := runInventoryCmd(t, testFleet, "inventory", "validate", "-i", "-")
	if code != 0 || out != "<stdin>: valid: 2 clusters, 3 servers, 1 agent\n" {
		t.Errorf("stdin: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	code, _, errOut = runInventoryCmd(t, "clusters: []\n", "inventory", "validate", "-i", "-")
	if code != ExitUsage || !strings.Contains(errOut, "\n<stdin>:1: clusters: no clusters") {
		t.Errorf("bad stdin: exit %d, stderr %q", code, errOut)
	}

	path := writeInventory(t, testFleet)
	t.Setenv("HOME", t.TempDir())
	t.Setenv("FLEETCERT_INVENTORY", path)
	var buf, errBuf bytes.Buffer
	if code := run([]string{"inventory", "validate"}, nil, &buf, &errBuf); code != 0 || !strings.HasPrefix(buf.String(), path+": valid") {
		t.Errorf("FLEETCERT_INVENTORY: exit %d, stdout %q, stderr %q", code, buf.String(), errBuf.String())
	}
}

func TestInventoryListTable(t *testing.T) {
	path := writeInventory(t, testFleet)
	code, out, errOut := runInventoryCmd(t, "", "inventory", "list", "-i", path)
	want := `CLUSTER  NODE                 ROLE    HOST                 PORT  USER  PRIMARY  DATA-DIR              SERVICE  LABELS
berlin   b-s1                 server  10.1.0.10            -     root  -        /var/lib/rancher/k3s  k3s      region=eu,ring=canary
berlin   b-s2                 server  10.1.0.11            2222  root  yes      /var/lib/rancher/k3s  k3s      region=eu,ring=canary
berlin   b-a1                 agent   10.1.0.20            -     root  -        /var/lib/rancher/k3s  k3s-gpu  region=eu,ring=canary
ohio     ohio-s1.example.com  server  ohio-s1.example.com  -     -     yes      /srv/k3s              k3s      region=us,ring=main
`
	if code != 0 || out != want {
		t.Errorf("exit %d, stderr %q, stdout:\n%s\nwant:\n%s", code, errOut, out, want)
	}
}

func TestInventoryListJSON(t *testing.T) {
	path := writeInventory(t, testFleet)
	code, out, errOut := runInventoryCmd(t, "", "inventory", "list", "-i", path, "--cluster", "berlin", "-o", "json")
	if code != 0 {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
	var nodes []map[string]any
	if err := json.Unmarshal(envelope(t, []byte(out), "nodes"), &nodes); err != nil {
		t.Fatalf("stdout is not a JSON array: %v\n%s", err, out)
	}
	if len(nodes) != 3 {
		t.Fatalf("got %d nodes, want 3", len(nodes))
	}
	want := map[string]any{
		"id": "berlin/b-s2", "cluster": "berlin", "name": "b-s2", "host": "10.1.0.11", "role": "server",
		"primary": true, "sudo": false, "dataDir": "/var/lib/rancher/k3s", "configFile": "/etc/rancher/k3s/config.yaml", "product": "k3s",
		"service": "k3s", "line": float64(8),
		"ssh":    map[string]any{"user": "root", "port": float64(2222)},
		"labels": map[string]any{"ring": "canary", "region": "eu"},
	}
	if !reflect.DeepEqual(nodes[1], want) {
		t.Errorf("node 1 =\n%v\nwant\n%v", nodes[1], want)
	}
}

func TestInventoryListSelection(t *testing.T) {
	path := writeInventory(t, testFleet)
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantIn   string // in stdout when 0, in stderr otherwise
	}{
		{"selector", []string{"--selector", "region=us"}, 0, "ohio-s1.example.com"},
		{"negated selector", []string{"--selector", "ring!=main"}, 0, "b-a1"},
		{"no match", []string{"--selector", "region=asia"}, 2, "Error: no cluster matches selector region=asia\n"},
		{"malformed selector", []string{"--selector", "=x"}, 2, `Error: selector "=x": label key ""`},
		{"unknown cluster", []string{"--cluster", "nope"}, 2, `Error: unknown cluster "nope"; the inventory has berlin, ohio`},
		{"bad output", []string{"-o", "yaml"}, 2, `Error: -o/--output must be table or json for inventory list, not "yaml"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errOut := runInventoryCmd(t, "", append([]string{"inventory", "list", "-i", path}, tt.args...)...)
			got := out
			if tt.wantCode != 0 {
				got = errOut
			}
			if code != tt.wantCode || !strings.Contains(got, tt.wantIn) {
				t.Errorf("exit %d, stdout %q, stderr %q; want exit %d with %q", code, out, errOut, tt.wantCode, tt.wantIn)
			}
		})
	}
}
