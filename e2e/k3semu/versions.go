package main

import (
	"strconv"
	"strings"
)

// Behaviour that depends on the k3s version (/etc/k3semu/version), so that
// fleetcert's version gates meet the behaviour they guard against
// (docs/k3s-behaviour.md#versions). Each table maps a minor line to the first patch release
// with the feature or fix; later minor lines have it, earlier ones do not.

// parseVersion returns minor and patch of v1.<minor>.<patch>+k3sN.
func parseVersion(v string) (minor, patch int) {
	v = strings.TrimPrefix(v, "v")
	v, _, _ = strings.Cut(v, "+")
	v, _, _ = strings.Cut(v, "-")
	parts := strings.Split(v, ".")
	if len(parts) >= 2 {
		minor, _ = strconv.Atoi(parts[1])
	}
	if len(parts) >= 3 {
		patch, _ = strconv.Atoi(parts[2])
	}
	return minor, patch
}

// since reports whether version is at or after the first release listed
// for its minor line.
func since(version string, first map[int]int) bool {
	minor, patch := parseVersion(version)
	lowest, highest := 1<<30, -1
	for m := range first {
		lowest, highest = min(lowest, m), max(highest, m)
	}
	switch {
	case minor > highest:
		return true
	case minor < lowest:
		return false
	}
	p, ok := first[minor]
	return ok && patch >= p
}

// renewDays is the leaf renewal / WARNING threshold: 120 days since the
// May 2025 releases, 90 before.
func renewDays(version string) int {
	if since(version, map[int]int{30: 13, 31: 9, 32: 5, 33: 1}) {
		return 120
	}
	return 90
}

// hasSupervisorCert: client-supervisor exists only in newer releases (not
// in v1.26); the exact first release is not known, the emulator uses v1.28.
func hasSupervisorCert(version string) bool {
	return since(version, map[int]int{28: 0})
}

// hasRotateCA: `certificate rotate-ca` arrived in the Feb 2023 releases.
func hasRotateCA(version string) bool {
	return since(version, map[int]int{23: 17, 24: 11, 25: 7, 26: 2})
}

// hasCertCheck: `certificate check` arrived in 2024 (the emulator uses the
// March 2024 patch releases).
func hasCertCheck(version string) bool {
	if isRKE2Version(version) {
		// From rke2's release tags (docs/k3s-behaviour.md#rke2).
		return since(version, map[int]int{27: 13, 28: 9, 29: 4, 30: 0})
	}
	return since(version, map[int]int{27: 12, 28: 8, 29: 3})
}

// isRKE2Version: v1.xx.y+rke2rN.
func isRKE2Version(version string) bool { return strings.Contains(version, "+rke2") }

// hasCheckOutput: `check -o/--output` since the Jan 2025 releases.
func hasCheckOutput(version string) bool {
	if isRKE2Version(version) {
		// rke2's tags: v1.32.0+rke2r1 still lacks the flag.
		return since(version, map[int]int{29: 13, 30: 9, 31: 5, 32: 1})
	}
	return since(version, map[int]int{30: 9, 31: 5, 32: 0})
}

// partialRotateBug (#10689, fixed Sept 2024): CA fields not supplied to
// rotate-ca were validated too, so leaving a default single-cert CA out of
// the staged set failed.
func partialRotateBug(version string) bool {
	return !since(version, map[int]int{28: 14, 29: 9, 30: 5, 31: 1})
}

// joinedServerRotationBug (#11233, fixed March 2025): servers started with
// --server (joined servers) did not take the rotated CA data from the
// datastore at restart.
func joinedServerRotationBug(version string) bool {
	return !since(version, map[int]int{29: 15, 30: 11, 31: 7, 32: 3})
}

// rotateCARegeneratesServingCert (#13006, fixed by #12978; backports
// validated 2025-10-14, so the emulator assumes the next patch release of
// each line): the rotate-ca handler writes dynamic-cert-regenerate into the
// tls dir of the server that handled it, so that server's next start
// re-issues the :6443 cert. Before, and on every other server, nothing
// re-issues it after a rotation.
func rotateCARegeneratesServingCert(version string) bool {
	return since(version, map[int]int{31: 14, 32: 10, 33: 6, 34: 2})
}
