package harness

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// hostKeyFiles are the public host keys ssh-hostkeys.service makes at first
// boot (e2e/image/build/nodefs).
var hostKeyFiles = []string{
	"/etc/ssh/ssh_host_ed25519_key.pub",
	"/etc/ssh/ssh_host_ecdsa_key.pub",
}

// writeInventory writes known_hosts (every host key of every node, read
// through docker, so that fleetcert's strict host key checking has a real
// trust anchor) and the fleetcert inventory (README.md#inventory).
func (f *Fleet) writeInventory(ctx context.Context) error {
	var kh strings.Builder
	for _, n := range f.Nodes() {
		for _, p := range hostKeyFiles {
			data, err := f.ReadFile(ctx, n.Name, p)
			if err != nil {
				return fmt.Errorf("host key of %s: %w", n.Name, err)
			}
			fields := strings.Fields(string(data))
			if len(fields) < 2 {
				return fmt.Errorf("host key of %s: %s is malformed", n.Name, p)
			}
			fmt.Fprintf(&kh, "[127.0.0.1]:%d %s %s\n", n.Port, fields[0], fields[1])
		}
	}
	f.kh = filepath.Join(f.Dir, "known_hosts")
	if err := os.WriteFile(f.kh, []byte(kh.String()), 0o644); err != nil {
		return err
	}
	f.inv = filepath.Join(f.Dir, "hosts.yaml")
	return os.WriteFile(f.inv, []byte(f.inventoryYAML()), 0o644)
}

// inventoryYAML renders the inventory. Values are written as JSON strings,
// which YAML reads as the same strings, so no YAML library is needed and no
// value can be misread (a path with ':' or a name like "on").
func (f *Fleet) inventoryYAML() string {
	q := strconv.Quote
	var b strings.Builder
	fmt.Fprintf(&b, "# fleetcert inventory of the e2e fleet %q, written by e2e/harness.\n", f.Name)
	b.WriteString("# Every node is a container; sshd is published on 127.0.0.1.\n")
	b.WriteString("defaults:\n")
	fmt.Fprintf(&b, "  ssh:\n    user: %s\n    identityFile: %s\n    knownHostsFile: %s\n", q(sshUser), q(f.keyPath), q(f.kh))
	b.WriteString("  sudo: true\n")
	b.WriteString("clusters:\n")
	for _, c := range f.Clusters {
		fmt.Fprintf(&b, "  - name: %s\n", q(c.Name))
		if c.product() != "" {
			fmt.Fprintf(&b, "    product: %s\n", q(c.product()))
		}
		for _, group := range []struct {
			key   string
			nodes []*Node
		}{{"servers", c.Servers}, {"agents", c.Agents}} {
			if len(group.nodes) == 0 {
				continue
			}
			fmt.Fprintf(&b, "    %s:\n", group.key)
			for _, n := range group.nodes {
				fmt.Fprintf(&b, "      - name: %s\n        host: %s\n        ssh:\n          port: %d\n", q(n.Name), q("127.0.0.1"), n.Port)
				if n.DataDir != defaultDataDirOf(n.spec.Product) {
					fmt.Fprintf(&b, "        dataDir: %s\n", q(n.DataDir))
				}
				if n.Unit != defaultUnit(n.spec.Product, n.Role) {
					fmt.Fprintf(&b, "        service: %s\n", q(n.Unit))
				}
			}
		}
	}
	return b.String()
}
