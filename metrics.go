package bearer

import (
	"errors"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// How a creds read was answered.
const (
	answeredCached  = "cached"
	answeredRenewed = "renewed"
	answeredStale   = "stale"
	answeredFailed  = "failed"
)

// Outcomes of a background renewal.
const (
	backgroundRenewed = "renewed"
	backgroundFailed  = "failed"
	backgroundSkipped = "skipped" // not due after all, or held back by a rejection
)

// Outcomes of a token request to a provider, by the grantError's kind.
const (
	outcomeSuccess   = "success"
	outcomeRejected  = "rejected"  // failRejected
	outcomeTransient = "transient" // failTransient
	outcomeAmbiguous = "ambiguous" // failAmbiguous
	outcomeInvalid   = "invalid"   // failInvalid, failPermanent: fix the configuration
)

// perNode ends the help text of every counter: Vault does not gather an external
// plugin's telemetry, each node counts its own.
const perNode = " Counted in memory by this Vault node since the plugin process started."

// providerBuckets are the upper bounds of the provider latency histogram, in seconds;
// request_timeout is 10 s by default.
var providerBuckets = []float64{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}

// metrics counts what the engine does, per node, in a Prometheus registry of the
// plugin's own. The per-role and per-connection gauges are computed when it is read
// (stateCollector).
type metrics struct {
	registry *prometheus.Registry
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	reads    *prometheus.CounterVec
	// renewals holds the background renewal counters by outcome; read-only after
	// newMetrics.
	renewals map[string]prometheus.Counter
	// readers maps a role name to its *roleReads.
	readers sync.Map
}

// roleReads are a role's read counters, resolved once, so that a read adds to an
// atomic counter without hashing labels or allocating.
type roleReads struct {
	cached, renewed, stale, failed prometheus.Counter
}

func newMetrics() *metrics {
	m := &metrics{
		registry: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bearer_token_requests_total",
			Help: "Token requests sent to the provider, by connection, grant (password, client_credentials, refresh_token) and outcome (success; rejected: the provider refused the grant; transient: not processed, may be retried; ambiguous: may have been processed, no usable answer; invalid: not sent for a reason of configuration)." + perNode,
		}, []string{"connection", "grant", "outcome"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "bearer_provider_request_duration_seconds",
			Help:    "Time the provider took to answer a token request, by connection." + perNode,
			Buckets: providerBuckets,
		}, []string{"connection"}),
		reads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bearer_creds_reads_total",
			Help: "Reads of creds/<role>, by role and how they were answered (cached: from memory; renewed: the read renewed the token; stale: served the current token after a failed renewal; failed: an error)." + perNode,
		}, []string{"role", "answer"}),
		renewals: map[string]prometheus.Counter{},
	}
	background := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "bearer_background_renewals_total",
		Help: "Background renewals, by outcome (renewed; failed; skipped: not due after all, or held back by a rejection)." + perNode,
	}, []string{"outcome"})
	for _, o := range []string{backgroundRenewed, backgroundFailed, backgroundSkipped} {
		m.renewals[o] = background.WithLabelValues(o)
	}
	m.registry.MustRegister(m.requests, m.latency, m.reads, background)
	return m
}

// watch adds the gauges computed from b's memory at each read of the metrics.
func (m *metrics) watch(b *backend) {
	m.registry.MustRegister(stateCollector{b})
}

// gather returns the metric families, sorted by name.
func (m *metrics) gather() ([]*dto.MetricFamily, error) {
	return m.registry.Gather()
}

// observer returns what a connection's client tells of each token request: its grant,
// its error (nil on success) and how long the provider took.
func (m *metrics) observer(conn string, entry *connEntry) func(grant string, err error, latency time.Duration) {
	// Every series of the connection's grants exists from its first client on, at 0,
	// so that a first rejection is an increase too.
	grants := []string{grantRefresh}
	if g := entry.grantType(); g != grantRefresh {
		grants = append(grants, g)
	}
	for _, grant := range grants {
		for _, o := range []string{outcomeSuccess, outcomeRejected, outcomeTransient, outcomeAmbiguous, outcomeInvalid} {
			m.requests.WithLabelValues(conn, grant, o)
		}
	}
	hist := m.latency.WithLabelValues(conn)
	return func(grant string, err error, latency time.Duration) {
		m.requests.WithLabelValues(conn, grant, outcomeOf(err)).Inc()
		hist.Observe(latency.Seconds())
	}
}

// outcomeOf is a token request's outcome label.
func outcomeOf(err error) string {
	if err == nil {
		return outcomeSuccess
	}
	var ge *grantError
	if !errors.As(err, &ge) {
		return outcomeTransient
	}
	switch ge.kind {
	case failRejected:
		return outcomeRejected
	case failAmbiguous:
		return outcomeAmbiguous
	case failInvalid, failPermanent:
		return outcomeInvalid
	}
	return outcomeTransient
}

// read counts a creds read of role by how it was answered.
func (m *metrics) read(role, how string) {
	m.roleReads(role).count(how)
}

// readOf counts a creds read of a role whose state the read found: its counters are
// resolved once and kept on the state, so a cached read adds to an atomic counter.
func (m *metrics) readOf(rs *roleState, how string) {
	r := rs.reads.Load()
	if r == nil {
		r = m.roleReads(rs.name)
		rs.reads.Store(r)
	}
	r.count(how)
}

// roleReads returns a role's read counters, resolved on first use.
func (m *metrics) roleReads(role string) *roleReads {
	if v, ok := m.readers.Load(role); ok {
		return v.(*roleReads)
	}
	v, _ := m.readers.LoadOrStore(role, &roleReads{
		cached:  m.reads.WithLabelValues(role, answeredCached),
		renewed: m.reads.WithLabelValues(role, answeredRenewed),
		stale:   m.reads.WithLabelValues(role, answeredStale),
		failed:  m.reads.WithLabelValues(role, answeredFailed),
	})
	return v.(*roleReads)
}

func (r *roleReads) count(how string) {
	switch how {
	case answeredCached:
		r.cached.Inc()
	case answeredRenewed:
		r.renewed.Inc()
	case answeredStale:
		r.stale.Inc()
	case answeredFailed:
		r.failed.Inc()
	}
}

// background counts a background renewal by its outcome.
func (m *metrics) background(outcome string) {
	if c := m.renewals[outcome]; c != nil {
		c.Inc()
	}
}

// The gauges computed from memory when the metrics are read.
var (
	accessLeftDesc = prometheus.NewDesc("bearer_access_token_remaining_seconds",
		"Seconds until the role's access token expires (0 once expired), as this node holds it in memory; absent when the node holds no access token of the role.",
		[]string{"role"}, nil)
	refreshLeftDesc = prometheus.NewDesc("bearer_refresh_token_remaining_seconds",
		"Seconds until the role's refresh token expires (0 once expired), as this node holds it in memory; absent when the node holds no refresh token of the role or its lifetime is unknown.",
		[]string{"role"}, nil)
	failuresDesc = prometheus.NewDesc("bearer_role_consecutive_failures",
		"Consecutive failed token attempts of the role (0 after a success), as this node holds it in memory.",
		[]string{"role"}, nil)
	rejectedDesc = prometheus.NewDesc("bearer_connection_credentials_rejected",
		"1 when the provider rejected the connection's current credentials (no login is tried before bearer_connection_next_login_timestamp_seconds; write a new password or client secret), else 0; absent when this node has not loaded the connection's state.",
		[]string{"connection"}, nil)
	nextLoginDesc = prometheus.NewDesc("bearer_connection_next_login_timestamp_seconds",
		"When a password login of the connection is next allowed after a rejection of its credentials (Unix seconds); present only while the rejection applies.",
		[]string{"connection"}, nil)
)

// stateCollector reports what b holds in memory: per role the time left on its
// tokens and its consecutive failures, per connection whether its credentials are
// rejected. It reads no storage: what this node has not loaded is absent.
type stateCollector struct{ b *backend }

func (c stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{accessLeftDesc, refreshLeftDesc, failuresDesc, rejectedDesc, nextLoginDesc} {
		ch <- d
	}
}

func (c stateCollector) Collect(ch chan<- prometheus.Metric) {
	now := c.b.now()
	gauge := func(d *prometheus.Desc, v float64, label string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, label)
	}
	secondsUntil := func(t time.Time) float64 { return max(t.Sub(now).Seconds(), 0) }
	c.b.roles.Range(func(_, v any) bool {
		rs := v.(*roleState)
		view := rs.view.Load()
		if view == nil {
			return true
		}
		failures := 0
		if s := view.session; s != nil {
			failures = s.Failure.Failures
			if t := &s.Tokens; t.AccessToken != "" {
				gauge(accessLeftDesc, secondsUntil(t.ExpiresAt), rs.name)
			}
			if t := &s.Tokens; t.RefreshToken != "" && t.RefreshSentAt.IsZero() && !t.RefreshExpiresAt.IsZero() {
				gauge(refreshLeftDesc, secondsUntil(t.RefreshExpiresAt), rs.name)
			}
		}
		gauge(failuresDesc, float64(failures), rs.name)
		return true
	})
	c.b.conns.Range(func(_, v any) bool {
		cs := v.(*connState)
		cs.mu.Lock()
		entry, account, local := cs.entry, cs.account, cs.localRejection
		cs.mu.Unlock()
		if entry == nil || account == nil {
			return true
		}
		rejected := 0.0
		if rej := newerRejection(account.Rejection, local); rej.appliesTo(entry) {
			rejected = 1
			gauge(nextLoginDesc, float64(rej.NextLoginAt.Unix()), cs.name)
		}
		gauge(rejectedDesc, rejected, cs.name)
		return true
	})
}
