package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

var snapshotFlags = []flagDef{
	{Name: "name", Default: "on-demand"},
	{Name: "data-dir", Aliases: []string{"d"}, EnvVar: "K3S_DATA_DIR", Default: defaultDataDir},
	{Name: "node-name", EnvVar: "K3S_NODE_NAME"},
	{Name: "config", Aliases: []string{"c"}, EnvVar: "K3S_CONFIG_FILE"},
	{Name: "token", Aliases: []string{"t"}, EnvVar: "K3S_TOKEN"},
	{Name: "debug", Bool: true},
}

// cmdEtcdSnapshotSave copies the datastore to
// server/db/snapshots/<name>-<node>-<unix> on embedded-etcd servers.
func cmdEtcdSnapshotSave(e *Env, args []string, now time.Time) error {
	vals, err := resolveWithConfig(e, "etcd-snapshot", snapshotFlags, args)
	if err != nil {
		return err
	}
	dataDir := vals["data-dir"]
	if !fileExists(filepath.Join(dataDir, "server", "db", "etcd")) {
		return errors.New("etcd datastore disabled")
	}
	node := vals["node-name"]
	if node == "" {
		node = e.Hostname
	}
	ds := &datastore{dir: e.SharedDir}
	unlock, err := ds.lock()
	if err != nil {
		return err
	}
	snap := map[string]string{}
	entries, err := os.ReadDir(ds.bootstrapDir())
	if err == nil {
		for _, en := range entries {
			if strings.HasPrefix(en.Name(), ".") {
				continue
			}
			b, err := os.ReadFile(filepath.Join(ds.bootstrapDir(), en.Name()))
			if err != nil {
				unlock()
				return err
			}
			snap["/bootstrap/"+en.Name()] = string(b)
		}
	}
	if b, err := os.ReadFile(ds.nodesPath()); err == nil {
		snap["/registry/minions"] = string(b)
	}
	unlock()
	name := fmt.Sprintf("%s-%s-%d", vals["name"], node, now.Unix())
	path := filepath.Join(dataDir, "server", "db", "snapshots", name)
	b, err := json.MarshalIndent(snap, "", "  ")
	if err != nil {
		return err
	}
	e.Log.Infof("Saving etcd snapshot to %s", path)
	if err := writeFileAtomic(path, b, 0o600); err != nil {
		return err
	}
	e.Log.Infof("Snapshot %s saved.", name)
	return nil
}
