package main

// Process-title hiding (docs/k3s-behaviour.md#process-title). k3s calls gspt.SetProcTitle(os.Args[0]
// + " server") (or " agent") at start "to hide process arguments from ps":
// gspt zeroes the argv area (and the start of the environment block) and
// writes the title there, so /proc/<pid>/cmdline is that one string, no
// NUL between program and subcommand, padded with NULs to the length the
// arguments had. Nothing can learn the token or config from the running
// process; it must be computed from the sources.
//
// Go without cgo cannot write its argv area, so the emulator re-executes
// itself instead (same binary, same PID, which systemd tracks as MainPID):
// the real arguments and environment go through an inherited pipe, and the
// new image gets the title as its argv and an environment holding only
// hiddenFDVar. main() then recovers both and runs as if nothing happened.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// hiddenFDVar names the inherited descriptor holding the real arguments
// and environment; its presence means "already hidden".
const hiddenFDVar = "K3SEMU_HIDDEN_FD"

// gsptMaxTitle is gspt's SPT_MAXTITLE.
const gsptMaxTitle = 255

// hiddenSubcommand is "server" or "agent" when argv runs one (the only
// subcommands k3s hides), else "".
func hiddenSubcommand(argv []string) string {
	if len(argv) == 0 || filepath.Base(argv[0]) == "kubectl" {
		return ""
	}
	args := argv[1:]
	for len(args) > 0 && (args[0] == "--debug" || args[0] == "-debug") {
		args = args[1:]
	}
	if len(args) > 0 && (args[0] == "server" || args[0] == "agent") {
		return args[0]
	}
	return ""
}

// procTitleArgv is the argv whose /proc/<pid>/cmdline equals what gspt
// leaves: the title, then NULs up to the original length of argv.
func procTitleArgv(argv []string, sub string) []string {
	title := argv[0] + " " + sub
	if len(title) > gsptMaxTitle {
		title = title[:gsptMaxTitle]
	}
	size := 0
	for _, a := range argv {
		size += len(a) + 1
	}
	out := []string{title}
	for n := len(title) + 1; n < size; n++ {
		out = append(out, "")
	}
	return out
}

// encodeLists serializes string lists: per list a count, per string a
// length and the bytes (varints). Arbitrary bytes survive, unlike JSON.
func encodeLists(lists ...[]string) []byte {
	var b []byte
	for _, l := range lists {
		b = binary.AppendUvarint(b, uint64(len(l)))
		for _, s := range l {
			b = binary.AppendUvarint(b, uint64(len(s)))
			b = append(b, s...)
		}
	}
	return b
}

func decodeLists(b []byte, n int) ([][]string, error) {
	errShort := errors.New("truncated argument block")
	next := func() (uint64, error) {
		v, k := binary.Uvarint(b)
		if k <= 0 {
			return 0, errShort
		}
		b = b[k:]
		return v, nil
	}
	lists := make([][]string, n)
	for i := range lists {
		count, err := next()
		if err != nil {
			return nil, err
		}
		for range count {
			size, err := next()
			if err != nil {
				return nil, err
			}
			if uint64(len(b)) < size {
				return nil, errShort
			}
			lists[i] = append(lists[i], string(b[:size]))
			b = b[size:]
		}
	}
	if len(b) != 0 {
		return nil, errors.New("trailing bytes after the argument block")
	}
	return lists, nil
}

// hideProcess re-executes the running binary with argv = the title (see
// procTitleArgv) and an environment of hiddenFDVar only, handing argv and
// environ over through a pipe whose read end survives the exec. It only
// returns on failure.
func hideProcess(argv, environ []string, sub string) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	payload := encodeLists(argv, environ)
	var p [2]int
	if err := syscall.Pipe2(p[:], syscall.O_CLOEXEC); err != nil {
		return err
	}
	r, w := p[0], p[1]
	fail := func(err error) error {
		syscall.Close(r)
		syscall.Close(w)
		return err
	}
	// The whole block must fit in the pipe: nobody reads it before the
	// exec. A pipe holds 64 KiB by default; ask for more when needed.
	if len(payload) > 1<<16 {
		if _, _, errno := syscall.Syscall(syscall.SYS_FCNTL, uintptr(w), syscall.F_SETPIPE_SZ, uintptr(len(payload))); errno != 0 {
			return fail(fmt.Errorf("growing the pipe to %d bytes: %w", len(payload), errno))
		}
	}
	if err := syscall.SetNonblock(w, true); err != nil {
		return fail(err)
	}
	for off := 0; off < len(payload); {
		n, err := syscall.Write(w, payload[off:])
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return fail(fmt.Errorf("writing the argument block: %w", err))
		}
		off += n
	}
	syscall.Close(w)
	// Let the read end survive the exec.
	if _, _, errno := syscall.Syscall(syscall.SYS_FCNTL, uintptr(r), syscall.F_SETFD, 0); errno != 0 {
		syscall.Close(r)
		return errno
	}
	err = syscall.Exec(exe, procTitleArgv(argv, sub), []string{hiddenFDVar + "=" + strconv.Itoa(r)})
	syscall.Close(r)
	return err
}

// recoverHidden returns the real argv and environment when this process is
// the re-executed, hidden one (ok), reading and closing the descriptor.
func recoverHidden() (argv, environ []string, ok bool, err error) {
	v, set := os.LookupEnv(hiddenFDVar)
	if !set {
		return nil, nil, false, nil
	}
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 0 {
		return nil, nil, true, fmt.Errorf("bad %s=%q", hiddenFDVar, v)
	}
	f := os.NewFile(uintptr(fd), "k3semu-arguments")
	b, err := io.ReadAll(f)
	f.Close()
	if err != nil {
		return nil, nil, true, fmt.Errorf("reading the hidden arguments: %w", err)
	}
	lists, err := decodeLists(b, 2)
	if err != nil {
		return nil, nil, true, err
	}
	if len(lists[0]) == 0 {
		return nil, nil, true, errors.New("hidden argument block without argv")
	}
	return lists[0], lists[1], true, nil
}

// envLookup is a Getenv over environ ("K=V" entries; the first of a
// duplicated key wins, as with os.Getenv).
func envLookup(environ []string) func(string) string {
	m := map[string]string{}
	for _, kv := range environ {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		if _, dup := m[k]; !dup {
			m[k] = v
		}
	}
	return func(k string) string { return m[k] }
}

// restoreEnviron gives the Go process its real environment back for the
// libraries that read it (crypto/x509's SSL_CERT_FILE, ...). Without cgo
// this changes only Go's copy, never the block /proc/<pid>/environ shows.
func restoreEnviron(environ []string) {
	os.Clearenv()
	for _, kv := range environ {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			continue
		}
		if _, dup := os.LookupEnv(k); !dup {
			os.Setenv(k, v)
		}
	}
}
