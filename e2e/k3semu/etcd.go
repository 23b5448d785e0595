package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Embedded etcd, as far as certificates decide it. A member serves its peers
// on :2380 with tls/etcd/peer-server-client.crt and requires theirs, both
// verified against tls/etcd/peer-ca.crt as loaded at start (etcd's
// --peer-cert-file, --peer-trusted-ca-file, --peer-client-cert-auth, which
// k3s sets). At start a member waits until a majority of the cluster's
// members, itself included, complete that mutual handshake with it; until
// then the apiserver is not ready (503 "apiserver not ready" on /readyz and
// the API, as k3s's router answers before the apiserver runs) and systemd
// gets no READY=1 (k3s notifies only once etcd and the apiserver are up:
// pkg/cli/server/server.go). So a server renewed alone in a cluster whose
// other members still run with expired peer certificates never becomes
// ready: it rejects their certificates and they reject nothing it could
// fix ("rejected connection ... remote error: tls: bad certificate" and
// "authentication handshake failed: x509: certificate has expired or is not
// yet valid" in etcd's log, k3s-io/k3s#4438). A majority must start with
// valid certificates together.
//
// Known differences: quorum is judged only at start (a running member
// keeps its connections, and so its quorum, when its peers' certificates
// expire); peers are checked for their chain and validity, not for their
// SANs; membership is every etcd server that ever started in the cluster
// (etcd-members.json in the datastore, with the address each last started
// with: its host name in the e2e fleet, not an IP), never removed.

// peerLine is what a member answers a peer whose handshake it accepted.
const peerLine = "ok\n"

func (d *datastore) membersPath() string { return filepath.Join(d.dir, "etcd-members.json") }

// readMembers returns name -> peer address (caller holds the lock).
func (d *datastore) readMembers() (map[string]string, error) {
	members := map[string]string{}
	b, err := os.ReadFile(d.membersPath())
	if errors.Is(err, os.ErrNotExist) || (err == nil && len(b) == 0) {
		return members, nil
	}
	if err != nil {
		return nil, err
	}
	return members, json.Unmarshal(b, &members)
}

// addMember records (or moves) a member's peer address.
func (d *datastore) addMember(name, addr string) error {
	unlock, err := d.lock()
	if err != nil {
		return err
	}
	defer unlock()
	members, err := d.readMembers()
	if err != nil {
		return err
	}
	if members[name] == addr {
		return nil
	}
	members[name] = addr
	b, err := json.MarshalIndent(members, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(d.membersPath(), b, 0o600)
}

func (d *datastore) members() (map[string]string, error) {
	unlock, err := d.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	return d.readMembers()
}

// etcdPeer is this member's side of the peer layer.
type etcdPeer struct {
	s    *server
	cert tls.Certificate // peer-server-client.crt as loaded at start
	pool *x509.CertPool  // peer-ca.crt as loaded at start
	ln   net.Listener
	addr string // advertised
}

// startPeer listens for peers and records this member's address; the
// caller closes the listener (close) when the server stops.
func (s *server) startPeer() (*etcdPeer, error) {
	etcdDir := filepath.Join(s.tlsDir, "etcd")
	cert, err := tls.LoadX509KeyPair(filepath.Join(etcdDir, "peer-server-client.crt"), filepath.Join(etcdDir, "peer-server-client.key"))
	if err != nil {
		return nil, fmt.Errorf("etcd peer certificate: %w", err)
	}
	caPEM, err := os.ReadFile(filepath.Join(etcdDir, "peer-ca.crt"))
	if err != nil {
		return nil, err
	}
	p := &etcdPeer{s: s, cert: cert, pool: poolFromPEM(caPEM)}
	listen := s.env.PeerListenAddr
	if listen == "" {
		listen = "127.0.0.1:0"
	}
	if p.ln, err = net.Listen("tcp", listen); err != nil {
		return nil, fmt.Errorf("etcd peer listener: %w", err)
	}
	p.addr = advertised(p.ln.Addr().(*net.TCPAddr), s.env.Hostname)
	if err := s.ds.addMember(s.cfg.NodeName, p.addr); err != nil {
		p.ln.Close()
		return nil, err
	}
	go p.serve()
	return p, nil
}

// advertised is the address peers reach a listener on: its own, or for a
// wildcard listener the host name (in the e2e fleet the node's name on the
// Docker network, which follows the container to a new address after a
// restart or a reconnect, where a real member keeps its IP), else the first
// interface address.
func advertised(a *net.TCPAddr, hostname string) string {
	port := fmt.Sprint(a.Port)
	switch {
	case !a.IP.IsUnspecified():
		return a.String()
	case hostname != "":
		return net.JoinHostPort(hostname, port)
	}
	if ips := localIPs(); len(ips) > 0 {
		return net.JoinHostPort(ips[0].String(), port)
	}
	return net.JoinHostPort("127.0.0.1", port)
}

func (p *etcdPeer) close() { p.ln.Close() }

func (p *etcdPeer) serverConfig() *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{p.cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    p.pool,
		Time:         p.s.env.now,
		MinVersion:   tls.VersionTLS12,
	}
}

// serve answers peers: a completed mutual handshake gets peerLine.
func (p *etcdPeer) serve() {
	cfg := p.serverConfig()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			tc := tls.Server(c, cfg)
			if err := tc.Handshake(); err != nil {
				p.s.log.Warnf("etcd: rejected connection from %q (error %q)", c.RemoteAddr(), err.Error())
				return
			}
			io.WriteString(tc, peerLine)
		}()
	}
}

// dial completes the mutual handshake with the member at addr: its
// certificate must verify (chain and validity, at k3s's clock) and it must
// accept this member's.
func (p *etcdPeer) dial(addr string) error {
	cfg := &tls.Config{
		Certificates:       []tls.Certificate{p.cert},
		InsecureSkipVerify: true, // verified below, without the host name check
		MinVersion:         tls.VersionTLS12,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			var certs []*x509.Certificate
			for _, r := range raw {
				c, err := x509.ParseCertificate(r)
				if err != nil {
					return err
				}
				certs = append(certs, c)
			}
			if len(certs) == 0 {
				return errors.New("no peer certificate")
			}
			inter := x509.NewCertPool()
			for _, c := range certs[1:] {
				inter.AddCert(c)
			}
			_, err := certs[0].Verify(x509.VerifyOptions{Roots: p.pool, Intermediates: inter, CurrentTime: p.s.env.now(),
				KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
			return err
		},
	}
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return fmt.Errorf("authentication handshake failed: %w", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	b := make([]byte, len(peerLine))
	if _, err := io.ReadFull(c, b); err != nil {
		return fmt.Errorf("peer rejected this member: %w", err)
	}
	return nil
}

// waitQuorum returns once a majority of the members, this one included,
// completed the mutual handshake with it; it retries every RetryInterval
// and returns ctx's error when stopped first.
func (p *etcdPeer) waitQuorum(ctx context.Context) error {
	s := p.s
	for {
		members, err := s.ds.members()
		if err != nil {
			return err
		}
		names := make([]string, 0, len(members))
		for n := range members {
			names = append(names, n)
		}
		sort.Strings(names)
		have, total := 1, len(members)
		if _, ok := members[s.cfg.NodeName]; !ok {
			total++
		}
		var failed []string
		for _, n := range names {
			if n == s.cfg.NodeName {
				continue
			}
			if err := p.dial(members[n]); err != nil {
				failed = append(failed, fmt.Sprintf("%s at %s: %v", n, members[n], err))
				continue
			}
			have++
		}
		need := total/2 + 1
		if have >= need {
			s.log.Infof("etcd: %d of %d members reachable, quorum reached", have, total)
			s.log.Infof("ETCD server is now running")
			return nil
		}
		s.log.Warnf("Waiting for etcd quorum: %d of %d members reachable, %d needed: %s", have, total, need, strings.Join(failed, "; "))
		if !sleepCtx(ctx, s.env.RetryInterval) {
			return ctx.Err()
		}
	}
}
