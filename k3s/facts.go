package k3s

import (
	"bytes"
	"context"
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
	Hostname string
	OS       string
	// Init is what booted the node: systemd (/run/systemd/system exists),
	// openrc (/run/openrc/softlevel exists), both or none.
	Init        string
	VersionText string // output of `k3s --version`, empty when absent
	// UnitStates maps a service to its state: systemctl is-active's word
	// on systemd, rc-service status's on OpenRC (started, stopped,
	// crashed...; not-found when the service does not exist).
	UnitStates map[string]string
	Dirs       map[string]bool // directories probed -> present
	Files      map[string]File
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
		path.Join(l.ServerTLSDir(), "dynamic-cert.json"), l.OpenRCChildPID())
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
// under sudo's secure_path too, the version marker, a, which reports a
// name that is not a readable file as @absent or @unreadable (unreadable
// is not empty), and g, which reads many files with two processes in all,
// whatever their number: one stat for every header, then one cat of every
// readable file, raw, which the parser splits by the sizes stat gave.
//
// g's arguments are key files to list (never read), then "--", then the
// files to read; directories among the latter (such as the "." and ".."
// a dotfile glob matches) are skipped. A glob that matched nothing stays
// literal and is reported absent (files) or left out (keys). The output
// is "@batch K N", the clock line, the N stat lines (the K keys first),
// "@data", the files' bytes, then a newline and "@data-end": a file that
// changed size between stat and cat moves the end marker, which the
// parser notices.
//
// The clock line is the node's time without a date process: the same stat
// also reports /proc/self, the stat process's own /proc entry, which the
// kernel makes when it is first looked up, stamped with the current time.
// Where /proc is not mounted, date prints it.
//
// Every process a node forks costs it a millisecond or two (as much as a
// check's whole work there on a small or busy node), so the scripts keep
// to builtins beyond these two.
const scriptHeader = `PATH=/usr/local/bin:/usr/local/sbin:/usr/bin:/usr/sbin:/bin:/sbin:$PATH
a() { [ -e "$1" ] && echo "@unreadable $1" || echo "@absent $1"; }
g() {
k=0 m=k
for x do shift
if [ $m = k ]; then
if [ "$x" = -- ]; then m=f; elif [ -f "$x" ]; then set -- "$@" "$x"; k=$((k+1)); fi
elif [ -f "$x" ] && [ -r "$x" ]; then set -- "$@" "$x"
elif ! [ -d "$x" ]; then a "$x"; fi
done
echo "@batch $k $#"
if [ -d /proc/self ]; then stat -L -c '@fsz %a %u %Y %s %n' -- /proc/self "$@"
else date '+@now %s'; [ $# -gt 0 ] && stat -L -c '@fsz %a %u %Y %s %n' -- "$@"; fi
shift $k
echo @data; [ $# -gt 0 ] && cat -- "$@"; echo; echo @data-end
}
echo '` + factsVersion + `'
`

// factsScript is the single shell script that gathers a node's facts: one
// SSH round trip, plain sh and coreutils, nothing a k3s node lacks. Files
// come back raw, framed by their sizes, so no byte of them can break the
// framing. Where neither systemd nor k3s runs, the only processes it
// starts are g's stat and cat; the node's clock comes with g's stat.
func factsScript(l Layout) string {
	p := planFor(l)
	var b strings.Builder
	b.WriteString(scriptHeader + `echo @hostname; { read -r h < /proc/sys/kernel/hostname; } 2>/dev/null && echo "$h" || hostname
echo @os; while IFS= read -r l; do case $l in PRETTY_NAME=*) echo "$l";; esac; done 2>/dev/null </etc/os-release
echo @init
if [ -d /run/systemd/system ]; then
if [ -e /run/openrc/softlevel ]; then echo both; else echo systemd; fi
elif [ -e /run/openrc/softlevel ]; then echo openrc
else echo none; fi
`)
	// The version of the product the layout names, found on PATH (with
	// /opt/rke2/bin, where RKE2's installer goes when /usr/local is read-only).
	fmt.Fprintf(&b, "echo @version; PATH=$PATH:/opt/rke2/bin; command -v %[1]s >/dev/null 2>&1 && %[1]s --version 2>/dev/null | head -n 2\n", l.product().binary)
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
	// On OpenRC, rc-service's status line (" * status: started") for each
	// service, reduced to its word; empty when the service does not exist.
	b.WriteString("if [ -e /run/openrc/softlevel ] && ! [ -d /run/systemd/system ]; then\n")
	for _, u := range p.units {
		fmt.Fprintf(&b, "s=$(rc-service %s status 2>/dev/null); s=${s##*status: }; printf '@rc %%s %%s\\n' %s \"${s%%%%[!a-z]*}\"\n",
			remote.Quote(u), remote.Quote(u))
	}
	b.WriteString("fi\n")
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
	// Every file in one batch, the keys first (listed, not read): a glob
	// that matches nothing stays literal and g reports it absent, as it
	// does every missing file (a key glob that matches nothing is left
	// out).
	b.WriteString("g")
	for _, g := range p.keys {
		dir, pattern := path.Split(g)
		fmt.Fprintf(&b, " %s%s", remote.Quote(dir), pattern)
	}
	b.WriteString(" -- \"$@\"")
	for _, f := range p.files {
		fmt.Fprintf(&b, " %s", remote.Quote(f))
	}
	for _, g := range p.globs {
		dir, pattern := path.Split(g)
		fmt.Fprintf(&b, " %s%s", remote.Quote(dir), pattern)
	}
	b.WriteString("\n")
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

// parseSnapshot reads the output of factsScript (and of ReadMore).
func parseSnapshot(out []byte) (*Snapshot, error) {
	s := &Snapshot{UnitStates: map[string]string{}, Dirs: map[string]bool{}, Files: map[string]File{}, Keys: map[string]File{},
		Absent: map[string]bool{}, Unreadable: map[string]bool{}, Listed: map[string]bool{}}
	var unitLines []string
	sawSystemd := false
	r := lineReader{buf: out}
	if line, ok := r.next(); !ok || line != factsVersion {
		return nil, errors.New("facts: unexpected output from the node (is it a POSIX shell with coreutils?)")
	}
	section, ended := "", false
	for {
		line, ok := r.next()
		if !ok {
			break
		}
		switch {
		case line == "@end":
			ended = true
		case strings.HasPrefix(line, "@batch "):
			if err := s.readBatch(&r, line); err != nil {
				return nil, err
			}
		case strings.HasPrefix(line, "@unit "):
			unit, state, _ := strings.Cut(strings.TrimPrefix(line, "@unit "), " ")
			s.UnitStates[unit] = strings.TrimSpace(state)
		case strings.HasPrefix(line, "@rc "):
			svc, state, _ := strings.Cut(strings.TrimPrefix(line, "@rc "), " ")
			if state = strings.TrimSpace(state); state == "" {
				state = "not-found"
			}
			s.UnitStates[svc] = state
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
	if !ended {
		return nil, errors.New("facts: output ended early")
	}
	if sawSystemd {
		s.Unit = parseUnitShow(unitLines)
	}
	return s, nil
}

// lineReader hands out the lines of a node's output, and the raw bytes
// of a file batch between them.
type lineReader struct {
	buf []byte
	pos int
}

// next returns the next line without its newline; false at the end.
func (r *lineReader) next() (string, bool) {
	if r.pos >= len(r.buf) {
		return "", false
	}
	rest := r.buf[r.pos:]
	i := bytes.IndexByte(rest, '\n')
	if i < 0 {
		r.pos = len(r.buf)
		return string(rest), true
	}
	r.pos += i + 1
	return string(rest[:i]), true
}

// raw returns the next n bytes, or false when fewer are left.
func (r *lineReader) raw(n int) ([]byte, bool) {
	if n < 0 || len(r.buf)-r.pos < n {
		return nil, false
	}
	b := r.buf[r.pos : r.pos+n : r.pos+n]
	r.pos += n
	return b, true
}

// batchEnd follows a batch's bytes: cat's output ends where the script's
// echo starts a line, whatever the last file ended with.
const batchEnd = "\n@data-end\n"

// readBatch reads what g prints from its "@batch K N" line on: N stat
// lines (K keys, listed, then the files), "@data", the files' bytes back
// to back, and batchEnd.
func (s *Snapshot) readBatch(r *lineReader, head string) error {
	var keys, n int
	if _, err := fmt.Sscanf(head, "@batch %d %d", &keys, &n); err != nil || keys < 0 || n < keys {
		return fmt.Errorf("facts: bad batch header %q", head)
	}
	files := make([]batchFile, 0, n-keys)
	total := 0
	for i := 0; ; i++ {
		line, ok := r.next()
		if !ok {
			return errors.New("facts: output ended early")
		}
		if t, ok := strings.CutPrefix(line, "@now "); ok {
			s.setNow(t)
			i--
			continue
		}
		if line == "@data" {
			if i != n {
				// stat could not see a file the shell had just found:
				// it went away in between.
				return errFilesChanged
			}
			break
		}
		bf, err := parseBatchHeader(line)
		if err != nil {
			return err
		}
		if bf.Path == clockPath {
			s.Now = bf.MTime
			i--
			continue
		}
		if i < keys {
			s.Keys[bf.Path] = File{Path: bf.Path, Mode: bf.Mode, UID: bf.UID, MTime: bf.MTime}
			continue
		}
		files = append(files, bf)
		total += bf.size
	}
	data, ok := r.raw(total)
	if end, _ := r.raw(len(batchEnd)); !ok || string(end) != batchEnd {
		// A file changed size between stat and cat.
		return errFilesChanged
	}
	// One exact copy for all the files: they outlive the output, whose
	// buffer grew by doubling and may be twice their size.
	data = bytes.Clone(data)
	for _, bf := range files {
		bf.Data, data = data[:bf.size:bf.size], data[bf.size:]
		s.Files[bf.Path] = bf.File
	}
	return nil
}

// clockPath is the batch's clock line: stat's own /proc entry, made
// (and stamped) when stat looked it up.
const clockPath = "/proc/self"

func (s *Snapshot) setNow(text string) {
	if n, err := strconv.ParseInt(strings.TrimSpace(text), 10, 64); err == nil {
		s.Now = time.Unix(n, 0)
	}
}

// batchFile is one header of a file batch: the file and its size when
// stat saw it.
type batchFile struct {
	File
	size int
}

func parseBatchHeader(line string) (batchFile, error) {
	fields := strings.SplitN(strings.TrimPrefix(line, "@fsz "), " ", 5)
	if !strings.HasPrefix(line, "@fsz ") || len(fields) != 5 {
		return batchFile{}, fmt.Errorf("facts: unexpected line in a file batch: %q", line)
	}
	mode, err1 := strconv.ParseUint(fields[0], 8, 32)
	uid, err2 := strconv.Atoi(fields[1])
	mtime, err3 := strconv.ParseInt(fields[2], 10, 64)
	size, err4 := strconv.Atoi(fields[3])
	if err := errors.Join(err1, err2, err3, err4); err != nil || size < 0 {
		return batchFile{}, fmt.Errorf("facts: bad file header %q", line)
	}
	return batchFile{File: File{Path: fields[4], Mode: uint32(mode), UID: uid, MTime: time.Unix(mtime, 0)}, size: size}, nil
}

// errFilesChanged means files changed size between their stat and their
// read, so the batch cannot be split: read again.
var errFilesChanged = errors.New("facts: files changed while being read")

func (s *Snapshot) addLine(section, line string) {
	switch section {
	case "hostname":
		s.Hostname = strings.TrimSpace(line)
	case "os":
		s.OS = osRelease(line)
	case "init":
		s.Init = strings.TrimSpace(line)
	case "now": // an @now section, as fake nodes print it
		s.setNow(line)
	case "version":
		if s.VersionText != "" {
			s.VersionText += "\n"
		}
		s.VersionText += line
	}
}

// osRelease reads the PRETTY_NAME line of os-release (the script prints
// it as it is in the file, rather than source the file in a subshell) the
// way a shell would: one level of quotes, and in double quotes the
// backslash escapes os-release(5) allows. Any other line is taken as is.
func osRelease(line string) string {
	v, ok := strings.CutPrefix(strings.TrimSpace(line), "PRETTY_NAME=")
	if !ok {
		return strings.TrimSpace(line)
	}
	switch {
	case len(v) >= 2 && v[0] == '\'' && v[len(v)-1] == '\'':
		return v[1 : len(v)-1]
	case len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"':
		var b strings.Builder
		v = v[1 : len(v)-1]
		for i := 0; i < len(v); i++ {
			if v[i] == '\\' && i+1 < len(v) && strings.IndexByte("\"\\$`", v[i+1]) >= 0 {
				i++
			}
			b.WriteByte(v[i])
		}
		return b.String()
	}
	return v
}

// TakeSnapshot runs the facts script on h: one round trip, a second only
// in the rare case that a file changed size while it was being read.
func TakeSnapshot(ctx context.Context, h remote.Host, l Layout) (*Snapshot, error) {
	script := factsScript(l)
	for attempt := 0; ; attempt++ {
		// Read-only and short: no process-group wrapper needed.
		out, err := remote.QuickOutput(ctx, h, script)
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
	b.WriteString("g --")
	for _, p := range paths {
		if dir, ok := strings.CutSuffix(p, "/"); ok {
			fmt.Fprintf(&b, " %s/* %s/.*", remote.Quote(dir), remote.Quote(dir))
		} else {
			fmt.Fprintf(&b, " %s", remote.Quote(p))
		}
	}
	b.WriteString("\necho @end\n")
	out, err := remote.QuickOutput(ctx, h, b.String())
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
