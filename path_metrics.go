package bearer

import (
	"bytes"
	"context"
	"fmt"
	"net/http"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
)

// prometheusFormat is the text exposition format Prometheus scrapes.
var prometheusFormat = expfmt.NewFormat(expfmt.TypeTextPlain)

func pathMetrics(b *backend) []*framework.Path {
	b.metrics.watch(b)
	return []*framework.Path{
		{
			Pattern: "metrics",
			DisplayAttrs: &framework.DisplayAttributes{
				OperationPrefix: operationPrefix,
				OperationSuffix: "metrics",
			},
			Fields: map[string]*framework.FieldSchema{
				"format": {
					Type:          framework.TypeString,
					Description:   `"prometheus" for Prometheus' text exposition format, "json" (the default) for JSON.`,
					Query:         true,
					Default:       "json",
					AllowedValues: []any{"json", "prometheus"},
				},
			},
			Operations: map[logical.Operation]framework.OperationHandler{
				// Not forwarded: each node answers with its own counters.
				logical.ReadOperation: &framework.PathOperation{
					Callback: b.pathMetricsRead,
					Summary:  "The engine's counters and gauges on this node.",
				},
			},
			HelpSynopsis:    pathMetricsHelpSyn,
			HelpDescription: pathMetricsHelpDesc,
		},
	}
}

func (b *backend) pathMetricsRead(_ context.Context, _ *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	format := d.Get("format").(string)
	if format != "" && format != "json" && format != "prometheus" {
		return logical.ErrorResponse("format %q is not known: use prometheus, or json (the default)", format), nil
	}
	families, err := b.metrics.gather()
	if err != nil {
		return nil, fmt.Errorf("gathering the metrics: %w", err)
	}
	if format != "prometheus" {
		return &logical.Response{Data: metricsData(families)}, nil
	}
	var buf bytes.Buffer
	enc := expfmt.NewEncoder(&buf, prometheusFormat)
	for _, f := range families {
		if err := enc.Encode(f); err != nil {
			return nil, fmt.Errorf("encoding the metrics: %w", err)
		}
	}
	return &logical.Response{Data: map[string]any{
		logical.HTTPStatusCode:  http.StatusOK,
		logical.HTTPContentType: string(prometheusFormat),
		logical.HTTPRawBody:     buf.Bytes(),
	}}, nil
}

// metricsData is the JSON form of the metrics: each series name maps to its samples,
// each with its labels and its value (a histogram: count, sum and cumulative buckets).
func metricsData(families []*dto.MetricFamily) map[string]any {
	data := make(map[string]any, len(families))
	for _, f := range families {
		samples := make([]map[string]any, 0, len(f.GetMetric()))
		for _, m := range f.GetMetric() {
			labels := make(map[string]string, len(m.GetLabel()))
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			s := map[string]any{"labels": labels}
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				s["value"] = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				s["value"] = m.GetGauge().GetValue()
			case dto.MetricType_HISTOGRAM:
				h := m.GetHistogram()
				buckets := make([]map[string]any, 0, len(h.GetBucket()))
				for _, bk := range h.GetBucket() {
					buckets = append(buckets, map[string]any{"le": bk.GetUpperBound(), "count": bk.GetCumulativeCount()})
				}
				s["count"], s["sum"], s["buckets"] = h.GetSampleCount(), h.GetSampleSum(), buckets
			}
			samples = append(samples, s)
		}
		data[f.GetName()] = samples
	}
	return data
}

const pathMetricsHelpSyn = `The engine's counters and gauges on this node, as JSON or in Prometheus' text format.`

const pathMetricsHelpDesc = `
Read returns what the engine counts, JSON by default, in Prometheus' text exposition
format with format=prometheus (scrape it with metrics_path /v1/<mount>/metrics and
params format=[prometheus], with a Vault token that may read this path). Vault does
not gather an external plugin's telemetry, so this is the only place to see them.

Counters live in memory on each Vault node and start at 0 when the plugin process
starts. The path is not forwarded: a node that serves reads itself (a performance
standby) answers with its own counters, so scrape every node:
  bearer_token_requests_total{connection,grant,outcome}  token requests to the
      provider; outcome is success, rejected, transient, ambiguous or invalid
  bearer_provider_request_duration_seconds{connection}   provider latency histogram
  bearer_creds_reads_total{role,answer}                  creds reads; answer is cached,
      renewed, stale (served after a failed renewal) or failed
  bearer_background_renewals_total{outcome}              renewed, failed or skipped

Gauges, computed from this node's memory when the path is read (no storage read; a
role or connection the node has not loaded is absent):
  bearer_access_token_remaining_seconds{role}
  bearer_refresh_token_remaining_seconds{role}           when its lifetime is known
  bearer_role_consecutive_failures{role}
  bearer_connection_credentials_rejected{connection}     1 while rejected, else 0
  bearer_connection_next_login_timestamp_seconds{connection}  while rejected

No label or value holds a secret or a token.
`
