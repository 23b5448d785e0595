package k3s

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"maps"
	"path"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/fleetcert/fleetcert/remote"
)

// factsVersion marks the output format of the facts script, so a parser
// never misreads output from some other program.
const factsVersion = "@@fleetcert-facts 1"

// File is one file read from a node.
type File struct {
	Path  string
	Mode  uint32 // permission bits
	UID   int
	MTime time.Time
	Data  []byte
}

// Snapshot is what one facts round trip saw on a node: system facts and the
// raw contents of every file fleetcert cares about.
type Snapshot struct {
	Hostname    string
	OS          string
	Init        string            // systemd, openrc or unknown
	VersionText string            // output of `k3s --version`, empty when absent
	UnitStates  map[string]string // unit -> systemctl is-active output
	Dirs        map[string]bool   // directories probed -> present
	Files       map[string]File
	// Keys lists the private key files in server/tls, server/tls/etcd and
	// agent/ by path, with mode and owner only: their contents are never
	// read with the facts (Data is nil).
	Keys map[string]File
	Now  time.Time // the node's clock
	// Unit is what `systemctl show` says of the node's k3s unit; nil
	// where systemd does not run the node.
	Unit *UnitShow
	// ManagerEnv is systemd's manager environment, one VAR=value a line.
	ManagerEnv []string
	// Absent lists files asked for by name that do not exist; Unreadable
	// those that exist but could not be read (or directories that could
	// not be searched). Neither is the same as an empty file.
	Absent     map[string]bool
	Unreadable map[string]bool
	// Listed holds directories whose entries were all read (ReadMore).
	Listed map[string]bool
}

// snapshotPlan is what the facts script reads for a layout. Private keys
// are not in it: only the material phase of a rotation reads CA keys, from
// the primary server alone.
type snapshotPlan struct {
	units []string // units whose state is read
	dirs  []string // directories whose presence is reported
	files []string // single files read when present
	globs []string // shell globs whose matching files are read
	keys  []string // shell globs whose matching files are listed, not read
}

func planFor(l Layout) snapshotPlan {
	server := Layout{Role: RoleServer, DataDir: l.DataDir, SystemdDir: l.SystemdDir}
	agent := Layout{Role: RoleAgent, DataDir: l.DataDir, SystemdDir: l.SystemdDir}
	p := snapshotPlan{
		units: uniq(l.UnitName(), server.UnitName(), agent.UnitName()),
		dirs:  []string{l.ServerDir(), l.AgentDir(), l.EtcdDBDir(), l.FleetcertDir()},
	}
	p.files = append(candidateFiles(l), l.ServerToken(), l.AgentTokenFile(),
		path.Join(l.ServerTLSDir(), "dynamic-cert.json"))
	for _, d := range candidateDirs(l) {
		// k3s reads dotfiles in config.yaml.d too; "*" skips them.
		p.globs = append(p.globs, path.Join(d.Path, "*"), path.Join(d.Path, ".*"))
	}
	p.globs = append(p.globs,
		path.Join(l.ServerTLSDir(), "*.crt"),
		path.Join(l.ServerTLSDir(), "etcd", "*.crt"),
		path.Join(l.AgentDir(), "*.crt"),
		path.Join(l.FleetcertDir(), "*.json"),
		path.Join(l.FleetcertDir(), "lock"),
	)
	p.keys = keyGlobs(l)
	return p
}

// keyGlobs are where a node keeps private keys: the facts list them (name,
// mode, owner) so that a check can flag CA keys left behind and keys that
// others can read, without ever reading a key.
func keyGlobs(l Layout) []string {
	return []string{
		path.Join(l.ServerTLSDir(), "*.key"),
		path.Join(l.ServerTLSDir(), "etcd", "*.key"),
		path.Join(l.AgentDir(), "*.key"),
	}
}

// scriptHeader starts every file-reading script: a PATH that finds k3s
// under sudo's secure_path too, the version marker, f, which prints one
// file as a header line (mode, uid, mtime, path) and its base64 body, and
// g, which does the same for many files with three processes in all
// instead of two per file: one stat for every header (with sizes), then
// every readable file concatenated in one base64 line that the parser
// splits by those sizes. A name that is not a readable file is reported
// by a as @absent or @unreadable (unreadable is not empty); directories,
// such as the "." and ".." a dotfile glob matches, are skipped.
const scriptHeader = `PATH=/usr/local/bin:/usr/local/sbin:/usr/bin:/usr/sbin:/bin:/sbin:$PATH
a() { [ -e "$1" ] && echo "@unreadable $1" || echo "@absent $1"; }
f() { [ -f "$1" ] || { a "$1"; return 0; }; [ -r "$1" ] || { echo "@unreadable $1"; return 0; }; stat -L -c '@file %a %u %Y %n' -- "$1"; base64 -w0 < "$1"; echo; }
g() {
for x do shift; if [ -f "$x" ] && [ -r "$x" ]; then set -- "$@" "$x"; elif [ -d "$x" ]; then :; else f "$x"; fi; done
[ $# -gt 0 ] || return 0
echo @batch; stat -L -c '@fsz %a %u %Y %s %n' -- "$@"; echo @data; cat -- "$@" | base64 -w0; echo
}
echo '` + factsVersion + `'
`

// factsScript is the single shell script that gathers a node's facts: one
// SSH round trip, plain sh and coreutils, nothing a k3s node lacks. Files
// come back base64-encoded so no byte of them can break the framing.
func factsScript(l Layout) string {
	p := planFor(l)
	var b strings.Builder
	b.WriteString(scriptHeader + `echo @hostname; { read -r h < /proc/sys/kernel/hostname; } 2>/dev/null && echo "$h" || hostname
echo @os; ( . /etc/os-release 2>/dev/null && echo "$PRETTY_NAME" )
echo @init
if [ -d /run/systemd/system ]; then echo systemd
elif [ -d /run/openrc ] || command -v openrc-run >/dev/null 2>&1; then echo openrc
else echo unknown; fi
echo @now; date +%s
echo @version; command -v k3s >/dev/null 2>&1 && k3s --version 2>/dev/null | head -n 2
`)
	// One systemctl for every unit: is-active prints a word per unit, in
	// order. Only where systemd runs (the test the init section makes): on
	// OpenRC, or in a container without systemd, states stay empty.
	b.WriteString("set --; [ -d /run/systemd/system ] && set -- $(systemctl is-active")
	for _, u := range p.units {
		fmt.Fprintf(&b, " %s", remote.Quote(u+".service"))
	}
	b.WriteString(" 2>/dev/null)\n")
	for _, u := range p.units {
		fmt.Fprintf(&b, "printf '@unit %%s %%s\\n' %s \"$1\"; [ $# -gt 0 ] && shift\n", remote.Quote(u))
	}
	for _, d := range p.dirs {
		fmt.Fprintf(&b, "[ -d %s ] && printf '@dir %%s\\n' %s\n", remote.Quote(d), remote.Quote(d))
	}
	// What systemd says it loaded for the unit, and the manager's
	// environment; the files it names are read in the batch below ("$@").
	// A path that needs quoting would be split wrongly here: the parser
	// refuses such a DropInPaths value rather than guess. @files ends the
	// manager-environment section.
	fmt.Fprintf(&b, `set --
if [ -d /run/systemd/system ]; then
echo @systemd
u=$(systemctl show %s -p %s 2>/dev/null)
printf '%%s\n' "$u"
echo @manager-env
systemctl show-environment 2>/dev/null
set -f; set -- $(printf '%%s\n' "$u" | sed -n -e 's/^FragmentPath=//p' -e 's/^DropInPaths=//p' -e 's/^EnvironmentFiles=\(.*\) (ignore_errors=[a-z]*)$/\1/p'); set +f
echo @files
fi
`, remote.Quote(l.UnitName()+".service"), strings.Join(unitShowProps, " -p "))
	// Directories that exist but cannot be searched hide their files:
	// say so rather than report them absent.
	for _, d := range p.searchDirs() {
		fmt.Fprintf(&b, "[ -d %s ] && ! [ -x %s ] && echo %s\n", remote.Quote(d), remote.Quote(d), remote.Quote("@unreadable "+d))
	}
	// Every file in one batch: a glob that matches nothing stays literal
	// and g reports it absent, as it does every missing file.
	b.WriteString("g \"$@\"")
	for _, f := range p.files {
		fmt.Fprintf(&b, " %s", remote.Quote(f))
	}
	for _, g := range p.globs {
		dir, pattern := path.Split(g)
		fmt.Fprintf(&b, " %s%s", remote.Quote(dir), pattern)
	}
	b.WriteString("\n")
	if len(p.keys) > 0 {
		// One stat for every key: a glob that matches nothing stays literal
		// and is filtered out with stat's error.
		b.WriteString("stat -L -c '@key %f %u %n' --")
		for _, g := range p.keys {
			dir, pattern := path.Split(g)
			fmt.Fprintf(&b, " %s%s", remote.Quote(dir), pattern)
		}
		b.WriteString(" 2>/dev/null\n")
	}
	b.WriteString("echo @end\n")
	return b.String()
}

// searchDirs are the directories whose files the plan reads.
func (p snapshotPlan) searchDirs() []string {
	var out []string
	for _, f := range append(append([]string{}, p.files...), p.globs...) {
		out = append(out, path.Dir(f))
	}
	sort.Strings(out)
	return slices.Compact(out)
}

// parseSnapshot reads the output of factsScript.
func parseSnapshot(out []byte) (*Snapshot, error) {
	s := &Snapshot{UnitStates: map[string]string{}, Dirs: map[string]bool{}, Files: map[string]File{}, Keys: map[string]File{},
		Absent: map[string]bool{}, Unreadable: map[string]bool{}, Listed: map[string]bool{}}
	var unitLines []string
	sawSystemd := false
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 64*1024), 64*1024*1024)
	if !sc.Scan() || sc.Text() != factsVersion {
		return nil, errors.New("facts: unexpected output from the node (is it a POSIX shell with coreutils?)")
	}
	section, ended := "", false
	var pending *File
	var batch []batchFile // headers of the batch being read
	inBatch, batchData := false, false
	for sc.Scan() {
		// Data lines (base64, the bulk of the output) are decoded from the
		// scanner's buffer, without a string copy of each first.
		if batchData {
			if err := s.addBatch(batch, sc.Bytes()); err != nil {
				return nil, err
			}
			batch, inBatch, batchData = nil, false, false
			continue
		}
		if pending != nil {
			data, err := decodeBase64(sc.Bytes())
			if err != nil {
				return nil, fmt.Errorf("facts: %s: bad encoding: %w", pending.Path, err)
			}
			pending.Data = data
			s.Files[pending.Path] = *pending
			pending = nil
			continue
		}
		line := sc.Text()
		if inBatch {
			switch {
			case line == "@data":
				batchData = true
			case strings.HasPrefix(line, "@fsz "):
				bf, err := parseBatchHeader(line)
				if err != nil {
					return nil, err
				}
				batch = append(batch, bf)
			default:
				return nil, fmt.Errorf("facts: unexpected line in a file batch: %q", line)
			}
			continue
		}
		switch {
		case line == "@end":
			ended = true
		case line == "@batch":
			inBatch = true
		case strings.HasPrefix(line, "@file "):
			f, err := parseFileHeader(line)
			if err != nil {
				return nil, err
			}
			pending = &f
		case strings.HasPrefix(line, "@unit "):
			unit, state, _ := strings.Cut(strings.TrimPrefix(line, "@unit "), " ")
			s.UnitStates[unit] = strings.TrimSpace(state)
		case strings.HasPrefix(line, "@key "):
			if k, ok := parseKeyLine(line); ok {
				s.Keys[k.Path] = k
			}
		case strings.HasPrefix(line, "@dir "):
			s.Dirs[strings.TrimPrefix(line, "@dir ")] = true
		case strings.HasPrefix(line, "@absent "):
			s.Absent[strings.TrimPrefix(line, "@absent ")] = true
		case strings.HasPrefix(line, "@listed "):
			s.Listed[strings.TrimPrefix(line, "@listed ")] = true
		case strings.HasPrefix(line, "@unreadable "):
			s.Unreadable[strings.TrimPrefix(line, "@unreadable ")] = true
		case line == "@systemd":
			section, sawSystemd = "systemd", true
		case section == "systemd" && !strings.HasPrefix(line, "@"):
			unitLines = append(unitLines, line)
		case section == "manager-env" && !strings.HasPrefix(line, "@"):
			s.ManagerEnv = append(s.ManagerEnv, line)
		case strings.HasPrefix(line, "@"):
			section = line[1:]
		default:
			s.addLine(section, line)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("facts: %w", err)
	}
	if !ended || inBatch {
		return nil, errors.New("facts: output ended early")
	}
	if sawSystemd {
		s.Unit = parseUnitShow(unitLines)
	}
	return s, nil
}

// batchFile is one header of a file batch: the file and its size when
// stat saw it.
type batchFile struct {
	File
	size int
}

func parseBatchHeader(line string) (batchFile, error) {
	fields := strings.SplitN(strings.TrimPrefix(line, "@fsz "), " ", 5)
	if len(fields) != 5 {
		return batchFile{}, fmt.Errorf("facts: bad file header %q", line)
	}
	f, err := parseFileHeader("@file " + strings.Join(append(fields[:3:3], fields[4]), " "))
	if err != nil {
		return batchFile{}, err
	}
	size, err := strconv.Atoi(fields[3])
	if err != nil || size < 0 {
		return batchFile{}, fmt.Errorf("facts: bad file header %q", line)
	}
	return batchFile{File: f, size: size}, nil
}

// errFilesChanged means files changed size between their stat and their
// read, so the batch cannot be split: read again.
var errFilesChanged = errors.New("facts: files changed while being read")

// addBatch splits the batch's concatenated contents by the sizes stat saw.
func (s *Snapshot) addBatch(batch []batchFile, line []byte) error {
	data, err := decodeBase64(line)
	if err != nil {
		return fmt.Errorf("facts: file batch: bad encoding: %w", err)
	}
	total := 0
	for _, bf := range batch {
		total += bf.size
	}
	if total != len(data) {
		return errFilesChanged
	}
	for _, bf := range batch {
		bf.Data, data = data[:bf.size:bf.size], data[bf.size:]
		s.Files[bf.Path] = bf.File
	}
	return nil
}

// decodeBase64 is base64.StdEncoding.DecodeString for bytes.
func decodeBase64(b []byte) ([]byte, error) {
	out := make([]byte, base64.StdEncoding.DecodedLen(len(b)))
	n, err := base64.StdEncoding.Decode(out, b)
	return out[:n], err
}

func parseFileHeader(line string) (File, error) {
	fields := strings.SplitN(strings.TrimPrefix(line, "@file "), " ", 4)
	if len(fields) != 4 {
		return File{}, fmt.Errorf("facts: bad file header %q", line)
	}
	mode, err1 := strconv.ParseUint(fields[0], 8, 32)
	uid, err2 := strconv.Atoi(fields[1])
	mtime, err3 := strconv.ParseInt(fields[2], 10, 64)
	if err := errors.Join(err1, err2, err3); err != nil {
		return File{}, fmt.Errorf("facts: bad file header %q: %w", line, err)
	}
	return File{Path: fields[3], Mode: uint32(mode), UID: uid, MTime: time.Unix(mtime, 0)}, nil
}

// parseKeyLine reads "@key RAWMODE UID PATH" (stat's %f: the raw mode in
// hex, so that only regular files are kept).
func parseKeyLine(line string) (File, bool) {
	fields := strings.SplitN(strings.TrimPrefix(line, "@key "), " ", 3)
	if len(fields) != 3 {
		return File{}, false
	}
	raw, err1 := strconv.ParseUint(fields[0], 16, 32)
	uid, err2 := strconv.Atoi(fields[1])
	if err1 != nil || err2 != nil || raw&0o170000 != 0o100000 {
		return File{}, false
	}
	return File{Path: fields[2], Mode: uint32(raw & 0o7777), UID: uid}, true
}

func (s *Snapshot) addLine(section, line string) {
	switch section {
	case "hostname":
		s.Hostname = strings.TrimSpace(line)
	case "os":
		s.OS = strings.TrimSpace(line)
	case "init":
		s.Init = strings.TrimSpace(line)
	case "now":
		if n, err := strconv.ParseInt(strings.TrimSpace(line), 10, 64); err == nil {
			s.Now = time.Unix(n, 0)
		}
	case "version":
		if s.VersionText != "" {
			s.VersionText += "\n"
		}
		s.VersionText += line
	}
}

// TakeSnapshot runs the facts script on h: one round trip, a second only
// in the rare case that a file changed size while it was being read.
func TakeSnapshot(ctx context.Context, h remote.Host, l Layout) (*Snapshot, error) {
	script := factsScript(l)
	for attempt := 0; ; attempt++ {
		out, err := remote.Output(ctx, h, script)
		if err != nil {
			return nil, fmt.Errorf("gather facts: %w", err)
		}
		s, err := parseSnapshot(out)
		if errors.Is(err, errFilesChanged) && attempt == 0 {
			continue
		}
		return s, err
	}
}

// ReadFiles reads several files in one round trip, in the same framing as
// the facts script; absent files are left out of the result.
func ReadFiles(ctx context.Context, h remote.Host, paths []string) (map[string]File, error) {
	s, err := ReadMore(ctx, h, paths)
	if err != nil {
		return nil, err
	}
	return s.Files, nil
}

// ReadMore reads files and lists directories in one round trip: a path
// ending in "/" is a directory whose regular files, dotfiles included, are
// all read. The result says which paths were absent or unreadable.
func ReadMore(ctx context.Context, h remote.Host, paths []string) (*Snapshot, error) {
	var b strings.Builder
	b.WriteString(scriptHeader)
	for _, p := range paths {
		if dir, ok := strings.CutSuffix(p, "/"); ok {
			q := remote.Quote(dir)
			fmt.Fprintf(&b, "[ -d %s ] && ! [ -x %s ] && echo %s\n", q, q, remote.Quote("@unreadable "+dir))
			fmt.Fprintf(&b, "echo %s\n", remote.Quote("@listed "+dir))
		}
	}
	b.WriteString("g")
	for _, p := range paths {
		if dir, ok := strings.CutSuffix(p, "/"); ok {
			fmt.Fprintf(&b, " %s/* %s/.*", remote.Quote(dir), remote.Quote(dir))
		} else {
			fmt.Fprintf(&b, " %s", remote.Quote(p))
		}
	}
	b.WriteString("\necho @end\n")
	out, err := remote.Output(ctx, h, b.String())
	if err != nil {
		return nil, fmt.Errorf("read files: %w", err)
	}
	return parseSnapshot(out)
}

func uniq(items ...string) []string {
	seen := map[string]bool{}
	var out []string
	for _, it := range items {
		if !seen[it] {
			seen[it] = true
			out = append(out, it)
		}
	}
	return out
}

// Merge returns s with more's files and findings added (s may be nil).
func (s *Snapshot) Merge(more *Snapshot) *Snapshot {
	if s == nil {
		return more
	}
	maps.Copy(s.Files, more.Files)
	maps.Copy(s.Absent, more.Absent)
	maps.Copy(s.Unreadable, more.Unreadable)
	maps.Copy(s.Listed, more.Listed)
	return s
}
