package e2e

import (
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/bearer-vault/vault-plugin-secrets-bearer/e2e/internal/harness"
	"github.com/bearer-vault/vault-plugin-secrets-bearer/e2e/provider"
)

// startRaftCluster starts n Vault nodes with integrated storage on loopback:
// the first is initialized, the others join it with `vault operator raft
// join` and are unsealed with its key. It returns once every node is a
// voter.
func startRaftCluster(sc *harness.Scenario, n int) []*harness.Server {
	t := sc.T
	t.Helper()
	nodes := make([]*harness.Server, n)
	for i := range nodes {
		nodes[i] = sc.NewServer(harness.ServerOptions{Storage: harness.StorageRaft})
		nodes[i].Start()
	}
	leader := nodes[0]
	leader.Init()
	leader.Unseal()
	leader.WaitActive()
	// New nodes join as non-voters and are promoted after the stabilization
	// time (10s by default); 1s keeps the test short.
	leader.MustCLI("operator", "raft", "autopilot", "set-config", "-server-stabilization-time=1s")
	for _, node := range nodes[1:] {
		node.Token = leader.Token
		node.MustCLI("operator", "raft", "join", leader.Addr)
		node.Unseal(leader.UnsealKeys...)
	}
	harness.Eventually(t, 60*time.Second, 250*time.Millisecond, "all raft peers are voters", func() (bool, string) {
		var peers struct {
			Data struct {
				Config struct {
					Servers []struct {
						NodeID string `json:"node_id"`
						Voter  bool   `json:"voter"`
					} `json:"servers"`
				} `json:"config"`
			} `json:"data"`
		}
		leader.CLIJSON(&peers, "operator", "raft", "list-peers", "-format=json")
		voters := 0
		for _, s := range peers.Data.Config.Servers {
			if s.Voter {
				voters++
			}
		}
		return voters == n, fmt.Sprintf("%+v", peers.Data.Config.Servers)
	})
	return nodes
}

// startRaftEngine starts a scenario whose provider issues access tokens for
// life, a 3-node Raft cluster, and the engine with connection and role demo,
// set up through the first node.
func startRaftEngine(t *testing.T, life time.Duration) (*provider.Provider, []*harness.Server) {
	t.Helper()
	sc := env.NewScenario(t, provider.Config{AccessTokenTTL: life})
	nodes := startRaftCluster(sc, 3)
	setupEngine(sc, nodes[0])
	return sc.Provider, nodes
}

// TestRaftClusterFailover is scenario 4: three Vault nodes on Raft, the
// plugin registered once, reads through every node; the active node stops
// and reads keep working through the new active node, which serves the
// persisted tokens and refreshes with the newest refresh token: no
// invalid_grant, no password login after the first.
func TestRaftClusterFailover(t *testing.T) {
	t.Parallel()
	const life = 20 * time.Second // min_ttl 60s is capped at 10s
	p, nodes := startRaftEngine(t, life)
	base := p.Counts() // after the verify login

	// Reads through every node (standbys forward to the active node).
	first := mustReadCreds(t, nodes[0], "demo")
	for _, n := range nodes {
		c := mustReadCreds(t, n, "demo")
		if c.AccessToken != first.AccessToken {
			t.Errorf("%s returned a different token", n.Name)
		}
		checkCredsShape(t, c, life, life/2)
	}
	// The node that is active now (nodes[0] unless a loaded machine made
	// Raft elect another leader meanwhile), and the standbys.
	active, rest := splitActive(t, nodes)

	// A forced renewal through a standby rotates the refresh token.
	forced := forceCreds(t, rest[0], "demo")
	if is, _ := p.Lookup(forced.AccessToken); is.GrantType != "refresh_token" {
		t.Errorf("forced renewal through a standby used grant %q, want refresh_token", is.GrantType)
	}

	// Readers hammer both standbys through the failover and until the end.
	readers := startReaders(rest, 100*time.Millisecond)

	// Stop the active node mid-run. From SIGTERM (stopping) until its
	// process has exited (stopped), the old active node drains: it serves
	// some requests forwarded by the standbys, then seals itself and answers
	// "Vault is sealed", or the standbys redirect reads to its closed
	// address. Reads may fail from stopping until a new leader serves them.
	t.Logf("stopping the active node %s", active.Name)
	stopping := time.Now()
	active.Stop()
	stopped := time.Now()

	// Reads through both survivors succeed once a new leader is elected.
	var after creds
	for _, n := range rest {
		after = readAfterFailover(t, n, nodes)
	}
	if after.AccessToken == forced.AccessToken {
		// No provider call before that read: the new active node served the
		// persisted token. (Calls after it are renewals that came due.)
		if calls := tokenCallsBetween(p, stopping, after.ReadStart); calls != 0 {
			t.Errorf("reads after failover serving the persisted token: %d token endpoint calls before, want 0", calls)
		}
	} else if is, _ := p.Lookup(after.AccessToken); is.GrantType != "refresh_token" {
		t.Errorf("the new active node got its token with grant %q, want the persisted one or a refresh", is.GrantType)
	}

	// Keep reading through the survivors until the new active node renews.
	renewed := readUntil(t, rest, life+20*time.Second, "renewal by the new active node", func(c creds) (bool, string) {
		return c.AccessToken != forced.AccessToken, "still the token of the old active node"
	})
	if is, _ := p.Lookup(renewed.AccessToken); is.GrantType != "refresh_token" {
		t.Errorf("renewal on the new active node used grant %q, want refresh_token", is.GrantType)
	}
	checkCredsShape(t, renewed, life, life/2)

	// Every read the readers got was a token the provider issued, valid for
	// at least min_ttl; reads failed only from the stop until the first read
	// through the same node that was sent after the old active node had exited
	// and succeeded (a new leader served it).
	reads := readers.stop()
	ok, failed := 0, 0
	recovered := map[string]time.Time{}
	for _, r := range reads {
		if r.err != nil {
			failed++
			if at, done := recovered[r.node]; done {
				t.Errorf("read through %s sent at +%s failed, after it had recovered at +%s: %v",
					r.node, r.start.Sub(stopping), at.Sub(stopping), r.err)
			} else if r.at.Before(stopping) {
				t.Errorf("read through %s failed before the failover: %v", r.node, r.err)
			}
			continue
		}
		ok++
		if _, done := recovered[r.node]; !done && r.start.After(stopped) {
			recovered[r.node] = r.at
		}
		// The engine served the token with at least min_ttl left, at some
		// time after the read was sent.
		is, known := p.Lookup(r.token)
		if !known {
			t.Errorf("read through %s returned a token the provider never issued", r.node)
		} else if left := is.ExpiresAt.Sub(r.start); left < life/2-2*time.Second {
			t.Errorf("read through %s sent at +%s returned a token with only %s left (min_ttl %s)", r.node, r.start.Sub(stopping), left, life/2)
		}
	}
	t.Logf("background reads through the standbys: %d ok, %d failed during the election; old active node exited after %s; recovered after %v",
		ok, failed, stopped.Sub(stopping).Round(time.Millisecond), func() (d []time.Duration) {
			for _, at := range recovered {
				d = append(d, at.Sub(stopping).Round(time.Millisecond))
			}
			return d
		}())

	total := p.Counts().Sub(base)
	if total.PasswordOK > 1 || total.PasswordFailed != 0 || total.RefreshInvalidGrant != 0 || total.RefreshFailed != 0 {
		t.Errorf("whole run: %+v; want one password login and no invalid_grant", total)
	}
	t.Logf("provider traffic after setup: %+v", total)
}

// readAfterFailover reads creds/demo through n until a new active node
// serves it, for up to a minute.
func readAfterFailover(t *testing.T, n *harness.Server, nodes []*harness.Server) creds {
	t.Helper()
	var got creds
	harness.Eventually(t, 60*time.Second, 250*time.Millisecond, "creds read through "+n.Name+" after failover", func() (bool, string) {
		c, err := readCreds(n, n.Token, "demo")
		if err != nil {
			return false, err.Error() + "; health: " + healthStatuses(nodes)
		}
		got = c
		return true, ""
	})
	return got
}

// readUntil reads creds/demo through nodes in turn, every 250ms, until done
// accepts an answer, and returns it. A failed read fails the test.
func readUntil(t *testing.T, nodes []*harness.Server, timeout time.Duration, what string, done func(creds) (bool, string)) creds {
	t.Helper()
	i := 0
	var got creds
	harness.Eventually(t, timeout, 250*time.Millisecond, what, func() (bool, string) {
		n := nodes[i%len(nodes)]
		i++
		c, err := readCreds(n, n.Token, "demo")
		if err != nil {
			t.Fatalf("read through %s: %v", n.Name, err)
		}
		got = c
		return done(c)
	})
	return got
}

// read is one background creds read, sent at start and answered at at.
type read struct {
	node      string
	start, at time.Time
	token     string
	err       error
}

// readers read creds/demo through a set of nodes in the background.
type readers struct {
	stopCh chan struct{}
	done   sync.WaitGroup
	mu     sync.Mutex
	reads  []read
}

// startReaders reads creds/demo through each node every interval, in one
// goroutine per node, until stop is called.
func startReaders(nodes []*harness.Server, interval time.Duration) *readers {
	r := &readers{stopCh: make(chan struct{})}
	for _, n := range nodes {
		r.done.Add(1)
		go func() {
			defer r.done.Done()
			tick := time.NewTicker(interval)
			defer tick.Stop()
			for {
				start := time.Now()
				c, err := readCreds(n, n.Token, "demo")
				at := time.Now()
				r.mu.Lock()
				r.reads = append(r.reads, read{node: n.Name, start: start, at: at, token: c.AccessToken, err: err})
				r.mu.Unlock()
				select {
				case <-r.stopCh:
					return
				case <-tick.C:
				}
			}
		}()
	}
	return r
}

// stop ends the reads and returns them.
func (r *readers) stop() []read {
	close(r.stopCh)
	r.done.Wait()
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.reads
}

// splitActive returns the active node and the others, failing the test unless
// exactly one node is active.
func splitActive(t *testing.T, nodes []*harness.Server) (*harness.Server, []*harness.Server) {
	t.Helper()
	var active *harness.Server
	var standbys []*harness.Server
	for _, n := range nodes {
		if n.Health() == http.StatusOK {
			if active != nil {
				t.Fatalf("two active nodes: %s", healthStatuses(nodes))
			}
			active = n
		} else {
			standbys = append(standbys, n)
		}
	}
	if active == nil {
		t.Fatalf("no active node: %s", healthStatuses(nodes))
	}
	return active, standbys
}

// tokenCallsBetween counts the token endpoint requests p answered in
// [from, to).
func tokenCallsBetween(p *provider.Provider, from, to time.Time) int {
	n := 0
	for _, ev := range p.Events() {
		if ev.Endpoint == "token" && !ev.Time.Before(from) && ev.Time.Before(to) {
			n++
		}
	}
	return n
}

// healthStatuses is a debugging aid: every node's /sys/health status.
func healthStatuses(nodes []*harness.Server) string {
	s := ""
	for _, n := range nodes {
		s += fmt.Sprintf("%s=%d ", n.Name, n.Health())
	}
	return s
}
