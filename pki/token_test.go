package pki

import (
	"strings"
	"testing"
)

var testHash = strings.Repeat("ab", 32)

func TestParseToken(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    Token // raw ignored
		secure  bool
		boot    bool
		wantErr string
	}{
		{name: "secure server", in: "K10" + testHash + "::server:s3cret",
			want: Token{CAHash: testHash, Username: "server", Password: "s3cret"}, secure: true},
		{name: "secure node", in: "K10" + testHash + "::node:pw",
			want: Token{CAHash: testHash, Username: "node", Password: "pw"}, secure: true},
		{name: "password keeps later colons", in: "K10" + testHash + "::server:a:b::c",
			want: Token{CAHash: testHash, Username: "server", Password: "a:b::c"}, secure: true},
		{name: "bootstrap secure", in: "K10" + testHash + "::abcdef.0123456789abcdef",
			want: Token{CAHash: testHash, BootstrapID: "abcdef", BootstrapSecret: "0123456789abcdef"}, secure: true, boot: true},
		{name: "short password", in: "s3cret", want: Token{Password: "s3cret"}},
		{name: "short token with colons is all password", in: "server:s3cret",
			want: Token{Password: "server:s3cret"}},
		{name: "short bootstrap", in: "abcdef.0123456789abcdef",
			want: Token{BootstrapID: "abcdef", BootstrapSecret: "0123456789abcdef"}, boot: true},
		{name: "bootstrap needs lower case", in: "ABCDEF.0123456789abcdef",
			want: Token{Password: "ABCDEF.0123456789abcdef"}},
		{name: "K10 with empty hash", in: "K10::server:pw", want: Token{Username: "server", Password: "pw"}},
		{name: "K10 without :: takes the rest as creds", in: "K10server:pw", want: Token{Username: "server", Password: "pw"}},
		{name: "K10 without :: and no colon", in: "K10abc", wantErr: "invalid token format"},
		{name: "short hash", in: "K10abc::server:pw", wantErr: "invalid token CA hash length"},
		{name: "long hash", in: "K10" + testHash + "0::server:pw", wantErr: "invalid token CA hash length"},
		{name: "no password", in: "K10" + testHash + "::server:", wantErr: "invalid token format"},
		{name: "no colon", in: "K10" + testHash + "::server", wantErr: "invalid token format"},
		{name: "empty", in: "", wantErr: "token must not be empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseToken(tt.in)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("ParseToken(%q) error = %v, want %q", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseToken(%q): %v", tt.in, err)
			}
			got.raw = ""
			if got != tt.want {
				t.Errorf("ParseToken(%q) = %+v, want %+v", tt.in, got, tt.want)
			}
			if got.Secure() != tt.secure || got.bootstrap() != tt.boot {
				t.Errorf("Secure/Bootstrap = %v/%v, want %v/%v", got.Secure(), got.bootstrap(), tt.secure, tt.boot)
			}
			again, _ := ParseToken(tt.in)
			if s := again.String(); s != tt.in {
				t.Errorf("String() = %q, want the token as written %q", s, tt.in)
			}
		})
	}
}

func TestRedacted(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"K10" + testHash + "::server:s3cret", "K10" + testHash + "::server:****"},
		{"K10" + testHash + "::abcdef.0123456789abcdef", "K10" + testHash + "::abcdef.****"},
		{"s3cret", "****"},
	} {
		tok, err := ParseToken(tc.in)
		if err != nil {
			t.Fatal(err)
		}
		if got := tok.Redacted(); got != tc.want {
			t.Errorf("Redacted(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestValidCAHashAndFormat(t *testing.T) {
	if !ValidCAHash(testHash) || ValidCAHash(strings.ToUpper(testHash)) || ValidCAHash(testHash[:63]) || ValidCAHash(testHash[:63]+"g") {
		t.Error("ValidCAHash accepts or rejects the wrong hashes")
	}
	tok := FormatToken(testHash, "node", "pw")
	if tok != "K10"+testHash+"::node:pw" {
		t.Errorf("FormatToken = %q", tok)
	}
	if p, err := ParseToken(tok); err != nil || p.Username != "node" || p.Password != "pw" || p.CAHash != testHash {
		t.Errorf("FormatToken does not round-trip: %+v %v", p, err)
	}
}

func FuzzParseToken(f *testing.F) {
	for _, s := range []string{"K10" + testHash + "::server:pw", "pw", "K10::a:b", "K10x", "abcdef.0123456789abcdef", "K10" + testHash + "::abcdef.0123456789abcdef"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := ParseToken(s)
		if err != nil {
			return
		}
		if tok.String() != s {
			t.Errorf("String() = %q, want the token as written %q", tok.String(), s)
		}
		if tok.Secure() && len(tok.CAHash) != caHashLen {
			t.Errorf("hash %q accepted", tok.CAHash)
		}
		// Redacted keeps only hash, user or bootstrap id, and ****.
		red := tok.Redacted()
		if limit := len("K10::") + len(tok.CAHash) + len(tok.Username) + len(tok.BootstrapID) + len(":****"); !strings.HasSuffix(red, "****") || len(red) > limit {
			t.Errorf("Redacted() = %q may leak the secret of %q", red, s)
		}
	})
}
