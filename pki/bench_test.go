package pki

import (
	"slices"
	"testing"
	"time"
)

// Run with:
//
//	go test ./pki -run '^$' -bench . -benchtime 40x
//
// Each benchmark reports, besides ns/op (the mean), the median, the 10th and
// 90th percentiles, min and max of the per-operation times in ms: RSA key
// generation time varies widely from one key to the next, so the mean alone
// says little.

// reportSpread times op b.N times and reports the distribution.
func reportSpread(b *testing.B, op func() error) {
	b.Helper()
	durs := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for b.Loop() {
		start := time.Now()
		if err := op(); err != nil {
			b.Fatal(err)
		}
		durs = append(durs, time.Since(start))
	}
	b.StopTimer()
	slices.Sort(durs)
	pct := func(p float64) float64 {
		return float64(durs[int(p*float64(len(durs)-1))]) / float64(time.Millisecond)
	}
	b.ReportMetric(pct(0.5), "median-ms")
	b.ReportMetric(pct(0.1), "p10-ms")
	b.ReportMetric(pct(0.9), "p90-ms")
	b.ReportMetric(pct(0), "min-ms")
	b.ReportMetric(pct(1), "max-ms")
}

// BenchmarkCrossSignWithServiceKey is a whole default-CA rotation: five CAs
// cross-signed and a new RSA 2048 service-account key. Goal: median under
// 150 ms.
func BenchmarkCrossSignWithServiceKey(b *testing.B) {
	current := k3sDefaultSet()
	env := Env{}
	reportSpread(b, func() error {
		s, err := env.CrossSign(current)
		if err != nil {
			return err
		}
		s[ServiceKeyFile], err = env.RotateServiceKey(current[ServiceKeyFile], 0)
		return err
	})
}

// BenchmarkCrossSign is the CA part alone (ECDSA P-256 only).
func BenchmarkCrossSign(b *testing.B) {
	current := k3sDefaultSet()
	reportSpread(b, func() error {
		_, err := Env{}.CrossSign(current)
		return err
	})
}

// BenchmarkGenerateCustomRSA4096 is a full custom topology with a fresh
// RSA 4096 root and intermediate, five cluster CAs and a service.key.
func BenchmarkGenerateCustomRSA4096(b *testing.B) {
	sk := serviceKey()
	reportSpread(b, func() error {
		_, err := Env{}.GenerateCustom(CustomInput{KeyType: RSA4096, ServiceKey: sk})
		return err
	})
}
