package bearer

import "time"

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

// metrics counts what the engine does, per node.
type metrics struct{}

func newMetrics() *metrics { return &metrics{} }

// observer returns what a connection's client tells of each token request: its grant,
// its error (nil on success) and how long the provider took.
func (m *metrics) observer(conn string) func(grant string, err error, latency time.Duration) {
	return nil
}

// read counts a creds read by how it was answered.
func (m *metrics) read(role, how string) {}

// background counts a background renewal by its outcome.
func (m *metrics) background(outcome string) {}
