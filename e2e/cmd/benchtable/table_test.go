package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const goBenchOutput = `goos: linux
goarch: amd64
pkg: github.com/bearer-vault/vault-plugin-secrets-bearer
cpu: AMD EPYC
BenchmarkCredsCached-2           	  371430	      3120 ns/op	    1525 B/op	      21 allocs/op
BenchmarkBurst-2                 	      82	  14532101 ns/op	         1.000 provider-calls/op	 2514672 B/op	   29011 allocs/op
BenchmarkSimulatedDay/20m-2      	      10	 101234567 ns/op	        72.00 provider-calls	         1.000 password-logins	 123 B/op	       4 allocs/op
PASS
ok  	github.com/bearer-vault/vault-plugin-secrets-bearer	5.123s
`

func TestParseGoBench(t *testing.T) {
	got, err := parseGoBench(strings.NewReader(goBenchOutput))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 {
		t.Fatalf("parsed %d benchmarks, want 3: %+v", len(got), got)
	}
	tests := map[string]struct {
		i     int
		name  string
		unit  string
		value float64
	}{
		"time":          {0, "CredsCached", "ns/op", 3120},
		"allocs":        {0, "CredsCached", "allocs/op", 21},
		"custom metric": {1, "Burst", "provider-calls/op", 1},
		"sub-benchmark": {2, "SimulatedDay/20m", "password-logins", 1},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			b := got[tc.i]
			if b.name != tc.name {
				t.Errorf("name = %q, want %q", b.name, tc.name)
			}
			if v, ok := b.get(tc.unit); !ok || v != tc.value {
				t.Errorf("%s = %v (found %v), want %v", tc.unit, v, ok, tc.value)
			}
		})
	}
}

func TestRender(t *testing.T) {
	benches, err := parseGoBench(strings.NewReader(goBenchOutput))
	if err != nil {
		t.Fatal(err)
	}
	ms := func(n int) []time.Duration {
		s := make([]time.Duration, 100)
		for i := range s {
			s[i] = time.Duration(n+i) * time.Microsecond
		}
		return s
	}
	ep := func(path string, base int) *endpoint {
		return &endpoint{path: path, samples: ms(base), blockP50: []time.Duration{time.Duration(base) * time.Microsecond}, requests: 1000, busy: time.Second}
	}
	vr := &vaultResult{
		vaultVersion: "Vault v1.21.0, built today",
		bearer:       ep("/v1/bearer/creds/bench", 1050),
		floor:        ep("/v1/floor/creds/bench", 1000),
		kv:           ep("/v1/secret/data/bench", 200),
		opts:         vaultOptions{warmup: 1, blocks: 1, rounds: 100, clients: 4, window: time.Second, windows: 1},
	}
	out := render(benches, vr, t.TempDir())
	for _, want := range []string{
		"| Backend: cached creds read (`BenchmarkCredsCached`) | 3.12 µs/op, 1,525 B/op, 21 allocs/op | a few µs",
		"**1** provider-calls/op",
		"| Simulated day, 20-minute token (`BenchmarkSimulatedDay/20m`)",
		"| Ratio bearer / floor | **p50 1.05** (within target; blocks 1.05–1.05)",
		"Vault v1.21.0;",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	if n := strings.Count(out, "\n|"); n != 1+3+5 {
		t.Errorf("table has %d lines after the header, want the separator, 3 benchmarks and 5 HTTP rows:\n%s", n, out)
	}
}

func TestWriteBetweenMarkers(t *testing.T) {
	path := filepath.Join(t.TempDir(), "README.md")
	before := "# x\n\n" + startMarker + "\nold\n" + endMarker + "\n\nrest\n"
	if err := os.WriteFile(path, []byte(before), 0o644); err != nil {
		t.Fatal(err)
	}
	for range 2 { // idempotent
		if err := writeBetweenMarkers(path, "| new |\n"); err != nil {
			t.Fatal(err)
		}
	}
	b, _ := os.ReadFile(path)
	if want := "# x\n\n" + startMarker + "\n| new |\n" + endMarker + "\n\nrest\n"; string(b) != want {
		t.Errorf("got %q, want %q", b, want)
	}
	if err := writeBetweenMarkers(filepath.Join(t.TempDir(), "none.md"), "x"); err == nil {
		t.Error("a missing file gave no error")
	}
}
