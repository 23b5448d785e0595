package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fleetcert/fleetcert/e2e/harness"
)

// OpenRC nodes (issue 12): k3s installed as install.sh does on Alpine and
// other OpenRC systems. TestOpenRC first proves the test fleet itself (the
// OpenRC image, the harness's install and helpers, the emulator under
// supervise-daemon: subtest "nodes"), then runs the built fleetcert against
// OpenRC nodes.

// openrcStatus runs `rc-service <svc> status` and returns its exit code and
// output.
func openrcStatus(t *testing.T, ctx context.Context, f *harness.Fleet, n *harness.Node) (int, string) {
	t.Helper()
	r, err := f.Exec(ctx, n.Name, "rc-service "+n.Unit+" status 2>&1")
	if err != nil {
		t.Fatal(err)
	}
	return r.ExitCode, strings.TrimSpace(r.Stdout)
}

// waitLog waits until the node's k3s log holds want at least count times.
func waitLog(t *testing.T, ctx context.Context, f *harness.Fleet, n *harness.Node, want string, count int, within time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		logs, err := f.Logs(ctx, n.Name)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Count(logs, want) >= count {
			return logs
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %q not logged %d time(s) within %s; log:\n%s", n.Name, want, count, within, logs)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// waitNewPID waits until the node's init records a running k3s PID other
// than old, and returns it.
func waitNewPID(t *testing.T, ctx context.Context, f *harness.Fleet, n *harness.Node, old int, within time.Duration) int {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		pid, err := f.ServicePID(ctx, n.Name)
		if err != nil {
			t.Fatal(err)
		}
		if pid != 0 && pid != old {
			if r, err := f.Exec(ctx, n.Name, fmt.Sprintf("test -d /proc/%d", pid)); err == nil && r.ExitCode == 0 {
				return pid
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no new k3s PID (old %d, now %d) within %s", n.Name, old, pid, within)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// openrcNodes (TestOpenRC's first subtest, on its fleet, before any
// fleetcert run): gamma's nodes run OpenRC as PID 1 (booted by it, no
// systemd), k3s runs under supervise-daemon from the script install.sh
// writes, OpenRC's child_pid is k3s's PID, the emulator's log reaches
// /var/log/<service>.log, and the agent's userland is busybox. Then what
// the tests and fleetcert rely on: a killed k3s is respawned, stop, start
// and restart through rc-service, a token CA mismatch shows in the log
// file, the clock shims work on busybox, and a reboot starts k3s again.
// It needs nothing of fleetcert.
func openrcNodes(t *testing.T, ctx context.Context, f *harness.Fleet) {
	c := f.Cluster("gamma")
	if c == nil {
		t.Fatal("the fleet has no cluster gamma")
	}
	for _, n := range c.Nodes() {
		if n.Init != harness.InitOpenRC {
			t.Fatalf("%s: init %q, want openrc", n.Name, n.Init)
		}
		// Booted by OpenRC, not merely carrying it.
		mustExec(t, ctx, f, n.Name, "test -e /run/openrc/softlevel && test ! -e /run/systemd/system && test \"$(cat /proc/1/comm)\" = openrc-init")
		if code, out := openrcStatus(t, ctx, f, n); code != 0 || !strings.Contains(out, "started") {
			t.Errorf("%s: rc-service %s status: exit %d, %q; want 0, started", n.Name, n.Unit, code, out)
		}
		if !strings.Contains(mustExec(t, ctx, f, n.Name, "rc-update show default"), n.Unit) {
			t.Errorf("%s: %s is not in the default runlevel", n.Name, n.Unit)
		}

		// supervise-daemon runs k3s; the pidfile is the supervisor's,
		// child_pid is k3s's (and what ServicePID reports).
		sup, err := strconv.Atoi(strings.TrimSpace(mustExec(t, ctx, f, n.Name, "cat /var/run/"+n.Unit+".pid")))
		if err != nil {
			t.Fatal(err)
		}
		child, err := strconv.Atoi(strings.TrimSpace(mustExec(t, ctx, f, n.Name, "cat /run/openrc/options/"+n.Unit+"/child_pid")))
		if err != nil {
			t.Fatal(err)
		}
		if pid, err := f.ServicePID(ctx, n.Name); err != nil || pid != child {
			t.Errorf("%s: ServicePID = %d, %v; want child_pid %d", n.Name, pid, err, child)
		}
		out := mustExec(t, ctx, f, n.Name, fmt.Sprintf(
			"tr '\\0' '\\n' </proc/%[1]d/cmdline | head -n 1; readlink /proc/%[2]d/exe; awk '{print $4}' /proc/%[2]d/stat; tr '\\0' '|' </proc/%[2]d/cmdline | sed 's/|*$//'", sup, child))
		got := strings.Split(strings.TrimSpace(out), "\n")
		want := []string{"supervise-daemon", "/usr/local/bin/k3s", strconv.Itoa(sup), "/usr/local/bin/k3s " + string(n.Role)}
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Errorf("%s: supervisor %d comm, child %d exe, its parent, its cmdline = %q, want %q", n.Name, sup, child, got, want)
		}

		// install.sh's files.
		modes := mustExec(t, ctx, f, n.Name, "stat -c %a "+n.ServiceFile()+" /etc/rancher/k3s/"+n.Unit+".env")
		if strings.Fields(modes)[0] != "755" || strings.Fields(modes)[1] != "600" {
			t.Errorf("%s: modes of the service script and env file = %q, want 755 600", n.Name, modes)
		}
		for _, p := range n.TokenPlaces() {
			data, err := f.ReadFile(ctx, n.Name, n.TokenFile(p))
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(n.Token, "K10") || !strings.Contains(string(data), n.Token) {
				t.Errorf("%s: %s does not hold the installed secure token", n.Name, n.TokenFile(p))
			}
		}

		// The emulator's log lines reach the log file.
		logs, err := f.Logs(ctx, n.Name)
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{`level=info msg="Starting k3s`, "is up and running"} {
			if !strings.Contains(logs, want) {
				t.Errorf("%s: %s lacks %q:\n%s", n.Name, n.LogFile(), want, logs)
			}
		}

		// Busybox applets where asked for, Debian's elsewhere.
		links := mustExec(t, ctx, f, n.Name, "for a in /bin/sh /usr/bin/stat /usr/bin/base64 /bin/cp; do readlink -f $a; done")
		for i, target := range strings.Fields(links) {
			if isBB := target == "/usr/bin/busybox"; isBB != n.Busybox() {
				t.Errorf("%s: applet %d is %s (busybox wanted: %v)", n.Name, i, target, n.Busybox())
			}
		}
	}
	if !c.Agents[0].Busybox() {
		t.Error("gamma's agent should use busybox's applets")
	}

	a := c.Agents[0]
	t.Run("respawn", func(t *testing.T) {
		// supervise-daemon respawns a k3s that dies (respawn_delay=5).
		old, err := f.ServicePID(ctx, a.Name)
		if err != nil {
			t.Fatal(err)
		}
		mustExec(t, ctx, f, a.Name, fmt.Sprintf("kill -9 %d", old))
		pid := waitNewPID(t, ctx, f, a, old, 15*time.Second)
		waitLog(t, ctx, f, a, "Starting k3s agent", 2, 10*time.Second)
		if code, out := openrcStatus(t, ctx, f, a); code != 0 {
			t.Errorf("after a respawn: status exit %d %q", code, out)
		}
		t.Logf("k3s %d killed, respawned as %d", old, pid)
		if err := f.WaitReady(ctx, "gamma"); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("stop-start-restart", func(t *testing.T) {
		old, err := f.ServicePID(ctx, a.Name)
		if err != nil {
			t.Fatal(err)
		}
		// The emulator leaves on SIGTERM, which supervise-daemon sends.
		mustExec(t, ctx, f, a.Name, "rc-service "+a.Unit+" stop")
		if code, out := openrcStatus(t, ctx, f, a); code != 3 || !strings.Contains(out, "stopped") {
			t.Errorf("stopped: status exit %d %q, want 3, stopped", code, out)
		}
		if r, _ := f.Exec(ctx, a.Name, fmt.Sprintf("test -d /proc/%d", old)); r.ExitCode == 0 {
			t.Errorf("k3s %d still runs after rc-service stop", old)
		}
		if pid, err := f.ServicePID(ctx, a.Name); err != nil || pid != 0 {
			t.Errorf("stopped: ServicePID = %d, %v; want 0", pid, err)
		}
		mustExec(t, ctx, f, a.Name, "rc-service "+a.Unit+" start")
		started := waitNewPID(t, ctx, f, a, old, 10*time.Second)
		if err := f.RestartUnit(ctx, a.Name); err != nil {
			t.Fatal(err)
		}
		waitNewPID(t, ctx, f, a, started, time.Second)
		if err := f.WaitReady(ctx, "gamma"); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("mismatch-in-log", func(t *testing.T) {
		// An agent whose token pins another CA says so in the log file
		// (the emulator's token-hash fault), and only there.
		const want = "token CA hash does not match the Cluster CA certificate hash"
		before, err := f.Logs(ctx, a.Name)
		if err != nil {
			t.Fatal(err)
		}
		n0 := strings.Count(before, want)
		if err := f.WriteFile(ctx, a.Name, "/etc/k3semu/fault", []byte("token-hash="+strings.Repeat("0", 64)+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := f.RestartUnit(ctx, a.Name); err != nil {
			t.Fatal(err)
		}
		waitLog(t, ctx, f, a, want, n0+2, 20*time.Second)
		if err := f.WriteFile(ctx, a.Name, "/etc/k3semu/fault", nil, 0o644); err != nil {
			t.Fatal(err)
		}
		// The mismatch was on purpose: the log starts afresh (k3s appends
		// to it), so that what fleetcert's runs cause later stands alone.
		mustExec(t, ctx, f, a.Name, ": >"+a.LogFile())
		if err := f.RestartUnit(ctx, a.Name); err != nil {
			t.Fatal(err)
		}
		if err := f.WaitReady(ctx, "gamma"); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("clock-shims-on-busybox", func(t *testing.T) {
		if err := f.SetClockOffset(ctx, a.Name, time.Hour); err != nil {
			t.Fatal(err)
		}
		defer f.SetClockOffset(ctx, a.Name, 0)
		now := time.Now().Unix()
		out := strings.Fields(mustExec(t, ctx, f, a.Name, "date +%s; f=$(mktemp); stat -c %Y $f; rm -f $f"))
		for i, what := range []string{"date +%s", "stat -c %Y of a new file"} {
			got, err := strconv.ParseInt(out[i], 10, 64)
			if err != nil || got < now+3590 || got > now+3610 {
				t.Errorf("%s with the clock an hour ahead = %q, want about %d", what, out[i], now+3600)
			}
		}
	})
	t.Run("reboot", func(t *testing.T) {
		if err := f.RestartNode(ctx, a.Name); err != nil {
			t.Fatal(err)
		}
		// The default runlevel starts k3s at boot.
		waitNewPID(t, ctx, f, a, 0, 20*time.Second)
		if err := f.WaitReady(ctx, "gamma"); err != nil {
			t.Fatal(err)
		}
	})
}

// openrcSpecs are the clusters of TestOpenRC: gamma as the demo has it
// (an OpenRC server with its secure token in command_args, a busybox
// OpenRC agent with its token in its .env file), and mixed: systemd
// servers and an OpenRC agent with its token in /etc/environment and a
// config.yaml.d drop-in.
func openrcSpecs() []harness.ClusterSpec {
	return []harness.ClusterSpec{harness.DemoGamma(), {
		Name:    "mixed",
		Servers: []harness.NodeSpec{{}, {TokenIn: []harness.TokenPlace{harness.InExecStart}}},
		Agents: []harness.NodeSpec{{Init: harness.InitOpenRC,
			TokenIn: []harness.TokenPlace{harness.InEtcEnvironment, harness.InConfigDropIn}}},
	}}
}

// servicePIDs is every node's k3s PID as its init system records it.
func servicePIDs(t *testing.T, ctx context.Context, f *harness.Fleet, cluster string) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, n := range f.Cluster(cluster).Nodes() {
		pid, err := f.ServicePID(ctx, n.Name)
		if err != nil {
			t.Fatal(err)
		}
		out[n.Name] = pid
	}
	return out
}

// assertNoFileHolds fails for every file under /etc on the cluster's nodes
// that still holds s (an old CA hash: a token place left behind).
func assertNoFileHolds(t *testing.T, ctx context.Context, f *harness.Fleet, cluster, s string) {
	t.Helper()
	for _, n := range f.Cluster(cluster).Nodes() {
		r, err := f.Exec(ctx, n.Name, "grep -rlF -- "+shellQuote(s)+" /etc; true")
		if err != nil {
			t.Fatal(err)
		}
		if files := strings.Fields(r.Stdout); len(files) > 0 {
			t.Errorf("%s: still holding the old hash %s: %v", n.Name, s, files)
		}
	}
}

// TestOpenRC: the OpenRC nodes themselves (openrcNodes), then the built
// fleetcert on them (issue 12, "How it is shown"). gamma: facts reports the OpenRC nodes; rotate-ca (cross-sign),
// rotate-sa-key, rotate (leaf certificates) and check all exit 0, and
// afterwards no file under /etc on a gamma node holds the old hash; then,
// with the agent's token left on the current CA on purpose (emulator
// fault token-hash), the next rotate-ca fails fast, naming the agent and
// the log line `token CA hash does not match`. mixed: rotate-ca completes
// on systemd servers with an OpenRC agent. One fleet, the two clusters at
// the same time: each subtest runs in a goroutine of its own, not with
// t.Parallel, which would make them wait for a -parallel slot while the
// fleet holds its share of rotNodes, and the tests holding the slots wait
// for rotNodes.
func TestOpenRC(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t, 12*time.Minute)
	f := startRotFleet(t, ctx, openrcSpecs()...)
	if !t.Run("nodes", func(t *testing.T) { openrcNodes(t, ctx, f) }) {
		t.FailNow() // the fleet is not what the rest assumes
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	run := func(name string, test func(t *testing.T)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t.Run(name, test)
		}()
	}

	run("gamma", func(t *testing.T) {
		c := f.Cluster("gamma")
		inv := writeInventory(t, f, "gamma", c.Servers, c.Agents)
		s, a := c.Servers[0], c.Agents[0]

		// facts reads OpenRC nodes: the init, the service, its state, the
		// k3s PID (child_pid) and the token in each place.
		res := fleetcert(t, ctx, "facts", "-i", inv, "-o", "json")
		if res.Code != 0 {
			t.Errorf("facts on gamma:\n%s", res)
		}
		var facts []struct {
			Node  string `json:"node"`
			Error string `json:"error"`
			Facts *struct {
				Init, Unit, UnitState, Role, CAHash string
				MainPID                             int `json:"mainPID"`
			} `json:"facts"`
			Tokens []struct {
				File      string `json:"file"`
				MatchesCA *bool  `json:"matchesCA"`
			} `json:"tokens"`
		}
		if res.Code == 0 {
			if err := json.Unmarshal(envelope(t, []byte(res.Stdout), "nodes"), &facts); err != nil {
				t.Fatalf("facts -o json: %v\n%s", err, res.Stdout)
			}
		}
		pids := servicePIDs(t, ctx, f, "gamma")
		for _, r := range facts {
			n := f.Node(r.Node)
			if n == nil || r.Facts == nil {
				t.Errorf("facts: node %s: %s", r.Node, r.Error)
				continue
			}
			fa := r.Facts
			if fa.Init != "openrc" || fa.Unit != n.Unit || fa.UnitState != "started" || fa.Role != string(n.Role) || fa.MainPID != pids[n.Name] {
				t.Errorf("facts for %s: %+v; want init openrc, unit %s, state started, role %s, PID %d (child_pid)", n.Name, *fa, n.Unit, n.Role, pids[n.Name])
			}
			for _, p := range n.TokenPlaces() {
				found := false
				for _, tok := range r.Tokens {
					found = found || tok.File == n.TokenFile(p) && tok.MatchesCA != nil && *tok.MatchesCA
				}
				if !found {
					t.Errorf("facts for %s: no token matching the CA from %s (%s): %+v", n.Name, n.TokenFile(p), p, r.Tokens)
				}
			}
		}

		oldHash := clusterHash(t, ctx, f, "gamma")
		assertTokensPin(t, ctx, f, "gamma", oldHash)
		tokenFilesBefore := readTokenFiles(t, ctx, f, "gamma")

		// rotate-ca, cross-signed: every node restarted through rc-service,
		// every token rewritten in place, only the hash changed.
		res = fleetcert(t, ctx, "rotate-ca", "-i", inv, "-o", "json", "--health-timeout", "3m")
		if res.Code != 0 {
			t.Fatalf("rotate-ca on gamma:\n%s", res)
		}
		t.Logf("rotate-ca on gamma took %s", durationOf(res))
		rep := res.report(t)
		newHash := clusterHash(t, ctx, f, "gamma")
		if newHash == oldHash || rep.Mode != "cross-sign" || rep.Outcome != "done" || rep.TargetHash != newHash {
			t.Errorf("rotate-ca report: mode %q outcome %q target %s; served %s, old %s", rep.Mode, rep.Outcome, rep.TargetHash, newHash, oldHash)
		}
		after := servicePIDs(t, ctx, f, "gamma")
		for _, n := range c.Nodes() {
			if after[n.Name] == pids[n.Name] {
				t.Errorf("%s: k3s was not restarted (PID %d)", n.Name, pids[n.Name])
			}
			if o := rep.nodeOutcome(n.Name); o != "restarted" {
				t.Errorf("%s: outcome %q, want restarted", n.Name, o)
			}
		}
		assertTokensPin(t, ctx, f, "gamma", newHash)
		assertOnlyHashChanged(t, ctx, f, "gamma", tokenFilesBefore, oldHash, newHash)
		// What the running k3s was given, as OpenRC evaluated command_args
		// (it keeps the arguments of the running service): the new token.
		argv := mustExec(t, ctx, f, s.Name, "cat /run/openrc/options/"+s.Unit+"/argv_*")
		if !strings.Contains(argv, "K10"+newHash+"::") || strings.Contains(argv, oldHash) {
			t.Errorf("%s: the running k3s's arguments do not pin the new CA alone", s.Name)
		}
		assertAllReady(t, ctx, f, "gamma")
		assertNoMismatchLogged(t, ctx, f, c.Nodes()...)

		// rotate-sa-key: the server restarted, the agent untouched.
		pids = servicePIDs(t, ctx, f, "gamma")
		res = fleetcert(t, ctx, "rotate-sa-key", "-i", inv, "-o", "json", "--health-timeout", "3m")
		if res.Code != 0 {
			t.Fatalf("rotate-sa-key on gamma:\n%s", res)
		}
		after = servicePIDs(t, ctx, f, "gamma")
		if after[s.Name] == pids[s.Name] || after[a.Name] != pids[a.Name] {
			t.Errorf("rotate-sa-key: PIDs before %v, after %v; want the server's changed, the agent's kept", pids, after)
		}

		// rotate: new leaf certificates on both nodes, the same CAs.
		serials, cas := map[string]map[string]string{}, map[string]map[string]string{}
		for _, n := range c.Nodes() {
			serials[n.Name], cas[n.Name] = leafSerials(t, ctx, f, n), caFiles(t, ctx, f, n)
		}
		res = fleetcert(t, ctx, "rotate", "-i", inv, "-o", "json")
		if res.Code != 0 {
			t.Fatalf("rotate on gamma:\n%s", res)
		}
		for _, n := range c.Nodes() {
			now := leafSerials(t, ctx, f, n)
			for p, serial := range serials[n.Name] {
				if now[p] == serial {
					t.Errorf("%s: rotate kept %s (serial %s)", n.Name, p, serial)
				}
			}
			if got := caFiles(t, ctx, f, n); !maps.Equal(got, cas[n.Name]) {
				t.Errorf("%s: rotate changed a CA", n.Name)
			}
		}
		assertAllReady(t, ctx, f, "gamma")

		res = fleetcert(t, ctx, "check", "-i", inv, "-o", "json")
		if res.Code != 0 {
			t.Errorf("check on gamma after the rotations:\n%s", res)
		}
		assertNoFileHolds(t, ctx, f, "gamma", oldHash)

		// The agent's token left on the current CA on purpose: after the
		// next rotate-ca restarts it, it cannot join, and says so only in
		// its log file. fleetcert must stop there, soon, and say why.
		if err := f.WriteFile(ctx, a.Name, "/etc/k3semu/fault", []byte("token-hash="+newHash+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		res = fleetcert(t, ctx, "rotate-ca", "-i", inv, "-o", "json", "--health-timeout", "3m")
		took := time.Since(start)
		if res.Code != 1 {
			t.Fatalf("rotate-ca with the agent's token left behind: want exit 1\n%s", res)
		}
		rep = res.report(t)
		if !strings.Contains(rep.Error, a.Name) || !strings.Contains(rep.Error, "token CA hash does not match") {
			t.Errorf("the error does not name %s and the log line: %q", a.Name, rep.Error)
		}
		if o := rep.nodeOutcome(a.Name); o != "failed" {
			t.Errorf("%s: outcome %q, want failed", a.Name, o)
		}
		if took > 90*time.Second {
			t.Errorf("rotate-ca took %s to notice the agent's mismatch (health timeout 3m): not fast", took.Round(time.Second))
		}
		t.Logf("rotate-ca with a stale agent token failed after %s: %s", took.Round(100*time.Millisecond), rep.Error)
	})

	run("mixed", func(t *testing.T) {
		c := f.Cluster("mixed")
		inv := writeInventory(t, f, "mixed", c.Servers, c.Agents)
		oldHash := clusterHash(t, ctx, f, "mixed")
		assertTokensPin(t, ctx, f, "mixed", oldHash)
		tokenFilesBefore := readTokenFiles(t, ctx, f, "mixed")
		res := fleetcert(t, ctx, "rotate-ca", "-i", inv, "-o", "json", "--health-timeout", "3m")
		if res.Code != 0 {
			t.Fatalf("rotate-ca on mixed:\n%s", res)
		}
		t.Logf("rotate-ca on mixed took %s", durationOf(res))
		newHash := clusterHash(t, ctx, f, "mixed")
		if rep := res.report(t); newHash == oldHash || rep.Outcome != "done" || rep.TargetHash != newHash {
			t.Errorf("rotate-ca report: outcome %q target %s; served %s, old %s", rep.Outcome, rep.TargetHash, newHash, oldHash)
		}
		assertTokensPin(t, ctx, f, "mixed", newHash)
		assertOnlyHashChanged(t, ctx, f, "mixed", tokenFilesBefore, oldHash, newHash)
		assertAllReady(t, ctx, f, "mixed")
		assertNoMismatchLogged(t, ctx, f, c.Nodes()...)
		assertNoFileHolds(t, ctx, f, "mixed", oldHash)
	})
}
