package installsh

import (
	"strings"
	"testing"
)

func TestExecStartMatchesInstallSh(t *testing.T) {
	got := execStart("server", []string{"--cluster-init", "--token", "K10ab::server:pw", "--token=x'y"})
	want := "ExecStart=/usr/local/bin/k3s \\\n" +
		"    server \\\n" +
		"\t'--cluster-init' \\\n" +
		"\t'--token' \\\n" +
		"\t'K10ab::server:pw' \\\n" +
		"\t'--token=x'\\''y' \\\n" +
		"\n"
	if got != want {
		t.Errorf("execStart:\n%q\nwant\n%q", got, want)
	}
	if got := execStart("agent", nil); got != "ExecStart=/usr/local/bin/k3s \\\n    agent \\\n\n" {
		t.Errorf("execStart without args = %q", got)
	}
}

func TestEnvFileQuotedAsDashExport(t *testing.T) {
	got := EnvFile(map[string]string{"K3S_URL": "https://s1:6443", "K3S_TOKEN": "K10ab::server:it's"})
	want := "K3S_TOKEN='K10ab::server:it'\"'\"'s'\nK3S_URL='https://s1:6443'\n"
	if got != want {
		t.Errorf("EnvFile = %q, want %q", got, want)
	}
}

func TestUnitText(t *testing.T) {
	for _, tc := range []struct{ typ, want string }{{"", "Type=notify\n"}, {"exec", "Type=exec\n"}} {
		text := Unit{Role: "agent", Type: tc.typ, EnvFile: "/etc/systemd/system/k3s-agent.service.env"}.Text()
		for _, want := range []string{tc.want,
			"EnvironmentFile=-/etc/default/%N\nEnvironmentFile=-/etc/sysconfig/%N\nEnvironmentFile=-/etc/systemd/system/k3s-agent.service.env\n",
			"KillMode=process\n", "TimeoutStartSec=0\n", "Restart=always\n", "RestartSec=5s\n",
			"ExecStartPre=-/sbin/modprobe overlay\nExecStart=/usr/local/bin/k3s \\\n    agent \\\n\n"} {
			if !strings.Contains(text, want) {
				t.Errorf("unit lacks %q:\n%s", want, text)
			}
		}
		if !strings.HasSuffix(text, " \\\n\n") {
			t.Errorf("unit does not end its ExecStart with an empty line:\n%q", text)
		}
	}
}

func TestOpenRCScriptMatchesInstallSh(t *testing.T) {
	o := OpenRC{Role: "agent", Service: "k3s-agent", EnvFile: "/etc/rancher/k3s/k3s-agent.env",
		Args: []string{"--server", "https://s1:6443", "--node-label", `say="it's"`}}
	text := o.Text()
	want := "command_args=\"agent \\\n" +
		"\t'--server' \\\n" +
		"\t'https://s1:6443' \\\n" +
		"\t'--node-label' \\\n" +
		"\t'say=\\\"it'\\''s\\\"' \\\n" +
		"    >>/var/log/k3s-agent.log 2>&1\"\n"
	if !strings.Contains(text, want) {
		t.Errorf("command_args not as install.sh writes it:\n%s\nwant\n%s", text, want)
	}
	for _, line := range []string{"supervisor=supervise-daemon\n", "name=k3s-agent\n", "command=\"/usr/local/bin/k3s\"\n",
		"pidfile=\"/var/run/k3s-agent.pid\"\n", "if [ -f /etc/rancher/k3s/k3s-agent.env ]; then . /etc/rancher/k3s/k3s-agent.env; fi\n"} {
		if !strings.Contains(text, line) {
			t.Errorf("script lacks %q", line)
		}
	}
	if got := (OpenRC{Role: "server", Service: "k3s"}).Text(); !strings.Contains(got, "command_args=\"server \\\n    >>/var/log/k3s.log 2>&1\"\n") {
		t.Errorf("script without args:\n%s", got)
	}
}
