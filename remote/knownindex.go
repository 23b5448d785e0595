package remote

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"sync"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// indexKnownHosts is knownhosts.New(files...) for known_hosts files whose
// every entry names its hosts plainly: no hashed names, wildcards,
// negations or @cert-authority/@revoked markers, which is what a fleet's
// generated known_hosts holds. knownhosts compares every line with the
// host at each lookup, so dialling 10,000 nodes against a 10,000-line file
// is 10^8 comparisons (a quarter of check's CPU at that scale); this looks
// the host up in a map. It answers exactly as knownhosts does: nil for a
// recorded key, a *knownhosts.KeyError listing the host's recorded keys
// (none: unknown host) otherwise, and host certificates go to knownhosts
// itself. ok is false when a file holds any other kind of entry, or one
// that does not parse: use knownhosts.New then.
func indexKnownHosts(files []string) (cb ssh.HostKeyCallback, ok bool, err error) {
	idx := map[string][]knownhosts.KnownKey{}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, false, err
		}
		for n, line := range bytes.Split(data, []byte("\n")) {
			marker, hosts, key, _, _, err := ssh.ParseKnownHosts(line)
			if errors.Is(err, io.EOF) {
				continue // blank or comment
			}
			if err != nil || marker != "" {
				return nil, false, nil
			}
			for _, h := range hosts {
				if h == "" {
					continue
				}
				if strings.ContainsAny(h, "*?!|") {
					return nil, false, nil
				}
				// As knownhosts reads a pattern: [host]:port, host:port, or
				// a bare host on port 22.
				host, port, err := net.SplitHostPort(h)
				if err != nil {
					host, port = h, "22"
				}
				k := host + "\x00" + port
				idx[k] = append(idx[k], knownhosts.KnownKey{Key: key, Filename: f, Line: n + 1})
			}
		}
	}
	slow := sync.OnceValues(func() (ssh.HostKeyCallback, error) { return knownhosts.New(files...) })
	return func(address string, remote net.Addr, key ssh.PublicKey) error {
		if _, isCert := key.(*ssh.Certificate); isCert {
			db, err := slow()
			if err != nil {
				return err
			}
			return db(address, remote, key)
		}
		if address == "" { // knownhosts prefers the name, else the address dialled
			address = remote.String()
		}
		host, port, err := net.SplitHostPort(address)
		if err != nil {
			return err
		}
		want := idx[host+"\x00"+port]
		blob := key.Marshal()
		for _, k := range want {
			if bytes.Equal(k.Key.Marshal(), blob) {
				return nil
			}
		}
		return &knownhosts.KeyError{Want: append([]knownhosts.KnownKey(nil), want...)}
	}, true, nil
}
