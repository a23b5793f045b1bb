package e2e

import (
	"fmt"
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

// TestRaftClusterFailover is scenario 4: three Vault nodes on Raft, the
// plugin registered once, reads through every node; the active node stops
// and reads keep working through the new active node, which serves the
// persisted tokens and refreshes with the newest refresh token: no
// invalid_grant, no password login after the first.
func TestRaftClusterFailover(t *testing.T) {
	t.Parallel()
	const life = 20 * time.Second // min_ttl 60s is capped at 10s
	sc := env.NewScenario(t, provider.Config{AccessTokenTTL: life})
	p := sc.Provider
	nodes := startRaftCluster(sc, 3)
	active := nodes[0]
	setupEngine(sc, active)
	base := p.Counts() // after the verify login

	// Reads through every node (standbys forward to the active node).
	first := mustReadCreds(t, active, "demo")
	for _, n := range nodes {
		c := mustReadCreds(t, n, "demo")
		if c.AccessToken != first.AccessToken {
			t.Errorf("%s returned a different token", n.Name)
		}
		checkCredsShape(t, c, life, life/2)
	}
	// A forced renewal through a standby rotates the refresh token.
	forced := forceCreds(t, nodes[1], "demo")
	if is, _ := p.Lookup(forced.AccessToken); is.GrantType != "refresh_token" {
		t.Errorf("forced renewal through a standby used grant %q, want refresh_token", is.GrantType)
	}

	// Readers hammer both standbys through the failover and until the end.
	rest := nodes[1:]
	readers := startReaders(rest, 100*time.Millisecond)

	// Stop the active node mid-run.
	t.Logf("stopping the active node %s", active.Name)
	beforeFailover := p.Counts()
	stoppedAt := time.Now()
	active.Stop()

	// Reads through both survivors succeed once a new leader is elected.
	var after creds
	for _, n := range rest {
		harness.Eventually(t, 60*time.Second, 250*time.Millisecond, "creds read through "+n.Name+" after failover", func() (bool, string) {
			c, err := readCreds(n, n.Token, "demo")
			if err != nil {
				return false, err.Error() + "; health: " + healthStatuses(nodes)
			}
			after = c
			return true, ""
		})
	}
	if after.AccessToken == forced.AccessToken {
		assertCounts(t, p, beforeFailover, provider.Counts{}, "reads after failover serving the persisted token")
	} else if is, _ := p.Lookup(after.AccessToken); is.GrantType != "refresh_token" {
		t.Errorf("the new active node got its token with grant %q, want the persisted one or a refresh", is.GrantType)
	}

	// Keep reading through the survivors until the new active node renews.
	i := 0
	var renewed creds
	harness.Eventually(t, life+20*time.Second, 250*time.Millisecond, "renewal by the new active node", func() (bool, string) {
		n := rest[i%len(rest)]
		i++
		c, err := readCreds(n, n.Token, "demo")
		if err != nil {
			t.Fatalf("read through %s after failover: %v", n.Name, err)
		}
		renewed = c
		return c.AccessToken != forced.AccessToken, "still the token of the old active node"
	})
	if is, _ := p.Lookup(renewed.AccessToken); is.GrantType != "refresh_token" {
		t.Errorf("renewal on the new active node used grant %q, want refresh_token", is.GrantType)
	}
	checkCredsShape(t, renewed, life, life/2)

	// Every read the readers got was a token the provider issued, valid for
	// at least min_ttl; reads failed only while there was no leader.
	reads := readers.stop()
	ok, failed := 0, 0
	recovered := map[string]time.Time{}
	for _, r := range reads {
		if r.err != nil {
			failed++
			if at, done := recovered[r.node]; done {
				t.Errorf("read through %s failed at +%s, after it had recovered at +%s: %v",
					r.node, r.at.Sub(stoppedAt), at.Sub(stoppedAt), r.err)
			} else if r.at.Before(stoppedAt) {
				t.Errorf("read through %s failed before the failover: %v", r.node, r.err)
			}
			continue
		}
		ok++
		if r.at.After(stoppedAt) {
			if _, done := recovered[r.node]; !done {
				recovered[r.node] = r.at
			}
		}
		is, known := p.Lookup(r.token)
		if !known {
			t.Errorf("read through %s returned a token the provider never issued", r.node)
		} else if left := is.ExpiresAt.Sub(r.at); left < life/2-2*time.Second {
			t.Errorf("read through %s at +%s returned a token with only %s left (min_ttl %s)", r.node, r.at.Sub(stoppedAt), left, life/2)
		}
	}
	t.Logf("background reads through the standbys: %d ok, %d failed during the election; recovered after %v",
		ok, failed, func() (d []time.Duration) {
			for _, at := range recovered {
				d = append(d, at.Sub(stoppedAt).Round(time.Millisecond))
			}
			return d
		}())

	total := p.Counts().Sub(base)
	if total.PasswordOK > 1 || total.PasswordFailed != 0 || total.RefreshInvalidGrant != 0 || total.RefreshFailed != 0 {
		t.Errorf("whole run: %+v; want one password login and no invalid_grant", total)
	}
	t.Logf("provider traffic after setup: %+v", total)
}

// read is one background creds read.
type read struct {
	node  string
	at    time.Time
	token string
	err   error
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
				c, err := readCreds(n, n.Token, "demo")
				at := time.Now()
				r.mu.Lock()
				r.reads = append(r.reads, read{node: n.Name, at: at, token: c.AccessToken, err: err})
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

// healthStatuses is a debugging aid: every node's /sys/health status.
func healthStatuses(nodes []*harness.Server) string {
	s := ""
	for _, n := range nodes {
		s += fmt.Sprintf("%s=%d ", n.Name, n.Health())
	}
	return s
}
