package bearer

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
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

// BenchmarkManyDue is 10,000 roles on 10 connections of one loopback provider that
// answers in 100 ms, all due when the run starts (their renewal points passed during
// the last few minutes, as after a restart or an outage): the time to renew them all
// (ideal: 1,000 roles x 0.1 s / max_concurrent_requests 4 = 25 s per connection, the
// connections side by side), the peak requests in flight at the provider per
// connection, and the reads that waited for the provider meanwhile (a read that took
// longer than the provider's 100 ms). It runs on the real clock.
func BenchmarkManyDue(b *testing.B) {
	const (
		conns   = 10
		perConn = 1000
		latency = 100 * time.Millisecond
	)
	env := getTestBackend(b)
	p := newFakeProvider(b, "mindbaz", env.clock)
	probe := &perPathProbe{peak: map[string]int{}, inFlight: map[string]int{}}
	var issued atomic.Int64
	p.setHook(func(w http.ResponseWriter, r *http.Request, form url.Values) bool {
		conn, _, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/")
		probe.enter(conn)
		time.Sleep(latency)
		probe.leave(conn)
		n := issued.Add(1)
		writeJSON(w, http.StatusOK, map[string]any{
			"access_token": fmt.Sprintf("at-many-%d", n), "expires_in": 1200, "refresh_token": fmt.Sprintf("rt-many-%d", n),
		})
		return true
	})
	ctx := context.Background()
	start := env.clock.Now()
	var names []string
	for c := range conns {
		conn := fmt.Sprintf("c%d", c)
		env.mustOK(b, logical.UpdateOperation, "config/"+conn, map[string]any{
			"token_url": p.srv.URL + "/" + conn + "/token", "ca_cert": p.caPEM(), "username": "u", "password": testPassword, "verify": false,
		})
		_, entry, _ := env.b.connection(ctx, env.storage, conn)
		for i := range perConn {
			name := fmt.Sprintf("%s-role-%04d", conn, i)
			names = append(names, name)
			// Obtained 17:06 to 18 minutes ago: renewal points (14:15 to 17:06 after)
			// passed; reads accept the tokens (until 19:00 after) for one to two more
			// minutes.
			obtained := start.Add(-18*time.Minute + time.Duration(i)*54*time.Second/perConn)
			sess := &sessionEntry{
				Format: sessionFormat, Revision: 1, Account: sessionAccount{Config: conn, AccountVersion: entry.AccountVersion},
				Tokens: sessionTokens{
					AccessToken: "at-" + name, TokenType: "Bearer", ObtainedAt: obtained, ExpiresAt: obtained.Add(20 * time.Minute),
					RefreshToken: "rt-" + name, RefreshExpiresAt: obtained.Add(168 * time.Hour),
				},
			}
			if err := putJSON(ctx, env.storage.Storage, rolePrefix+name, &roleEntry{Config: conn, MinTTL: defaultMinTTL, BackgroundRefresh: true}); err != nil {
				b.Fatal(err)
			}
			if err := putJSON(ctx, env.storage.Storage, tokenPrefix+name, sess); err != nil {
				b.Fatal(err)
			}
		}
	}
	for _, name := range names { // read once: in use, so renewed before min_ttl
		env.readCreds(b, name)
	}
	// From here on the real clock, shifted to the test's.
	realStart := time.Now()
	env.b.now = func() time.Time { return start.Add(time.Since(realStart)) }
	env.b.afterFunc = func(d time.Duration, f func()) func() bool { return time.AfterFunc(d, f).Stop }

	stop := make(chan struct{})
	var reads, waited atomic.Int64
	var readers sync.WaitGroup
	for r := range 2 {
		readers.Add(1)
		go func() {
			defer readers.Done()
			tick := time.NewTicker(time.Millisecond) // about 2,000 reads a second in all
			defer tick.Stop()
			for i := r; ; i += 7 {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				began := time.Now()
				env.readCreds(b, names[i%len(names)])
				reads.Add(1)
				if time.Since(began) >= latency {
					waited.Add(1)
				}
			}
		}()
	}
	var took time.Duration
	for b.Loop() {
		began := time.Now()
		env.runPeriodic(b) // the first run; the engine's timer does the rest
		for issued.Load() < conns*perConn && time.Since(began) < 10*time.Minute {
			time.Sleep(10 * time.Millisecond)
		}
		took = time.Since(began)
	}
	close(stop)
	readers.Wait()
	env.b.bg.wait()
	if got := issued.Load(); got != conns*perConn {
		b.Errorf("%d renewals for %d due roles", got, conns*perConn)
	}
	peak := 0
	for _, n := range probe.peak {
		peak = max(peak, n)
	}
	b.ReportMetric(took.Seconds(), "s-to-renew-all")
	b.ReportMetric(float64(perConn)*latency.Seconds()/defaultMaxConcurrentRequests, "s-ideal")
	b.ReportMetric(float64(peak), "peak-in-flight/conn")
	b.ReportMetric(float64(waited.Load()), "reads-waited")
	b.ReportMetric(float64(reads.Load()), "reads")
}

// perPathProbe counts the requests in flight at the provider per connection.
type perPathProbe struct {
	mu             sync.Mutex
	inFlight, peak map[string]int
}

func (p *perPathProbe) enter(conn string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.inFlight[conn]++
	p.peak[conn] = max(p.peak[conn], p.inFlight[conn])
}

func (p *perPathProbe) leave(conn string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.inFlight[conn]--
}
