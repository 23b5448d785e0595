package inventory

import (
	"errors"
	"fmt"
	"net/netip"
	"path"
	"path/filepath"
	"strconv"
	"strings"
)

// The checks below decide what may stand in each field. They are strict on
// purpose: inventory values end up in remote command lines (always quoted,
// but a host starting with "-" would still be an ssh option) and in file
// names on the controller and the nodes (cluster and node names).

// checkHost accepts a hostname or ssh_config alias, an IPv4 address, or an
// IPv6 address, bare or in brackets, and returns it without brackets so that
// net.JoinHostPort can add them back where a port follows.
func checkHost(s string) (string, error) {
	if s == "" {
		return "", errors.New("must not be empty")
	}
	if inner, ok := strings.CutPrefix(s, "["); ok {
		inner, ok = strings.CutSuffix(inner, "]")
		if !ok || !isIPv6(inner) {
			return "", fmt.Errorf("%q: brackets may only enclose an IPv6 address", s)
		}
		return inner, nil
	}
	if isIPv6(s) || isHostname(s) {
		return s, nil
	}
	return "", fmt.Errorf("%q is not a hostname, IPv4 or IPv6 address", s)
}

// isIPv6 accepts an IPv6 address, with a zone only when the zone is a plain
// interface name.
func isIPv6(s string) bool {
	a, err := netip.ParseAddr(s)
	return err == nil && a.Is6() && onlyChars(a.Zone(), safeChars)
}

// isHostname accepts DNS names and ssh_config aliases built from letters,
// digits, '-' and '_' in dot-separated labels, none starting with '-'. A
// name of digits and dots only must be a valid IPv4 address, so that a typo
// such as 10.1.0.300 is not taken for a hostname.
func isHostname(s string) bool {
	if len(s) > 253 {
		return false
	}
	numeric := true
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || !onlyChars(label, hostChars) {
			return false
		}
		if !onlyChars(label, "0123456789") {
			numeric = false
		}
	}
	if numeric {
		a, err := netip.ParseAddr(s)
		return err == nil && a.Is4()
	}
	return true
}

const (
	alnum     = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
	hostChars = alnum + "-_"
	safeChars = alnum + "._-"  // cluster and node names: they become file names
	unitChars = alnum + "@._-" // systemd unit names (templates use @)
	userChars = alnum + "._-@" // login names, including user@REALM forms
)

func onlyChars(s, allowed string) bool {
	for _, r := range s {
		if !strings.ContainsRune(allowed, r) {
			return false
		}
	}
	return true
}

// checkName accepts a cluster or node name: 1 to 253 characters from
// [A-Za-z0-9._-], starting with a letter or digit so that it is never ".",
// ".." or an option when it becomes a file name or an argument.
func checkName(s string) (string, error) {
	switch {
	case s == "":
		return "", errors.New("must not be empty")
	case len(s) > 253:
		return "", fmt.Errorf("%q is longer than 253 characters", s)
	case !onlyChars(s, safeChars) || !strings.ContainsRune(alnum, rune(s[0])):
		return "", fmt.Errorf("%q may only contain letters, digits and . _ - and must start with a letter or digit", s)
	}
	return s, nil
}

// nameFromHost derives a node name from its host when none is given; the
// colons and zone mark of an IPv6 address become '-'.
func nameFromHost(host string) string {
	return strings.NewReplacer(":", "-", "%", "-").Replace(host)
}

// checkProduct accepts the distributions fleetcert drives.
func checkProduct(s string) (string, error) {
	if _, ok := products[s]; !ok {
		return "", fmt.Errorf("%q is not a product fleetcert knows; want k3s or rke2", s)
	}
	return s, nil
}

// checkUnit accepts a systemd unit name for the k3s service and returns it
// without a ".service" suffix, so that "k3s" and "k3s.service" mean the same.
func checkUnit(s string) (string, error) {
	s = strings.TrimSuffix(s, ".service")
	switch {
	case s == "":
		return "", errors.New("must not be empty")
	case len(s) > 255:
		return "", fmt.Errorf("%q is longer than 255 characters", s)
	case !onlyChars(s, unitChars) || s[0] == '-' || s[0] == '.':
		return "", fmt.Errorf("%q is not a unit name: it may only contain letters, digits and @ . _ -, and must not start with - or .", s)
	}
	return s, nil
}

// checkUser accepts an SSH login name; "" leaves it unset (to ~/.ssh/config).
func checkUser(s string) (string, error) {
	if s != "" && (!onlyChars(s, userChars) || s[0] == '-') {
		return "", fmt.Errorf("%q is not a user name: it may only contain letters, digits and . _ - @, and must not start with -", s)
	}
	return s, nil
}

// checkLocalPath accepts a file on the controller (identity, known_hosts):
// absolute, or starting with "~/" for the home directory of whoever runs
// fleetcert. "" leaves it unset. Relative paths are refused because they
// would depend on the directory fleetcert happens to be started from.
func checkLocalPath(s string) (string, error) {
	switch {
	case s == "":
		return "", nil
	case hasControl(s):
		return "", fmt.Errorf("%q contains control characters", s)
	case strings.HasPrefix(s, "~/") && len(s) > 2:
		return s, nil
	case strings.HasPrefix(s, "~"):
		return "", fmt.Errorf("%q: only a leading ~/ is expanded; write ~/path or an absolute path", s)
	case !filepath.IsAbs(s):
		return "", fmt.Errorf("%q is a relative path; write an absolute path or one starting with ~/", s)
	}
	return s, nil
}

// checkRemotePath accepts a directory or file on a node: absolute, not the
// root directory, returned cleaned so that paths built from it compare
// equal. Nodes run Linux, hence package path rather than filepath.
func checkRemotePath(s string) (string, error) {
	switch {
	case s == "":
		return "", errors.New("must not be empty")
	case hasControl(s):
		return "", fmt.Errorf("%q contains control characters", s)
	case !path.IsAbs(s):
		return "", fmt.Errorf("%q is a relative path; write an absolute path", s)
	case path.Clean(s) == "/":
		return "", errors.New(`"/" is not allowed`)
	}
	return path.Clean(s), nil
}

func hasControl(s string) bool {
	return strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f })
}

// hop is one jump host of a bastion chain.
type hop struct {
	User string // empty: ssh_config or the default user
	Host string // without brackets
	Port int    // 0: ssh_config or 22
}

// String formats the hop as ProxyJump writes it.
func (h hop) String() string {
	host := h.Host
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	if h.Port != 0 {
		host += ":" + strconv.Itoa(h.Port)
	}
	if h.User != "" {
		host = h.User + "@" + host
	}
	return host
}

// parseBastion parses a bastion in ssh ProxyJump syntax: comma-separated
// hops, each [user@]host[:port], an IPv6 host in brackets, the first hop
// dialled first. The ssh:// URI form is not supported. "" gives no hops.
func parseBastion(s string) ([]hop, error) {
	if s == "" {
		return nil, nil
	}
	if strings.Contains(s, "://") {
		return nil, fmt.Errorf("%q: the URI form is not supported; write [user@]host[:port], comma-separated", s)
	}
	parts := strings.Split(s, ",")
	hops := make([]hop, 0, len(parts))
	for i, part := range parts {
		h, err := parseHop(part)
		if err != nil {
			if len(parts) > 1 {
				return nil, fmt.Errorf("hop %d %q: %w", i+1, part, err)
			}
			return nil, fmt.Errorf("%q: %w", part, err)
		}
		hops = append(hops, h)
	}
	return hops, nil
}

// parseHop parses [user@]host[:port]; the user ends at the last '@', as in
// ssh.
func parseHop(s string) (hop, error) {
	var h hop
	if s == "" {
		return h, errors.New("empty hop")
	}
	rest := s
	if i := strings.LastIndex(s, "@"); i >= 0 {
		h.User, rest = s[:i], s[i+1:]
		if h.User == "" {
			return h, errors.New("empty user before @")
		}
		if _, err := checkUser(h.User); err != nil {
			return h, err
		}
	}
	host, port, err := splitHostPort(rest)
	if err != nil {
		return h, err
	}
	if port != "" {
		p, err := strconv.Atoi(port)
		if err != nil || p < 1 || p > 65535 {
			return h, fmt.Errorf("port %q is out of range 1-65535", port)
		}
		h.Port = p
	}
	if !isHostname(host) && !isIPv6(host) {
		return h, fmt.Errorf("%q is not a hostname, IPv4 or IPv6 address", host)
	}
	h.Host = host
	return h, nil
}

// splitHostPort splits host[:port] and [ipv6][:port]. Unlike net.SplitHostPort
// the port is optional; a bare IPv6 address is refused because its last
// group could be read as a port.
func splitHostPort(s string) (host, port string, err error) {
	if inner, ok := strings.CutPrefix(s, "["); ok {
		end := strings.Index(inner, "]")
		if end < 0 {
			return "", "", errors.New("missing ]")
		}
		host, after := inner[:end], inner[end+1:]
		if !isIPv6(host) {
			return "", "", errors.New("brackets may only enclose an IPv6 address")
		}
		if after == "" {
			return host, "", nil
		}
		port, ok := strings.CutPrefix(after, ":")
		if !ok {
			return "", "", fmt.Errorf("unexpected %q after ]", after)
		}
		return host, port, nil
	}
	switch strings.Count(s, ":") {
	case 0:
		return s, "", nil
	case 1:
		host, port, _ := strings.Cut(s, ":")
		return host, port, nil
	}
	return "", "", errors.New("an IPv6 address must be in brackets: [addr] or [addr]:port")
}

// checkBastion accepts "" (no bastion, or ssh_config's ProxyJump) or a
// ProxyJump chain.
func checkBastion(s string) (string, error) {
	if _, err := parseBastion(s); err != nil {
		return "", err
	}
	return s, nil
}

// checkLabelKey accepts a Kubernetes-style label key, [prefix/]name, so that
// labels can be copied from cluster metadata as they are.
func checkLabelKey(k string) error {
	name := k
	if prefix, n, ok := strings.Cut(k, "/"); ok {
		if prefix == "" || len(prefix) > 253 || !isHostname(prefix) || strings.Contains(prefix, "_") {
			return fmt.Errorf("label key %q: the prefix before / must be a DNS name", k)
		}
		name = n
	}
	if !isLabelWord(name) {
		return fmt.Errorf("label key %q: must be 1-63 letters, digits and - _ . starting and ending with a letter or digit", k)
	}
	return nil
}

// checkLabelValue accepts a Kubernetes-style label value (may be empty).
func checkLabelValue(v string) error {
	if v != "" && !isLabelWord(v) {
		return fmt.Errorf("label value %q: must be at most 63 letters, digits and - _ . starting and ending with a letter or digit", v)
	}
	return nil
}

func isLabelWord(s string) bool {
	return s != "" && len(s) <= 63 && onlyChars(s, safeChars) &&
		strings.ContainsRune(alnum, rune(s[0])) && strings.ContainsRune(alnum, rune(s[len(s)-1]))
}

// suggest returns "; did you mean X?" for the known word closest to word,
// or the list of known words when none is close, for unknown-key messages.
func suggest(word string, known []string) string {
	if best := closest(word, known); best != "" {
		return fmt.Sprintf("; did you mean %q?", best)
	}
	return "; expected one of " + strings.Join(known, ", ")
}

// closest returns the candidate that word most likely misspells: equal when
// case and - _ are ignored (data_dir, DataDir), or within a small edit
// distance. It returns "" when nothing is close.
func closest(word string, candidates []string) string {
	norm := func(s string) string {
		return strings.ToLower(strings.NewReplacer("_", "", "-", "").Replace(s))
	}
	limit := min(len(word)/3+1, 3)
	best, bestDist := "", limit+1
	for _, c := range candidates {
		if norm(c) == norm(word) {
			return c
		}
		if d := editDistance(strings.ToLower(word), strings.ToLower(c)); d < bestDist {
			best, bestDist = c, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b in bytes.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
