package k3s

import (
	"errors"
	"strings"
	"testing"
)

// TestEffectiveTokenPrecedence is the precedence matrix of docs/k3s-behaviour.md#precedence:
// token-file > ExecStart > config.yaml.d (later wins) > config.yaml >
// environment (EnvironmentFile= in load order > Environment=).
func TestEffectiveTokenPrecedence(t *testing.T) {
	l := Layout{}
	unit := func(args string) []byte {
		return []byte("[Service]\nEnvironmentFile=-/etc/default/%N\nEnvironmentFile=-/etc/sysconfig/%N\n" +
			"EnvironmentFile=-/etc/systemd/system/k3s.service.env\nExecStart=/usr/local/bin/k3s server " + args + "\n")
	}
	tok := func(pw string) string { return "K10" + oldHash + "::server:" + pw }
	tests := []struct {
		name     string
		role     Role
		files    map[string][]byte
		wantPW   string // password of the effective token
		wantFile string
		wantErr  string
	}{
		{
			name:     "env file only",
			files:    map[string][]byte{l.EnvFile(): []byte("K3S_TOKEN=" + tok("env") + "\n")},
			wantPW:   "env",
			wantFile: l.EnvFile(),
		},
		{
			name: ".env beats /etc/default and /etc/sysconfig",
			files: map[string][]byte{
				l.UnitFile():         unit(""),
				"/etc/default/k3s":   []byte("K3S_TOKEN=" + tok("default") + "\n"),
				"/etc/sysconfig/k3s": []byte("K3S_TOKEN=" + tok("sysconfig") + "\n"),
				l.EnvFile():          []byte("K3S_TOKEN=" + tok("env") + "\n"),
			},
			wantPW: "env", wantFile: l.EnvFile(),
		},
		{
			name: "sysconfig beats default",
			files: map[string][]byte{
				l.UnitFile():         unit(""),
				"/etc/default/k3s":   []byte("K3S_TOKEN=" + tok("default") + "\n"),
				"/etc/sysconfig/k3s": []byte("K3S_TOKEN=" + tok("sysconfig") + "\n"),
			},
			wantPW: "sysconfig", wantFile: "/etc/sysconfig/k3s",
		},
		{
			name: "EnvironmentFile beats Environment= even in a later drop-in",
			files: map[string][]byte{
				l.UnitFile():                     unit(""),
				l.UnitDropInDir() + "/env.conf":  []byte("[Service]\nEnvironment=K3S_TOKEN=" + tok("environment") + "\n"),
				"/etc/default/k3s":               []byte("K3S_TOKEN=" + tok("default") + "\n"),
				l.UnitDropInDir() + "/other.txt": []byte("[Service]\nEnvironment=K3S_TOKEN=x\n"),
			},
			wantPW: "default", wantFile: "/etc/default/k3s",
		},
		{
			name: "later Environment= drop-in wins over the unit's",
			files: map[string][]byte{
				l.UnitFile():                   []byte("[Service]\nEnvironment=K3S_TOKEN=" + tok("unit") + "\nExecStart=/usr/local/bin/k3s server\n"),
				l.UnitDropInDir() + "/20.conf": []byte("[Service]\nEnvironment=K3S_TOKEN=" + tok("dropin") + "\n"),
			},
			wantPW: "dropin",
		},
		{
			name: "export line is not seen by systemd",
			files: map[string][]byte{
				l.UnitFile(): unit(""),
				l.EnvFile():  []byte("K3S_TOKEN=" + tok("plain") + "\nexport K3S_TOKEN=" + tok("exported") + "\n"),
			},
			wantPW: "plain",
		},
		{
			name: "config.yaml beats environment",
			files: map[string][]byte{
				l.EnvFile(): []byte("K3S_TOKEN=" + tok("env") + "\n"),
				l.Config():  []byte("token: " + tok("config") + "\n"),
			},
			wantPW: "config", wantFile: l.Config(),
		},
		{
			name: "config.yaml.d beats config.yaml, later drop-in wins",
			files: map[string][]byte{
				l.Config():                         []byte("token: " + tok("config") + "\n"),
				l.configDropInDir() + "/20-b.yaml": []byte("token: " + tok("b") + "\n"),
				l.configDropInDir() + "/10-a.yml":  []byte("token: " + tok("a") + "\n"),
				l.configDropInDir() + "/30-c.json": []byte("token: " + tok("not-yaml-suffix") + "\n"),
			},
			wantPW: "b", wantFile: l.configDropInDir() + "/20-b.yaml",
		},
		{
			name: "ExecStart beats config",
			files: map[string][]byte{
				l.UnitFile():                       unit("--token " + tok("cli")),
				l.configDropInDir() + "/20-b.yaml": []byte("token: " + tok("b") + "\n"),
			},
			wantPW: "cli", wantFile: l.UnitFile(),
		},
		{
			name: "a drop-in's ExecStart replaces the unit's",
			files: map[string][]byte{
				l.UnitFile():                         unit("--token " + tok("unit")),
				l.UnitDropInDir() + "/override.conf": []byte("[Service]\nExecStart=\nExecStart=/usr/local/bin/k3s server -t " + tok("override") + "\n"),
			},
			wantPW: "override", wantFile: l.UnitDropInDir() + "/override.conf",
		},
		{
			name: "token-file from the environment beats --token on the command line",
			files: map[string][]byte{
				l.UnitFile():     unit("--token " + tok("cli")),
				l.EnvFile():      []byte("K3S_TOKEN_FILE=/etc/k3s/token\n"),
				"/etc/k3s/token": []byte(tok("file") + "\n"),
			},
			wantPW: "file", wantFile: "/etc/k3s/token",
		},
		{
			name: "token-file on the command line beats the config's",
			files: map[string][]byte{
				l.UnitFile():            unit("--token-file=/etc/k3s/cli-token"),
				l.Config():              []byte("token-file: /etc/k3s/config-token\n"),
				"/etc/k3s/cli-token":    []byte(tok("cli-file")),
				"/etc/k3s/config-token": []byte(tok("config-file")),
			},
			wantPW: "cli-file", wantFile: "/etc/k3s/cli-token",
		},
		{
			name: "token-file not read",
			files: map[string][]byte{
				l.Config(): []byte("token-file: /etc/k3s/token\n"),
			},
			wantErr: "not read or does not exist",
		},
		{
			name: "token+ appended to an earlier token",
			files: map[string][]byte{
				l.Config():                       []byte("token: " + tok("a") + "\n"),
				l.configDropInDir() + "/10.yaml": []byte("token+: " + tok("b") + "\n"),
			},
			wantErr: "appended",
		},
		{
			name: "token+ alone is a plain definition",
			files: map[string][]byte{
				l.configDropInDir() + "/10.yaml": []byte("token+: " + tok("b") + "\n"),
			},
			wantPW: "b",
		},
		{
			name:    "nothing defined",
			files:   map[string][]byte{l.Config(): []byte("write-kubeconfig-mode: 644\n")},
			wantErr: errNoToken.Error(),
		},
		{
			name: "agent reads token, not agent-token",
			role: RoleAgent,
			files: map[string][]byte{
				l.Config(): []byte("agent-token: " + tok("agent") + "\ntoken: " + tok("join") + "\n"),
			},
			wantPW: "join",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			role := tt.role
			if role == "" {
				role = RoleServer
			}
			lay := Layout{Role: role}
			if role == RoleAgent {
				lay.Unit = "k3s" // same paths as the server cases
			}
			srcs, _ := FindTokenSources(lay, tt.files)
			got, err := effectiveToken(srcs, role)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q (got %s)", err, tt.wantErr, got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Token.Password != tt.wantPW || (tt.wantFile != "" && got.File != tt.wantFile) {
				t.Errorf("effective = %s (password %q), want password %q from %s", got, got.Token.Password, tt.wantPW, tt.wantFile)
			}
		})
	}
}

func TestEffectiveAgentToken(t *testing.T) {
	l := Layout{}
	files := map[string][]byte{
		l.Config():  []byte("agent-token: K10" + oldHash + "::node:cfg\n"),
		l.EnvFile(): []byte("K3S_AGENT_TOKEN=K10" + oldHash + "::node:env\n"),
	}
	srcs, _ := FindTokenSources(l, files)
	got, err := effectiveAgentToken(srcs, RoleServer)
	if err != nil || got.Token.Password != "cfg" {
		t.Errorf("server agent token = %s, %v", got, err)
	}
	if _, err := effectiveAgentToken(srcs, RoleAgent); !errors.Is(err, errNoToken) {
		t.Errorf("agents have no agent token: %v", err)
	}
	agentSrcs, _ := FindTokenSources(Layout{Role: RoleAgent, Unit: "k3s"}, files)
	for _, s := range agentSrcs {
		if s.Agent && s.Ignored == "" {
			t.Errorf("agent-token on an agent must be marked ignored: %s", s)
		}
	}
}
