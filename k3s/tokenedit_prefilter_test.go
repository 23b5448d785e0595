package k3s

import "testing"

// mayMatchTokenFile must never say no where tokenFileRE matches.
func TestMayMatchTokenFileCoversTheRegexp(t *testing.T) {
	for _, s := range []string{
		"token-file: /x", "--token-file=/x", "K3S_TOKEN_FILE=/x", "k3s_agent_token_FILE=/x",
		"Agent-Token-File: /x", "TOKEN_FiLe", "service-account-token-file", "EnvironmentFile=-/etc/k3s.env",
		"token: K10abc", "tokenfile", "",
	} {
		if tokenFileRE.MatchString(s) && !mayMatchTokenFile([]byte(s)) {
			t.Errorf("%q: the regexp matches, the quick test says it cannot", s)
		}
	}
	if mayMatchTokenFile([]byte("EnvironmentFile=-/etc/default/%N\nExecStart=/usr/local/bin/k3s server\n")) {
		t.Error("a plain unit file passes the quick test")
	}
}
