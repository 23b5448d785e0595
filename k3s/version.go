package k3s

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// Version is a k3s release, e.g. v1.31.1+k3s1 (or v1.31.2-rc1+k3s1), or an
// RKE2 one (v1.31.1+rke2r1), whose numbers follow k3s's.
type Version struct {
	Major, Minor, Patch int
	// Pre is the pre-release part without its dash ("rc1"), empty for a
	// release. A pre-release sorts before the release.
	Pre string
	// Revision is the N of +k3sN or +rke2rN (0 when absent), Tag what
	// precedes it when not k3s ("rke2r").
	Revision int
	Tag      string
}

var versionRE = regexp.MustCompile(`v?(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?(?:\+(k3s|rke2r)(\d+))?`)

// ParseVersion parses a k3s version: "v1.31.1+k3s1", or the output of
// `k3s --version` ("k3s version v1.31.1+k3s1 (abc123)" then a go version
// line), from which the first line's version is taken.
func ParseVersion(s string) (Version, error) {
	line := strings.TrimSpace(s)
	if i := strings.IndexByte(line, '\n'); i >= 0 {
		line = strings.TrimSpace(line[:i])
	}
	field := line
	for _, p := range products {
		if rest, ok := strings.CutPrefix(line, p.binary+" version "); ok {
			field, _, _ = strings.Cut(rest, " ")
		}
	}
	m := versionRE.FindStringSubmatch(field)
	if m == nil || m[0] != field {
		return Version{}, fmt.Errorf("not a k3s version: %q", line)
	}
	var v Version
	v.Major, _ = strconv.Atoi(m[1])
	v.Minor, _ = strconv.Atoi(m[2])
	v.Patch, _ = strconv.Atoi(m[3])
	v.Pre = m[4]
	if m[6] != "" {
		v.Revision, _ = strconv.Atoi(m[6])
	}
	if m[5] != "k3s" {
		v.Tag = m[5]
	}
	return v, nil
}

// mustParseVersion is ParseVersion for constants; it panics on error.
func mustParseVersion(s string) Version {
	v, err := ParseVersion(s)
	if err != nil {
		panic(err)
	}
	return v
}

// String formats the version as k3s does: v1.31.1+k3s1.
func (v Version) String() string {
	s := fmt.Sprintf("v%d.%d.%d", v.Major, v.Minor, v.Patch)
	if v.Pre != "" {
		s += "-" + v.Pre
	}
	if v.Revision > 0 {
		s += fmt.Sprintf("+%s%d", or(v.Tag, "k3s"), v.Revision)
	}
	return s
}

// compare returns -1, 0 or +1 as v is older than, the same as or newer
// than w: by major, minor, patch, then a pre-release before the release,
// then the k3s revision.
func (v Version) compare(w Version) int {
	for _, d := range []int{v.Major - w.Major, v.Minor - w.Minor, v.Patch - w.Patch} {
		if d != 0 {
			return sign(d)
		}
	}
	switch {
	case v.Pre != w.Pre && v.Pre == "":
		return 1
	case v.Pre != w.Pre && w.Pre == "":
		return -1
	case v.Pre != w.Pre:
		return comparePre(v.Pre, w.Pre)
	}
	return sign(v.Revision - w.Revision)
}

// less reports whether v is older than w.
func (v Version) less(w Version) bool { return v.compare(w) < 0 }

func sign(d int) int {
	switch {
	case d < 0:
		return -1
	case d > 0:
		return 1
	}
	return 0
}

// comparePre orders pre-releases like rc1 < rc2 < rc10.
func comparePre(a, b string) int {
	na, pa := splitNum(a)
	nb, pb := splitNum(b)
	if pa != pb {
		return strings.Compare(pa, pb)
	}
	return sign(na - nb)
}

func splitNum(s string) (int, string) {
	i := len(s)
	for i > 0 && s[i-1] >= '0' && s[i-1] <= '9' {
		i--
	}
	n, _ := strconv.Atoi(s[i:])
	return n, s[:i]
}

// gate is "fixed (or added) in these releases": per minor line the first
// release that has it; minors newer than every listed one have it, minors
// older than every listed one do not (those lines ended before it came).
type gate []string

// has reports whether v is at or after the gate in its minor line.
func (g gate) has(v Version) bool {
	newest := mustParseVersion(g[0])
	for _, s := range g {
		f := mustParseVersion(s)
		if f.Minor == v.Minor && f.Major == v.Major {
			return !v.less(f)
		}
		if newest.less(f) {
			newest = f
		}
	}
	return v.Major > newest.Major || v.Major == newest.Major && v.Minor > newest.Minor
}

// rotate-ca and custom CAs arrived in the Feb 2023 releases
// (docs/k3s-behaviour.md#versions).
var rotateCAGate = gate{"v1.26.2+k3s1", "v1.25.7+k3s1", "v1.24.11+k3s1", "v1.23.17+k3s1"}

// SupportsRotateCA reports whether `k3s certificate rotate-ca` exists:
// v1.26.2+k3s1, v1.25.7+k3s1, v1.24.11+k3s1, v1.23.17+k3s1 and later in
// each line, every release from 1.27 on (docs/k3s-behaviour.md#versions).
func SupportsRotateCA(v Version) bool { return rotateCAGate.has(v) }

// rotationBug is a known rotate-ca bug and the releases that fixed it.
type rotationBug struct {
	issue string
	text  string
	fixed gate
	since gate // releases that introduced it; nil: present since rotate-ca
}

// rotationBugs are listed in docs/k3s-behaviour.md#versions; the fixed versions are
// inferred from the Kubernetes patch releases of each fix's month, so they
// warn, never refuse.
var rotationBugs = []rotationBug{
	{
		issue: "#10689", fixed: gate{"v1.31.1+k3s1", "v1.30.5+k3s1", "v1.29.9+k3s1", "v1.28.14+k3s1"},
		text: "rotate-ca with a partial set of files (only some CAs, or only service.key) fails with a 500 certificate error; fixed in the Sept 2024 releases",
	},
	{
		issue: "#11014", fixed: gate{"v1.31.2+k3s1", "v1.30.6+k3s1", "v1.29.10+k3s1", "v1.28.15+k3s1"},
		since: gate{"v1.31.1+k3s1", "v1.30.5+k3s1", "v1.29.9+k3s1", "v1.28.14+k3s1"},
		text:  "k3s may fail to start after a CA rotation on the Sept 2024 releases; fixed in the Oct 2024 releases",
	},
	{
		issue: "#11233", fixed: gate{"v1.32.3+k3s1", "v1.31.7+k3s1", "v1.30.11+k3s1", "v1.29.15+k3s1"},
		text: "servers that joined with server: set ignore the rotation and keep the old CAs after restart; fixed in the March 2025 releases",
	},
}

// KnownRotationBugs lists warnings for the rotate-ca bugs a version is
// known or inferred to have (#10689, #11014, #11233; docs/k3s-behaviour.md#versions). Whatever
// the version, the outcome must be verified on every node.
func KnownRotationBugs(v Version) []string {
	var out []string
	for _, b := range rotationBugs {
		if b.fixed.has(v) || (b.since != nil && !b.since.has(v)) {
			continue
		}
		out = append(out, fmt.Sprintf("k3s %s: issue %s: %s", v, b.issue, b.text))
	}
	return out
}

// `k3s certificate check` came with PR #9772 (March 2024) and its
// backports, validated on release-1.27/1.28 in April 2024: the April 2024
// releases (inferred from that month's Kubernetes patch releases).
var certificateCheckGate = gate{"v1.30.0+k3s1", "v1.29.4+k3s1", "v1.28.9+k3s1", "v1.27.13+k3s1"}

// supportsCertificateCheck reports whether `k3s certificate check` exists.
// Older versions need the certificate files read and parsed instead.
func supportsCertificateCheck(v Version) bool { return certificateCheckGate.has(v) }

// CheckHasOutputFlag reports whether `certificate check` takes
// -o/--output (json, yaml, table) in the layout's product: k3s since
// v1.32.0/v1.31.5/v1.30.9, RKE2 since v1.32.1/v1.31.5/v1.30.9/v1.29.13
// (docs/k3s-behaviour.md#versions, #rke2).
func (l Layout) CheckHasOutputFlag(v Version) bool {
	return supportsCertificateCheck(v) && l.product().checkOutput.has(v)
}

// The May 2025 releases moved renewal from 90 to 120 days
// (docs/k3s-behaviour.md#renewal).
var renewal120Gate = gate{"v1.33.1+k3s1", "v1.32.5+k3s1", "v1.31.9+k3s1", "v1.30.13+k3s1"}

// renewalThresholdDays is how close to expiry a leaf certificate must be
// for k3s to renew it at start (and for `certificate check` to warn): 120
// days since the May 2025 releases (v1.33.1, v1.32.5, v1.31.9, v1.30.13),
// 90 before.
func renewalThresholdDays(v Version) int {
	if renewal120Gate.has(v) {
		return 120
	}
	return 90
}
