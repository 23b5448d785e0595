package remote_test

import (
	"strings"
	"testing"

	"github.com/fleetcert/fleetcert/remote"
)

// TestWriteOptionsAllows is the contract fakes of Host rely on to honour
// IfUnchanged and IfAbsent as the node's script does.
func TestWriteOptionsAllows(t *testing.T) {
	t.Parallel()
	v1 := []byte("v1")
	for _, tc := range []struct {
		name    string
		opts    []remote.WriteOption
		current []byte
		exists  bool
		allows  bool
	}{
		{name: "no option, exists", current: v1, exists: true, allows: true},
		{name: "no option, absent", allows: true},
		{name: "zero option", opts: []remote.WriteOption{{}}, current: v1, exists: true, allows: true},
		{name: "unchanged", opts: []remote.WriteOption{remote.IfUnchanged(sha256Hex("v1"))}, current: v1, exists: true, allows: true},
		{name: "unchanged, upper case", opts: []remote.WriteOption{remote.IfUnchanged(strings.ToUpper(sha256Hex("v1")))}, current: v1, exists: true, allows: true},
		{name: "changed", opts: []remote.WriteOption{remote.IfUnchanged(sha256Hex("v0"))}, current: v1, exists: true},
		{name: "unchanged but absent", opts: []remote.WriteOption{remote.IfUnchanged(sha256Hex(""))}},
		{name: "empty file unchanged", opts: []remote.WriteOption{remote.IfUnchanged(sha256Hex(""))}, current: []byte{}, exists: true, allows: true},
		{name: "absent", opts: []remote.WriteOption{remote.IfAbsent()}, allows: true},
		{name: "absent but exists", opts: []remote.WriteOption{remote.IfAbsent()}, current: []byte{}, exists: true},
	} {
		o, err := remote.WriteOptionsOf(tc.opts...)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := o.Allows(tc.current, tc.exists); got != tc.allows {
			t.Errorf("%s: Allows = %v", tc.name, got)
		}
	}
	for _, bad := range [][]remote.WriteOption{
		{remote.IfUnchanged("")},
		{remote.IfUnchanged("g" + sha256Hex("x")[1:])},
		{remote.IfUnchanged(sha256Hex("x") + "00")},
		{remote.IfAbsent(), remote.IfAbsent()},
		{remote.IfUnchanged(sha256Hex("x")), remote.IfAbsent()},
	} {
		if _, err := remote.WriteOptionsOf(bad...); err == nil {
			t.Errorf("WriteOptionsOf(%v) accepted", bad)
		}
	}
}
