package inventory

import (
	"reflect"
	"strings"
	"testing"
)

func TestCheckHost(t *testing.T) {
	tests := []struct {
		in, want string // want "" means refused
	}{
		{"10.1.0.10", "10.1.0.10"},
		{"node-1.example.com", "node-1.example.com"},
		{"berlin_s1", "berlin_s1"}, // an ssh_config alias
		{"fd00::1", "fd00::1"},
		{"[fd00::1]", "fd00::1"},
		{"fe80::1%eth0", "fe80::1%eth0"},
		{"::ffff:10.0.0.1", "::ffff:10.0.0.1"},
		{"", ""},
		{"10.1.0.300", ""},
		{"010.1.0.1", ""},
		{"1.2.3", ""},
		{"-oProxyCommand", ""},
		{"host name", ""},
		{"host;id", ""},
		{"$(id)", ""},
		{"a..b", ""},
		{"a.", ""},
		{"[10.0.0.1]", ""},
		{"[fd00::1", ""},
		{"fe80::1%eth0;x", ""},
		{"user@host", ""},
		{"host:22", ""},
		{strings.Repeat("a", 64) + ".com", ""},
	}
	for _, tt := range tests {
		got, err := checkHost(tt.in)
		if tt.want == "" {
			if err == nil {
				t.Errorf("checkHost(%q) = %q, want an error", tt.in, got)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("checkHost(%q) = %q, %v, want %q", tt.in, got, err, tt.want)
		}
	}
}

func TestParseBastion(t *testing.T) {
	tests := []struct {
		in      string
		want    []hop
		wantErr string
	}{
		{in: ""},
		{in: "jump", want: []hop{{Host: "jump"}}},
		{in: "ops@jump.example.com:22", want: []hop{{User: "ops", Host: "jump.example.com", Port: 22}}},
		{in: "a@j1,b@j2:2222", want: []hop{{User: "a", Host: "j1"}, {User: "b", Host: "j2", Port: 2222}}},
		{in: "[fd00::1]:2200", want: []hop{{Host: "fd00::1", Port: 2200}}},
		{in: "ops@[fd00::1]", want: []hop{{User: "ops", Host: "fd00::1"}}},
		{in: "10.0.0.1", want: []hop{{Host: "10.0.0.1"}}},
		{in: "fd00::1", wantErr: "an IPv6 address must be in brackets"},
		{in: "j1,", wantErr: `hop 2 "": empty hop`},
		{in: "@j", wantErr: "empty user before @"},
		{in: "j:ssh", wantErr: `port "ssh" is out of range`},
		{in: "j:70000", wantErr: `port "70000" is out of range`},
		{in: "j1, j2", wantErr: `hop 2 " j2"`},
		{in: "ssh://ops@j:22", wantErr: "the URI form is not supported"},
		{in: "[j]:22", wantErr: "brackets may only enclose an IPv6 address"},
		{in: "[fd00::1]x", wantErr: `unexpected "x" after ]`},
		{in: "-J@x", wantErr: "is not a user name"},
		{in: "j;id", wantErr: "is not a hostname"},
	}
	for _, tt := range tests {
		got, err := parseBastion(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("parseBastion(%q) error = %v, want it to contain %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("parseBastion(%q) = %+v, %v, want %+v", tt.in, got, err, tt.want)
		}
		var parts []string
		for _, h := range got {
			parts = append(parts, h.String())
		}
		if back := strings.Join(parts, ","); back != tt.in {
			t.Errorf("hops of %q format back as %q", tt.in, back)
		}
	}
}

func TestCheckLabels(t *testing.T) {
	for _, k := range []string{"ring", "example.com/ring", "a.b-c_d", "x"} {
		if err := checkLabelKey(k); err != nil {
			t.Errorf("checkLabelKey(%q) = %v", k, err)
		}
	}
	for _, k := range []string{"", "/ring", "ex_ample.com/ring", "-ring", "ring-", "a b", "a=b", strings.Repeat("k", 64)} {
		if err := checkLabelKey(k); err == nil {
			t.Errorf("checkLabelKey(%q) = nil, want an error", k)
		}
	}
	for _, v := range []string{"", "canary", "1", "v1.2_3-x"} {
		if err := checkLabelValue(v); err != nil {
			t.Errorf("checkLabelValue(%q) = %v", v, err)
		}
	}
	for _, v := range []string{"a b", "-a", "a,b", "a=b", strings.Repeat("v", 64)} {
		if err := checkLabelValue(v); err == nil {
			t.Errorf("checkLabelValue(%q) = nil, want an error", v)
		}
	}
}

func TestClosest(t *testing.T) {
	known := []string{"user", "port", "identityFile", "knownHostsFile", "bastion"}
	tests := map[string]string{
		"prot":             "port",
		"identity_file":    "identityFile",
		"IdentityFile":     "identityFile",
		"known-hosts-file": "knownHostsFile",
		"bastoin":          "bastion",
		"usr":              "user",
		"proxyJump":        "",
		"x":                "",
	}
	for in, want := range tests {
		if got := closest(in, known); got != want {
			t.Errorf("closest(%q) = %q, want %q", in, got, want)
		}
	}
}
