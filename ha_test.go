package bearer

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/helper/consts"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/hashicorp/vault/sdk/plugin/pb"
)

// TestHA_ForwardingFlags: the mutating operations carry the unconditional forwarding
// flags; the creds read does not, so that standbys serve cached tokens themselves.
func TestHA_ForwardingFlags(t *testing.T) {
	env := getTestBackend(t)
	want := map[string]bool{ // path prefix and operation: forwarded
		"config/ create": true,
		"config/ update": true,
		"config/ delete": true,
		"config/ read":   false,
		"config/?$ list": false,
		"roles/ create":  true,
		"roles/ update":  true,
		"roles/ delete":  true,
		"roles/ read":    false,
		"roles/?$ list":  false,
		"creds/ update":  true,
		"creds/ delete":  true,
		"creds/ read":    false,
		"metrics read":   false, // each node answers with its own counters
		"health read":    false,
	}
	seen := map[string]bool{}
	for _, path := range env.b.Paths {
		prefix, _, _ := strings.Cut(path.Pattern, "(")
		for op, handler := range path.Operations {
			key := fmt.Sprintf("%s %s", prefix, op)
			seen[key] = true
			forward, ok := want[key]
			props := handler.Properties()
			switch {
			case !ok:
				t.Errorf("%s: an operation this test does not know", key)
			case props.ForwardPerformanceStandby != forward || props.ForwardPerformanceSecondary != forward:
				t.Errorf("%s: ForwardPerformanceStandby=%v ForwardPerformanceSecondary=%v, want %v",
					key, props.ForwardPerformanceStandby, props.ForwardPerformanceSecondary, forward)
			}
		}
	}
	for key := range want {
		if !seen[key] {
			t.Errorf("%s: no such operation", key)
		}
	}
}

// TestHA_ReadOnlyNodes: on each node that cannot write storage, a valid token is served
// locally (from storage, then from memory), a read that needs a new token answers
// ErrReadOnly before any provider call, the periodic function does nothing, and the
// mutating operations are refused so that Vault forwards them. After the active node
// renews the token, invalidation lets the standby serve it.
func TestHA_ReadOnlyNodes(t *testing.T) {
	cases := map[string]struct {
		state consts.ReplicationState
		local bool
		// forwarded: the framework refuses the flagged operations itself. Vault sends no
		// requests to a DR secondary's mounts, so there only the creds path is checked.
		forwarded bool
	}{
		"performance standby": {
			state: consts.ReplicationPerformanceStandby, forwarded: true,
		},
		"performance secondary, replicated mount": {
			state: consts.ReplicationPerformanceSecondary, forwarded: true,
		},
		"performance standby of a secondary, local mount": {
			state: consts.ReplicationPerformanceSecondary | consts.ReplicationPerformanceStandby, local: true, forwarded: true,
		},
		"dr secondary": {
			state: consts.ReplicationDRSecondary,
		},
	}
	ctx := context.Background()
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			active := getTestBackend(t)
			p := withMindbaz(t, active, 0, nil, nil)
			first := active.readCreds(t, "app").Data["access_token"]

			node := newNode(t, active, readOnlyStorage{active.storage.Storage})
			node.sys.ReplicationStateVal = tc.state
			node.sys.LocalMountVal = tc.local
			if node.b.canWrite() {
				t.Fatal("canWrite on a node that cannot write storage")
			}
			calls := p.calls("")

			// The first read of a token goes to the active node, which then knows the
			// token is in use; the next ones are served here.
			if _, err := node.request(t, logical.ReadOperation, "creds/app", nil); !errors.Is(err, logical.ErrReadOnly) {
				t.Errorf("the first read of the token: %v, want ErrReadOnly", err)
			}
			if got := node.readCreds(t, "app").Data["access_token"]; got != first {
				t.Error("the node did not serve the stored token")
			}
			ops := node.storage.ops()
			if got := node.readCreds(t, "app").Data["access_token"]; got != first || node.storage.ops() != ops {
				t.Errorf("the cached read returned another token or made %d storage operations", node.storage.ops()-ops)
			}

			active.clock.Add(p.accessTTL - 100*time.Second) // past the renewal point
			node.runPeriodic(t)
			if node.storage.ops() != ops || node.b.bg.sched.len() != 0 {
				t.Errorf("the periodic function made %d storage operations and scheduled %d roles", node.storage.ops()-ops, node.b.bg.sched.len())
			}

			active.clock.Add(100*time.Second + time.Second) // expired
			requests := map[string]struct {
				op   logical.Operation
				path string
				data map[string]any
				skip bool
			}{
				"creds read":    {op: logical.ReadOperation, path: "creds/app"},
				"creds update":  {op: logical.UpdateOperation, path: "creds/app"},
				"creds delete":  {op: logical.DeleteOperation, path: "creds/app", skip: !tc.forwarded},
				"role update":   {op: logical.UpdateOperation, path: "roles/app", data: map[string]any{"min_ttl": "90s"}, skip: !tc.forwarded},
				"role delete":   {op: logical.DeleteOperation, path: "roles/app", skip: !tc.forwarded},
				"config update": {op: logical.UpdateOperation, path: "config/conn", data: map[string]any{"password": "x-new-pass"}, skip: !tc.forwarded},
				"config delete": {op: logical.DeleteOperation, path: "config/conn", skip: !tc.forwarded},
			}
			for what, r := range requests {
				if r.skip {
					continue
				}
				resp, err := node.request(t, r.op, r.path, r.data)
				if !errors.Is(err, logical.ErrReadOnly) {
					t.Errorf("%s: err=%v resp=%#v, want ErrReadOnly", what, err, resp)
				}
			}
			if got := p.calls(""); got != calls {
				t.Errorf("the node made %d provider calls", got-calls)
			}
			if puts := node.storage.puts.Load(); puts != 0 {
				t.Errorf("the node tried %d storage writes", puts)
			}

			// Vault runs the read again on the active node; its write reaches the node
			// as an invalidation.
			renewed := active.readCreds(t, "app").Data["access_token"]
			node.b.InvalidateKey(ctx, tokenPrefix+"app")
			if _, err := node.request(t, logical.ReadOperation, "creds/app", nil); !errors.Is(err, logical.ErrReadOnly) {
				t.Errorf("the first read of the new token: %v, want ErrReadOnly", err)
			}
			if got := node.readCreds(t, "app").Data["access_token"]; got != renewed || got == first {
				t.Error("after the invalidation the node did not serve the active node's new token")
			}
			if got := p.calls(""); got != calls+1 {
				t.Errorf("provider calls = %d, want 1: the active node's renewal", got-calls)
			}
		})
	}
}

// TestHA_WritableStates: where the node may write, it renews tokens itself and runs the
// background.
func TestHA_WritableStates(t *testing.T) {
	cases := map[string]struct {
		state consts.ReplicationState
		local bool
	}{
		"no replication":                     {},
		"performance primary":                {state: consts.ReplicationPerformancePrimary},
		"dr primary":                         {state: consts.ReplicationDRPrimary},
		"performance secondary, local mount": {state: consts.ReplicationPerformanceSecondary, local: true},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			env := getTestBackend(t)
			env.sys.ReplicationStateVal = tc.state
			env.sys.LocalMountVal = tc.local
			p := withMindbaz(t, env, 0, nil, nil)
			sim := newSchedSim(p, time.Second, time.Minute, env)
			sim.run(t, time.Hour)
			if sim.backgroundCalls() == 0 || sim.readCalls != 0 || p.calls(grantPassword) != 1 {
				t.Errorf("background calls %d, calls inside reads %d, logins %d; want >0, 0, 1",
					sim.backgroundCalls(), sim.readCalls, p.calls(grantPassword))
			}
		})
	}
}

// TestHA_IsReadOnlyErr: Vault's read-only storage error is recognised however it
// arrives, also as the plain text it becomes on the plugin's gRPC boundary.
func TestHA_IsReadOnlyErr(t *testing.T) {
	overGRPC := pb.ProtoErrToErr(pb.ErrToProtoErr(logical.ErrReadOnly))
	if errors.Is(overGRPC, logical.ErrReadOnly) {
		t.Fatal("the gRPC round trip kept the error's identity: the text match is not needed any more")
	}
	cases := map[string]struct {
		err  error
		want bool
	}{
		"nil":                       {err: nil},
		"the sentinel":              {err: logical.ErrReadOnly, want: true},
		"wrapped sentinel":          {err: fmt.Errorf("writing tokens/app: %w", logical.ErrReadOnly), want: true},
		"across gRPC":               {err: overGRPC, want: true},
		"across gRPC, then wrapped": {err: fmt.Errorf("writing tokens/app: %w", overGRPC), want: true},
		"as text in a message":      {err: errors.New("rpc error: code = Unknown desc = " + logical.ErrReadOnly.Error()), want: true},
		"another storage error":     {err: errors.New("writing tokens/app: storage unavailable")},
		"setup read-only":           {err: logical.ErrSetupReadOnly},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			if got := isReadOnlyErr(tc.err); got != tc.want {
				t.Errorf("isReadOnlyErr(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}

// TestHA_InvalidateKeepsCachesCoherent: two nodes over one storage. One changes
// something; the other, invalidated with the keys that were written, serves the new
// token without a provider call and caches what storage holds.
func TestHA_InvalidateKeepsCachesCoherent(t *testing.T) {
	const newPassword = "n3w-Pa55word-ABC"
	cases := map[string]struct {
		change func(t *testing.T, active *testEnv, p *fakeProvider)
		check  func(t *testing.T, other *testEnv)
	}{
		"refresh": {
			change: func(t *testing.T, active *testEnv, _ *fakeProvider) {
				active.mustOK(t, logical.UpdateOperation, "creds/app", nil)
			},
		},
		"role change": {
			change: func(t *testing.T, active *testEnv, _ *fakeProvider) {
				active.mustOK(t, logical.UpdateOperation, "roles/app", map[string]any{"min_ttl": "300s"})
				active.mustOK(t, logical.UpdateOperation, "creds/app", nil)
			},
			check: func(t *testing.T, other *testEnv) {
				if v := other.b.roleState("app").view.Load(); v == nil || v.role.MinTTL != 300*time.Second {
					t.Error("the cached role is not the changed one")
				}
			},
		},
		"role scopes change discards the session": {
			change: func(t *testing.T, active *testEnv, _ *fakeProvider) {
				active.mustOK(t, logical.UpdateOperation, "roles/app", map[string]any{"scopes": "profile"})
			},
		},
		"password change": {
			change: func(t *testing.T, active *testEnv, p *fakeProvider) {
				p.setPassword(newPassword)
				active.mustOK(t, logical.UpdateOperation, "config/conn", map[string]any{"password": newPassword, "verify": false})
				p.mu.Lock()
				p.live = map[string]bool{} // the provider ends the sessions: the next renewal logs in
				p.mu.Unlock()
				active.mustOK(t, logical.UpdateOperation, "creds/app", nil)
			},
			check: func(t *testing.T, other *testEnv) {
				if e := other.b.connState("conn").cached(); e == nil || e.Password != newPassword {
					t.Error("the cached connection does not hold the new password")
				}
			},
		},
		"account change": {
			change: func(t *testing.T, active *testEnv, p *fakeProvider) {
				active.mustOK(t, logical.UpdateOperation, "config/conn", map[string]any{"token_url": p.tokenURL() + "?tenant=2", "verify": false})
			},
			check: func(t *testing.T, other *testEnv) {
				cs := other.b.connState("conn")
				e := cs.cached()
				if e == nil || !strings.HasSuffix(e.TokenURL, "?tenant=2") {
					t.Error("the cached connection is not the changed one")
				}
				if c := cs.client; c != nil && c.conn != e {
					t.Error("the cached HTTP client was built for the old connection")
				}
			},
		},
	}
	ctx := context.Background()
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			active, rec := newRecordedEnv(t)
			p := withMindbaz(t, active, 0, nil, nil)
			old := active.readCreds(t, "app").Data["access_token"]
			other := newNode(t, active, rec.Storage)
			if other.readCreds(t, "app").Data["access_token"] != old {
				t.Fatal("the other node did not serve the stored token")
			}
			rec.drain()

			tc.change(t, active, p)
			want := active.readCreds(t, "app").Data["access_token"]
			if want == old {
				t.Fatal("the change did not give the active node a new token")
			}
			calls := p.calls("")
			if other.readCreds(t, "app").Data["access_token"] != old {
				t.Fatal("before the invalidation the other node did not serve its cached token: the test proves nothing")
			}
			for _, key := range rec.drain() {
				other.b.InvalidateKey(ctx, key)
			}
			if got := other.readCreds(t, "app").Data["access_token"]; got != want {
				t.Errorf("after the invalidation the other node served %v, want the active node's %v", got, want)
			}
			if got := p.calls(""); got != calls {
				t.Errorf("the other node made %d provider calls", got-calls)
			}
			if tc.check != nil {
				tc.check(t, other)
			}
		})
	}
}

// TestHA_InvalidationReschedules: a node whose schedule is built picks up, at its next
// run, a session another node wrote, and keeps it alive from then on.
func TestHA_InvalidationReschedules(t *testing.T) {
	active, rec := newRecordedEnv(t)
	p := withMindbaz(t, active, 0, nil, nil)
	other := newNode(t, active, rec.Storage)
	other.runPeriodic(t) // built, with nothing to do: the role has no session yet
	rec.drain()
	active.readCreds(t, "app") // the login; this node then goes away
	for _, key := range rec.drain() {
		other.b.InvalidateKey(context.Background(), key)
	}
	sim := newSchedSim(p, 0, time.Minute, other)
	sim.reads = 1 // no reads: the session stays idle
	sim.run(t, 8*24*time.Hour)
	other.readCreds(t, "app")
	if sim.backgroundCalls() == 0 || p.calls(grantPassword) != 1 {
		t.Errorf("the node's background made %d provider calls and the session %d logins; want its keep-alive and 1 login",
			sim.backgroundCalls(), p.calls(grantPassword))
	}
}

// TestHA_InvalidationDuringLoad: a load that read storage before an invalidation is not
// cached, so the next read sees the newer token.
func TestHA_InvalidationDuringLoad(t *testing.T) {
	active, rec := newRecordedEnv(t)
	p := withMindbaz(t, active, 0, nil, nil)
	old := active.readCreds(t, "app").Data["access_token"]
	gate := &gatedStorage{Storage: rec.Storage, key: tokenPrefix + "app", entered: make(chan struct{}), release: make(chan struct{})}
	other := newNode(t, active, gate)

	done := other.readAsync(t)
	<-gate.entered // the other node has read the old token and not cached it yet
	rec.drain()
	renewed := active.mustOK(t, logical.UpdateOperation, "creds/app", nil).Data["access_token"]
	for _, key := range rec.drain() {
		other.b.InvalidateKey(context.Background(), key)
	}
	close(gate.release)
	if got := <-done; got != old {
		t.Errorf("the racing read returned %v, want the token it read, %v", got, old)
	}
	calls := p.calls("")
	if got := other.readCreds(t, "app").Data["access_token"]; got != renewed {
		t.Error("the load that raced the invalidation was cached: the node serves the old token")
	}
	if p.calls("") != calls {
		t.Error("the other node called the provider")
	}
}

// TestHA_CleanDropsScheduleAndCaches: Clean empties the schedule and every cache; the
// backend then works from storage again.
func TestHA_CleanDropsScheduleAndCaches(t *testing.T) {
	env := getTestBackend(t)
	p := withMindbaz(t, env, 0, nil, nil)
	tok := env.readCreds(t, "app").Data["access_token"]
	env.runPeriodic(t)
	if env.b.bg.sched.len() != 1 {
		t.Fatalf("schedule holds %d roles before Clean", env.b.bg.sched.len())
	}

	env.b.Cleanup(context.Background())
	count := func(m *sync.Map) int {
		n := 0
		m.Range(func(any, any) bool { n++; return true })
		return n
	}
	env.b.bg.sched.mu.Lock()
	built := env.b.bg.sched.built
	env.b.bg.sched.mu.Unlock()
	if built || env.b.bg.sched.len() != 0 {
		t.Errorf("after Clean the schedule is built=%v with %d roles", built, env.b.bg.sched.len())
	}
	if n := count(&env.b.roles) + count(&env.b.conns); n != 0 {
		t.Errorf("after Clean the caches hold %d entries", n)
	}

	calls, lists := p.calls(""), env.storage.lists.Load()
	if env.readCreds(t, "app").Data["access_token"] != tok || p.calls("") != calls {
		t.Error("after Clean the stored token was not served")
	}
	env.runPeriodic(t)
	if env.storage.lists.Load() != lists+1 || env.b.bg.sched.len() != 1 {
		t.Error("after Clean the periodic function did not build the schedule again")
	}
}

// TestHA_FailoverKeepsSession: the active node dies in the middle of hours of reads; a
// new active node over the same storage carries on with the stored refresh token: the
// span still costs one login and the ideal number of renewals, and no read waits.
func TestHA_FailoverKeepsSession(t *testing.T) {
	const day = 6 * time.Hour
	env := getTestBackend(t)
	p := withMindbaz(t, env, 20*time.Minute, nil, nil)
	start := env.clock.Now()
	sim := newSchedSim(p, time.Second, time.Minute, env)
	sim.run(t, 2*time.Hour+7*time.Minute)
	env.start(t) // the new active node
	sim.run(t, day-sim.elapsed)

	role := &roleEntry{MinTTL: defaultMinTTL, BackgroundRefresh: true}
	ideal := idealRenewals("app", role, p.accessTTL, start, day)
	if p.calls(grantPassword) != 1 || p.calls(grantRefresh) != ideal || sim.readCalls != 0 {
		t.Errorf("logins %d, refreshes %d (ideal %d), calls inside reads %d; want 1, ideal, 0",
			p.calls(grantPassword), p.calls(grantRefresh), ideal, sim.readCalls)
	}
}

// TestHA_StandbyServesReads: reads arrive only through a performance standby for
// hours. The standby sends the first read of each new token to the active node (so that
// it renews the token in the background) and serves every other read itself, with no
// provider call and no storage write; the active node's renewals reach it as
// invalidations, and no read waits for the provider.
func TestHA_StandbyServesReads(t *testing.T) {
	const span = 3 * time.Hour
	active, rec := newRecordedEnv(t)
	p := withMindbaz(t, active, 20*time.Minute, nil, nil)
	start := active.clock.Now()
	active.readCreds(t, "app") // the first login
	standby := newNode(t, active, readOnlyStorage{rec.Storage})
	standby.sys.ReplicationStateVal = consts.ReplicationPerformanceStandby
	rec.mu.Lock()
	rec.onWrite = func(key string) { standby.b.InvalidateKey(context.Background(), key) }
	rec.mu.Unlock()

	sim := newSchedSim(p, time.Second, time.Minute, active, standby)
	sim.readVia = []*testEnv{standby}
	sim.reads = 1 // the first login is done
	sim.run(t, span)
	role := &roleEntry{MinTTL: defaultMinTTL, BackgroundRefresh: true}
	ideal := idealRenewals("app", role, p.accessTTL, start, span)
	tokens := p.calls("")
	if sim.forwarded > tokens || sim.forwarded == 0 || standby.storage.puts.Load() != 0 {
		t.Errorf("the standby forwarded %d reads for %d tokens and tried %d storage writes; want at most one per token, none",
			sim.forwarded, tokens, standby.storage.puts.Load())
	}
	if p.calls(grantPassword) != 1 || p.calls(grantRefresh) != ideal || sim.readCalls != 0 {
		t.Errorf("logins %d, refreshes %d (ideal %d), calls inside reads %d; want 1, ideal, 0",
			p.calls(grantPassword), p.calls(grantRefresh), ideal, sim.readCalls)
	}
}

// TestHA_ReadOnlyStorageForwards: a write refused as read-only comes back as the bare
// logical.ErrReadOnly, which makes Vault run the request on the active node.
func TestHA_ReadOnlyStorageForwards(t *testing.T) {
	env := getTestBackend(t)
	p := newFakeProvider(t, "mindbaz", env.clock)
	env.setup(t, p, nil, nil)
	ro := readOnlyStorage{env.storage}
	for name, req := range map[string]*logical.Request{
		"config write": {Operation: logical.UpdateOperation, Path: "config/conn", Data: map[string]any{"username": "bob", "verify": false}},
		"role write":   {Operation: logical.UpdateOperation, Path: "roles/app", Data: map[string]any{"min_ttl": "30s"}},
		"creds read":   {Operation: logical.ReadOperation, Path: "creds/app"},
	} {
		t.Run(name, func(t *testing.T) {
			req.Storage, req.MountPoint = ro, "bearer/"
			_, err := env.b.HandleRequest(context.Background(), req)
			if err != logical.ErrReadOnly {
				t.Errorf("error = %v, want the bare logical.ErrReadOnly", err)
			}
		})
	}
}
