package bearer

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// cachedCredsEnv is a backend with a valid cached token for creds/app, on a clock that
// stands still without a lock, like time.Now in production.
func cachedCredsEnv(b *testing.B) (*testEnv, *fakeProvider) {
	b.Helper()
	env := getTestBackend(b)
	p := withMindbaz(b, env, 0, nil, nil)
	env.readCreds(b, "app")
	now := env.clock.Now()
	env.b.now = func() time.Time { return now }
	return env, p
}

func credsReadRequest(env *testEnv) *logical.Request {
	return &logical.Request{Operation: logical.ReadOperation, Path: "creds/app", Storage: env.storage, MountPoint: "bearer/"}
}

// assertUntouched fails when the provider or storage was used since calls and ops.
func assertUntouched(b *testing.B, env *testEnv, p *fakeProvider, calls int, ops int64) {
	b.Helper()
	if p.calls("") != calls || env.storage.ops() != ops {
		b.Fatalf("cached reads made %d provider calls and %d storage operations", p.calls("")-calls, env.storage.ops()-ops)
	}
}

// BenchmarkCredsCached is a creds read served from memory, through HandleRequest.
func BenchmarkCredsCached(b *testing.B) {
	env, p := cachedCredsEnv(b)
	calls, ops := p.calls(""), env.storage.ops()
	req := credsReadRequest(env)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		resp, err := env.b.HandleRequest(ctx, req)
		if err != nil || resp.IsError() {
			b.Fatal(err, resp)
		}
	}
	assertUntouched(b, env, p, calls, ops)
}

// BenchmarkCredsCachedParallel is BenchmarkCredsCached from GOMAXPROCS goroutines.
func BenchmarkCredsCachedParallel(b *testing.B) {
	env, p := cachedCredsEnv(b)
	calls, ops := p.calls(""), env.storage.ops()
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		req := credsReadRequest(env)
		for pb.Next() {
			resp, err := env.b.HandleRequest(ctx, req)
			if err != nil || resp.IsError() {
				b.Error(err, resp)
				return
			}
		}
	})
	assertUntouched(b, env, p, calls, ops)
}

// BenchmarkCredsColdRefresh is a creds read that finds its token expired and refreshes
// it against the loopback TLS provider: the storage reads, the refresh grant and the
// storage write.
func BenchmarkCredsColdRefresh(b *testing.B) {
	env := getTestBackend(b)
	p := withMindbaz(b, env, 0, nil, nil)
	env.readCreds(b, "app")
	req := credsReadRequest(env)
	ctx := context.Background()
	refreshes := p.calls(grantRefresh)
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		env.clock.Add(p.accessTTL)
		resp, err := env.b.HandleRequest(ctx, req)
		if err != nil || resp.IsError() {
			b.Fatal(err, resp)
		}
		n++
	}
	if got := p.calls(grantRefresh) - refreshes; got != n {
		b.Fatalf("%d reads made %d refresh grants", n, got)
	}
}

// BenchmarkBurst is 1,000 concurrent reads at the moment the token expires; it reports
// the provider calls per burst, which must be 1.
func BenchmarkBurst(b *testing.B) {
	const readers = 1000
	env := getTestBackend(b)
	p := withMindbaz(b, env, 0, nil, nil)
	env.readCreds(b, "app")
	calls, bursts := p.calls(""), 0
	for b.Loop() {
		env.clock.Add(p.accessTTL)
		before := p.calls("")
		burstReads(b, env, readers)
		if got := p.calls("") - before; got != 1 {
			b.Errorf("a burst of %d reads at expiry made %d provider calls, want 1", readers, got)
		}
		bursts++
	}
	b.ReportMetric(float64(p.calls("")-calls)/float64(bursts), "provider-calls/burst")
}

// BenchmarkSimulatedDay runs TestPeriodic_SimulatedDay's day (a 20-minute token read
// every second, the periodic function every minute) and reports its provider calls
// beside the ideal number of renewals.
func BenchmarkSimulatedDay(b *testing.B) {
	var res dayResult
	for b.Loop() {
		res = simulateDay(b)
		if res.logins != 1 || res.refreshes != res.ideal || res.readCalls != 0 {
			b.Errorf("logins %d, refreshes %d (ideal %d), calls inside reads %d", res.logins, res.refreshes, res.ideal, res.readCalls)
		}
	}
	b.ReportMetric(float64(res.logins), "password-logins/day")
	b.ReportMetric(float64(res.refreshes), "refreshes/day")
	b.ReportMetric(float64(res.ideal), "ideal-refreshes/day")
	b.ReportMetric(float64(res.readCalls), "calls-in-reads/day")
}

// BenchmarkPeriodicNothingDue is one run of the periodic function when no session is
// due, for a growing number of roles with tokens: its cost stays flat.
func BenchmarkPeriodicNothingDue(b *testing.B) {
	for _, roles := range []int{100, 10000} {
		b.Run(fmt.Sprintf("roles=%d", roles), func(b *testing.B) {
			env, p := newSeededEnv(b, roles)
			ops := env.storage.ops()
			b.ReportAllocs()
			for b.Loop() {
				env.runPeriodic(b)
			}
			assertUntouched(b, env, p, 0, ops)
		})
	}
}
