package bearer

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
)

// scrape reads metrics?format=prometheus as Prometheus would and parses it.
func (e *testEnv) scrape(tb testing.TB) (string, map[string]*dto.MetricFamily) {
	tb.Helper()
	status, ct, body := e.raw(tb, "metrics", map[string]any{"format": "prometheus"})
	if status != http.StatusOK {
		tb.Fatalf("metrics status %v, want 200: %s", status, body)
	}
	if ct != "text/plain; version=0.0.4; charset=utf-8" {
		tb.Errorf("metrics content type %q", ct)
	}
	problems, err := promlint.New(bytes.NewReader(body)).Lint()
	if err != nil || len(problems) > 0 {
		tb.Errorf("promlint: %v %v", err, problems)
	}
	var parser expfmt.TextParser
	families, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		tb.Fatalf("parsing the metrics: %v\n%s", err, body)
	}
	return string(body), families
}

// raw reads path, whose answer has its own HTTP status, content type and body.
func (e *testEnv) raw(tb testing.TB, path string, data map[string]any) (status int, contentType string, body []byte) {
	tb.Helper()
	resp, err := e.request(tb, logical.ReadOperation, path, data)
	if err != nil || resp == nil {
		tb.Fatalf("read %s: %v %#v", path, err, resp)
	}
	status, _ = resp.Data[logical.HTTPStatusCode].(int)
	contentType, _ = resp.Data[logical.HTTPContentType].(string)
	body, _ = resp.Data[logical.HTTPRawBody].([]byte)
	if status == 0 || body == nil {
		tb.Fatalf("read %s: not a raw answer: %#v", path, resp)
	}
	return status, contentType, body
}

// metricsJSON reads metrics in its default form, as Vault would encode it.
func (e *testEnv) metricsJSON(tb testing.TB) (string, map[string][]jsonSample) {
	tb.Helper()
	resp := e.mustOK(tb, logical.ReadOperation, "metrics", nil)
	text := respText(resp)
	var data map[string][]jsonSample
	raw, _ := json.Marshal(resp.Data)
	if err := json.Unmarshal(raw, &data); err != nil {
		tb.Fatalf("metrics JSON: %v\n%s", err, raw)
	}
	return text, data
}

type jsonSample struct {
	Labels  map[string]string `json:"labels"`
	Value   *float64          `json:"value"`
	Count   *uint64           `json:"count"`
	Sum     *float64          `json:"sum"`
	Buckets []struct {
		LE    float64 `json:"le"`
		Count uint64  `json:"count"`
	} `json:"buckets"`
}

// labelsText is labels as name="value" pairs, sorted.
func labelsText(labels map[string]string) string {
	var pairs []string
	for k, v := range labels {
		pairs = append(pairs, fmt.Sprintf("%s=%q", k, v))
	}
	sort.Strings(pairs)
	return strings.Join(pairs, ",")
}

// sample is the value of the series name{labels} (a histogram's: its count), and
// whether it exists.
func sample(families map[string]*dto.MetricFamily, name, labels string) (float64, bool) {
	f := families[name]
	for _, m := range f.GetMetric() {
		got := map[string]string{}
		for _, l := range m.GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		if labelsText(got) != labels {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue(), true
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), true
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount()), true
		}
	}
	return 0, false
}

// jsonValue is sample for the JSON form.
func jsonValue(data map[string][]jsonSample, name, labels string) (float64, bool) {
	for _, s := range data[name] {
		if labelsText(s.Labels) != labels {
			continue
		}
		switch {
		case s.Value != nil:
			return *s.Value, true
		case s.Count != nil:
			return float64(*s.Count), true
		}
	}
	return 0, false
}

// TestMetrics follows one role through a login, a cached read, a background renewal,
// a renewal in a read, a stale answer and a rejected password, and reads the metrics in both forms
// after each: the counters and gauges say what happened, and no secret or token
// appears in them.
func TestMetrics(t *testing.T) {
	env := getTestBackend(t)
	p := withMindbaz(t, env, 0, map[string]any{"client_secret": testSecret}, nil)
	env.runPeriodic(t) // the background runs from here on
	var tokens []string
	read := func() {
		t.Helper()
		tokens = append(tokens, env.readCreds(t, "app").Data["access_token"].(string))
	}
	type want map[string]float64 // "name{labels}" -> value; -1: absent
	check := func(step string, w want) {
		t.Helper()
		text, families := env.scrape(t)
		jtext, data := env.metricsJSON(t)
		for _, out := range []string{text, jtext} {
			assertNoSecrets(t, step+": metrics", out, append(append([]string{testPassword, testSecret}, p.refreshTokens()...), tokens...)...)
		}
		for series, v := range w {
			name, labels, _ := strings.Cut(strings.TrimSuffix(series, "}"), "{")
			got, ok := sample(families, name, labels)
			jgot, jok := jsonValue(data, name, labels)
			switch {
			case v < 0 && (ok || jok):
				t.Errorf("%s: %s = %v (JSON %v), want absent", step, series, got, jgot)
			case v >= 0 && (!ok || !jok):
				t.Errorf("%s: %s absent (prometheus %v, JSON %v)\n%s", step, series, ok, jok, text)
			case v >= 0 && (got != v || jgot != v):
				t.Errorf("%s: %s = %v (JSON %v), want %v", step, series, got, jgot, v)
			}
		}
	}
	const (
		login     = `bearer_token_requests_total{connection="conn",grant="password",outcome="success"}`
		rejected  = `bearer_token_requests_total{connection="conn",grant="password",outcome="rejected"}`
		refreshed = `bearer_token_requests_total{connection="conn",grant="refresh_token",outcome="success"}`
		latency   = `bearer_provider_request_duration_seconds{connection="conn"}`
		cached    = `bearer_creds_reads_total{answer="cached",role="app"}`
		renewed   = `bearer_creds_reads_total{answer="renewed",role="app"}`
		failed    = `bearer_creds_reads_total{answer="failed",role="app"}`
		stale     = `bearer_creds_reads_total{answer="stale",role="app"}`
		transient = `bearer_token_requests_total{connection="conn",grant="refresh_token",outcome="transient"}`
		bgRenewed = `bearer_background_renewals_total{outcome="renewed"}`
		accessL   = `bearer_access_token_remaining_seconds{role="app"}`
		refreshL  = `bearer_refresh_token_remaining_seconds{role="app"}`
		failures  = `bearer_role_consecutive_failures{role="app"}`
		connRej   = `bearer_connection_credentials_rejected{connection="conn"}`
		nextLogin = `bearer_connection_next_login_timestamp_seconds{connection="conn"}`
	)
	check("before any read", want{login: -1, cached: -1, accessL: -1, bgRenewed: 0})

	read() // the password login
	check("after the login", want{
		login: 1, rejected: 0, refreshed: 0, latency: 1, renewed: 1, cached: 0, failed: 0,
		accessL: p.accessTTL.Seconds(), refreshL: (168 * time.Hour).Seconds(), failures: 0, connRej: 0, nextLogin: -1,
	})

	env.clock.Add(time.Minute)
	ops := env.storage.ops()
	read()
	if got := env.storage.ops() - ops; got != 0 {
		t.Errorf("a cached read, counted, made %d storage operations", got)
	}
	ops = env.storage.ops()
	check("after a cached read", want{cached: 1, renewed: 1, login: 1, accessL: (p.accessTTL - time.Minute).Seconds()})
	if got := env.storage.ops() - ops; got != 0 {
		t.Errorf("reading the metrics made %d storage operations", got)
	}

	// The background renews before the token expires.
	env.clock.Add(p.accessTTL - time.Minute)
	check("after a background renewal", want{bgRenewed: 1, refreshed: 1, latency: 2, cached: 1, renewed: 1})

	// A read that finds its token expired renews it itself (no background meanwhile).
	env.b.bg.setActive(false)
	env.clock.Add(p.accessTTL + time.Second)
	read()
	check("after a renewal in a read", want{refreshed: 2, renewed: 2, accessL: p.accessTTL.Seconds()})

	// The provider fails while the token is still valid: a forced renewal serves it.
	p.setHook(func(w http.ResponseWriter, r *http.Request, form url.Values) bool {
		oauthError(w, http.StatusServiceUnavailable, "temporarily_unavailable", "")
		return true
	})
	env.mustOK(t, logical.UpdateOperation, "creds/app", nil)
	check("after a stale answer", want{stale: 1, transient: 1, refreshed: 2, failures: 1})
	p.setHook(nil)
	env.clock.Add(time.Minute) // past the retry window

	// The password changes at the provider and the session is lost: the login is
	// rejected.
	p.setPassword("changed-at-the-provider")
	env.mustOK(t, logical.DeleteOperation, "creds/app", nil)
	env.mustFail(t, logical.ReadOperation, "creds/app", nil)
	next := env.clock.Now().Add(rejectionBackoff)
	check("after a rejected password", want{
		rejected: 1, login: 1, failed: 1, renewed: 2, stale: 1, accessL: -1, failures: 2, // the failure record outlives the session
		connRej: 1, nextLogin: float64(next.Unix()),
	})

	// A read of a role that does not exist makes no series.
	env.mustFail(t, logical.ReadOperation, "creds/nobody", nil)
	_, families := env.scrape(t)
	if _, ok := sample(families, "bearer_creds_reads_total", `answer="failed",role="nobody"`); ok {
		t.Error("a read of an unknown role made a series")
	}
}

// TestMetrics_Outcomes maps each kind of failed token request to its outcome label.
func TestMetrics_Outcomes(t *testing.T) {
	for kind, want := range map[failureKind]string{
		failTransient: outcomeTransient, failRejected: outcomeRejected, failAmbiguous: outcomeAmbiguous,
		failInvalid: outcomeInvalid, failPermanent: outcomeInvalid,
	} {
		if got := outcomeOf(&grantError{kind: kind}); got != want {
			t.Errorf("kind %d: outcome %q, want %q", kind, got, want)
		}
	}
	if got := outcomeOf(nil); got != outcomeSuccess {
		t.Errorf("no error: outcome %q", got)
	}
}

// TestMetrics_ReadAllocatesNothing: counting a read of a role seen before adds no
// allocation to the cached read path.
func TestMetrics_ReadAllocatesNothing(t *testing.T) {
	m := newMetrics()
	m.read("app", answeredCached)
	if n := testing.AllocsPerRun(1000, func() { m.read("app", answeredCached) }); n != 0 {
		t.Errorf("a counted read allocates %v times", n)
	}
}

// TestMetrics_BadFormat: an unknown format is the caller's mistake.
func TestMetrics_BadFormat(t *testing.T) {
	env := getTestBackend(t)
	msg := env.mustFail(t, logical.ReadOperation, "metrics", map[string]any{"format": "xml"})
	if !strings.Contains(msg, `format "xml" is not known`) {
		t.Errorf("format=xml: %s", msg)
	}
}
