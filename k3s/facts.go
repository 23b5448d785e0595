package k3s

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"path"
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
	Now         time.Time // the node's clock
}

// snapshotPlan is what the facts script reads for a layout. Private keys
// are not in it: only the material phase of a rotation reads CA keys, from
// the primary server alone.
type snapshotPlan struct {
	units []string // units whose state is read
	dirs  []string // directories whose presence is reported
	files []string // single files read when present
	globs []string // shell globs whose matching files are read
}

func planFor(l Layout) snapshotPlan {
	server := Layout{Role: RoleServer, DataDir: l.DataDir, SystemdDir: l.SystemdDir}
	agent := Layout{Role: RoleAgent, DataDir: l.DataDir, SystemdDir: l.SystemdDir}
	p := snapshotPlan{
		units: uniq(l.UnitName(), server.UnitName(), agent.UnitName()),
		dirs:  []string{l.ServerDir(), l.AgentDir(), l.EtcdDBDir(), l.FleetcertDir()},
	}
	p.files = append(CandidateFiles(l), l.ServerToken(), l.AgentTokenFile(),
		path.Join(l.ServerTLSDir(), "dynamic-cert.json"))
	for _, d := range CandidateDirs(l) {
		p.globs = append(p.globs, path.Join(d.Path, "*"))
	}
	p.globs = append(p.globs,
		path.Join(l.ServerTLSDir(), "*.crt"),
		path.Join(l.ServerTLSDir(), "etcd", "*.crt"),
		path.Join(l.AgentDir(), "*.crt"),
		path.Join(l.FleetcertDir(), "*.json"),
		path.Join(l.FleetcertDir(), "lock"),
	)
	return p
}

// scriptHeader starts every file-reading script: a PATH that finds k3s
// under sudo's secure_path too, the version marker, and f, which prints one
// file as a header line (mode, uid, mtime, path) and its base64 body.
const scriptHeader = `PATH=/usr/local/bin:/usr/local/sbin:/usr/bin:/usr/sbin:/bin:/sbin:$PATH
f() { [ -f "$1" ] || return 0; printf '@file %s %s\n' "$(stat -L -c '%a %u %Y' -- "$1")" "$1"; base64 -w0 < "$1"; echo; }
echo '` + factsVersion + `'
`

// FactsScript is the single shell script that gathers a node's facts: one
// SSH round trip, plain sh and coreutils, nothing a k3s node lacks. Files
// come back base64-encoded so no byte of them can break the framing.
func FactsScript(l Layout) string {
	p := planFor(l)
	var b strings.Builder
	b.WriteString(scriptHeader + `echo @hostname; hostname 2>/dev/null || cat /proc/sys/kernel/hostname
echo @os; ( . /etc/os-release 2>/dev/null && echo "$PRETTY_NAME" )
echo @init
if [ -d /run/systemd/system ]; then echo systemd
elif [ -d /run/openrc ] || command -v openrc-run >/dev/null 2>&1; then echo openrc
else echo unknown; fi
echo @now; date +%s
echo @version; command -v k3s >/dev/null 2>&1 && k3s --version 2>/dev/null | head -n 2
`)
	for _, u := range p.units {
		fmt.Fprintf(&b, "printf '@unit %%s %%s\\n' %s \"$(systemctl is-active %s 2>/dev/null || true)\"\n",
			remote.Quote(u), remote.Quote(u+".service"))
	}
	for _, d := range p.dirs {
		fmt.Fprintf(&b, "[ -d %s ] && printf '@dir %%s\\n' %s\n", remote.Quote(d), remote.Quote(d))
	}
	for _, f := range p.files {
		fmt.Fprintf(&b, "f %s\n", remote.Quote(f))
	}
	for _, g := range p.globs {
		dir, pattern := path.Split(g)
		fmt.Fprintf(&b, "for x in %s%s; do f \"$x\"; done\n", remote.Quote(dir), pattern)
	}
	b.WriteString("echo @end\n")
	return b.String()
}

// ParseSnapshot reads the output of FactsScript.
func ParseSnapshot(out []byte) (*Snapshot, error) {
	s := &Snapshot{UnitStates: map[string]string{}, Dirs: map[string]bool{}, Files: map[string]File{}}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 64*1024), 64*1024*1024)
	if !sc.Scan() || sc.Text() != factsVersion {
		return nil, errors.New("facts: unexpected output from the node (is it a POSIX shell with coreutils?)")
	}
	section, ended := "", false
	var pending *File
	for sc.Scan() {
		line := sc.Text()
		if pending != nil {
			data, err := base64.StdEncoding.DecodeString(line)
			if err != nil {
				return nil, fmt.Errorf("facts: %s: bad encoding: %w", pending.Path, err)
			}
			pending.Data = data
			s.Files[pending.Path] = *pending
			pending = nil
			continue
		}
		switch {
		case line == "@end":
			ended = true
		case strings.HasPrefix(line, "@file "):
			f, err := parseFileHeader(line)
			if err != nil {
				return nil, err
			}
			pending = &f
		case strings.HasPrefix(line, "@unit "):
			unit, state, _ := strings.Cut(strings.TrimPrefix(line, "@unit "), " ")
			s.UnitStates[unit] = strings.TrimSpace(state)
		case strings.HasPrefix(line, "@dir "):
			s.Dirs[strings.TrimPrefix(line, "@dir ")] = true
		case strings.HasPrefix(line, "@"):
			section = line[1:]
		default:
			s.addLine(section, line)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("facts: %w", err)
	}
	if !ended {
		return nil, errors.New("facts: output ended early")
	}
	return s, nil
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

// FilesUnder returns the snapshot's files in dir (not below), by name.
func (s *Snapshot) FilesUnder(dir string) []File {
	var out []File
	for p, f := range s.Files {
		if path.Dir(p) == path.Clean(dir) {
			out = append(out, f)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out
}

// TakeSnapshot runs the facts script on h: one round trip.
func TakeSnapshot(ctx context.Context, h remote.Host, l Layout) (*Snapshot, error) {
	out, err := remote.Output(ctx, h, FactsScript(l))
	if err != nil {
		return nil, fmt.Errorf("gather facts: %w", err)
	}
	return ParseSnapshot(out)
}

// ReadFiles reads several files in one round trip, in the same framing as
// the facts script; absent files are left out of the result.
func ReadFiles(ctx context.Context, h remote.Host, paths []string) (map[string]File, error) {
	var b strings.Builder
	b.WriteString(scriptHeader)
	for _, p := range paths {
		fmt.Fprintf(&b, "f %s\n", remote.Quote(p))
	}
	b.WriteString("echo @end\n")
	out, err := remote.Output(ctx, h, b.String())
	if err != nil {
		return nil, fmt.Errorf("read files: %w", err)
	}
	s, err := ParseSnapshot(out)
	if err != nil {
		return nil, err
	}
	return s.Files, nil
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
