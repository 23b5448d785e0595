package fleettest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"path"
	"strings"
	"time"

	"github.com/fleetcert/fleetcert/k3s"
	"github.com/fleetcert/fleetcert/pki"
	"github.com/fleetcert/fleetcert/remote"
)

// With Fleet.Supervisor set, a server answers on 127.0.0.1:6443 through
// the connection (an SSH direct-tcpip channel), as a k3s server's
// supervisor does:
//   - GET /cacerts returns the server CA bundle its running process loaded:
//     read at the first request after a start, then cached;
//   - the TLS handshake presents a serving certificate with the CA chain it
//     was issued with (leaf + the whole server CA bundle of that moment).
//     It is issued at the first connection after a start and kept across
//     restarts while the bundle's first certificate (its issuer) stays;
//     `k3s certificate rotate`, or the trigger file dynamic-cert-regenerate
//     present at a start, drops it, so that start issues anew.
//
// Without it the fake has no forwarding, as a node whose sshd refuses it.

// tunnelNode is a fake node reached with forwarding.
type tunnelNode struct{ *Node }

// DialContext opens a stream to addr on the node.
func (t tunnelNode) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	n := t.Node
	n.mu.Lock()
	up := n.layout.Role == k3s.RoleServer && n.units[n.inv.Service] == "active"
	n.mu.Unlock()
	if network != "tcp" || addr != "127.0.0.1:6443" || !up {
		return nil, fmt.Errorf("dial %s %s: connect: connection refused", network, addr)
	}
	cert, cacerts, err := n.supervisor()
	if err != nil {
		return nil, err
	}
	client, server := net.Pipe()
	go serveSupervisor(server, cert, cacerts)
	return client, nil
}

var _ remote.Host = tunnelNode{}

// supervisor is what the running process serves, made on first use.
func (n *Node) supervisor() (*tls.Certificate, []byte, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	bundle := n.files[n.layout.ServerCA()]
	if bundle == nil {
		return nil, nil, errors.New("no server CA")
	}
	if n.cacerts == nil {
		n.cacerts = bundle.Data
	}
	if n.serving == nil {
		c, err := issueServing(bundle.Data, n.files[path.Join(n.layout.ServerTLSDir(), "server-ca.key")])
		if err != nil {
			return nil, nil, err
		}
		n.serving = c
	}
	return n.serving, n.cacerts, nil
}

// startSupervisor is a start of the process: /cacerts is read again, and
// the serving certificate kept only while its issuer is the bundle's
// first certificate. Called with n.mu held.
func (n *Node) startSupervisor() {
	n.cacerts = nil
	trigger := path.Join(n.layout.ServerTLSDir(), "dynamic-cert-regenerate")
	if _, ok := n.files[trigger]; ok {
		delete(n.files, trigger)
		n.serving = nil
		return
	}
	if n.serving == nil || len(n.serving.Certificate) < 2 {
		return
	}
	certs, err := pki.ParseCerts(n.files[n.layout.ServerCA()].Data)
	if err != nil || !bytes.Equal(certs[0].Raw, n.serving.Certificate[1]) {
		n.serving = nil
	}
}

// issueServing signs a serving certificate for 127.0.0.1 with the bundle's
// first certificate and key, chained with the whole bundle.
func issueServing(bundle []byte, keyFile *File) (*tls.Certificate, error) {
	if keyFile == nil {
		return nil, errors.New("no server CA key")
	}
	certs, err := pki.ParseCerts(bundle)
	if err != nil {
		return nil, err
	}
	keys, err := pki.ParseKeys(keyFile.Data)
	if err != nil {
		return nil, err
	}
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(now.UnixNano()),
		Subject:      pkix.Name{CommonName: "k3s", Organization: []string{"k3s"}},
		NotBefore:    now.Add(-time.Hour), NotAfter: now.AddDate(1, 0, 0),
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:    []string{"localhost", "kubernetes"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, certs[0], leafKey.Public(), keys[0])
	if err != nil {
		return nil, err
	}
	chain := [][]byte{der}
	for _, c := range certs {
		chain = append(chain, c.Raw)
	}
	return &tls.Certificate{Certificate: chain, PrivateKey: leafKey}, nil
}

// serveSupervisor answers one connection: the handshake, then at most one
// request.
func serveSupervisor(conn net.Conn, cert *tls.Certificate, cacerts []byte) {
	defer conn.Close()
	tc := tls.Server(conn, &tls.Config{Certificates: []tls.Certificate{*cert}})
	if err := tc.Handshake(); err != nil {
		return
	}
	req, err := http.ReadRequest(bufio.NewReader(tc))
	if err != nil {
		return
	}
	resp := &http.Response{StatusCode: http.StatusNotFound, ProtoMajor: 1, ProtoMinor: 1, Header: http.Header{}}
	body := "404 page not found\n"
	if req.Method == http.MethodGet && req.URL.Path == "/cacerts" {
		resp.StatusCode, body = http.StatusOK, string(cacerts)
	}
	resp.Status = http.StatusText(resp.StatusCode)
	resp.ContentLength = int64(len(body))
	resp.Body = io.NopCloser(strings.NewReader(body))
	resp.Close = true
	_ = resp.Write(tc)
}
