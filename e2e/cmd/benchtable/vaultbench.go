package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bearer-vault/vault-plugin-secrets-bearer/e2e/internal/harness"
	"github.com/bearer-vault/vault-plugin-secrets-bearer/e2e/provider"
)

// vaultOptions size the real-Vault comparison.
type vaultOptions struct {
	warmup  int           // alternating rounds before measuring
	blocks  int           // measured blocks of rounds
	rounds  int           // alternating rounds per block
	clients int           // concurrent clients in the throughput phase
	window  time.Duration // one endpoint's turn in the throughput phase
	windows int           // turns per endpoint in the throughput phase
}

// endpoint is one read compared through Vault's HTTP API.
type endpoint struct {
	path string

	samples   []time.Duration // latency phase, one client
	blockP50  []time.Duration // p50 of each block
	bodyBytes int
	requests  int64         // throughput phase
	busy      time.Duration // throughput phase, wall time
}

// vaultResult is the outcome of the comparison.
type vaultResult struct {
	vaultVersion  string
	bearer        *endpoint
	floor         *endpoint
	kv            *endpoint
	providerCalls int // token endpoint requests while measuring
	opts          vaultOptions
}

const (
	pluginVersion = "v0.1.0-bench"
	floorCommand  = "floor-plugin"
	role          = "bench"
)

// runVault starts a dev Vault with the bearer plugin, the floor plugin and
// the built-in KV-v2 mount, and reads the three alternately with one client.
func runVault(ctx context.Context, opts vaultOptions) (res *vaultResult, err error) {
	env, cleanup, err := harness.Setup(pluginVersion)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	floorSHA, err := env.BuildE2EPlugin("./cmd/floor-plugin", floorCommand)
	if err != nil {
		return nil, err
	}

	p, err := provider.New(provider.Config{
		Password:       "pw-" + harness.RandomHex(16),
		AccessTokenTTL: time.Hour, // no renewal during the run
	})
	if err != nil {
		return nil, err
	}
	defer p.Close()

	dir, err := os.MkdirTemp("", "bearer-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	v, err := env.StartDevVault(dir, "warn")
	if err != nil {
		return nil, err
	}
	defer func() {
		if serr := v.Stop(); serr != nil {
			err = errors.Join(err, fmt.Errorf("stop vault: %w", serr))
		}
	}()
	fmt.Fprintf(os.Stderr, "benchtable: dev Vault at %s, log %s\n", v.Addr, v.LogPath)

	c := &client{
		http:  &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: opts.clients + 1}},
		addr:  v.Addr,
		token: v.Token,
	}
	cfg := p.Config()
	steps := []struct {
		path string
		body any
	}{
		{"/v1/sys/plugins/catalog/secret/" + harness.PluginName, map[string]any{"sha256": env.PluginSHA256, "command": harness.PluginCommand, "version": env.PluginVersion}},
		{"/v1/sys/plugins/catalog/secret/floor", map[string]any{"sha256": floorSHA, "command": floorCommand}},
		{"/v1/sys/mounts/" + harness.MountPath, map[string]any{"type": harness.PluginName, "plugin_version": env.PluginVersion}},
		{"/v1/sys/mounts/floor", map[string]any{"type": "floor"}},
		{"/v1/" + harness.MountPath + "/config/" + role, map[string]any{
			"provider": "generic", "token_url": p.TokenURL(), "client_id": cfg.ClientID,
			"username": cfg.Username, "password": cfg.Password,
		}},
		{"/v1/" + harness.MountPath + "/roles/" + role, map[string]any{"config": role}},
		// A KV-v2 secret of the creds answer's shape and size.
		{"/v1/secret/data/" + role, map[string]any{"data": map[string]any{
			"access_token": "ory_at_" + harness.RandomHex(43), "token_type": "Bearer",
			"expires_at": "2030-01-01T00:00:00Z", "expires_in": 3599, "ttl": 3539, "rotation_period": 3600,
		}}},
	}
	for _, s := range steps {
		if err := c.write(ctx, s.path, s.body); err != nil {
			return nil, err
		}
	}

	ver, err := exec.CommandContext(ctx, env.VaultBin, "version").Output()
	if err != nil {
		return nil, fmt.Errorf("vault version: %w", err)
	}
	res = &vaultResult{
		vaultVersion: strings.TrimSpace(string(ver)),
		bearer:       &endpoint{path: "/v1/" + harness.MountPath + "/creds/" + role},
		floor:        &endpoint{path: "/v1/floor/creds/" + role},
		kv:           &endpoint{path: "/v1/secret/data/" + role},
		opts:         opts,
	}
	eps := []*endpoint{res.bearer, res.floor, res.kv}
	for _, e := range eps {
		// The first bearer read logs in; every later one is served from the cache.
		if e.bodyBytes, err = c.check(ctx, e.path); err != nil {
			return nil, err
		}
	}
	before := p.Counts()

	fmt.Fprintf(os.Stderr, "benchtable: warm-up, %d alternating rounds\n", opts.warmup)
	if err := c.alternate(ctx, eps, opts.warmup, false); err != nil {
		return nil, err
	}
	fmt.Fprintf(os.Stderr, "benchtable: latency, %d x %d alternating rounds\n", opts.blocks, opts.rounds)
	for range opts.blocks {
		start := make([]int, len(eps))
		for i, e := range eps {
			start[i] = len(e.samples)
		}
		if err := c.alternate(ctx, eps, opts.rounds, true); err != nil {
			return nil, err
		}
		for i, e := range eps {
			e.blockP50 = append(e.blockP50, percentile(e.samples[start[i]:], 50))
		}
	}
	fmt.Fprintf(os.Stderr, "benchtable: throughput, %d clients, %d x %s per endpoint, interleaved\n", opts.clients, opts.windows, opts.window)
	for w := range opts.windows * len(eps) {
		if err := c.saturate(ctx, eps[w%len(eps)], opts.clients, opts.window); err != nil {
			return nil, err
		}
	}
	res.providerCalls = p.Counts().Sub(before).TokenCalls()
	return res, nil
}

// client reads Vault's HTTP API with one http.Client for every endpoint.
type client struct {
	http  *http.Client
	addr  string
	token string
}

func (c *client) do(ctx context.Context, method, path string, body any) (int, []byte, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.addr+path, rd)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("X-Vault-Token", c.token)
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// write POSTs body to path and expects a 2xx answer.
func (c *client) write(ctx context.Context, path string, body any) error {
	status, b, err := c.do(ctx, http.MethodPost, path, body)
	if err != nil {
		return fmt.Errorf("POST %s: %w", path, err)
	}
	if status/100 != 2 {
		return fmt.Errorf("POST %s: HTTP %d %s", path, status, bytes.TrimSpace(b))
	}
	return nil
}

// check reads path once, expects data with an access_token, and returns the
// body's size.
func (c *client) check(ctx context.Context, path string) (int, error) {
	status, b, err := c.do(ctx, http.MethodGet, path, nil)
	if err != nil {
		return 0, fmt.Errorf("GET %s: %w", path, err)
	}
	var out struct {
		Data map[string]any `json:"data"`
	}
	if status != http.StatusOK || json.Unmarshal(b, &out) != nil {
		return 0, fmt.Errorf("GET %s: HTTP %d %s", path, status, bytes.TrimSpace(b))
	}
	if inner, ok := out.Data["data"].(map[string]any); ok { // KV-v2 nests the secret
		out.Data = inner
	}
	if tok, _ := out.Data["access_token"].(string); tok == "" {
		return 0, fmt.Errorf("GET %s: no access_token in %s", path, b)
	}
	return len(b), nil
}

// get reads path and returns how long the whole answer took.
func (c *client) get(ctx context.Context, path string) (time.Duration, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.addr+path, nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("X-Vault-Token", c.token)
	start := time.Now()
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, fmt.Errorf("GET %s: %w", path, err)
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	d := time.Since(start)
	if err != nil {
		return 0, fmt.Errorf("GET %s: %w", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET %s: HTTP %d", path, resp.StatusCode)
	}
	return d, nil
}

// alternate reads every endpoint once per round, one request at a time; each
// round starts with the next endpoint so that none always follows another.
func (c *client) alternate(ctx context.Context, eps []*endpoint, rounds int, record bool) error {
	for r := range rounds {
		for i := range eps {
			e := eps[(r+i)%len(eps)]
			d, err := c.get(ctx, e.path)
			if err != nil {
				return err
			}
			if record {
				e.samples = append(e.samples, d)
			}
		}
	}
	return nil
}

// saturate reads e with n concurrent clients for about d and adds to its
// counts. Requests in flight at the deadline finish and count.
func (c *client) saturate(ctx context.Context, e *endpoint, n int, d time.Duration) error {
	var (
		count    atomic.Int64
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	start := time.Now()
	deadline := start.Add(d)
	for range n {
		wg.Go(func() {
			for time.Now().Before(deadline) {
				if _, err := c.get(ctx, e.path); err != nil {
					errOnce.Do(func() { firstErr = err })
					return
				}
				count.Add(1)
			}
		})
	}
	wg.Wait()
	e.busy += time.Since(start)
	e.requests += count.Load()
	return firstErr
}

// percentile returns the p-th percentile (nearest rank) of samples.
func percentile(samples []time.Duration, p float64) time.Duration {
	if len(samples) == 0 {
		return 0
	}
	s := slices.Clone(samples)
	slices.Sort(s)
	i := int(float64(len(s))*p/100+0.5) - 1
	return s[min(max(i, 0), len(s)-1)]
}

func mean(samples []time.Duration) time.Duration {
	var sum time.Duration
	for _, d := range samples {
		sum += d
	}
	return sum / time.Duration(max(len(samples), 1))
}

// throughput is the endpoint's requests per second under concurrent load.
func (e *endpoint) throughput() float64 {
	if e.busy <= 0 {
		return 0
	}
	return float64(e.requests) / e.busy.Seconds()
}
