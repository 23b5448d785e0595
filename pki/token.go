// Package pki makes and checks k3s CA material: custom root/intermediate
// topologies, cross-signed rotation of default CAs, service-account keys,
// validation with the rules of k3s's rotate-ca endpoint plus lint, join
// tokens and the CA hash they pin. It does no I/O beyond files its caller
// names.
package pki

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// tokenPrefix starts every secure k3s token: K10<ca hash>::<credentials>.
const tokenPrefix = "K10"

// caHashLen is the length of a hex SHA-256 CA hash.
const caHashLen = 64

var bootstrapTokenRE = regexp.MustCompile(`^[a-z0-9]{6}\.[a-z0-9]{16}$`)

// Token is a parsed k3s join token.
type Token struct {
	// CAHash is the hex SHA-256 the token pins, empty for a short token.
	CAHash string
	// Username and Password are set for K10<hash>::user:password tokens and
	// short password tokens (Username empty then).
	Username string
	Password string
	// BootstrapID and BootstrapSecret are set for kubeadm-style
	// bootstrap tokens (<id>.<secret>).
	BootstrapID     string
	BootstrapSecret string

	// raw is, for a secure token, the credential part exactly as written,
	// kept byte for byte when the hash is replaced; for a token that pins no
	// hash, the whole token as written.
	raw string
}

// ParseToken parses a token as k3s does (pkg/clientaccess parseToken),
// with k3s's error texts:
//   - a token without the K10 prefix is a short token: k3s reads it as
//     K10:::<token> (or K10::<token> for a bootstrap token), so all of it is
//     the password and nothing is pinned;
//   - after K10, the part before the first "::" is the CA hash; a non-empty
//     hash that is not 64 characters long is "invalid token CA hash length".
//     Without "::" k3s takes everything after K10 as the credentials;
//   - the credentials are a bootstrap token <id>.<secret>, or user:password
//     split on the first ":"; no ":" or an empty password is
//     "invalid token format".
func ParseToken(s string) (Token, error) {
	if s == "" {
		return Token{}, errors.New("token must not be empty")
	}
	t := Token{raw: s}
	if !strings.HasPrefix(s, tokenPrefix) {
		if bootstrapTokenRE.MatchString(s) {
			t.BootstrapID, t.BootstrapSecret, _ = strings.Cut(s, ".")
		} else {
			t.Password = s
		}
		return t, nil
	}
	hash, creds, ok := strings.Cut(s[len(tokenPrefix):], "::")
	if !ok {
		hash, creds = "", s[len(tokenPrefix):]
	}
	if hash != "" && len(hash) != caHashLen {
		return Token{}, errors.New("invalid token CA hash length")
	}
	if err := t.parseCreds(creds); err != nil {
		return Token{}, err
	}
	if hash != "" {
		t.CAHash, t.raw = hash, creds
	}
	return t, nil
}

func (t *Token) parseCreds(creds string) error {
	if bootstrapTokenRE.MatchString(creds) {
		t.BootstrapID, t.BootstrapSecret, _ = strings.Cut(creds, ".")
		return nil
	}
	user, pw, ok := strings.Cut(creds, ":")
	if !ok || pw == "" {
		return errors.New("invalid token format")
	}
	t.Username, t.Password = user, pw
	return nil
}

// Secure reports whether the token pins a CA hash.
func (t Token) Secure() bool { return t.CAHash != "" }

// bootstrap reports whether the credentials are a bootstrap token.
func (t Token) bootstrap() bool { return t.BootstrapID != "" }

// String formats the token as k3s writes it; a token that pins no hash is
// returned exactly as it was written.
func (t Token) String() string {
	if t.CAHash == "" {
		return t.raw
	}
	return tokenPrefix + t.CAHash + "::" + t.raw
}

// Redacted is the token safe to log or report: the hash and user stay, the
// secret goes (K10<hash>::server:****).
func (t Token) Redacted() string {
	var creds string
	switch {
	case t.bootstrap():
		creds = t.BootstrapID + ".****"
	case t.Username != "":
		creds = t.Username + ":****"
	default:
		creds = "****"
	}
	if t.CAHash == "" {
		return creds
	}
	return tokenPrefix + t.CAHash + "::" + creds
}

// ValidCAHash reports whether h looks like a CA hash (64 lower-case hex).
func ValidCAHash(h string) bool {
	if len(h) != caHashLen {
		return false
	}
	for _, c := range h {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// FormatToken builds the secure token for a CA hash and credentials.
func FormatToken(caHash, user, password string) string {
	return fmt.Sprintf("%s%s::%s:%s", tokenPrefix, caHash, user, password)
}
