package k3s

import (
	"strings"
	"testing"
)

func TestParseVersion(t *testing.T) {
	tests := []struct {
		in      string
		want    Version
		wantErr bool
	}{
		{in: "v1.31.1+k3s1", want: Version{1, 31, 1, "", 1, ""}},
		{in: "1.26.2+k3s2", want: Version{1, 26, 2, "", 2, ""}},
		{in: "v1.32.0-rc1+k3s1", want: Version{1, 32, 0, "rc1", 1, ""}},
		{in: "v1.30.4", want: Version{1, 30, 4, "", 0, ""}},
		{in: "k3s version v1.31.1+k3s1 (452dbbc1)\ngo version go1.22.6\n", want: Version{1, 31, 1, "", 1, ""}},
		{in: "  k3s version v1.28.15+k3s1 (869dd4d6)\n", want: Version{1, 28, 15, "", 1, ""}},
		{in: "rke2 version v1.33.5+rke2r1 (abc)\ngo version go1.24.6\n", want: Version{1, 33, 5, "", 1, "rke2r"}},
		{in: "", wantErr: true},
		{in: "k3s version dev", wantErr: true},
		{in: "v1.31", wantErr: true},
		{in: "v1.31.1+k3s1 trailing", wantErr: true},
	}
	for _, tt := range tests {
		got, err := ParseVersion(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ParseVersion(%q) = %+v, %v", tt.in, got, err)
		}
	}
	for _, v := range []string{"v1.32.0-rc2+k3s1", "v1.31.1+rke2r2"} {
		if s := mustParseVersion(v).String(); s != v {
			t.Errorf("String = %q, want %q", s, v)
		}
	}
}

func TestVersionCompare(t *testing.T) {
	ordered := []string{"v1.23.17+k3s1", "v1.26.1+k3s1", "v1.26.2-rc1+k3s1", "v1.26.2-rc2+k3s1", "v1.26.2-rc10+k3s1",
		"v1.26.2+k3s1", "v1.26.2+k3s2", "v1.26.10+k3s1", "v1.27.0+k3s1", "v2.0.0+k3s1"}
	for i := range ordered {
		for j := range ordered {
			a, b := mustParseVersion(ordered[i]), mustParseVersion(ordered[j])
			want := sign(i - j)
			if got := a.compare(b); got != want {
				t.Errorf("%s vs %s = %d, want %d", a, b, got, want)
			}
		}
	}
}

func TestSupportsRotateCA(t *testing.T) {
	tests := map[string]bool{
		"v1.22.17+k3s1": false,
		"v1.23.16+k3s1": false, "v1.23.17+k3s1": true,
		"v1.24.10+k3s1": false, "v1.24.11+k3s1": true, "v1.24.17+k3s1": true,
		"v1.25.6+k3s1": false, "v1.25.7+k3s1": true,
		"v1.26.1+k3s1": false, "v1.26.2-rc1+k3s1": false, "v1.26.2+k3s1": true, "v1.26.15+k3s1": true,
		"v1.27.0+k3s1": true, "v1.33.1+k3s1": true,
	}
	for v, want := range tests {
		if got := SupportsRotateCA(mustParseVersion(v)); got != want {
			t.Errorf("SupportsRotateCA(%s) = %v", v, got)
		}
	}
}

func TestKnownRotationBugs(t *testing.T) {
	tests := map[string][]string{
		"v1.26.2+k3s1":  {"#10689", "#11233"},
		"v1.28.13+k3s1": {"#10689", "#11233"},
		"v1.28.14+k3s1": {"#11014", "#11233"},
		"v1.28.15+k3s1": {"#11233"},
		"v1.29.9+k3s1":  {"#11014", "#11233"},
		"v1.29.14+k3s1": {"#11233"},
		"v1.29.15+k3s1": nil,
		"v1.30.5+k3s1":  {"#11014", "#11233"},
		"v1.30.11+k3s1": nil,
		"v1.31.0+k3s1":  {"#10689", "#11233"},
		"v1.31.1+k3s1":  {"#11014", "#11233"},
		"v1.31.2+k3s1":  {"#11233"},
		"v1.31.7+k3s1":  nil,
		"v1.32.2+k3s1":  {"#11233"},
		"v1.32.3+k3s1":  nil,
		"v1.33.0+k3s1":  nil,
	}
	for v, want := range tests {
		got := KnownRotationBugs(mustParseVersion(v))
		if len(got) != len(want) {
			t.Errorf("%s: %q, want %q", v, got, want)
			continue
		}
		for i, issue := range want {
			if !strings.Contains(got[i], issue) || !strings.Contains(got[i], v) {
				t.Errorf("%s: warning %q should name %s", v, got[i], issue)
			}
		}
	}
}

func TestCertificateCheckGates(t *testing.T) {
	tests := []struct {
		v             string
		check, output bool
		threshold     int
	}{
		{"v1.26.15+k3s1", false, false, 90},
		{"v1.27.12+k3s1", false, false, 90},
		{"v1.27.13+k3s1", true, false, 90},
		{"v1.28.9+k3s1", true, false, 90},
		{"v1.29.3+k3s1", false, false, 90},
		{"v1.29.4+k3s1", true, false, 90},
		{"v1.30.0+k3s1", true, false, 90},
		{"v1.30.8+k3s1", true, false, 90},
		{"v1.30.9+k3s1", true, true, 90},
		{"v1.30.13+k3s1", true, true, 120},
		{"v1.31.4+k3s1", true, false, 90},
		{"v1.31.5+k3s1", true, true, 90},
		{"v1.31.9+k3s1", true, true, 120},
		{"v1.32.0+k3s1", true, true, 90},
		{"v1.32.4+k3s1", true, true, 90},
		{"v1.32.5+k3s1", true, true, 120},
		{"v1.33.0+k3s1", true, true, 90},
		{"v1.33.1+k3s1", true, true, 120},
		{"v1.34.1+k3s1", true, true, 120},
	}
	for _, tt := range tests {
		v := mustParseVersion(tt.v)
		if got := supportsCertificateCheck(v); got != tt.check {
			t.Errorf("supportsCertificateCheck(%s) = %v", v, got)
		}
		if got := (Layout{}).CheckHasOutputFlag(v); got != tt.output {
			t.Errorf("CheckHasOutputFlag(%s) = %v", v, got)
		}
		if got := renewalThresholdDays(v); got != tt.threshold {
			t.Errorf("renewalThresholdDays(%s) = %d", v, got)
		}
	}
}
