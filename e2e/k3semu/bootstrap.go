package main

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"encoding/csv"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// bootstrapField is one file of k3s's ControlRuntimeBootstrap, in k3s's
// field order. Rel is relative to <data-dir>/server.
type bootstrapField struct {
	Name      string
	Rel       string
	Rotatable bool
}

var bootstrapFields = []bootstrapField{
	{"ETCDServerCA", "tls/etcd/server-ca.crt", true},
	{"ETCDServerCAKey", "tls/etcd/server-ca.key", true},
	{"ETCDPeerCA", "tls/etcd/peer-ca.crt", true},
	{"ETCDPeerCAKey", "tls/etcd/peer-ca.key", true},
	{"ServerCA", "tls/server-ca.crt", true},
	{"ServerCAKey", "tls/server-ca.key", true},
	{"ClientCA", "tls/client-ca.crt", true},
	{"ClientCAKey", "tls/client-ca.key", true},
	{"ServiceKey", "tls/service.key", true},
	{"PasswdFile", "cred/passwd", false},
	{"RequestHeaderCA", "tls/request-header-ca.crt", true},
	{"RequestHeaderCAKey", "tls/request-header-ca.key", true},
	{"IPSECKey", "cred/ipsec.psk", false},
}

// The default CAs: file stem under server/tls and CN prefix.
var defaultCAs = []struct{ Stem, CNPrefix string }{
	{"server-ca", "k3s-server-ca"},
	{"client-ca", "k3s-client-ca"},
	{"request-header-ca", "k3s-request-header-ca"},
	{"etcd/server-ca", "etcd-server-ca"},
	{"etcd/peer-ca", "etcd-peer-ca"},
}

// systemTimeSkew is k3s's tolerance when comparing disk and datastore files.
const systemTimeSkew = 3 // seconds

// reconcileBootstrap brings server/ files in line with the datastore
// (docs/k3s-behaviour.md#datastore): equal content -> nothing; differing and disk less than 3 s
// newer -> rewritten from the datastore with its timestamp; differing and
// disk >= 3 s newer -> fatal.
func reconcileBootstrap(serverDir string, data bootstrapData, log *Logger) error {
	log.Infof("Reconciling bootstrap data between datastore and disk")
	type update struct {
		path string
		file bootstrapFile
	}
	var updates []update
	var newer []string
	for _, f := range bootstrapFields {
		ds, ok := data[f.Name]
		if !ok {
			continue
		}
		path := filepath.Join(serverDir, f.Rel)
		disk, err := os.ReadFile(path)
		if err != nil {
			if !errors.Is(err, os.ErrNotExist) {
				return err
			}
			updates = append(updates, update{path, ds})
			continue
		}
		if bytes.Equal(disk, ds.Content) {
			continue
		}
		info, err := os.Stat(path)
		if err != nil {
			return err
		}
		if info.ModTime().Unix()-ds.Timestamp.Unix() >= systemTimeSkew {
			newer = append(newer, path)
			continue
		}
		log.Warnf("%s will be updated from the datastore", path)
		updates = append(updates, update{path, ds})
	}
	if len(newer) > 0 {
		return fmt.Errorf("%s newer than datastore and could cause a cluster outage. Remove the file(s) from disk and restart to be recreated from datastore.", strings.Join(newer, ", "))
	}
	if len(updates) == 0 {
		return nil
	}
	log.Infof("Updating bootstrap data on disk from datastore")
	for _, u := range updates {
		if err := writeFileAtomic(u.path, u.file.Content, 0o600); err != nil {
			return err
		}
		if err := os.Chtimes(u.path, u.file.Timestamp, u.file.Timestamp); err != nil {
			return err
		}
	}
	return nil
}

// readBootstrapFromDisk collects the bootstrap files under serverDir with
// their mtimes. Missing files are skipped.
func readBootstrapFromDisk(serverDir string) (bootstrapData, error) {
	data := bootstrapData{}
	for _, f := range bootstrapFields {
		path := filepath.Join(serverDir, f.Rel)
		info, err := os.Stat(path)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, err
		}
		data[f.Name] = bootstrapFile{Timestamp: info.ModTime(), Content: b}
	}
	return data, nil
}

// ensureCAs creates the default CAs and service.key that are missing on
// disk. Existing ones (custom CA install) are kept.
func ensureCAs(tlsDir string, now time.Time, log *Logger) error {
	for _, ca := range defaultCAs {
		crt := filepath.Join(tlsDir, ca.Stem+".crt")
		key := filepath.Join(tlsDir, ca.Stem+".key")
		if fileExists(crt) && fileExists(key) {
			continue
		}
		if fileExists(crt) != fileExists(key) {
			return fmt.Errorf("%s: CA certificate and key must both exist or both be absent", crt)
		}
		certPEM, keyPEM, err := newSelfSignedCA(fmt.Sprintf("%s@%d", ca.CNPrefix, now.Unix()), now)
		if err != nil {
			return err
		}
		if err := writeFileAtomic(key, keyPEM, 0o600); err != nil {
			return err
		}
		if err := writeFileAtomic(crt, certPEM, 0o644); err != nil {
			return err
		}
		log.Infof("Generated CA certificate %s", crt)
	}
	svc := filepath.Join(tlsDir, "service.key")
	if !fileExists(svc) {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return err
		}
		pemKey, err := encodeKeyPEM(k)
		if err != nil {
			return err
		}
		if err := writeFileAtomic(svc, pemKey, 0o600); err != nil {
			return err
		}
	}
	return nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// passwdEntry is one row of server/cred/passwd.
type passwdEntry struct{ Password, User, Group, Role string }

func readPasswd(path string) (map[string]passwdEntry, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	r := csv.NewReader(bytes.NewReader(b))
	r.FieldsPerRecord = -1
	rows, err := r.ReadAll()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	out := map[string]passwdEntry{}
	for _, row := range rows {
		if len(row) < 4 {
			continue
		}
		out[row[1]] = passwdEntry{row[0], row[1], row[2], row[3]}
	}
	return out, nil
}

func renderPasswd(serverPW, nodePW string) []byte {
	var buf bytes.Buffer
	w := csv.NewWriter(&buf)
	w.Write([]string{serverPW, "server", "server", "k3s:server"})
	w.Write([]string{nodePW, "node", "node", "k3s:agent"})
	w.Flush()
	return buf.Bytes()
}
