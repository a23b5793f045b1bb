package bearer

import "time"

// How a creds read was answered.
const (
	answeredCached  = "cached"
	answeredRenewed = "renewed"
	answeredStale   = "stale"
	answeredFailed  = "failed"
)

// metrics counts what the engine does, per node.
type metrics struct{}

func newMetrics() *metrics { return &metrics{} }

// observer returns what a connection's client tells of each token request.
func (m *metrics) observer(conn string) func(grant string, err error, latency time.Duration) {
	return nil
}

// read counts a creds read by how it was answered.
func (m *metrics) read(role, how string) {}
