package inventory

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

const fleet = `
clusters:
  - {name: berlin, labels: {ring: canary, region: eu}, servers: [{host: b1}]}
  - {name: paris, labels: {ring: main, region: eu, gpu: "true"}, servers: [{host: p1}]}
  - {name: ohio, labels: {ring: main, region: us}, servers: [{host: o1}]}
  - {name: lab, servers: [{host: l1}]}
`

func TestSelect(t *testing.T) {
	inv := parseOK(t, fleet)
	tests := []struct {
		name      string
		clusters  []string
		selectors []string
		want      []string
		wantErr   string
	}{
		{name: "everything", want: []string{"berlin", "paris", "ohio", "lab"}},
		{name: "by name, in file order", clusters: []string{"ohio", "berlin"}, want: []string{"berlin", "ohio"}},
		{name: "comma-separated names", clusters: []string{"ohio,lab"}, want: []string{"ohio", "lab"}},
		{name: "equals", selectors: []string{"region=eu"}, want: []string{"berlin", "paris"}},
		{name: "double equals", selectors: []string{"ring==main"}, want: []string{"paris", "ohio"}},
		{name: "AND across flags", selectors: []string{"region=eu", "ring=main"}, want: []string{"paris"}},
		{name: "AND within one flag", selectors: []string{"region=eu, ring=main"}, want: []string{"paris"}},
		{name: "not equals includes unlabelled", selectors: []string{"ring!=canary"}, want: []string{"paris", "ohio", "lab"}},
		{name: "exists", selectors: []string{"gpu"}, want: []string{"paris"}},
		{name: "not exists", selectors: []string{"!ring"}, want: []string{"lab"}},
		{name: "names and selector", clusters: []string{"berlin", "ohio"}, selectors: []string{"region=eu"}, want: []string{"berlin"}},
		{name: "unknown name", clusters: []string{"berln", "nowhere"}, wantErr: `unknown cluster "berln" (did you mean "berlin"?), "nowhere"; the inventory has berlin, paris, ohio, lab`},
		{name: "no match", selectors: []string{"region=asia"}, wantErr: "no cluster matches selector region=asia"},
		{name: "no match with names", clusters: []string{"ohio"}, selectors: []string{"region=eu"}, wantErr: "no cluster matches name ohio and selector region=eu"},
		{name: "empty selector", selectors: []string{""}, wantErr: `selector "": empty requirement`},
		{name: "empty term", selectors: []string{"a=b,"}, wantErr: `selector "a=b,": empty requirement`},
		{name: "no key", selectors: []string{"=eu"}, wantErr: `selector "=eu": label key ""`},
		{name: "bad value", selectors: []string{"region=e u"}, wantErr: `selector "region=e u": label value "e u"`},
		{name: "negated equality", selectors: []string{"!ring=x"}, wantErr: `label key "!ring"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := inv.Select(tt.clusters, tt.selectors)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Select error = %v, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Select: %v", err)
			}
			var names []string
			for _, c := range got {
				names = append(names, c.Name)
			}
			if !reflect.DeepEqual(names, tt.want) {
				t.Errorf("Select = %v, want %v", names, tt.want)
			}
		})
	}
}

func TestSelectNoMatchIsErrNoMatch(t *testing.T) {
	inv := parseOK(t, fleet)
	if _, err := inv.Select(nil, []string{"ring=none"}); !errors.Is(err, errNoMatch) {
		t.Errorf("error = %v, want errNoMatch", err)
	}
	if _, err := inv.Select([]string{"nope"}, nil); errors.Is(err, errNoMatch) {
		t.Errorf("an unknown name is not errNoMatch: %v", err)
	}
}

func TestSelectorString(t *testing.T) {
	sel, err := ParseSelector("a=1,b!=2", "c", "!d", "e==5")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := sel.String(), "a=1,b!=2,c,!d,e=5"; got != want {
		t.Errorf("String = %q, want %q", got, want)
	}
}

func TestUnknownNameListIsCapped(t *testing.T) {
	var b strings.Builder
	b.WriteString("clusters:\n")
	for i := range 30 {
		b.WriteString("  - {name: c" + strings.Repeat("x", i) + ", servers: [{host: h" + strings.Repeat("x", i) + "}]}\n")
	}
	inv := parseOK(t, b.String())
	_, err := inv.Select([]string{"zzz"}, nil)
	if err == nil || !strings.HasSuffix(err.Error(), " and 10 more") {
		t.Errorf("error = %v, want the known names cut after 20", err)
	}
}
