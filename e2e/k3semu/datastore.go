package main

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

// The datastore is a directory shared by the servers of one cluster (a
// Docker volume at /var/lib/k3semu/shared). It stands in for etcd/kine:
//
//	bootstrap/<hex(sha256(pw))[:12]>  encrypted bootstrap data, as k3s's /bootstrap/<keyHash>
//	nodes.json                        the node registry (heartbeats)
//	.lock                             flock guarding both
const defaultSharedDir = "/var/lib/k3semu/shared"

var (
	errBootstrapNotFound  = errors.New("bootstrap data not found in datastore")
	errBootstrapOtherPass = errors.New("bootstrap data already found and encrypted with different token")
)

// bootstrapFile is one file of the bootstrap data, as k3s stores it.
type bootstrapFile struct {
	Timestamp time.Time
	Content   []byte
}

type bootstrapData map[string]bootstrapFile

type datastore struct{ dir string }

// lock takes the exclusive datastore lock; call the returned func to release.
func (d *datastore) lock() (func(), error) {
	if err := os.MkdirAll(d.dir, 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(d.dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, err
	}
	return func() {
		syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}

// storageKey is the name the bootstrap data is stored under for a password.
func storageKey(password string) string {
	sum := sha256.Sum256([]byte(password))
	return hex.EncodeToString(sum[:])[:12]
}

func (d *datastore) bootstrapDir() string { return filepath.Join(d.dir, "bootstrap") }

// loadBootstrap finds and decrypts the bootstrap data for password. Caller
// holds the lock.
func (d *datastore) loadBootstrap(password string) (bootstrapData, error) {
	raw, err := os.ReadFile(filepath.Join(d.bootstrapDir(), storageKey(password)))
	if errors.Is(err, os.ErrNotExist) {
		entries, _ := os.ReadDir(d.bootstrapDir())
		for _, e := range entries {
			if !strings.HasPrefix(e.Name(), ".") {
				return nil, errBootstrapOtherPass
			}
		}
		return nil, errBootstrapNotFound
	}
	if err != nil {
		return nil, err
	}
	plain, err := decrypt(password, string(raw))
	if err != nil {
		return nil, err
	}
	var data bootstrapData
	if err := json.Unmarshal(plain, &data); err != nil {
		return nil, fmt.Errorf("failed to unmarshal bootstrap data: %w", err)
	}
	return data, nil
}

// saveBootstrap encrypts and stores data under password's key. It refuses
// when data encrypted with another password exists (as k3s does). Caller
// holds the lock.
func (d *datastore) saveBootstrap(password string, data bootstrapData) error {
	key := storageKey(password)
	entries, _ := os.ReadDir(d.bootstrapDir())
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), ".") && e.Name() != key {
			return errBootstrapOtherPass
		}
	}
	plain, err := json.Marshal(data)
	if err != nil {
		return err
	}
	enc, err := encrypt(password, plain)
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(d.bootstrapDir(), key), []byte(enc), 0o600)
}

func deriveKey(password, salt string) ([]byte, error) {
	return pbkdf2.Key(sha1.New, password, []byte(salt), 4096, 32)
}

// encrypt: PBKDF2-SHA1(password, salt, 4096) -> AES-256-GCM; "<salt>:<b64(nonce|sealed)>".
func encrypt(password string, plain []byte) (string, error) {
	saltBytes := make([]byte, 8)
	if _, err := rand.Read(saltBytes); err != nil {
		return "", err
	}
	salt := hex.EncodeToString(saltBytes)
	key, err := deriveKey(password, salt)
	if err != nil {
		return "", err
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return "", err
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		return "", err
	}
	nonce := make([]byte, gcm.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return "", err
	}
	sealed := gcm.Seal(nonce, nonce, plain, nil)
	return salt + ":" + base64.StdEncoding.EncodeToString(sealed), nil
}

func decrypt(password, value string) ([]byte, error) {
	salt, b64, ok := strings.Cut(value, ":")
	if !ok {
		return nil, errors.New("invalid cipher text, not : delimited")
	}
	sealed, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return nil, err
	}
	key, err := deriveKey(password, salt)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	if len(sealed) < gcm.NonceSize() {
		return nil, errors.New("cipher text too short")
	}
	plain, err := gcm.Open(nil, sealed[:gcm.NonceSize()], sealed[gcm.NonceSize():], nil)
	if err != nil {
		return nil, fmt.Errorf("failed to decrypt bootstrap data: %w", err)
	}
	return plain, nil
}

// nodeRecord is one entry of the node registry.
type nodeRecord struct {
	Name          string    `json:"name"`
	Roles         string    `json:"roles"`
	Version       string    `json:"version"`
	Created       time.Time `json:"created"`
	LastHeartbeat time.Time `json:"lastHeartbeat"`
}

func (d *datastore) nodesPath() string { return filepath.Join(d.dir, "nodes.json") }

func (d *datastore) readNodes() (map[string]nodeRecord, error) {
	nodes := map[string]nodeRecord{}
	b, err := os.ReadFile(d.nodesPath())
	if errors.Is(err, os.ErrNotExist) {
		return nodes, nil
	}
	if err != nil {
		return nil, err
	}
	if len(b) == 0 {
		return nodes, nil
	}
	return nodes, json.Unmarshal(b, &nodes)
}

// heartbeat records that a node is alive now.
func (d *datastore) heartbeat(name, roles, version string, now time.Time) error {
	unlock, err := d.lock()
	if err != nil {
		return err
	}
	defer unlock()
	nodes, err := d.readNodes()
	if err != nil {
		return err
	}
	rec, ok := nodes[name]
	if !ok {
		rec.Created = now
	}
	rec.Name, rec.Roles, rec.Version, rec.LastHeartbeat = name, roles, version, now
	nodes[name] = rec
	b, err := json.MarshalIndent(nodes, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(d.nodesPath(), b, 0o600)
}

// listNodes returns the registry sorted by name.
func (d *datastore) listNodes() ([]nodeRecord, error) {
	unlock, err := d.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	nodes, err := d.readNodes()
	if err != nil {
		return nil, err
	}
	out := make([]nodeRecord, 0, len(nodes))
	for _, n := range nodes {
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}
