package bearer

import (
	"context"
	"errors"
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

// schedSim drives a role ("app") over fake time: a creds read every readEvery (0: only
// the first read), Vault's periodic function every tickEvery on every node, and counts
// the provider calls made inside reads and inside periodic runs. Reads rotate over the
// nodes; nodes[0] is the active node: a read a standby answers with ErrReadOnly is run
// there again, as Vault forwards it.
type schedSim struct {
	p     *fakeProvider
	nodes []*testEnv
	// readVia are the nodes reads go through, in turn (all nodes when empty).
	readVia   []*testEnv
	readEvery time.Duration
	tickEvery time.Duration

	elapsed   time.Duration
	reads     int
	forwarded int
	// readCalls counts provider calls made inside reads after the first read.
	readCalls int
	// tickCalls counts provider calls made inside periodic runs, per node, and
	// timerCalls those made by the background renewals the engine timed itself.
	tickCalls  []int
	timerCalls int
}

func newSchedSim(p *fakeProvider, readEvery, tickEvery time.Duration, nodes ...*testEnv) *schedSim {
	return &schedSim{p: p, nodes: nodes, readEvery: readEvery, tickEvery: tickEvery, tickCalls: make([]int, len(nodes))}
}

// run advances fake time by d, reading and ticking on the way.
func (s *schedSim) run(tb testing.TB, d time.Duration) {
	tb.Helper()
	step := s.tickEvery
	if s.readEvery > 0 {
		step = s.readEvery
	}
	for end := s.elapsed + d; s.elapsed < end; s.elapsed += step {
		if s.reads == 0 || (s.readEvery > 0 && s.elapsed%s.readEvery == 0) {
			before := s.p.calls("")
			s.read(tb)
			if s.reads > 0 {
				s.readCalls += s.p.calls("") - before
			}
			s.reads++
		}
		if s.elapsed%s.tickEvery == 0 {
			for i, node := range s.nodes {
				before := s.p.calls("")
				node.runPeriodic(tb)
				s.tickCalls[i] += s.p.calls("") - before
			}
		}
		before := s.p.calls("")
		s.nodes[0].clock.Add(step)
		s.timerCalls += s.p.calls("") - before
	}
}

func (s *schedSim) read(tb testing.TB) {
	tb.Helper()
	via := s.readVia
	if len(via) == 0 {
		via = s.nodes
	}
	node := via[s.reads%len(via)]
	resp, err := node.request(tb, logical.ReadOperation, "creds/app", nil)
	if errors.Is(err, logical.ErrReadOnly) {
		s.forwarded++
		s.nodes[0].readCreds(tb, "app")
		return
	}
	if err != nil || resp.IsError() {
		tb.Fatalf("read at %s: err=%v resp=%#v", s.elapsed, err, resp)
	}
}

func (s *schedSim) backgroundCalls() int {
	n := s.timerCalls
	for _, c := range s.tickCalls {
		n += c
	}
	return n
}

// idealRenewals is how many renewals the schedule policy makes in d, from start, for
// role name's token of the given lifetime that is read all the time: each token is
// renewed exactly at its renewalPoint, and never otherwise.
func idealRenewals(name string, role *roleEntry, lifetime time.Duration, start time.Time, d time.Duration) int {
	for n, obtained := 0, start; ; n++ {
		t := &sessionTokens{AccessToken: "x", ObtainedAt: obtained, ExpiresAt: obtained.Add(lifetime)}
		next := renewalPoint(name, role, t)
		if next.Sub(start) >= d {
			return n
		}
		obtained = next
	}
}

func TestSchedule_Policy(t *testing.T) {
	t0 := time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC)
	session := func(lifetime time.Duration, refreshTTL time.Duration) *sessionEntry {
		sess := &sessionEntry{Tokens: sessionTokens{AccessToken: "at", ObtainedAt: t0, ExpiresAt: t0.Add(lifetime)}}
		if refreshTTL >= 0 {
			sess.Tokens.RefreshToken = "rt"
		}
		if refreshTTL > 0 {
			sess.Tokens.RefreshExpiresAt = t0.Add(refreshTTL)
		}
		return sess
	}
	role := &roleEntry{MinTTL: time.Minute, BackgroundRefresh: true}
	// between is the window [from, to] after t0.
	type between [2]time.Duration
	cases := map[string]struct {
		role *roleEntry
		sess *sessionEntry
		// readable: when reads stop accepting the token; renewal: where the renewal
		// point must fall, strictly before readable.
		readable  time.Duration
		renewal   between
		keepAlive between // zero: none
		// dueServed and dueIdle: the due time for a token that is read and an idle one.
		dueServed, dueIdle string // "renewal", "keep-alive" or "never"
	}{
		"20-minute token: 10 to 25 percent of the readable span before min_ttl": {
			role: role, sess: session(20*time.Minute, -1), readable: 19 * time.Minute,
			renewal: between{19*time.Minute - 285*time.Second, 19*time.Minute - 114*time.Second}, dueServed: "renewal", dueIdle: "never",
		},
		"60-second token, min_ttl 10s": {
			role: &roleEntry{MinTTL: 10 * time.Second, BackgroundRefresh: true}, sess: session(time.Minute, -1), readable: 50 * time.Second,
			renewal: between{50*time.Second - 12500*time.Millisecond, 45 * time.Second}, dueServed: "renewal", dueIdle: "never",
		},
		"min_ttl at 0.6 of the lifetime: capped, and the renewal comes before half the lifetime": {
			role: &roleEntry{MinTTL: 12 * time.Minute, BackgroundRefresh: true}, sess: session(20*time.Minute, 0), readable: 10 * time.Minute,
			renewal: between{7*time.Minute + 30*time.Second, 9 * time.Minute}, keepAlive: between{23 * time.Hour, 24 * time.Hour},
			dueServed: "renewal", dueIdle: "keep-alive",
		},
		"min_ttl 0: before the expiry": {
			role: &roleEntry{BackgroundRefresh: true}, sess: session(20*time.Minute, -1), readable: 20 * time.Minute,
			renewal: between{15 * time.Minute, 18 * time.Minute}, dueServed: "renewal", dueIdle: "never",
		},
		"mindbaz: keep-alive a day (and up to an hour) before the 7-day refresh token dies": {
			role: role, sess: session(20*time.Minute, 168*time.Hour), readable: 19 * time.Minute,
			renewal:   between{19*time.Minute - 285*time.Second, 19*time.Minute - 114*time.Second},
			keepAlive: between{143 * time.Hour, 144 * time.Hour}, dueServed: "renewal", dueIdle: "keep-alive",
		},
		"refresh token lifetime unknown: kept alive daily": {
			role: role, sess: session(20*time.Minute, 0), readable: 19 * time.Minute,
			renewal:   between{19*time.Minute - 285*time.Second, 19*time.Minute - 114*time.Second},
			keepAlive: between{23 * time.Hour, 24 * time.Hour}, dueServed: "renewal", dueIdle: "keep-alive",
		},
		"short refresh token: keep-alive before the renewal point": {
			role: role, sess: session(20*time.Minute, 8*time.Minute), readable: 19 * time.Minute,
			renewal:   between{19*time.Minute - 285*time.Second, 19*time.Minute - 114*time.Second},
			keepAlive: between{5*time.Minute + 30*time.Second, 6 * time.Minute}, dueServed: "keep-alive", dueIdle: "keep-alive",
		},
		"background refresh off: never due": {
			role: &roleEntry{MinTTL: time.Minute}, sess: session(20*time.Minute, 168*time.Hour), readable: 19 * time.Minute,
			renewal:   between{19*time.Minute - 285*time.Second, 19*time.Minute - 114*time.Second},
			keepAlive: between{143 * time.Hour, 144 * time.Hour}, dueServed: "never", dueIdle: "never",
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			tok := &tc.sess.Tokens
			if got := tok.readableUntil(tc.role.MinTTL).Sub(t0); got != tc.readable {
				t.Errorf("readable until t0+%s, want t0+%s", got, tc.readable)
			}
			renew := renewalPoint("app", tc.role, tok)
			if got := renew.Sub(t0); got < tc.renewal[0] || got > tc.renewal[1] || got >= tc.readable {
				t.Errorf("renewalPoint = t0+%s, want within t0+%s..t0+%s and before t0+%s", got, tc.renewal[0], tc.renewal[1], tc.readable)
			}
			if renewalPoint("app", tc.role, tok) != renew {
				t.Error("renewalPoint is not the same when computed again")
			}
			keep := keepAlivePoint("app", tok)
			switch got := keep.Sub(t0); {
			case tc.keepAlive == between{} && !keep.IsZero():
				t.Errorf("keepAlivePoint = %s, want none", keep)
			case tc.keepAlive != between{} && (got < tc.keepAlive[0] || got > tc.keepAlive[1]):
				t.Errorf("keepAlivePoint = t0+%s, want within t0+%s..t0+%s", got, tc.keepAlive[0], tc.keepAlive[1])
			}
			for served, want := range map[bool]string{true: tc.dueServed, false: tc.dueIdle} {
				wantAt := map[string]time.Time{"renewal": renew, "keep-alive": keep, "never": {}}[want]
				if got := dueTime("app", tc.role, tc.sess, served); !got.Equal(wantAt) {
					t.Errorf("dueTime(served=%v) = %s, want %s (%s)", served, got, wantAt, want)
				}
			}
		})
	}
	if dueTime("app", role, nil, true) != (time.Time{}) {
		t.Error("a role without a session is due")
	}
	failing := session(20*time.Minute, -1)
	failing.Failure.NextAttemptAt = t0.Add(time.Hour)
	if got := dueTime("app", role, failing, true); !got.Equal(t0.Add(time.Hour)) {
		t.Errorf("a failing role is due at %s, want the end of its retry window", got)
	}
}

// TestSchedule_Jitter: roles whose tokens were obtained in the same second renew at
// points spread over the lead window, not in the same second.
func TestSchedule_Jitter(t *testing.T) {
	t0 := time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC)
	role := &roleEntry{MinTTL: time.Minute, BackgroundRefresh: true}
	tok := &sessionTokens{AccessToken: "at", ObtainedAt: t0, ExpiresAt: t0.Add(20 * time.Minute)}
	seconds := map[int64]int{}
	for i := range 300 {
		seconds[renewalPoint(fmt.Sprintf("role-%d", i), role, tok).Unix()]++
	}
	busiest := 0
	for _, n := range seconds {
		busiest = max(busiest, n)
	}
	// 300 roles over a window of 171 seconds: a few per second at most.
	if len(seconds) < 100 || busiest > 8 {
		t.Errorf("300 roles renew in %d distinct seconds, up to %d in one", len(seconds), busiest)
	}
}

func TestSchedule_Queue(t *testing.T) {
	t0 := time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC)
	at := func(m int) time.Time { return t0.Add(time.Duration(m) * time.Minute) }

	s := newSchedule()
	s.set("c", at(3))
	s.set("a", at(1))
	s.set("b", at(2))
	s.set("b", at(5)) // moved: its old item is stale
	s.set("d", at(4))
	s.set("d", time.Time{}) // removed
	if got := s.popDue(at(0)); len(got) != 0 {
		t.Errorf("popDue before anything is due = %v", got)
	}
	if got := s.next(); !got.Equal(at(1)) {
		t.Errorf("next = %s, want the earliest, a at %s", got, at(1))
	}
	if got := strings.Join(s.popDue(at(3)), ","); got != "a,c" {
		t.Errorf("popDue(3) = %q, want a,c in order", got)
	}
	if got := strings.Join(s.popDue(at(10)), ","); got != "b" {
		t.Errorf("popDue(10) = %q, want b once", got)
	}
	if s.len() != 0 {
		t.Errorf("len after popping everything = %d", s.len())
	}

	// Moving one role many times keeps the heap bounded.
	for i := range 10000 {
		s.set("x", at(i+1))
	}
	s.mu.Lock()
	queued := len(s.queue)
	s.mu.Unlock()
	if queued > 2*1+64 {
		t.Errorf("heap holds %d items for one role", queued)
	}

	// touch makes a role due now only once the schedule is built; build keeps what was
	// set meanwhile and reset forgets everything.
	s.reset()
	s.touch("early", at(0))
	s.set("kept", at(7))
	if err := s.build(func() (map[string]time.Time, error) {
		return map[string]time.Time{"kept": at(1), "scanned": at(2)}, nil
	}); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(s.popDue(at(2)), ","); got != "scanned" {
		t.Errorf("after build popDue(2) = %q, want scanned (kept keeps its own time, touch before build is ignored)", got)
	}
	s.touch("changed", at(2))
	if got := strings.Join(s.popDue(at(2)), ","); got != "changed" {
		t.Errorf("touch after build: popDue = %q", got)
	}
	scans := 0
	scan := func() (map[string]time.Time, error) { scans++; return nil, nil }
	_ = s.build(scan)
	if scans != 0 {
		t.Error("a built schedule scanned storage again")
	}
	if err := s.build(func() (map[string]time.Time, error) { return nil, errors.New("boom") }); err != nil {
		t.Errorf("a built schedule ran a failing scan: %v", err)
	}
	s.reset()
	if s.len() != 0 || s.build(scan) != nil || scans != 1 {
		t.Errorf("after reset: len %d, scans %d; want a fresh scan", s.len(), scans)
	}
}

// TestPeriodic_SimulatedDay reads a 20-minute token every second for a day with the
// periodic function every minute: one password login, then exactly the renewals the
// schedule policy asks for, all from the background; no read waits on the provider.
func TestPeriodic_SimulatedDay(t *testing.T) {
	res := simulateDay(t)
	if res.logins != 1 || res.refreshes != res.ideal || res.readCalls != 0 {
		t.Errorf("password logins %d (want 1), refreshes %d (ideal %d), provider calls inside reads after the first %d (want 0)",
			res.logins, res.refreshes, res.ideal, res.readCalls)
	}
	// A renewal point 114 to 285 s before min_ttl: every 855 to 1026 s.
	if res.ideal < 84 || res.ideal > 101 {
		t.Errorf("ideal renewals = %d, want 84 to 101 a day", res.ideal)
	}
}

type dayResult struct {
	logins, refreshes, ideal, readCalls int
}

// simulateDay runs the day of TestPeriodic_SimulatedDay and BenchmarkSimulatedDay.
func simulateDay(tb testing.TB) dayResult {
	tb.Helper()
	env := getTestBackend(tb)
	p := withMindbaz(tb, env, 20*time.Minute, nil, nil)
	start := env.clock.Now()
	sim := newSchedSim(p, time.Second, time.Minute, env)
	sim.run(tb, 24*time.Hour)
	role := &roleEntry{MinTTL: defaultMinTTL, BackgroundRefresh: true}
	return dayResult{
		logins:    p.calls(grantPassword),
		refreshes: p.calls(grantRefresh),
		ideal:     idealRenewals("app", role, p.accessTTL, start, 24*time.Hour),
		readCalls: sim.readCalls,
	}
}

// TestPeriodic_ShortTokensNeverWaitReads: tokens shorter than Vault's one-minute
// periodic call, or with min_ttl at or above half their lifetime, are renewed by the
// engine's own timer before reads stop accepting them: in steady state no read waits.
func TestPeriodic_ShortTokensNeverWaitReads(t *testing.T) {
	cases := map[string]struct {
		lifetime time.Duration
		minTTL   string
		span     time.Duration
		reading  time.Duration
	}{
		"60-second token, min_ttl 10s":          {lifetime: time.Minute, minTTL: "10s", span: time.Hour, reading: 2 * time.Second},
		"120-second token, min_ttl 10s":         {lifetime: 2 * time.Minute, minTTL: "10s", span: time.Hour, reading: 2 * time.Second},
		"20-minute token, min_ttl 0.6 lifetime": {lifetime: 20 * time.Minute, minTTL: "720s", span: 3 * time.Hour, reading: 3 * time.Second},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			env := getTestBackend(t)
			p := withMindbaz(t, env, tc.lifetime, nil, map[string]any{"min_ttl": tc.minTTL})
			sim := newSchedSim(p, tc.reading, time.Minute, env)
			sim.run(t, tc.span)
			if sim.readCalls != 0 || p.calls(grantPassword) != 1 {
				t.Errorf("%d provider calls inside reads, %d logins over %s; want 0 and 1", sim.readCalls, p.calls(grantPassword), tc.span)
			}
			if min := int(tc.span / tc.lifetime); p.calls(grantRefresh) < min {
				t.Errorf("%d refreshes, want at least %d", p.calls(grantRefresh), min)
			}
		})
	}
}

// expiringSessions makes p answer every grant itself like a provider whose refresh
// tokens are single use and die rtTTL after they are issued; with tell it says so in
// refresh_expires_in. It returns how many refresh grants it rejected.
func expiringSessions(p *fakeProvider, rtTTL time.Duration, tell bool) func() int {
	var mu sync.Mutex
	issued := map[string]time.Time{}
	n, rejected := 0, 0
	p.setHook(func(w http.ResponseWriter, _ *http.Request, form url.Values) bool {
		mu.Lock()
		defer mu.Unlock()
		now := p.clock.Now()
		if form.Get("grant_type") == grantRefresh {
			at, ok := issued[form.Get("refresh_token")]
			delete(issued, form.Get("refresh_token"))
			if !ok || !now.Before(at.Add(rtTTL)) {
				rejected++
				oauthError(w, http.StatusBadRequest, "invalid_grant", "Token is not active")
				return true
			}
		}
		n++
		rt := fmt.Sprintf("rt-expiring-%d", n)
		issued[rt] = now
		body := map[string]any{"access_token": fmt.Sprintf("at-expiring-%d", n), "expires_in": int(p.accessTTL.Seconds()), "refresh_token": rt}
		if tell {
			body["refresh_expires_in"] = int(rtTTL.Seconds())
		}
		writeJSON(w, http.StatusOK, body)
		return true
	})
	return func() int {
		mu.Lock()
		defer mu.Unlock()
		return rejected
	}
}

// TestPeriodic_IdleSessionKeptAlive reads once, then leaves the role idle for three
// weeks. Whether the refresh token's lifetime is known or not, the background keeps the
// session alive with refresh grants alone (at least daily when unknown); when background
// refresh is off, the session dies and the next read logs in.
func TestPeriodic_IdleSessionKeptAlive(t *testing.T) {
	const idle = 21 * 24 * time.Hour
	generic := map[string]any{"provider": "generic"}
	cases := map[string]struct {
		conn, role     map[string]any
		rtTTL          time.Duration
		tell           bool
		background     [2]int // provider calls by the background: at least, at most
		finalGrants    int    // provider calls of the read after three weeks
		logins         int
		rejectedTokens int
	}{
		"mindbaz preset: refresh_token_ttl 168h": {
			rtTTL: 168 * time.Hour,
			// The renewal of the read token, then one keep-alive every 143 to 144 h.
			background: [2]int{1 + 3, 1 + 3}, finalGrants: 1, logins: 1,
		},
		"refresh_expires_in from the provider": {
			conn: generic, rtTTL: 72 * time.Hour, tell: true,
			// Keep-alive 18 h (and up to an hour) before expiry: every 53 to 54 h.
			background: [2]int{1 + 9, 1 + 9}, finalGrants: 1, logins: 1,
		},
		"refresh token lifetime unknown: refreshed at least daily": {
			conn: generic, rtTTL: 168 * time.Hour,
			background: [2]int{1 + 20, 1 + 22}, finalGrants: 1, logins: 1,
		},
		"unknown lifetime, idle timeout of a day and a half (Keycloak offline session)": {
			conn: generic, rtTTL: 36 * time.Hour,
			background: [2]int{1 + 20, 1 + 22}, finalGrants: 1, logins: 1,
		},
		"background refresh off": {
			role: map[string]any{"background_refresh": false}, rtTTL: 168 * time.Hour,
			// The refresh token is known to be expired: straight to the password.
			background: [2]int{0, 0}, finalGrants: 1, logins: 2,
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			env := getTestBackend(t)
			p := withMindbaz(t, env, 20*time.Minute, tc.conn, tc.role)
			rejected := expiringSessions(p, tc.rtTTL, tc.tell)
			sim := newSchedSim(p, 0, time.Minute, env)
			sim.run(t, idle)
			before := p.calls("")
			env.readCreds(t, "app")
			final := p.calls("") - before
			bg := sim.backgroundCalls()
			if bg < tc.background[0] || bg > tc.background[1] || final != tc.finalGrants || p.calls(grantPassword) != tc.logins || rejected() != tc.rejectedTokens {
				t.Errorf("background calls %d, final read calls %d, password logins %d, rejected refresh tokens %d; want %v, %d, %d, %d",
					bg, final, p.calls(grantPassword), rejected(), tc.background, tc.finalGrants, tc.logins, tc.rejectedTokens)
			}
		})
	}
}

// TestPeriodic_BackgroundRefreshOff: such a role is renewed only by reads.
func TestPeriodic_BackgroundRefreshOff(t *testing.T) {
	env := getTestBackend(t)
	p := withMindbaz(t, env, 0, nil, map[string]any{"background_refresh": false})
	sim := newSchedSim(p, time.Second, time.Minute, env)
	sim.run(t, 2*time.Hour)
	if sim.backgroundCalls() != 0 {
		t.Errorf("the periodic function made %d provider calls for a role with background_refresh=false", sim.backgroundCalls())
	}
	if sim.readCalls == 0 || sim.readCalls != p.calls(grantRefresh) {
		t.Errorf("reads made %d provider calls, refreshes %d: want every renewal from a read", sim.readCalls, p.calls(grantRefresh))
	}
	if n := env.b.bg.sched.len(); n != 0 {
		t.Errorf("schedule holds %d roles", n)
	}
}

// TestPeriodic_NothingDueTouchesNothing: once the schedule is built, runs with nothing
// due make no storage operation and no provider call, also past the renewal points of
// tokens nobody reads: idle sessions wait for their keep-alive point.
func TestPeriodic_NothingDueTouchesNothing(t *testing.T) {
	const roles = 500
	env, p := newSeededEnv(t, roles)
	ops := env.storage.ops()
	for range 30 {
		env.clock.Add(time.Minute)
		env.runPeriodic(t)
	}
	if got := env.storage.ops() - ops; got != 0 || p.calls("") != 0 || env.b.bg.sched.len() != roles {
		t.Errorf("30 runs with nothing due made %d storage operations and %d provider calls; %d roles scheduled", got, p.calls(""), env.b.bg.sched.len())
	}
}

// TestPeriodic_SharesTheRenewal: a read and a background renewal of the same expiry
// wait for each other: one provider call, one token.
func TestPeriodic_SharesTheRenewal(t *testing.T) {
	for name, readFirst := range map[string]bool{
		"a read waits for a background renewal": false,
		"a background renewal waits for a read": true,
	} {
		t.Run(name, func(t *testing.T) {
			env := getTestBackend(t)
			p := withMindbaz(t, env, 0, nil, nil)
			old := env.readCreds(t, "app").Data["access_token"]
			// Past the renewal point and under min_ttl left: both want a new token.
			// (No periodic run yet: the engine's timer is not running.)
			env.clock.Add(p.accessTTL - 30*time.Second)

			received, release := holdRefresh(p)
			var read <-chan any
			var periodic <-chan struct{}
			if readFirst {
				read = env.readAsync(t)
			} else {
				periodic = env.periodicAsync(t)
			}
			<-received // the first one's refresh request is at the provider
			if readFirst {
				periodic = env.periodicAsync(t)
			} else {
				read = env.readAsync(t)
			}
			waitForGoroutines(t, 1, "select", "(*backend).renewFor(")
			release()
			<-periodic
			got := <-read
			env.b.bg.wait()
			if p.calls(grantRefresh) != 1 || p.calls("") != 2 {
				t.Errorf("provider calls: %d refreshes, %d in all; want 1 refresh after the login", p.calls(grantRefresh), p.calls(""))
			}
			if got == nil || got == old {
				t.Error("the read did not get the renewed token")
			}
			if again := env.readCreds(t, "app").Data["access_token"]; again != got {
				t.Error("the read got another token than the one kept")
			}
		})
	}
}

// TestBurst: 1,000 concurrent reads at the moment a token expires, with a periodic run
// among them, make exactly one provider call and all get the same new token.
func TestBurst(t *testing.T) {
	env := getTestBackend(t)
	p := withMindbaz(t, env, 0, nil, nil)
	old := env.readCreds(t, "app").Data["access_token"]
	env.clock.Add(p.accessTTL) // exactly the expiry (no periodic run yet: no timer)
	before := p.calls("")
	periodic := env.periodicAsync(t)
	tokens := burstReads(t, env, 1000)
	<-periodic
	if got := p.calls("") - before; got != 1 {
		t.Errorf("1000 reads and a periodic run at expiry made %d provider calls, want 1", got)
	}
	for _, tok := range tokens {
		if tok != tokens[0] || tok == old {
			t.Fatal("the readers did not all get the one new token")
		}
	}
}

// TestPeriodic_ScheduleFollowsWrites: the schedule is kept current by writes: a role
// change keeps an idle session scheduled for its keep-alive; turning background
// refresh off and deletes take the role out.
func TestPeriodic_ScheduleFollowsWrites(t *testing.T) {
	cases := map[string]struct {
		change func(t *testing.T, env *testEnv)
		want   bool // still scheduled after the next run
	}{
		"role update keeps an idle session alive": {
			change: func(t *testing.T, env *testEnv) {
				env.mustOK(t, logical.UpdateOperation, "roles/app", map[string]any{"min_ttl": "120s"})
			},
			want: true,
		},
		"background_refresh turned off": {
			change: func(t *testing.T, env *testEnv) {
				env.mustOK(t, logical.UpdateOperation, "roles/app", map[string]any{"background_refresh": false})
			},
		},
		"creds deleted": {
			change: func(t *testing.T, env *testEnv) { env.mustOK(t, logical.DeleteOperation, "creds/app", nil) },
		},
		"role deleted": {
			change: func(t *testing.T, env *testEnv) { env.mustOK(t, logical.DeleteOperation, "roles/app", nil) },
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			env := getTestBackend(t)
			p := withMindbaz(t, env, 0, nil, nil)
			env.readCreds(t, "app")
			sim := newSchedSim(p, 0, time.Minute, env)
			sim.run(t, time.Hour) // renewed once while read, then idle: waits for its keep-alive point
			tc.change(t, env)
			sim.run(t, time.Minute)
			env.b.bg.sched.mu.Lock()
			_, scheduled := env.b.bg.sched.due["app"]
			env.b.bg.sched.mu.Unlock()
			if scheduled != tc.want {
				t.Fatalf("scheduled = %v, want %v", scheduled, tc.want)
			}
			if !tc.want {
				return
			}
			logins := p.calls(grantPassword)
			sim.run(t, 8*24*time.Hour) // beyond the 7-day refresh token
			if p.calls(grantPassword) != logins || sim.backgroundCalls() < 2 {
				t.Errorf("after the change: %d new logins, %d background calls; the idle session was not kept alive",
					p.calls(grantPassword)-logins, sim.backgroundCalls())
			}
		})
	}
}

// TestPeriodic_ReadsResumeAfterIdle: a token renewed in the background and then left
// unread past its renewal point waits for its keep-alive point; when reads resume while
// it is still accepted, it is renewed in time, before any read has to wait.
func TestPeriodic_ReadsResumeAfterIdle(t *testing.T) {
	env := getTestBackend(t)
	p := withMindbaz(t, env, 20*time.Minute, nil, nil)
	idle := newSchedSim(p, 0, time.Minute, env)
	idle.run(t, 20*time.Minute) // renewed once (it was read), then not read
	if idle.backgroundCalls() != 1 {
		t.Fatalf("background calls = %d, want 1", idle.backgroundCalls())
	}
	sess := env.storedSession(t, "app")
	readable := sess.Tokens.readableUntil(defaultMinTTL)
	// Idle past its renewal point: nothing happens until reads resume, 30 s before
	// reads would stop accepting the token.
	resume := readable.Add(-30 * time.Second).Sub(env.clock.Now()).Truncate(time.Minute)
	idle.run(t, resume)
	if idle.backgroundCalls() != 1 {
		t.Fatalf("background calls while idle = %d, want 1", idle.backgroundCalls())
	}
	busy := newSchedSim(p, time.Second, time.Minute, env)
	busy.reads = 1 // not a first read: count every provider call it makes
	busy.elapsed = idle.elapsed
	busy.run(t, time.Hour)
	if busy.readCalls != 0 {
		t.Errorf("reads after an idle spell made %d provider calls, want 0", busy.readCalls)
	}
}

// TestPeriodic_RetriesAfterFailure: a background renewal that fails (HTTP 503 with
// Retry-After) is retried when its retry window ends, before reads have to wait.
func TestPeriodic_RetriesAfterFailure(t *testing.T) {
	env := getTestBackend(t)
	p := withMindbaz(t, env, 20*time.Minute, nil, nil)
	failures := 1
	var mu sync.Mutex
	p.setHook(func(w http.ResponseWriter, _ *http.Request, form url.Values) bool {
		mu.Lock()
		defer mu.Unlock()
		if form.Get("grant_type") == grantRefresh && failures > 0 {
			failures--
			w.Header().Set("Retry-After", "30")
			oauthError(w, http.StatusServiceUnavailable, "temporarily_unavailable", "maintenance")
			return true
		}
		return false
	})
	sim := newSchedSim(p, time.Second, time.Minute, env)
	sim.run(t, 2*time.Hour)
	if sim.readCalls != 0 || p.calls(grantPassword) != 1 || failures != 0 {
		t.Errorf("reads made %d provider calls, %d password logins, %d failures left; want 0, 1 and 0", sim.readCalls, p.calls(grantPassword), failures)
	}
}

// TestPeriodic_UnreadableRole: one role whose stored state cannot be read does not stop
// the background for the others, nor make every run scan storage again.
func TestPeriodic_UnreadableRole(t *testing.T) {
	env := getTestBackend(t)
	p := withMindbaz(t, env, 20*time.Minute, nil, nil)
	seedRoles(t, env, 50)
	ctx := context.Background()
	if err := putJSON(ctx, env.storage.Storage, rolePrefix+"broken", &roleEntry{Config: "conn", BackgroundRefresh: true}); err != nil {
		t.Fatal(err)
	}
	if err := env.storage.Storage.Put(ctx, &logical.StorageEntry{Key: tokenPrefix + "broken", Value: []byte("{not json")}); err != nil {
		t.Fatal(err)
	}
	sim := newSchedSim(p, time.Second, time.Minute, env)
	sim.run(t, 2*time.Minute) // the first run builds the schedule
	lists, gets := env.storage.lists.Load(), env.storage.gets.Load()
	sim.run(t, 10*time.Minute)
	if got := env.storage.lists.Load() - lists; got != 0 {
		t.Errorf("10 runs listed the roles %d times: the schedule was not built", got)
	}
	if got := env.storage.gets.Load() - gets; got > 10*3 {
		t.Errorf("10 runs read storage %d times: more than the broken role (its role, connection and session) each minute", got)
	}
	sim.run(t, time.Hour)
	if sim.backgroundCalls() == 0 || sim.readCalls != 0 {
		t.Errorf("background calls %d, calls inside reads %d: the readable role was not renewed in the background", sim.backgroundCalls(), sim.readCalls)
	}
	if !strings.Contains(env.logs.String(), `role=broken`) {
		t.Error("the unreadable role was not logged")
	}
}

// concurrencyProbe makes the provider hold every token request until released and
// records how many were in flight at once, per connection path prefix.
type concurrencyProbe struct {
	mu       sync.Mutex
	inFlight int
	peak     int
	hold     chan struct{}
}

func probeConcurrency(p *fakeProvider) *concurrencyProbe {
	c := &concurrencyProbe{hold: make(chan struct{})}
	p.setHook(func(_ http.ResponseWriter, _ *http.Request, _ url.Values) bool {
		c.mu.Lock()
		c.inFlight++
		c.peak = max(c.peak, c.inFlight)
		c.mu.Unlock()
		<-c.hold
		c.mu.Lock()
		c.inFlight--
		c.mu.Unlock()
		return false
	})
	return c
}

func (c *concurrencyProbe) now() (inFlight, peak int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.inFlight, c.peak
}

// TestPeriodic_ConcurrentWithinBounds: 40 roles of one connection come due at once. The
// periodic call returns at once; the background renews them with max_concurrent_requests
// requests in flight, never more, reads of the same connection included; a second
// periodic call meanwhile neither loses nor repeats any; every role is renewed once.
func TestPeriodic_ConcurrentWithinBounds(t *testing.T) {
	const roles = 40
	env, p := newSeededEnv(t, roles)
	for i := range roles {
		p.mu.Lock()
		p.live[fmt.Sprintf("rt-role-%05d", i)] = true
		p.mu.Unlock()
		env.readCreds(t, fmt.Sprintf("role-%05d", i)) // served: renewed before min_ttl
	}
	probe := probeConcurrency(p)
	// Past every renewal point (14:15 to 17:06 after the tokens were obtained) but not
	// yet under min_ttl (19:00): due, and the old tokens serve.
	env.clock.mu.Lock()
	env.clock.now = env.clock.now.Add(17*time.Minute + 10*time.Second) // no timers: the periodic call starts the work
	env.clock.mu.Unlock()
	env.b.bg.setActive(false)
	if err := env.rollback(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "four renewals at the provider", func() bool { n, _ := probe.now(); return n == 4 })
	// Work in flight: another periodic call, and reads (served from cache).
	if err := env.rollback(); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if resp := env.readCreds(t, fmt.Sprintf("role-%05d", 20+i)); len(resp.Warnings) != 0 {
			t.Errorf("a read during the renewals: %v", resp.Warnings)
		}
	}
	close(probe.hold)
	env.b.bg.wait()
	if _, peak := probe.now(); peak != 4 {
		t.Errorf("peak requests in flight at the provider = %d, want max_concurrent_requests, 4", peak)
	}
	if got := p.calls(grantRefresh); got != roles {
		t.Errorf("%d refreshes for %d due roles, want each once", got, roles)
	}
	p.assertNoRefreshReuse(t)
}

// TestPeriodic_HangingProviderIsolated: one connection's provider hangs; the background
// renewals of another connection's roles go on meanwhile, and the hanging one holds at
// most its own max_concurrent_requests workers.
func TestPeriodic_HangingProviderIsolated(t *testing.T) {
	env := getTestBackend(t)
	good := newFakeProvider(t, "mindbaz", env.clock)
	bad := newFakeProvider(t, "mindbaz", env.clock)
	env.setup(t, good, map[string]any{"verify": false}, nil)
	data := bad.connData()
	data["verify"], data["request_timeout"], data["max_concurrent_requests"] = false, "30s", 2
	env.mustOK(t, logical.UpdateOperation, "config/bad", data)
	for i := range 5 {
		name := fmt.Sprintf("stuck%d", i)
		env.mustOK(t, logical.UpdateOperation, "roles/"+name, map[string]any{"config": "bad"})
		env.readCreds(t, name)
	}
	env.readCreds(t, "app")
	hang := make(chan struct{})
	var hung atomic.Int32
	bad.setHook(func(_ http.ResponseWriter, r *http.Request, _ url.Values) bool {
		hung.Add(1)
		select {
		case <-hang:
		case <-r.Context().Done():
		}
		return true
	})
	// Every role past its renewal point, still readable: the periodic call sends them
	// all to the background.
	env.clock.mu.Lock()
	env.clock.now = env.clock.now.Add(17*time.Minute + 10*time.Second)
	env.clock.mu.Unlock()
	if err := env.rollback(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the good connection's renewal", func() bool { return good.calls(grantRefresh) == 1 })
	waitFor(t, "the hanging provider's two requests", func() bool { return hung.Load() == 2 })
	if n := hung.Load(); n != 2 {
		t.Errorf("%d requests at the hanging provider, want its max_concurrent_requests, 2", n)
	}
	close(hang)
	env.b.bg.wait()
}
