package k3s

import (
	"strings"
	"testing"
)

// TestRKE2Layout: an RKE2 node's places and commands come from the
// product table, and the program from the unit when the facts found it.
func TestRKE2Layout(t *testing.T) {
	l := Layout{Product: ProductRKE2, Role: RoleServer}
	for got, want := range map[string]string{
		l.UnitName():                            "rke2-server",
		l.UnitFile():                            "/usr/local/lib/systemd/system/rke2-server.service",
		l.EnvFile():                             "/usr/local/lib/systemd/system/rke2-server.env",
		l.Config():                              "/etc/rancher/rke2/config.yaml",
		l.ServerCA():                            "/var/lib/rancher/rke2/server/tls/server-ca.crt",
		l.SupervisorAddr():                      "127.0.0.1:9345",
		l.ReadyzCmd():                           "/var/lib/rancher/rke2/bin/kubectl --kubeconfig /etc/rancher/rke2/rke2.yaml get --raw=/readyz",
		l.RotateCACmd("/s", false):              "PATH=/usr/local/bin:$PATH rke2 certificate rotate-ca -s https://127.0.0.1:9345 -d /var/lib/rancher/rke2 --path=/s",
		l.rotateServiceName("k3s-server"):       "rke2-server",
		l.leafName("client-k3s-controller.crt"): "client-rke2-controller.crt",
		(Layout{Product: ProductRKE2, Role: RoleAgent}).UnitName(): "rke2-agent",
	} {
		if got != want {
			t.Errorf("got %q, want %q", got, want)
		}
	}
	l.Binary = "/opt/rke2/bin/rke2"
	if cmd := l.CertificateRotateCmd([]string{"k3s-server", "etcd"}); cmd != "/opt/rke2/bin/rke2 certificate rotate -d /var/lib/rancher/rke2 --service rke2-server,etcd" {
		t.Errorf("certificate rotate: %q", cmd)
	}
	if !l.StaticPods() || (Layout{}).StaticPods() {
		t.Error("static pods: RKE2 has them, k3s does not")
	}
	k := Layout{Binary: "/usr/local/bin/k3s"}
	if got := k.ReadyzCmd(); got != "/usr/local/bin/k3s kubectl get --raw=/readyz" {
		t.Errorf("k3s readyz: %q", got)
	}
	v := mustParseVersion("v1.29.13+rke2r1")
	if !l.CheckHasOutputFlag(v) || k.CheckHasOutputFlag(mustParseVersion("v1.29.13+k3s1")) {
		t.Error("certificate check --output: RKE2 v1.29.13 has it, k3s v1.29.13 does not")
	}
}

// TestRKE2TokenScan: an RKE2 agent reads RKE2_* variables and its own
// config file; K3S_TOKEN there is found (and rewritten) but ignored, and a
// unit running another product's program is refused.
func TestRKE2TokenScan(t *testing.T) {
	l := Layout{Product: ProductRKE2, Role: RoleAgent}
	unit := "[Service]\nType=notify\nEnvironmentFile=-/etc/default/%N\nEnvironmentFile=-/etc/sysconfig/%N\n" +
		"EnvironmentFile=-/usr/local/lib/systemd/system/%N.env\nExecStart=/usr/local/bin/rke2 agent\n"
	files := map[string][]byte{
		l.UnitFile(): []byte(unit),
		l.EnvFile():  []byte("HOME=/root\nK3S_TOKEN='" + nodeTok + "'\n"),
		l.Config():   []byte("server: https://10.0.0.1:9345\ntoken: " + strings.Replace(nodeTok, "agentpw", "cfgpw", 1) + "\n"),
	}
	sc := scanTokens(l, NodeFiles{Files: files})
	if len(sc.Pending) > 0 {
		t.Fatalf("pending %v", sc.Pending)
	}
	if sc.ConfigFile != "/etc/rancher/rke2/config.yaml" || sc.Joins == "" || sc.Binary != "/usr/local/bin/rke2" {
		t.Errorf("config %s, joins %q, binary %q", sc.ConfigFile, sc.Joins, sc.Binary)
	}
	eff, err := effectiveToken(sc.Sources, RoleAgent)
	if err != nil || eff.File != l.Config() {
		t.Fatalf("effective %v (%v), want config.yaml's", eff, err)
	}
	var k3sTok bool
	for _, s := range sc.Sources {
		if s.Key == "K3S_TOKEN" {
			k3sTok = strings.Contains(s.Ignored, "rke2 reads RKE2_*")
		}
	}
	if !k3sTok {
		t.Error("K3S_TOKEN on an RKE2 node is not marked ignored")
	}
	plan, err := PlanTokenRewrites(l, NodeFiles{Files: files}, RewriteOptions{NewHash: newHash, OldHashes: []string{oldHash}})
	if err != nil || len(plan) != 2 {
		t.Fatalf("rewrites %d (%v), want the env file and config.yaml", len(plan), err)
	}

	files[l.UnitFile()] = []byte(strings.Replace(unit, "/usr/local/bin/rke2", "/usr/local/bin/k3s", 1))
	sc = scanTokens(l, NodeFiles{Files: files})
	var refused bool
	for _, s := range sc.Sources {
		refused = refused || s.Err != nil && strings.Contains(s.Err.Error(), "the inventory says the cluster is rke2")
	}
	if !refused {
		t.Error("an RKE2 inventory node running k3s is not refused")
	}
}
