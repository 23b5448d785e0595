package remote

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/kevinburke/ssh_config"
)

// HostKeyPolicy says what to do with a host key that known_hosts does not
// vouch for. Whatever the policy, a key that contradicts known_hosts is fatal
// (except under PolicyInsecure, which checks nothing).
type HostKeyPolicy string

const (
	// PolicyStrict refuses hosts that are not in known_hosts. The default.
	PolicyStrict HostKeyPolicy = "strict"
	// PolicyAcceptNew records the key of a host seen for the first time in
	// the user's known_hosts file, as OpenSSH's StrictHostKeyChecking=accept-new.
	PolicyAcceptNew HostKeyPolicy = "accept-new"
	// PolicyInsecure accepts any key and logs a warning per host. For labs only.
	PolicyInsecure HostKeyPolicy = "insecure"
)

// parseHostKeyPolicy validates a policy name as given on the command line;
// "" means the default, strict.
func parseHostKeyPolicy(s string) (HostKeyPolicy, error) {
	switch p := HostKeyPolicy(s); p {
	case "":
		return PolicyStrict, nil
	case PolicyStrict, PolicyAcceptNew, PolicyInsecure:
		return p, nil
	}
	return "", fmt.Errorf("unknown host key policy %q (want strict, accept-new or insecure)", s)
}

// Defaults applied by Dial to fields left zero.
const (
	defaultPort           = 22
	defaultConnectTimeout = 15 * time.Second
	defaultKeepAlive      = 30 * time.Second
	defaultMaxOutput      = 16 << 20

	// keepAliveCountMax is how many keepalive intervals may pass without an
	// answer before the connection is declared dead (OpenSSH's
	// ServerAliveCountMax default is 3).
	keepAliveCountMax = 3
)

// None disables a file or socket setting, as OpenSSH's `-F none` and
// `IdentityAgent none` do.
const None = "none"

// Config describes how to reach one node. Zero fields are filled from
// ~/.ssh/config (HostName, User, Port, IdentityFile, ProxyJump) and then from
// built-in defaults, so an inventory only needs to say what differs.
type Config struct {
	// Host is the name or address as written in the inventory; it is also
	// the alias looked up in ssh_config.
	Host string
	// Port is the TCP port; 0 means ssh_config's Port, else 22.
	Port int
	// User is the login user; "" means ssh_config's User, else the local user.
	User string
	// IdentityFile is the private key to offer; "" means ssh_config's
	// IdentityFile entries, else whichever of ~/.ssh/id_ed25519, id_ecdsa and
	// id_rsa exist. A leading ~/ is the home directory.
	IdentityFile string
	// KnownHostsFile is the user's known_hosts, read and (under accept-new)
	// appended to; "" means ~/.ssh/known_hosts.
	KnownHostsFile string
	// Bastion is a ProxyJump list: "[user@]host[:port]", comma-separated for
	// several hops, each reached through the previous one. "" means
	// ssh_config's ProxyJump; None means no bastion even if ssh_config has one.
	Bastion string
	// Sudo runs every command under sudo.
	Sudo bool
	// SudoPassword, when set, is fed to `sudo -S` on stdin if `sudo -n` is not
	// enough. It never reaches argv, errors or logs.
	SudoPassword string
	// HostKeyPolicy is strict when empty.
	HostKeyPolicy HostKeyPolicy
	// ConnectTimeout bounds TCP connect plus SSH handshake, per hop; zero
	// means 15 s.
	ConnectTimeout time.Duration
	// CommandTimeout, when positive, bounds every command, read and write
	// (a context with an earlier deadline still wins): no remote operation
	// can hang a run.
	CommandTimeout time.Duration
	// KeepAlive is the interval between keepalive@openssh.com requests; a
	// request unanswered for three intervals closes the connection (the
	// next operation then redials). Zero means 30 s; negative disables.
	KeepAlive time.Duration
	// MaxOutput caps stdout and stderr of a command (each); beyond it the
	// command is killed and Run fails. Zero means 16 MiB.
	MaxOutput int64
	// Logger receives warnings (insecure host keys, accepted new keys,
	// reconnects). nil means slog.Default().
	Logger *slog.Logger

	// HomeDir is the local home directory; "" means the current user's.
	// Injectable so that tests never read the real ~.
	HomeDir string
	// SSHConfigFile is the ssh_config to honour; "" means ~/.ssh/config,
	// None means none.
	SSHConfigFile string
	// SystemKnownHostsFile is read-only extra known_hosts; "" means
	// /etc/ssh/ssh_known_hosts, None means none.
	SystemKnownHostsFile string
	// AgentSocket is the ssh-agent socket; "" means $SSH_AUTH_SOCK, None
	// means do not use an agent.
	AgentSocket string
	// Passphrase unlocks an encrypted identity file. nil means
	// $FLEETCERT_SSH_PASSPHRASE (PassphraseEnv) if set, else a prompt on the
	// terminal.
	Passphrase func(keyFile string) ([]byte, error)
	// Jumps shares bastion connections between nodes; nil means
	// DefaultJumps, shared by every Dial of the process.
	Jumps *Jumps
}

// endpoint is one SSH server to authenticate to: a bastion hop or the node.
type endpoint struct {
	alias         string   // name as written, for messages
	host          string   // after ssh_config HostName
	port          int      // resolved port
	user          string   // resolved login user
	identityFiles []string // explicit identity files, ~ expanded
	identityFixed bool     // identityFiles came from configuration, not defaults
}

// addr is host:port, the form used for dialling and known_hosts lookups.
func (e endpoint) addr() string { return net.JoinHostPort(e.host, strconv.Itoa(e.port)) }

func (e endpoint) String() string { return e.user + "@" + e.addr() }

// settings is a Config with every default applied and ssh_config consulted.
type settings struct {
	target         endpoint
	hops           []endpoint
	home           string
	knownHosts     string
	systemKnown    string // "" = none
	agentSocket    string // "" = none
	policy         HostKeyPolicy
	connectTimeout time.Duration
	commandTimeout time.Duration
	keepAlive      time.Duration
	maxOutput      int64
	sudo           bool
	sudoPassword   string
	log            *slog.Logger
	passphrase     func(string) ([]byte, error)
	jumps          *Jumps
}

// resolve fills in Config from ssh_config and the defaults.
func resolve(cfg Config) (*settings, error) {
	if cfg.Host == "" {
		return nil, errors.New("ssh: no host given")
	}
	policy, err := parseHostKeyPolicy(string(cfg.HostKeyPolicy))
	if err != nil {
		return nil, err
	}
	home, err := homeDir(cfg.HomeDir)
	if err != nil {
		return nil, err
	}
	sc, err := loadSSHConfig(cfg.SSHConfigFile, home)
	if err != nil {
		return nil, err
	}
	s := &settings{
		home:           home,
		policy:         policy,
		connectTimeout: orDefault(cfg.ConnectTimeout, defaultConnectTimeout),
		commandTimeout: cfg.CommandTimeout,
		keepAlive:      orDefault(cfg.KeepAlive, defaultKeepAlive),
		maxOutput:      orDefault(cfg.MaxOutput, defaultMaxOutput),
		sudo:           cfg.Sudo,
		sudoPassword:   cfg.SudoPassword,
		log:            cfg.Logger,
		passphrase:     cfg.Passphrase,
		jumps:          cfg.Jumps,
	}
	if s.jumps == nil {
		s.jumps = DefaultJumps
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.passphrase == nil {
		s.passphrase = passphraseFromEnvOrTTY
	}
	s.knownHosts = expandHome(orDefault(cfg.KnownHostsFile, filepath.Join(home, ".ssh", "known_hosts")), home)
	s.systemKnown = noneToEmpty(orDefault(cfg.SystemKnownHostsFile, "/etc/ssh/ssh_known_hosts"))
	s.agentSocket = noneToEmpty(orDefault(cfg.AgentSocket, os.Getenv("SSH_AUTH_SOCK")))

	s.target, err = sc.endpoint(cfg.Host, cfg.Port, cfg.User, cfg.IdentityFile, home)
	if err != nil {
		return nil, err
	}
	bastion := cfg.Bastion
	if bastion == "" {
		bastion = sc.get(cfg.Host, "ProxyJump")
	}
	if bastion != "" && !strings.EqualFold(bastion, None) {
		if s.hops, err = sc.hops(bastion, home); err != nil {
			return nil, fmt.Errorf("ssh %s: bastion %q: %w", cfg.Host, bastion, err)
		}
	}
	return s, nil
}

// hops parses a ProxyJump list into endpoints, each resolved through
// ssh_config like the node itself. A hop's own ProxyJump is not followed:
// the list already says how to reach it.
func (sc sshConfig) hops(list, home string) ([]endpoint, error) {
	var out []endpoint
	for _, spec := range strings.Split(list, ",") {
		spec = strings.TrimSpace(spec)
		hopUser, host, port, err := parseJump(spec)
		if err != nil {
			return nil, err
		}
		ep, err := sc.endpoint(host, port, hopUser, "", home)
		if err != nil {
			return nil, err
		}
		out = append(out, ep)
	}
	return out, nil
}

// parseJump splits one ProxyJump hop, "[user@]host[:port]", with IPv6
// addresses in brackets ("[::1]:2222"). ssh:// URIs are not supported.
func parseJump(spec string) (user, host string, port int, err error) {
	if spec == "" {
		return "", "", 0, errors.New("empty hop")
	}
	if strings.Contains(spec, "://") {
		return "", "", 0, fmt.Errorf("hop %q: URI form is not supported, use [user@]host[:port]", spec)
	}
	if i := strings.LastIndex(spec, "@"); i >= 0 {
		user, spec = spec[:i], spec[i+1:]
		if user == "" {
			return "", "", 0, errors.New("empty user before @")
		}
	}
	host = spec
	if h, p, splitErr := net.SplitHostPort(spec); splitErr == nil {
		host = h
		if port, err = parsePort(p); err != nil {
			return "", "", 0, fmt.Errorf("hop %q: %w", spec, err)
		}
	} else if strings.HasPrefix(spec, "[") && strings.HasSuffix(spec, "]") {
		host = spec[1 : len(spec)-1]
	}
	if host == "" || strings.ContainsAny(host, " \t/[]") {
		return "", "", 0, fmt.Errorf("hop %q: bad host", spec)
	}
	return user, host, port, nil
}

func parsePort(s string) (int, error) {
	p, err := strconv.Atoi(s)
	if err != nil || p < 1 || p > 65535 {
		return 0, fmt.Errorf("bad port %q", s)
	}
	return p, nil
}

// sshConfig is a parsed ssh_config; the zero value has no entries.
type sshConfig struct {
	path string
	cfg  *ssh_config.Config
}

// loadSSHConfig reads the file; a missing default file is not an error, a
// missing file that was asked for explicitly is.
func loadSSHConfig(path, home string) (sshConfig, error) {
	explicit := path != ""
	if strings.EqualFold(path, None) {
		return sshConfig{}, nil
	}
	if !explicit {
		path = filepath.Join(home, ".ssh", "config")
	}
	path = expandHome(path, home)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) && !explicit {
		return sshConfig{}, nil
	}
	if err != nil {
		return sshConfig{}, fmt.Errorf("ssh config: %w", err)
	}
	c, err := ssh_config.DecodeBytes(b)
	if err != nil {
		return sshConfig{}, fmt.Errorf("ssh config %s: %w", path, err)
	}
	return sshConfig{path: path, cfg: c}, nil
}

func (sc sshConfig) get(alias, key string) string {
	if sc.cfg == nil {
		return ""
	}
	v, err := sc.cfg.Get(alias, key)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(v)
}

func (sc sshConfig) getAll(alias, key string) []string {
	if sc.cfg == nil {
		return nil
	}
	v, err := sc.cfg.GetAll(alias, key)
	if err != nil {
		return nil
	}
	return v
}

// endpoint resolves one alias: explicit values win, then ssh_config, then
// defaults (port 22, local user, default key files).
func (sc sshConfig) endpoint(alias string, port int, login, identity, home string) (endpoint, error) {
	ep := endpoint{alias: alias, host: alias, port: port, user: login}
	if hn := sc.get(alias, "HostName"); hn != "" {
		ep.host = strings.ReplaceAll(hn, "%h", alias)
	}
	if ep.port == 0 {
		if p := sc.get(alias, "Port"); p != "" {
			n, err := parsePort(p)
			if err != nil {
				return ep, fmt.Errorf("ssh config %s: Host %s: %w", sc.path, alias, err)
			}
			ep.port = n
		}
	}
	if ep.port == 0 {
		ep.port = defaultPort
	}
	if ep.user == "" {
		ep.user = sc.get(alias, "User")
	}
	if ep.user == "" {
		ep.user = localUser()
	}
	switch {
	case identity != "":
		ep.identityFiles, ep.identityFixed = []string{expandHome(identity, home)}, true
	case len(sc.getAll(alias, "IdentityFile")) > 0:
		for _, f := range sc.getAll(alias, "IdentityFile") {
			ep.identityFiles = append(ep.identityFiles, expandTokens(f, home, ep, alias))
		}
		ep.identityFixed = true
	default:
		for _, name := range []string{"id_ed25519", "id_ecdsa", "id_rsa"} {
			p := filepath.Join(home, ".ssh", name)
			if _, err := os.Stat(p); err == nil {
				ep.identityFiles = append(ep.identityFiles, p)
			}
		}
	}
	return ep, nil
}

// expandTokens expands the ssh_config tokens that make sense in an
// IdentityFile: ~, %d (home), %h (host), %r (remote user), %u (local user),
// %% (percent).
func expandTokens(s, home string, ep endpoint, alias string) string {
	s = expandHome(s, home)
	r := strings.NewReplacer("%%", "%", "%d", home, "%h", ep.host, "%n", alias, "%r", ep.user, "%u", localUser())
	return r.Replace(s)
}

func expandHome(p, home string) string {
	if p == "~" {
		return home
	}
	if strings.HasPrefix(p, "~/") {
		return filepath.Join(home, p[2:])
	}
	return p
}

func homeDir(h string) (string, error) {
	if h != "" {
		return h, nil
	}
	h, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("ssh: finding home directory: %w", err)
	}
	return h, nil
}

func localUser() string {
	if u, err := user.Current(); err == nil && u.Username != "" {
		return u.Username
	}
	if u := os.Getenv("USER"); u != "" {
		return u
	}
	return "root"
}

func orDefault[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

func noneToEmpty(s string) string {
	if strings.EqualFold(s, None) {
		return ""
	}
	return s
}
