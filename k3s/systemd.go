package k3s

import (
	"fmt"
	"path"
	"strconv"
	"strings"
)

// UnitShow is what systemd itself says about a node's k3s unit
// (`systemctl show UNIT -p ...`): the files it loaded, not the ones
// install.sh would have written. systemd has already resolved drop-in
// directories (/etc, /run, /usr/lib, prefix `k3s-.service.d`, `service.d`,
// template `k3s-agent@.service.d`) and expanded specifiers in
// EnvironmentFile=, so fleetcert reads exactly these files.
type UnitShow struct {
	LoadState string // loaded, not-found, masked, ...
	// FragmentPath is the unit file; for an instance of a template unit,
	// the template (k3s-agent@.service).
	FragmentPath string
	// DropInPaths are the drop-ins in the order systemd applies them.
	DropInPaths []string
	// EnvFiles are the configured EnvironmentFile= entries in load order,
	// including optional ("-") ones that may not exist.
	EnvFiles []EnvFileEntry
	MainPID  int
	// NeedDaemonReload: unit files changed since systemd loaded them, so
	// DropInPaths may not name what the next start would use.
	NeedDaemonReload bool
	// Unparsed lists values fleetcert could not read with certainty
	// (a quoted path in DropInPaths, an unexpected EnvironmentFiles form).
	Unparsed []string
}

// EnvFileEntry is one EnvironmentFile= of the unit.
type EnvFileEntry struct {
	Path     string
	Optional bool // "-" prefix: a missing file is no error
}

// unitShowProps are the properties the facts script asks for. systemd
// prints them in its own order, not in this one.
var unitShowProps = []string{"LoadState", "FragmentPath", "DropInPaths", "EnvironmentFiles", "MainPID", "NeedDaemonReload"}

// parseUnitShow reads `systemctl show` output: one Name=value per line;
// EnvironmentFiles= once per entry, "PATH (ignore_errors=yes|no)";
// DropInPaths= space-separated, a path shell-quoted when it needs it.
func parseUnitShow(lines []string) *UnitShow {
	u := &UnitShow{}
	for _, line := range lines {
		name, val, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		switch name {
		case "LoadState":
			u.LoadState = val
		case "FragmentPath":
			u.FragmentPath = val
		case "DropInPaths":
			for _, p := range strings.Fields(val) {
				if strings.ContainsAny(p, `'"\`) || !path.IsAbs(p) {
					u.Unparsed = append(u.Unparsed, "DropInPaths="+val)
					break
				}
				u.DropInPaths = append(u.DropInPaths, p)
			}
		case "EnvironmentFiles":
			e, err := parseEnvFilesValue(val)
			if err != nil {
				u.Unparsed = append(u.Unparsed, "EnvironmentFiles="+val)
				continue
			}
			u.EnvFiles = append(u.EnvFiles, e)
		case "MainPID":
			u.MainPID, _ = strconv.Atoi(val)
		case "NeedDaemonReload":
			u.NeedDaemonReload = val == "yes"
		}
	}
	return u
}

func parseEnvFilesValue(val string) (EnvFileEntry, error) {
	p, flag, ok := strings.Cut(val, " (ignore_errors=")
	// A wildcard entry names files fleetcert would have to expand as
	// systemd does: refused as unparsed rather than guessed.
	if !ok || !path.IsAbs(p) || strings.ContainsAny(p, " \t*?[") {
		return EnvFileEntry{}, fmt.Errorf("unexpected form")
	}
	switch flag {
	case "yes)":
		return EnvFileEntry{Path: p, Optional: true}, nil
	case "no)":
		return EnvFileEntry{Path: p}, nil
	}
	return EnvFileEntry{}, fmt.Errorf("unexpected form")
}

// unitFiles is the unit file followed by its drop-ins, as systemd merges
// them.
func (u *UnitShow) unitFiles() []string {
	if u.FragmentPath == "" {
		return nil
	}
	return append([]string{u.FragmentPath}, u.DropInPaths...)
}

// managerEnvSources reads `systemctl show-environment` (the manager's
// environment: `systemctl set-environment`, DefaultEnvironment=), which
// every unit inherits below its own Environment= and EnvironmentFile=. A
// secure token there cannot be rewritten by editing a file, so it is an
// error; the other settings are read so that the effective token and
// config file are computed right.
func managerEnvSources(lines []string) []TokenSource {
	var out []TokenSource
	for i, line := range lines {
		name, val, ok := strings.Cut(line, "=")
		setting, known := envSettings[name]
		if !ok || !known {
			continue
		}
		var v span
		for j := 0; j < len(val); j++ {
			v.lit(val[j], -1)
		}
		s := newSource(managerEnvironment, kindManagerEnv, name, setting, v, nil, -1)
		s.Line = i + 1
		switch {
		case strings.HasPrefix(val, "$'"):
			s.Err = fmt.Errorf("%s in systemd's manager environment is escaped ($'...'): fleetcert cannot read it with certainty", name)
		case s.Token.Secure():
			s.Err = fmt.Errorf("%s is set in systemd's manager environment (systemctl set-environment or DefaultEnvironment=): "+
				"fleetcert cannot rewrite it safely; move it to the unit's environment file", name)
		}
		out = append(out, s)
	}
	return out
}

// managerEnvironment names the manager environment as a token source's
// File: it is no file on the node.
const managerEnvironment = "(systemctl show-environment)"
