package pki

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// CAType is one of the five CAs of a k3s server, with the names k3s and its
// contrib scripts give it.
type CAType struct {
	// Name is the type as the contrib scripts spell it: "server",
	// "etcd/peer".
	Name string
	// CertFile and KeyFile are the files under server/tls (and under
	// DIR/tls for rotate-ca --path).
	CertFile, KeyFile string
	// Field and KeyField are k3s's ControlRuntimeBootstrap field names, which
	// prefix rotate-ca's validation errors.
	Field, KeyField string
	// DefaultCN is the CN prefix of the self-signed CA k3s generates
	// (CN <DefaultCN>@<unix>).
	DefaultCN string
	// Etcd marks the two etcd CAs, which a forced rotation to an unrelated
	// root leaves alone unless asked (docs/k3s-behaviour.md#restarts).
	Etcd bool
}

// caName is the CN prefix the contrib scripts give a generated cluster CA:
// k3s-<type>-ca, with "/" in the type written "-".
func (t CAType) caName() string { return "k3s-" + t.flatName() + "-ca" }

// rootName is the CN prefix of the per-type root made by cross-signed
// rotation: k3s-<type>-root.
func (t CAType) rootName() string { return "k3s-" + t.flatName() + "-root" }

func (t CAType) flatName() string { return strings.ReplaceAll(t.Name, "/", "-") }

// CATypes lists the five CAs in the order of k3s's ControlRuntimeBootstrap
// struct, which is the order rotate-ca reports validation errors in.
var CATypes = []CAType{
	{Name: "etcd/server", CertFile: "etcd/server-ca.crt", KeyFile: "etcd/server-ca.key", Field: "ETCDServerCA", KeyField: "ETCDServerCAKey", DefaultCN: "etcd-server-ca", Etcd: true},
	{Name: "etcd/peer", CertFile: "etcd/peer-ca.crt", KeyFile: "etcd/peer-ca.key", Field: "ETCDPeerCA", KeyField: "ETCDPeerCAKey", DefaultCN: "etcd-peer-ca", Etcd: true},
	{Name: "server", CertFile: "server-ca.crt", KeyFile: "server-ca.key", Field: "ServerCA", KeyField: "ServerCAKey", DefaultCN: "k3s-server-ca"},
	{Name: "client", CertFile: "client-ca.crt", KeyFile: "client-ca.key", Field: "ClientCA", KeyField: "ClientCAKey", DefaultCN: "k3s-client-ca"},
	{Name: "request-header", CertFile: "request-header-ca.crt", KeyFile: "request-header-ca.key", Field: "RequestHeaderCA", KeyField: "RequestHeaderCAKey", DefaultCN: "k3s-request-header-ca"},
}

// CATypeByName returns the CA type called name ("server", "etcd/peer").
func CATypeByName(name string) (CAType, bool) {
	for _, t := range CATypes {
		if t.Name == name {
			return t, true
		}
	}
	return CAType{}, false
}

// The service-account issuer key file and its k3s field name.
const (
	ServiceKeyFile  = "service.key"
	serviceKeyField = "ServiceKey"
)

// TLSDir is the directory under a rotate-ca --path (and under server/) that
// holds the CA files; k3s ignores files directly in --path.
const TLSDir = "tls"

// Files lists every file rotate-ca reads from DIR/tls, in the order of k3s's
// ControlRuntimeBootstrap struct.
func Files() []string {
	var fs []string
	for _, t := range CATypes {
		fs = append(fs, t.CertFile, t.KeyFile)
	}
	return append(fs, ServiceKeyFile)
}

// fieldOf returns k3s's field name for a rotatable file, "" for others.
func fieldOf(file string) string {
	if file == ServiceKeyFile {
		return serviceKeyField
	}
	for _, t := range CATypes {
		switch file {
		case t.CertFile:
			return t.Field
		case t.KeyFile:
			return t.KeyField
		}
	}
	return ""
}

// CASet is the CA material of a k3s server in memory: rotatable file names
// relative to server/tls (Files) mapped to their bytes. An absent or empty
// file means "keep the current one", as for rotate-ca.
type CASet map[string][]byte

// NewCASet builds a set from file contents, e.g. read over SSH. Unknown names
// are an error; empty contents are dropped, as k3s ignores empty files.
func NewCASet(files map[string][]byte) (CASet, error) {
	s := CASet{}
	for name, data := range files {
		if fieldOf(name) == "" {
			return nil, fmt.Errorf("%s is not a file k3s rotate-ca reads (want one of %s)", name, strings.Join(Files(), ", "))
		}
		if len(data) > 0 {
			s[name] = bytes.Clone(data)
		}
	}
	return s, nil
}

// Names returns the files present, in Files order.
func (s CASet) Names() []string {
	var names []string
	for _, f := range Files() {
		if len(s[f]) > 0 {
			names = append(names, f)
		}
	}
	return names
}

// Changed returns the files of s whose contents differ from current's (or
// that current lacks): the files to stage, since k3s validates every file it
// is given, even one identical to the current file.
func (s CASet) Changed(current CASet) CASet {
	out := CASet{}
	for _, f := range s.Names() {
		if !bytes.Equal(s[f], current[f]) {
			out[f] = s[f]
		}
	}
	return out
}

// Overlay returns current with the files of s replacing its own: the set k3s
// ends up with once s is loaded with rotate-ca.
func (s CASet) Overlay(current CASet) CASet {
	out := CASet{}
	for _, f := range current.Names() {
		out[f] = current[f]
	}
	for _, f := range s.Names() {
		out[f] = s[f]
	}
	return out
}

// ReadDir reads the rotatable files from dir/tls, the layout rotate-ca
// --path and a k3s server directory (data-dir/server) share. Missing or empty
// files are left out; a dir without any of them is an error, since that is
// almost certainly the wrong directory.
func ReadDir(dir string) (CASet, error) {
	if fi, err := os.Stat(dir); err != nil {
		return nil, err
	} else if !fi.IsDir() {
		return nil, fmt.Errorf("%s is not a directory", dir)
	}
	s := CASet{}
	for _, f := range Files() {
		data, err := os.ReadFile(filepath.Join(dir, TLSDir, filepath.FromSlash(f)))
		switch {
		case errors.Is(err, fs.ErrNotExist):
			continue
		case err != nil:
			return nil, err
		}
		if len(data) > 0 {
			s[f] = data
		}
	}
	if len(s) == 0 {
		return nil, fmt.Errorf("%s: no CA files in %s/ (want %s)", dir, TLSDir, strings.Join(Files(), ", "))
	}
	return s, nil
}

// File modes of written material: directories 0700, keys 0600, certificates
// 0644 (k3s's own modes for server/tls).
const (
	dirMode  = 0o700
	keyMode  = 0o600
	certMode = 0o644
)

// WriteDir writes the set into dir/tls, creating dir when needed. It refuses
// a dir that exists and is not empty unless overwrite is set.
func (s CASet) WriteDir(dir string, overwrite bool) error {
	files := map[string][]byte{}
	for _, f := range s.Names() {
		files[path.Join(TLSDir, f)] = s[f]
	}
	return WriteFiles(dir, files, overwrite)
}

// WriteFiles writes files (slash-separated names relative to dir) into dir,
// creating it when needed: directories 0700, *.key files 0600, others 0644.
// It refuses a dir that exists and is not empty unless overwrite is set.
func WriteFiles(dir string, files map[string][]byte, overwrite bool) error {
	if err := prepareDir(dir, overwrite); err != nil {
		return err
	}
	for name, data := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), dirMode); err != nil {
			return err
		}
		mode := os.FileMode(certMode)
		if path.Ext(name) == ".key" {
			mode = keyMode
		}
		if err := writeFile(p, data, mode); err != nil {
			return err
		}
	}
	return nil
}

// prepareDir creates dir (0700) or checks that it may be written into.
func prepareDir(dir string, overwrite bool) error {
	entries, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return os.MkdirAll(dir, dirMode)
	case err != nil:
		return err
	case len(entries) > 0 && !overwrite:
		return fmt.Errorf("%s is not empty; refusing to write into it without overwrite", dir)
	}
	return nil
}

// writeFile writes data with exactly mode, whatever the umask or an older
// file's mode, without ever exposing a key under wider permissions.
func writeFile(p string, data []byte, mode os.FileMode) error {
	tmp := p + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if err = f.Chmod(mode); err == nil {
		_, err = f.Write(data)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, p)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}
