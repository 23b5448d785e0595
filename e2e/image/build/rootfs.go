package build

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
)

// Debian release of the node rootfs, for both init systems.
const (
	suite   = "bookworm"
	variant = "minbase"
)

// Package set of the systemd rootfs. openssh-server is the real sshd
// fleetcert talks to; systemd (+ systemd-sysv for /sbin/init, dbus for
// systemctl's bus and logind) runs as PID 1 so that unit files behave
// exactly as on a k3s host. curl and openssl are deliberately absent:
// fleetcert must not need them on nodes.
var packages = []string{
	"openssh-server", "sudo", "procps", "iproute2",
	"systemd", "systemd-sysv", "dbus",
}

// Package set of the OpenRC rootfs: the same userland, OpenRC (0.45:
// openrc-init as PID 1, openrc-run, supervise-daemon, rc-service,
// rc-update) instead of systemd, and busybox, whose applets stand in for
// Alpine's sh, stat, base64 and cp on the nodes that ask for them
// (harness NodeSpec.Busybox). No systemd package at all: nothing of
// /run/systemd may exist on these nodes.
var openrcPackages = []string{
	"openssh-server", "sudo", "procps", "iproute2",
	"openrc", "busybox",
}

// cleanup runs in the rootfs after debootstrap. It strips what a container
// never needs (package lists, docs, man pages, locales) and what must be
// unique per node: SSH host keys (made at first boot by ssh-hostkeys.service)
// and the machine id (systemd makes one at boot when the file is empty).
// Changing this text changes the rootfs cache key.
const cleanup = `set -eu
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/debconf/*-old
rm -rf /usr/share/doc/* /usr/share/man/* /usr/share/info/* /usr/share/locale/*
rm -f /etc/ssh/ssh_host_*
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
find /var/log -type f -exec truncate -s 0 {} +
rm -rf /tmp/* /var/tmp/*
`

// MirrorFromSources returns the Debian mirror the machine's apt uses: the
// first URIs: value of a deb822 /etc/apt/sources.list.d/*.sources stanza
// that serves the main archive (not -security), else the first `deb` line of
// /etc/apt/sources.list. root is "/" outside tests. The mirror is never
// hard-coded: these machines reach only their configured mirror.
func MirrorFromSources(root string) (string, error) {
	sources, _ := filepath.Glob(filepath.Join(root, "etc/apt/sources.list.d/*.sources"))
	for _, f := range sources {
		data, err := os.ReadFile(f)
		if err != nil {
			return "", err
		}
		if m := mirrorFromDeb822(string(data)); m != "" {
			return m, nil
		}
	}
	lists, _ := filepath.Glob(filepath.Join(root, "etc/apt/sources.list.d/*.list"))
	lists = append([]string{filepath.Join(root, "etc/apt/sources.list")}, lists...)
	for _, f := range lists {
		data, err := os.ReadFile(f)
		if errors.Is(err, os.ErrNotExist) {
			continue
		} else if err != nil {
			return "", err
		}
		if m := mirrorFromList(string(data)); m != "" {
			return m, nil
		}
	}
	return "", fmt.Errorf("no Debian mirror found in %s/etc/apt/sources.list.d/*.sources (URIs:) or sources.list (deb line)", strings.TrimSuffix(root, "/"))
}

// mirrorFromDeb822 reads deb822 stanzas (blank-line separated) and returns
// the first URI of a "deb" stanza whose suites are not only -security ones.
func mirrorFromDeb822(text string) string {
	for _, stanza := range strings.Split(strings.ReplaceAll(text, "\r\n", "\n"), "\n\n") {
		fields := map[string]string{}
		for _, line := range strings.Split(stanza, "\n") {
			if strings.HasPrefix(strings.TrimSpace(line), "#") {
				continue
			}
			k, v, ok := strings.Cut(line, ":")
			if !ok || strings.HasPrefix(line, " ") || strings.HasPrefix(line, "\t") {
				continue
			}
			fields[strings.ToLower(strings.TrimSpace(k))] = strings.TrimSpace(v)
		}
		if fields["enabled"] == "no" || !containsWord(fields["types"], "deb") {
			continue
		}
		if onlySecurity(strings.Fields(fields["suites"])) {
			continue
		}
		if uris := strings.Fields(fields["uris"]); len(uris) > 0 {
			return uris[0]
		}
	}
	return ""
}

// mirrorFromList reads one-line style sources: `deb [opts] URI suite comp...`.
func mirrorFromList(text string) string {
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 3 || f[0] != "deb" {
			continue
		}
		f = f[1:]
		if strings.HasPrefix(f[0], "[") { // [arch=amd64 signed-by=...]
			for len(f) > 0 && !strings.HasSuffix(f[0], "]") {
				f = f[1:]
			}
			if len(f) > 0 {
				f = f[1:]
			}
		}
		if len(f) >= 2 && !onlySecurity(f[1:2]) {
			return f[0]
		}
	}
	return ""
}

func containsWord(s, w string) bool {
	for _, f := range strings.Fields(s) {
		if f == w {
			return true
		}
	}
	return false
}

func onlySecurity(suites []string) bool {
	if len(suites) == 0 {
		return false
	}
	for _, s := range suites {
		if !strings.Contains(s, "security") {
			return false
		}
	}
	return true
}

// rootfsKey is the cache key of the flavor's rootfs tarball: everything
// that decides its content. The systemd key is computed as it always was,
// so that existing caches stay valid.
func (fl flavor) rootfsKey(mirror, debootstrapVersion string) string {
	h := sha256.New()
	fmt.Fprintf(h, "suite=%s\nvariant=%s\narch=%s\nmirror=%s\ndebootstrap=%s\npackages=%s\ncleanup=%s",
		suite, variant, runtime.GOARCH, mirror, debootstrapVersion, strings.Join(fl.packages, ","), fl.cleanup)
	if fl.init != Systemd {
		fmt.Fprintf(h, "\ninit=%s", fl.init)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func debootstrapVersion(ctx context.Context) (string, error) {
	path, err := exec.LookPath("debootstrap")
	if err != nil {
		return "", errors.New("debootstrap is not installed (apt-get install -y debootstrap); it builds the node rootfs")
	}
	out, err := exec.CommandContext(ctx, path, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("debootstrap --version: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// ensureRootfs returns the path of the flavor's cached rootfs tarball for
// mirror, building it with debootstrap when it is not cached yet. Building
// needs root (debootstrap chroots and creates device nodes).
func (fl flavor) ensureRootfs(ctx context.Context, cacheDir, mirror string, logf func(string, ...any)) (tarball, key string, err error) {
	ver, err := debootstrapVersion(ctx)
	if err != nil {
		return "", "", err
	}
	key = fl.rootfsKey(mirror, ver)
	tarball = filepath.Join(cacheDir, fl.tarPrefix+suite+"-"+key[:16]+".tar")
	if _, err := os.Stat(tarball); err == nil {
		logf("rootfs: cached %s", tarball)
		return tarball, key, nil
	}
	if os.Geteuid() != 0 {
		return "", "", errors.New("building the node rootfs with debootstrap needs root; run `go run ./e2e/image` as root once (the result is cached in " + cacheDir + ")")
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return "", "", err
	}
	work, err := os.MkdirTemp(cacheDir, "rootfs-build-")
	if err != nil {
		return "", "", err
	}
	defer os.RemoveAll(work)
	dir := filepath.Join(work, "rootfs")

	logf("rootfs (%s): debootstrap --variant=%s %s from %s", fl.init, variant, suite, mirror)
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, "debootstrap", "--variant="+variant,
		"--include="+strings.Join(fl.packages, ","), suite, dir, mirror)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return "", "", fmt.Errorf("debootstrap: %w\n%s", err, tail(out.String(), 30))
	}
	out.Reset()
	cmd = exec.CommandContext(ctx, "chroot", dir, "/bin/sh", "-c", fl.cleanup)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return "", "", fmt.Errorf("cleaning the rootfs: %w\n%s", err, tail(out.String(), 30))
	}

	// GNU tar keeps device nodes, hard links, owners and file capabilities
	// exactly; --numeric-owner so that no host user name leaks in.
	part := tarball + ".part"
	out.Reset()
	cmd = exec.CommandContext(ctx, "tar", "--numeric-owner", "--xattrs", "--xattrs-include=security.capability",
		"-C", dir, "-cf", part, ".")
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		os.Remove(part)
		return "", "", fmt.Errorf("tar of the rootfs: %w\n%s", err, tail(out.String(), 30))
	}
	if err := os.Rename(part, tarball); err != nil {
		return "", "", err
	}
	// Tarballs of this flavor made from other inputs (an older mirror or
	// debootstrap) are dead weight now; the other flavor's stay.
	old, _ := filepath.Glob(filepath.Join(cacheDir, fl.tarPrefix+"*.tar"))
	for _, p := range old {
		if p != tarball {
			os.Remove(p)
		}
	}
	return tarball, key, nil
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// fileSHA256 is the hex sha256 of a file's content.
func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
