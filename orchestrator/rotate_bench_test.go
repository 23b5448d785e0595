package orchestrator

import (
	"context"
	"fmt"
	"runtime"
	"runtime/metrics"
	"sync"
	"testing"
	"time"

	"github.com/fleetcert/fleetcert/orchestrator/fleettest"
)

// BenchmarkRotateCA1000Clusters measures orchestration overhead: rotate-ca
// over 1000 fake clusters of 3 nodes whose nodes answer at once
// (orchestrator/fleettest), from connecting and gathering facts through
// every phase and gate to cleanup. The CA material is made once
// beforehand and handed out through RotateCA.Material, so key generation is
// not what it measures; everything else (facts parsing, token planning,
// validation of the new material against each cluster's current one,
// hashCA, state and lock writes) runs as in a real rotation.
//
// Two shapes: 1s2a (one server, sqlite, two agents restarted together)
// and 3s (three servers, embedded etcd: a snapshot, and three servers
// restarted one after the other behind five gates each), each at the
// CLI's default --concurrency 16 and at 64.
//
// ns/op is the wall time of one whole rollout. peak-heap-MiB is the
// largest live-plus-unswept heap (runtime/metrics
// /memory/classes/heap/objects:bytes, HeapAlloc's equivalent) seen by a
// goroutine sampling every millisecond, fake fleet included;
// fake-heap-MiB is the part the fake fleet itself holds before the run
// (built, garbage collected), for subtracting. peak-sys-MiB is the peak
// of all memory the Go runtime has mapped from the OS
// (/memory/classes/total:bytes, MemStats.Sys): what the process holds.
// peak-live-MiB is the largest heap the garbage collector found live
// (/gc/heap/live:bytes): what the run needs, without the collector's
// headroom (GOGC=100 lets the heap grow to about twice that; GOMEMLIMIT
// trades CPU for less). cpu-s/rollout is the CPU time the process spent
// (getrusage), which load from other processes on a shared machine does
// not inflate as it does ns/op. Targets (issue 7): under 5 s and under
// 300 MiB. Run with -benchtime=1x: one rollout takes seconds.
//
//	go test ./orchestrator -run '^$' -bench RotateCA1000Clusters -benchtime=1x -benchmem
func BenchmarkRotateCA1000Clusters(b *testing.B) {
	const clusters = 1000
	m, err := fleettest.Default()
	if err != nil {
		b.Fatal(err)
	}
	if _, err := crossSigned(); err != nil {
		b.Fatal(err)
	}
	for _, shape := range []struct {
		name            string
		servers, agents int
	}{{"1s2a", 1, 2}, {"3s", 3, 0}} {
		for _, concurrency := range []int{16, 64} {
			b.Run(fmt.Sprintf("%s/concurrency=%d", shape.name, concurrency), func(b *testing.B) {
				spec := fleettest.Spec{Clusters: clusters, Servers: shape.servers, Agents: shape.agents}
				var peakHeap, peakSys, peakLive, fakeHeap uint64
				var cpu time.Duration
				b.ReportAllocs()
				b.StopTimer()
				for range b.N {
					fl := fleettest.New(m, spec)
					opts, _ := fakeOptions(b, concurrency)
					opts.HealthTimeout = 10 * time.Minute // the CLI default
					runtime.GC()
					fakeHeap = heapObjects()
					s := startSampler()
					cpu0 := cpuTime()
					b.StartTimer()
					rep := RunFleet(context.Background(), fl.Dial, opts.op, oneWave(fl), opts.RunOptions)
					b.StopTimer()
					cpu += cpuTime() - cpu0
					h, sys, live := s.stop()
					peakHeap, peakSys, peakLive = max(peakHeap, h), max(peakSys, sys), max(peakLive, live)
					if done := rep.Count(OutcomeDone); done != clusters {
						for _, cr := range rep.Clusters {
							if cr.Outcome != OutcomeDone {
								b.Fatalf("%d of %d clusters done; %s: %s %s", done, clusters, cr.Cluster, cr.Outcome, cr.Error)
							}
						}
					}
					if u := fl.Unknown(); len(u) > 0 {
						b.Fatalf("scripts the fake does not know: %q", u)
					}
				}
				const mib = 1 << 20
				b.ReportMetric(float64(peakHeap)/mib, "peak-heap-MiB")
				b.ReportMetric(float64(fakeHeap)/mib, "fake-heap-MiB")
				b.ReportMetric(float64(peakSys)/mib, "peak-sys-MiB")
				b.ReportMetric(float64(peakLive)/mib, "peak-live-MiB")
				b.ReportMetric(cpu.Seconds()/float64(b.N), "cpu-s/rollout")
			})
		}
	}
}

// sampler records the peak heap and mapped memory while a run goes on.
type sampler struct {
	stopc           chan struct{}
	wg              sync.WaitGroup
	heap, sys, live uint64
}

var memSamples = []metrics.Sample{
	{Name: "/memory/classes/heap/objects:bytes"},
	{Name: "/memory/classes/total:bytes"},
	{Name: "/gc/heap/live:bytes"},
}

func heapObjects() uint64 {
	s := []metrics.Sample{memSamples[0]}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

func startSampler() *sampler {
	s := &sampler{stopc: make(chan struct{})}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		samples := append([]metrics.Sample(nil), memSamples...)
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		for {
			metrics.Read(samples)
			s.heap = max(s.heap, samples[0].Value.Uint64())
			s.sys = max(s.sys, samples[1].Value.Uint64())
			s.live = max(s.live, samples[2].Value.Uint64())
			select {
			case <-s.stopc:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

func (s *sampler) stop() (heap, sys, live uint64) {
	close(s.stopc)
	s.wg.Wait()
	return s.heap, s.sys, s.live
}
