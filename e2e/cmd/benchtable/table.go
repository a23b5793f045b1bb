package main

import (
	"fmt"
	"math"
	"strings"
	"time"
)

// benchInfo says what a root benchmark measures and its performance target.
var benchInfo = map[string]struct{ what, target string }{
	"CredsCached":         {"Backend: cached creds read", "a few µs; no provider call, no storage operation"},
	"CredsCachedParallel": {"Backend: cached creds read, all cores", "as above, no lock contention"},
	"CredsColdRefresh":    {"Backend: creds read that renews the token", "—"},
	"Burst":               {"1,000 concurrent reads at expiry", "exactly 1 provider call"},
	"SimulatedDay":        {"Simulated day, 20-minute token", "provider calls = ideal renewals; no password login after the first"},
	"PeriodicNothingDue":  {"Periodic function, nothing due", "< 1 ms with 10,000 roles"},
	"ManyDue": {
		"10,000 roles due at once on 10 connections, provider answering in 100 ms",
		"about 1,000 × 0.1 s / 4 = 25 s; at most 4 requests in flight per connection; no read waits",
	},
}

// maxFloorRatio is the performance target for bearer/floor at p50: the
// engine adds at most 15% to the plugin RPC's own cost.
const maxFloorRatio = 1.15

// render returns the Markdown table and the notes under it.
func render(benches []goBench, vr *vaultResult, root string) string {
	var b strings.Builder
	b.WriteString("| Measure | Result | Target |\n|---|---|---|\n")
	row := func(measure, result, target string) {
		fmt.Fprintf(&b, "| %s | %s | %s |\n", measure, result, target)
	}
	for _, g := range benches {
		base, _, _ := strings.Cut(g.name, "/")
		info := benchInfo[base]
		measure := fmt.Sprintf("`Benchmark%s`", g.name)
		if info.what != "" {
			measure = info.what + " (" + measure + ")"
		}
		row(measure, goResult(g), info.target)
	}
	if vr != nil {
		bearer, floor, kv := vr.bearer, vr.floor, vr.kv
		row("HTTP: cached `GET "+bearer.path+"`", httpResult(bearer)+fmt.Sprintf("; %d provider calls", vr.providerCalls),
			"no provider call")
		row("HTTP: floor plugin `GET "+floor.path+"`", httpResult(floor), "the floor: plugin RPC alone")
		row("HTTP: built-in KV-v2 `GET "+kv.path+"`", httpResult(kv), "reference")
		p50 := ratio(percentile(bearer.samples, 50), percentile(floor.samples, 50))
		verdict := "within target"
		if p50 > maxFloorRatio {
			verdict = "over target"
		}
		row("Ratio bearer / floor", fmt.Sprintf("**p50 %.2f** (%s; blocks %s), p99 %.2f, req/s %.2f", p50, verdict,
			blockRatios(bearer, floor), ratio(percentile(bearer.samples, 99), percentile(floor.samples, 99)),
			bearer.throughput()/floor.throughput()), fmt.Sprintf("p50 ≤ %.2f", maxFloorRatio))
		row("Ratio bearer / KV-v2", fmt.Sprintf("p50 %.2f, p99 %.2f, req/s %.2f",
			ratio(percentile(bearer.samples, 50), percentile(kv.samples, 50)),
			ratio(percentile(bearer.samples, 99), percentile(kv.samples, 99)),
			bearer.throughput()/kv.throughput()), "reported")
	}
	b.WriteString("\n")
	fmt.Fprintf(&b, "- Machine: %s. Taken %s with `make bench`.\n", machine(vr, root), time.Now().UTC().Format("2006-01-02"))
	if len(benches) > 0 {
		b.WriteString("- Backend rows: `go test -run '^$' -bench . -benchmem` in the root package (per op; custom metrics from `b.ReportMetric`).\n")
	}
	if vr != nil {
		o := vr.opts
		fmt.Fprintf(&b, "- HTTP rows: one dev-mode Vault on 127.0.0.1, one Go client, keep-alive; %d warm-up rounds, then %d × %d rounds "+
			"reading bearer, floor and KV-v2 alternately, request by request (p50/p99/mean over %d reads each); "+
			"req/s with %d concurrent clients in %d interleaved %s turns per endpoint.\n",
			o.warmup, o.blocks, o.rounds, o.blocks*o.rounds, o.clients, o.windows, o.window)
	}
	return b.String()
}

// goResult formats a benchmark's custom metrics (what it asserts on, first),
// then its time and memory.
func goResult(g goBench) string {
	var custom, std []string
	for _, m := range g.metrics {
		switch m.unit {
		case "ns/op":
			std = append(std, duration(m.value)+"/op")
		case "B/op", "allocs/op":
			std = append(std, number(m.value)+" "+m.unit)
		default:
			custom = append(custom, fmt.Sprintf("**%s** %s", number(m.value), m.unit))
		}
	}
	return strings.Join(append(custom, std...), ", ")
}

// httpResult formats an endpoint's latency and throughput.
func httpResult(e *endpoint) string {
	return fmt.Sprintf("p50 %s, p99 %s, mean %s; %s req/s; %d B answer",
		ms(percentile(e.samples, 50)), ms(percentile(e.samples, 99)), ms(mean(e.samples)),
		number(math.Round(e.throughput())), e.bodyBytes)
}

// blockRatios is the range of bearer/floor p50 ratios over the blocks.
func blockRatios(bearer, floor *endpoint) string {
	lo, hi := math.Inf(1), math.Inf(-1)
	for i := range min(len(bearer.blockP50), len(floor.blockP50)) {
		r := ratio(bearer.blockP50[i], floor.blockP50[i])
		lo, hi = min(lo, r), max(hi, r)
	}
	return fmt.Sprintf("%.2f–%.2f", lo, hi)
}

func ratio(a, b time.Duration) float64 {
	if b == 0 {
		return math.NaN()
	}
	return float64(a) / float64(b)
}

func ms(d time.Duration) string {
	return fmt.Sprintf("%.3f ms", float64(d)/float64(time.Millisecond))
}

// duration formats nanoseconds with a readable unit.
func duration(ns float64) string {
	switch {
	case ns >= 1e9:
		return fmt.Sprintf("%.2f s", ns/1e9)
	case ns >= 1e6:
		return fmt.Sprintf("%.2f ms", ns/1e6)
	case ns >= 1e3:
		return fmt.Sprintf("%.2f µs", ns/1e3)
	}
	return fmt.Sprintf("%.0f ns", ns)
}

// number formats integers with thousands separators and others with 3
// significant digits.
func number(v float64) string {
	if v != math.Trunc(v) || math.Abs(v) >= 1e15 {
		return fmt.Sprintf("%.3g", v)
	}
	s := fmt.Sprintf("%d", int64(math.Abs(v)))
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	if v < 0 {
		s = "-" + s
	}
	return s
}
