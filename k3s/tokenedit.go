package k3s

import (
	"bytes"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"

	"github.com/fleetcert/fleetcert/pki"
)

// FileKind is the format of a file that may define tokens.
type FileKind string

// File formats; each reads like the program that reads it on a node.
const (
	fileEnv          FileKind = "env"           // systemd EnvironmentFile (install.sh .env, other EnvironmentFile=)
	fileDistroEnv    FileKind = "distro-env"    // /etc/default/<unit>, /etc/sysconfig/<unit> (systemd EnvironmentFile)
	fileUnit         FileKind = "unit"          // the systemd unit file
	fileUnitDropIn   FileKind = "unit-dropin"   // <unit>.service.d/*.conf
	fileConfig       FileKind = "config"        // config.yaml
	fileConfigDropIn FileKind = "config-dropin" // config.yaml.d/*.yaml|*.yml
	fileToken        FileKind = "token-file"    // target of a token-file setting
	// OpenRC: the service script (/etc/init.d/k3s) and the files sh
	// sources for it (env file, /etc/environment, /etc/conf.d/k3s).
	fileServiceScript FileKind = "openrc-script"
	fileShellEnv      FileKind = "shell-env"
)

// ReloadsUnit reports whether systemd must re-read its units
// (systemctl daemon-reload) after a file of this kind changed.
func (k FileKind) ReloadsUnit() bool { return k == fileUnit || k == fileUnitDropIn }

// parseFile lists every definition in one file, without the unit's
// precedence (resets, load order): all of them are rewritten alike.
func parseFile(kind FileKind, file string, content []byte, unit string) ([]TokenSource, error) {
	var srcs []TokenSource
	switch kind {
	case fileEnv:
		srcs = parseEnvFile(file, kindEnvFile, content, "")
	case fileDistroEnv:
		srcs = parseEnvFile(file, kindDistroEnvFile, content, "")
	case fileUnit, fileUnitDropIn:
		execKind := kindUnitExecStart
		if kind == fileUnitDropIn {
			execKind = kindUnitDropIn
		}
		for _, set := range scanUnit(content) {
			switch set.key {
			case "ExecStart":
				srcs = append(srcs, parseExecStart(file, execKind, set, content, unit)...)
			case "Environment":
				srcs = append(srcs, parseEnvironment(file, set, content, unit)...)
			}
		}
	case fileConfig:
		srcs = parseConfig(file, kindConfigFile, content)
	case fileConfigDropIn:
		srcs = parseConfig(file, kindConfigDropIn, content)
	case fileToken:
		srcs = []TokenSource{parseTokenFile(file, content)}
	case fileServiceScript:
		sc := parseServiceScript(file, content)
		srcs = append(sc.args, sc.problems...)
	case fileShellEnv:
		srcs = parseShellEnv(file, shellEnvKind(file), content, true, "")
	default:
		return nil, fmt.Errorf("unknown file kind %q", kind)
	}
	srcs, _ = splitRefs(srcs)
	return append(srcs, uncovered(kind, file, content, srcs)...), nil
}

// splitRefs separates config-file and server definitions from the token
// definitions the parsers found in the same places.
func splitRefs(all []TokenSource) (tokens, refs []TokenSource) {
	for _, s := range all {
		if s.ref != "" {
			refs = append(refs, s)
		} else {
			tokens = append(tokens, s)
		}
	}
	return tokens, refs
}

var (
	secureTokenRE = regexp.MustCompile(`K10[0-9A-Fa-f]{64}::`)
	tokenFileRE   = regexp.MustCompile(`(?i)(agent[-_])?token[-_]file`)
)

// uncovered is the safety net under the parsers: a secure token, or a
// token-file setting, anywhere in the file outside the definitions found
// (a wrapper like sh -c '…', an unsupported syntax) is a problem, so that
// no token is silently left with the old hash. Comment lines are exempt.
func uncovered(kind FileKind, file string, content []byte, srcs []TokenSource) []TokenSource {
	if kind == fileToken {
		return nil
	}
	hashes, lines := map[int]bool{}, map[int]bool{}
	for _, s := range srcs {
		hashes[s.hashOff] = true
		lines[s.Line], lines[s.keyLine] = true, true
	}
	comment := "#;"
	switch kind {
	case fileConfig, fileConfigDropIn, fileServiceScript, fileShellEnv:
		comment = "#"
	}
	ls := splitLines(content)
	isComment := func(line int) bool {
		t := strings.TrimLeft(string(content[ls[line-1].start:ls[line-1].end]), " \t")
		return t != "" && strings.IndexByte(comment, t[0]) >= 0
	}
	var out []TokenSource
	// Quick tests first: most files (a unit file) can match neither
	// pattern, and scanning a whole file with the regexps is slow.
	var secure, tokenFile [][]int
	if bytes.Contains(content, []byte("K10")) {
		secure = secureTokenRE.FindAllIndex(content, -1)
	}
	if mayMatchTokenFile(content) {
		tokenFile = tokenFileRE.FindAllIndex(content, -1)
	}
	for _, m := range secure {
		if line := lineAt(content, m[0]); !hashes[m[0]+3] && !isComment(line) {
			out = append(out, problem(file, kindOfFile(kind), line, "a secure token outside any definition fleetcert understands"))
		}
	}
	for _, m := range tokenFile {
		if partOfLongerName(content, m[0]) {
			continue
		}
		if line := lineAt(content, m[0]); !lines[line] && !isComment(line) {
			out = append(out, problem(file, kindOfFile(kind), line, "a token-file setting fleetcert does not understand"))
		}
	}
	return out
}

// mayMatchTokenFile is a quick test that tokenFileRE can match b: every
// match holds "-file" or "_file" in some case ("file" has no case folds
// outside ASCII), which most files do not, while the case-insensitive
// regexp is slow to scan a whole file with.
func mayMatchTokenFile(b []byte) bool {
	for i := 0; i+5 <= len(b); i++ {
		if (b[i] == '-' || b[i] == '_') && (b[i+1]|0x20) == 'f' && (b[i+2]|0x20) == 'i' &&
			(b[i+3]|0x20) == 'l' && (b[i+4]|0x20) == 'e' {
			return true
		}
	}
	return false
}

// partOfLongerName reports whether the match at i continues a longer
// dashed name (service-account-token-file): "-" preceded by a letter or
// digit. --token-file, K3S_TOKEN_FILE and token-file: are not.
func partOfLongerName(b []byte, i int) bool {
	if i < 2 || b[i-1] != '-' {
		return false
	}
	c := b[i-2]
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

func kindOfFile(k FileKind) SourceKind {
	switch k {
	case fileEnv:
		return kindEnvFile
	case fileDistroEnv:
		return kindDistroEnvFile
	case fileUnit:
		return kindUnitExecStart
	case fileUnitDropIn:
		return kindUnitDropIn
	case fileConfig:
		return kindConfigFile
	case fileConfigDropIn:
		return kindConfigDropIn
	case fileServiceScript:
		return kindCommandArgs
	case fileShellEnv:
		return kindOpenRCEnvFile
	}
	return kindTokenFile
}

// RewriteOptions say what to rewrite.
type RewriteOptions struct {
	// NewHash is the CA hash every secure token must pin: 64 lower-case hex.
	NewHash string
	// OldHashes, when not empty, limits the rewrite to tokens pinning one
	// of these hashes; a token pinning anything else (some unrelated CA) is
	// left as it is and reported in Skipped.
	OldHashes []string
}

// Reasons a token is left as it is.
const (
	SkipShort   = "short token: pins no CA hash"
	SkipCurrent = "already pins the new CA hash"
	SkipForeign = "pins a CA hash that is not one of the expected old hashes"
)

// Skipped is a token definition a rewrite left unchanged, and why.
type Skipped struct {
	Source TokenSource
	Reason string
}

// FileRewrite is the planned change of one file.
type FileRewrite struct {
	Path      string
	Kind      FileKind
	Old, New  []byte
	Rewritten []TokenSource // definitions whose hash changes, as found in Old
	Skipped   []Skipped
}

// Changed reports whether the file changes at all.
func (f FileRewrite) Changed() bool { return len(f.Rewritten) > 0 }

// rewriteFile plans the rewrite of one file (path only names it in
// findings). Short tokens, tokens already pinning NewHash and, with
// OldHashes, tokens pinning another CA are skipped and listed. Any
// unreadable or ambiguous definition, or a secure token outside a
// definition fleetcert understands, refuses the whole file. The result is
// re-read and checked to differ from content in the hash bytes only.
func rewriteFile(kind FileKind, path string, content []byte, opts RewriteOptions) (FileRewrite, error) {
	if !pki.ValidCAHash(opts.NewHash) {
		return FileRewrite{}, errors.New("new CA hash must be 64 lower-case hex characters")
	}
	srcs, err := parseFile(kind, path, content, Layout{}.UnitName())
	if err != nil {
		return FileRewrite{}, err
	}
	return rewrite(kind, path, content, srcs, opts)
}

func rewrite(kind FileKind, path string, content []byte, srcs []TokenSource, opts RewriteOptions) (FileRewrite, error) {
	r := FileRewrite{Path: path, Kind: kind, Old: content, New: bytes.Clone(content)}
	if err := refuse(srcs); err != nil {
		return FileRewrite{}, err
	}
	for _, s := range srcs {
		if s.FileRef || s.ref != "" || s.Value == "" {
			continue
		}
		if reason := skipReason(s, opts); reason != "" {
			r.Skipped = append(r.Skipped, Skipped{Source: s, Reason: reason})
			continue
		}
		copy(r.New[s.hashOff:s.hashOff+64], opts.NewHash)
		r.Rewritten = append(r.Rewritten, s)
	}
	if err := verifyRewrite(kind, path, r, opts.NewHash); err != nil {
		return FileRewrite{}, err
	}
	if !r.Changed() {
		r.New = content
	}
	return r, nil
}

// refuse is an error listing every problem that makes the file unsafe to
// rewrite.
func refuse(srcs []TokenSource) error {
	var msgs []string
	for _, s := range srcs {
		if s.Err != nil {
			msgs = append(msgs, s.String())
		}
	}
	if len(msgs) == 0 {
		return nil
	}
	return fmt.Errorf("refusing to rewrite tokens: %s", strings.Join(msgs, "; "))
}

func skipReason(s TokenSource, opts RewriteOptions) string {
	switch {
	case !s.Token.Secure():
		return SkipShort
	case s.Token.CAHash == opts.NewHash:
		return SkipCurrent
	case len(opts.OldHashes) > 0 && !slices.Contains(opts.OldHashes, s.Token.CAHash):
		return SkipForeign
	}
	return ""
}

// verifyRewrite re-reads the new content and checks that it defines the
// same tokens at the same places, with only the rewritten hashes changed,
// and that no byte outside those hashes moved.
func verifyRewrite(kind FileKind, path string, r FileRewrite, newHash string) error {
	fail := func(what string) error {
		return fmt.Errorf("%s: internal check failed after rewriting (%s); nothing changed", path, what)
	}
	if len(r.New) != len(r.Old) {
		return fail("length")
	}
	allowed := map[int]bool{}
	for _, s := range r.Rewritten {
		for i := 0; i < 64; i++ {
			allowed[s.hashOff+i] = true
		}
	}
	for i := range r.Old {
		if r.Old[i] != r.New[i] && !allowed[i] {
			return fail("a byte outside a hash")
		}
	}
	before, _ := parseFile(kind, path, r.Old, Layout{}.UnitName())
	after, err := parseFile(kind, path, r.New, Layout{}.UnitName())
	if err != nil || len(before) != len(after) {
		return fail("definitions")
	}
	rewritten := map[int]bool{}
	for _, s := range r.Rewritten {
		rewritten[s.hashOff] = true
	}
	for i, b := range before {
		a := b.Value
		if rewritten[b.hashOff] {
			a = a[:3] + newHash + a[67:]
		}
		x := after[i]
		if x.Key != b.Key || x.Line != b.Line || x.Kind != b.Kind || x.Value != a || (x.Err == nil) != (b.Err == nil) {
			return fail("definition " + b.String())
		}
		if rewritten[b.hashOff] && (x.Token.CAHash != newHash || x.Token.Password != b.Token.Password ||
			x.Token.Username != b.Token.Username || x.Token.BootstrapSecret != b.Token.BootstrapSecret) {
			return fail("token " + b.String())
		}
	}
	return nil
}

// PlanTokenRewrites plans the rewrite of every file of the node that
// defines a token (in as for scanTokens, token-file targets included), in
// a stable order. Paths the scan still asks for, and any problem it
// reports, are errors. Files with nothing to change are included with
// Changed() false so that skipped tokens are reported. Any file that
// cannot be rewritten safely makes the whole plan an error: rewriting only
// some places would leave the node with tokens that disagree.
func PlanTokenRewrites(l Layout, in NodeFiles, opts RewriteOptions) ([]FileRewrite, error) {
	if !pki.ValidCAHash(opts.NewHash) {
		return nil, errors.New("new CA hash must be 64 lower-case hex characters")
	}
	sc := scanTokens(l, in)
	if len(sc.Pending) > 0 {
		return nil, fmt.Errorf("files that define tokens were not read: %s", strings.Join(sc.Pending, ", "))
	}
	if err := refuse(sc.Sources); err != nil {
		return nil, err
	}
	kinds := sc.fileKinds()
	paths := make([]string, 0, len(kinds))
	for p := range kinds {
		if in.Files[p] != nil {
			paths = append(paths, p)
		}
	}
	sort.Strings(paths)
	var out []FileRewrite
	var errs []error
	for _, p := range paths {
		fs, err := parseFile(kinds[p], p, in.Files[p], l.UnitName())
		if err == nil {
			var r FileRewrite
			if r, err = rewrite(kinds[p], p, in.Files[p], fs, opts); err == nil {
				if len(r.Rewritten)+len(r.Skipped) > 0 {
					out = append(out, r)
				}
				continue
			}
		}
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}
