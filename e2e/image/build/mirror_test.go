package build

import (
	"os"
	"path/filepath"
	"testing"
)

func TestMirrorFromSources(t *testing.T) {
	cases := []struct {
		name  string
		files map[string]string
		want  string
	}{{
		name: "deb822 skips security",
		files: map[string]string{"etc/apt/sources.list.d/debian.sources": `Types: deb
URIs: http://security.example/debian-security
Suites: bookworm-security
Components: main

Types: deb
# a comment
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
`},
		want: "http://mirror.example/debian",
	}, {
		name: "deb822 disabled stanza",
		files: map[string]string{"etc/apt/sources.list.d/a.sources": `Enabled: no
Types: deb
URIs: http://off.example/debian
Suites: bookworm

Types: deb-src deb
URIs: http://on.example/debian
Suites: bookworm
`},
		want: "http://on.example/debian",
	}, {
		name: "sources.list with options",
		files: map[string]string{"etc/apt/sources.list": `# deb http://old.example/debian bookworm main
deb-src http://src.example/debian bookworm main
deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] http://list.example/debian bookworm main
`},
		want: "http://list.example/debian",
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			for p, data := range tc.files {
				full := filepath.Join(root, p)
				if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(full, []byte(data), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			got, err := MirrorFromSources(root)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("mirror = %q, want %q", got, tc.want)
			}
		})
	}
	if _, err := MirrorFromSources(t.TempDir()); err == nil {
		t.Error("no sources: want an error")
	}
}
