package main

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"regexp"
	"strings"
)

// Token formats (docs/k3s-behaviour.md#tokens).
const (
	tokenPrefix  = "K10"
	caHashLength = sha256.Size * 2
)

var bootstrapTokenRE = regexp.MustCompile(`^[a-z0-9]{6}\.[a-z0-9]{16}$`)

// joinToken is a parsed k3s token.
type joinToken struct {
	CAHash   string // empty for a short token
	Username string
	Password string // or the bootstrap token id.secret
}

// parseToken parses a short or full (K10<hash>::user:pw) token.
func parseToken(s string) (joinToken, error) {
	var t joinToken
	if s == "" {
		return t, errors.New("token must not be empty")
	}
	if !strings.HasPrefix(s, tokenPrefix) {
		if bootstrapTokenRE.MatchString(s) {
			s = tokenPrefix + "::" + s
		} else {
			s = tokenPrefix + ":::" + s
		}
	}
	rest := strings.TrimPrefix(s, tokenPrefix)
	parts := strings.SplitN(rest, "::", 2)
	if len(parts) != 2 {
		return t, errors.New("invalid token format")
	}
	t.CAHash = parts[0]
	if t.CAHash != "" && len(t.CAHash) != caHashLength {
		return t, errors.New("invalid token CA hash length")
	}
	creds := parts[1]
	if bootstrapTokenRE.MatchString(creds) {
		t.Password = creds
		return t, nil
	}
	up := strings.SplitN(creds, ":", 2)
	if len(up) != 2 || up[1] == "" {
		return t, errors.New("invalid token format")
	}
	t.Username, t.Password = up[0], up[1]
	return t, nil
}

// normalizeToken returns the password part of a token (what encrypts the
// bootstrap data and goes into the passwd file).
func normalizeToken(s string) (string, error) {
	t, err := parseToken(s)
	if err != nil {
		return "", err
	}
	return t.Password, nil
}

// formatToken renders the full token written to server/token.
func formatToken(caBundle []byte, user, password string) string {
	return tokenPrefix + hashCA(caBundle) + "::" + user + ":" + password
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// hashCA computes the CA hash pinned by tokens (docs/k3s-behaviour.md#hashca): one cert ->
// sha256 of the raw bytes; several -> sha256 of the DER of the root the
// first verified chain ends at; verification failure -> raw bytes again.
func hashCA(b []byte) string {
	certs, err := parseCertsPEM(b)
	if err != nil || len(certs) <= 1 {
		return sha256Hex(b)
	}
	roots := x509.NewCertPool()
	intermediates := x509.NewCertPool()
	for _, c := range certs[1:] {
		if len(c.AuthorityKeyId) == 0 || bytes.Equal(c.AuthorityKeyId, c.SubjectKeyId) {
			roots.AddCert(c)
		} else {
			intermediates.AddCert(c)
		}
	}
	chains, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: intermediates})
	if err != nil || len(chains) == 0 || len(chains[0]) == 0 {
		return sha256Hex(b)
	}
	chain := chains[0]
	return sha256Hex(chain[len(chain)-1].Raw)
}
