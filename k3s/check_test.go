package k3s

import (
	"testing"
	"time"
)

func TestClassify(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	day := 24 * time.Hour
	within := 120 * day
	for _, tc := range []struct {
		name      string
		nb, na    time.Time
		want      CertStatus
		wantWithn time.Duration
	}{
		{"a year left", now.Add(-day), now.Add(365 * day), StatusOK, within},
		{"one second past the window", now.Add(-day), now.Add(within + time.Second), StatusOK, within},
		{"exactly at the window", now.Add(-day), now.Add(within), StatusWarning, within},
		{"ten days left", now.Add(-day), now.Add(10 * day), StatusWarning, within},
		{"one second left", now.Add(-day), now.Add(time.Second), StatusWarning, within},
		{"expires now", now.Add(-day), now, StatusExpired, within},
		{"expired a month ago", now.Add(-400 * day), now.Add(-30 * day), StatusExpired, within},
		{"starts tomorrow", now.Add(day), now.Add(365 * day), StatusNotYetValid, within},
		{"starts in a second, expires soon", now.Add(time.Second), now.Add(day), StatusNotYetValid, within},
		{"starts now", now, now.Add(365 * day), StatusOK, within},
		{"ten days left, 5d window", now.Add(-day), now.Add(10 * day), StatusOK, 5 * day},
	} {
		got := classify(Cert{NotBefore: tc.nb, NotAfter: tc.na}, now, tc.wantWithn)
		if got != tc.want {
			t.Errorf("%s: %s, want %s", tc.name, got, tc.want)
		}
	}
}

func TestIsOfflineCAKey(t *testing.T) {
	for name, want := range map[string]bool{
		"root-ca.key": true, "intermediate-ca.key": true, "server-root-ca.key": true, "etcd-root.key": true,
		"server-ca.key": false, "client-ca.key": false, "request-header-ca.key": false, "service.key": false,
		"client-admin.key": false, "root-ca.pem": false, "peer-ca.key": false,
	} {
		if got := isOfflineCAKey(name); got != want {
			t.Errorf("%s: %v, want %v", name, got, want)
		}
	}
}

func TestCheckNodeFindsKeys(t *testing.T) {
	l := Layout{DataDir: "/d"}
	s := &Snapshot{Keys: map[string]File{
		"/d/server/tls/server-ca.key":            {Path: "/d/server/tls/server-ca.key", Mode: 0o600},
		"/d/server/tls/root-ca.key":              {Path: "/d/server/tls/root-ca.key", Mode: 0o600},
		"/d/server/tls/etcd/intermediate-ca.key": {Path: "/d/server/tls/etcd/intermediate-ca.key", Mode: 0o600},
		"/d/server/tls/client-ca.key":            {Path: "/d/server/tls/client-ca.key", Mode: 0o640},
		"/d/agent/serving-kubelet.key":           {Path: "/d/agent/serving-kubelet.key", Mode: 0o604},
		"/d/agent/root-ca.key":                   {Path: "/d/agent/root-ca.key", Mode: 0o400},
	}}
	nc := CheckNode(l, s, NodeFacts{Unreadable: []string{"/d/server/tls/broken.crt"}}, time.Now(), DefaultCheckWithin)
	got := map[string]bool{}
	for _, f := range nc.Findings {
		got[f.Kind+" "+f.File] = true
	}
	want := []string{
		"caKeyOnNode /d/server/tls/root-ca.key",
		"caKeyOnNode /d/server/tls/etcd/intermediate-ca.key",
		"keyReadable /d/server/tls/client-ca.key",
		"keyReadable /d/agent/serving-kubelet.key",
		"unreadableCertificate /d/server/tls/broken.crt",
	}
	for _, w := range want {
		if !got[w] {
			t.Errorf("missing finding %s; got %v", w, got)
		}
	}
	if len(got) != len(want) {
		t.Errorf("findings %v, want exactly %v", got, want)
	}
}
