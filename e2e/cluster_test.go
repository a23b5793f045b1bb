package e2e

import (
	"fmt"
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

	// Stop the active node mid-run.
	t.Logf("stopping the active node %s", active.Name)
	beforeFailover := p.Counts()
	active.Stop()
	rest := nodes[1:]

	// Reads through both survivors succeed once a new leader is elected.
	var after creds
	for _, n := range rest {
		harness.Eventually(t, 60*time.Second, 250*time.Millisecond, "creds read through "+n.Name+" after failover", func() (bool, string) {
			c, err := readCreds(t, n, n.Token, "demo")
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
		c, err := readCreds(t, n, n.Token, "demo")
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

	total := p.Counts().Sub(base)
	if total.PasswordOK > 1 || total.PasswordFailed != 0 || total.RefreshInvalidGrant != 0 || total.RefreshFailed != 0 {
		t.Errorf("whole run: %+v; want one password login and no invalid_grant", total)
	}
	t.Logf("provider traffic after setup: %+v", total)
}

// healthStatuses is a debugging aid: every node's /sys/health status.
func healthStatuses(nodes []*harness.Server) string {
	s := ""
	for _, n := range nodes {
		s += fmt.Sprintf("%s=%d ", n.Name, n.Health())
	}
	return s
}
