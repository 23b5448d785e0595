package remote

import (
	"os/exec"
	"testing"
)

// TestQuoteRoundTrip lets a real shell judge Quote: every hostile string must
// reach the program as exactly one unchanged argument.
func TestQuoteRoundTrip(t *testing.T) {
	hostile := []string{
		"", "plain", "with space", "it's", `"double"`, "$(id)", "`id`", "a;b", "a\nb",
		"tab\there", `back\slash`, "ünïcödé ✓", "'", "''", "-n", "*", "~root", "a|b&c>d<e",
		"K10abc::server:p'w$d", "$HOME",
	}
	for _, s := range hostile {
		out, err := exec.Command("sh", "-c", "printf %s "+Quote(s)).Output()
		if err != nil {
			t.Fatalf("sh on %q: %v", s, err)
		}
		if string(out) != s {
			t.Errorf("Quote(%q) came back as %q", s, out)
		}
	}
}

func TestQuotefQuotesEveryArgument(t *testing.T) {
	got := Quotef("cat -- %s %s", "/var/lib/a b", "x")
	if got != "cat -- '/var/lib/a b' x" {
		t.Fatalf("got %q", got)
	}
}
