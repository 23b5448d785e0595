package rollout

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/fleetcert/fleetcert/inventory"
)

func clusters(n int) []inventory.Cluster {
	out := make([]inventory.Cluster, n)
	for i := range out {
		out[i] = inventory.Cluster{Name: fmt.Sprintf("c%03d", i), Labels: map[string]string{}}
	}
	return out
}

func sizes(waves [][]inventory.Cluster) []int {
	var s []int
	for _, w := range waves {
		s = append(s, len(w))
	}
	return s
}

func TestWavesFollowAnsibleSerial(t *testing.T) {
	for _, tc := range []struct {
		n     int
		waves string
		want  []int
	}{
		{10, "1,10%,100%", []int{1, 1, 8}},
		{10, "1,50%", []int{1, 5, 4}}, // the last entry repeats
		{4, "1,50%,100%", []int{1, 2, 1}},
		{3, "10%", []int{1, 1, 1}}, // rounded down, at least 1
		{7, "2", []int{2, 2, 2, 1}},
		{5, "100%", []int{5}},
		{0, "1", nil},
	} {
		steps, err := ParseWaves(tc.waves)
		if err != nil {
			t.Fatal(err)
		}
		got := sizes(Waves(clusters(tc.n), steps, Order{}, nil))
		if fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("%d clusters, --waves %s: got %v, want %v", tc.n, tc.waves, got, tc.want)
		}
	}
}

func TestCanaryWaveComesFirst(t *testing.T) {
	cs := clusters(6)
	cs[4].Labels["ring"], cs[2].Labels["ring"] = "canary", "canary"
	sel, _ := inventory.ParseSelector("ring=canary")
	steps, _ := ParseWaves("2")
	waves := Waves(cs, steps, Order{}, sel)
	if got := fmt.Sprint(sizes(waves)); got != "[2 2 2]" {
		t.Fatalf("sizes %s", got)
	}
	if waves[0][0].Name != "c002" || waves[0][1].Name != "c004" {
		t.Errorf("canary wave %v", waves[0])
	}
}

func TestWavesOrder(t *testing.T) {
	cs := []inventory.Cluster{{Name: "b", Labels: map[string]string{"prio": "2"}}, {Name: "a", Labels: map[string]string{"prio": "3"}}, {Name: "c", Labels: map[string]string{"prio": "1"}}}
	for order, want := range map[string]string{"inventory": "bac", "name": "abc", "label:prio": "cba"} {
		o, err := ParseOrder(order)
		if err != nil {
			t.Fatal(err)
		}
		var got string
		for _, w := range Waves(cs, []WaveStep{{N: 1}}, o, nil) {
			got += w[0].Name
		}
		if got != want {
			t.Errorf("--order %s: %s, want %s", order, got, want)
		}
	}
}

// TestWavesCoverEveryClusterOnceInOrder is a property test: for random
// fleets and wave specs, waves are a partition of the clusters that keeps
// their order.
func TestWavesCoverEveryClusterOnceInOrder(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for range 500 {
		n := r.IntN(60)
		var spec string
		for j := range 1 + r.IntN(4) {
			if j > 0 {
				spec += ","
			}
			if r.IntN(2) == 0 {
				spec += fmt.Sprint(1 + r.IntN(10))
			} else {
				spec += fmt.Sprintf("%d%%", 1+r.IntN(100))
			}
		}
		steps, err := ParseWaves(spec)
		if err != nil {
			t.Fatal(err)
		}
		var flat []string
		for _, w := range Waves(clusters(n), steps, Order{}, nil) {
			if len(w) == 0 {
				t.Fatalf("empty wave for %d clusters, %s", n, spec)
			}
			for _, c := range w {
				flat = append(flat, c.Name)
			}
		}
		if len(flat) != n {
			t.Fatalf("%d clusters, %s: %d in waves", n, spec, len(flat))
		}
		for i, name := range flat {
			if name != fmt.Sprintf("c%03d", i) {
				t.Fatalf("%d clusters, %s: position %d holds %s", n, spec, i, name)
			}
		}
	}
}

func TestShardsPartitionStably(t *testing.T) {
	cs := clusters(300)
	for _, count := range []int{1, 2, 3, 7} {
		seen := map[string]int{}
		for i := range count {
			for _, c := range Shard(cs, i, count) {
				seen[c.Name]++
			}
		}
		if len(seen) != len(cs) {
			t.Errorf("%d shards cover %d of %d clusters", count, len(seen), len(cs))
		}
		for name, k := range seen {
			if k != 1 {
				t.Errorf("%d shards: %s in %d shards", count, name, k)
			}
		}
	}
	// A cluster's shard depends on its name only, not on the rest of the fleet.
	alone := Shard(cs[5:6], shardOf(cs[5].Name, 3), 3)
	if len(alone) != 1 {
		t.Error("shard of a cluster changed when the fleet changed")
	}
	for _, bad := range []string{"", "1", "3/3", "-1/2", "a/b", "0/0"} {
		if _, _, err := ParseShard(bad); err == nil {
			t.Errorf("ParseShard(%q) accepted", bad)
		}
	}
}

func TestFailureBudgetMustBeExceeded(t *testing.T) {
	for _, tc := range []struct {
		spec          string
		failed, total int
		want          bool
	}{
		{"0", 0, 10, false}, {"0", 1, 10, true}, {"1", 1, 10, false}, {"1", 2, 10, true},
		{"10%", 1, 10, false}, {"10%", 2, 10, true}, {"25%", 1, 4, false}, {"25%", 2, 4, true},
	} {
		b, err := ParseFailureBudget(tc.spec)
		if err != nil {
			t.Fatal(err)
		}
		if got := b.Exceeded(tc.failed, tc.total); got != tc.want {
			t.Errorf("--max-failures %s, %d/%d failed: exceeded=%v", tc.spec, tc.failed, tc.total, got)
		}
	}
}

func TestMaintenanceWindow(t *testing.T) {
	w, err := ParseWindow("Sat 02:00-06:00 Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	berlin, _ := time.LoadLocation("Europe/Berlin")
	for at, want := range map[string]bool{
		"2026-11-28 02:00": true, "2026-11-28 05:59": true, "2026-11-28 06:00": false,
		"2026-11-28 01:59": false, "2026-11-29 03:00": false, "2026-11-21 03:00": true,
	} {
		tm, _ := time.ParseInLocation("2006-01-02 15:04", at, berlin)
		if got := w.Contains(tm); got != want {
			t.Errorf("%s Berlin: %v, want %v", at, got, want)
		}
	}
	// The same instant seen from UTC: 01:30 UTC on Saturday is 02:30 in Berlin.
	if !w.Contains(time.Date(2026, 11, 28, 1, 30, 0, 0, time.UTC)) {
		t.Error("zone not applied")
	}
	night, _ := ParseWindow("Mon-Fri 22:00-04:00")
	for at, want := range map[string]bool{
		"2026-11-27 23:00": true,  // Friday night
		"2026-11-28 03:00": true,  // still Friday's window, on Saturday
		"2026-11-28 23:00": false, // Saturday night: no window starts
		"2026-11-23 03:00": false, // Monday early: Sunday had no window
	} {
		tm, _ := time.ParseInLocation("2006-01-02 15:04", at, time.UTC)
		if got := night.Contains(tm); got != want {
			t.Errorf("%s: %v, want %v", at, got, want)
		}
	}
	for _, bad := range []string{"", "Sat", "Sat 02:00", "Xyz 02:00-03:00", "Sat 25:00-26:00", "Sat 02:00-03:00 Mars/Olympus", "Sat 02:00-02:00"} {
		if _, err := ParseWindow(bad); err == nil {
			t.Errorf("ParseWindow(%q) accepted", bad)
		}
	}
}
