package cmd

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"
)

func TestTokenHash(t *testing.T) {
	server := k3sServerDir(t)
	caFile := filepath.Join(server, "tls", "server-ca.crt")
	data, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	want := hex.EncodeToString(sum[:]) + "\n"

	code, stdout, stderr := runCACmd(t, "", "token", "hash", "--ca", caFile)
	if code != ExitOK || stdout != want || stderr != "" {
		t.Errorf("token hash: exit %d stdout %q stderr %q, want %q", code, stdout, stderr, want)
	}
	code, stdout, _ = runCACmd(t, string(data), "token", "hash", "--ca", "-")
	if code != ExitOK || stdout != want {
		t.Errorf("from stdin: exit %d %q", code, stdout)
	}

	junk := filepath.Join(t.TempDir(), "junk")
	os.WriteFile(junk, []byte("not a certificate\n"), 0o644)
	for _, args := range [][]string{
		{"token", "hash"},
		{"token", "hash", "--ca", junk},
		{"token", "hash", "--ca", filepath.Join(t.TempDir(), "missing")},
	} {
		if code, stdout, _ := runCACmd(t, "", args...); code != ExitUsage || stdout != "" {
			t.Errorf("%v: exit %d stdout %q, want 2 and nothing", args, code, stdout)
		}
	}
}
