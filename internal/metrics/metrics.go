// Package metrics defines every Prometheus series syncd exports, on a
// registry of its own, with labelled series initialised at start-up so that
// dashboards and alerts never meet a missing series.
package metrics

import (
	"net/http"
	"runtime"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/syncd/syncd/internal/version"
)

// Known label values. Unknown values are folded into Other so that a
// provider inventing event types cannot grow the series count without bound.
var (
	Providers = []string{"stripe", "orb"}

	// Webhook outcomes.
	OutcomeOK          = "ok"
	OutcomeIgnored     = "ignored"
	OutcomeBadSig      = "bad_signature"
	OutcomeBadRequest  = "bad_request"
	OutcomeTooLarge    = "too_large"
	OutcomeMethod      = "method_not_allowed"
	OutcomeUnavailable = "unavailable"
	Outcomes           = []string{OutcomeOK, OutcomeIgnored, OutcomeBadSig, OutcomeBadRequest, OutcomeTooLarge, OutcomeMethod, OutcomeUnavailable}

	Tables = []string{
		"stripe_customer_balance_transactions", "orb_customer_balance_transactions",
		"stripe_events", "orb_events",
	}

	// Source endpoints and the status codes initialised for each.
	Endpoints = map[string][]string{
		"stripe": {"customers", "customer", "balance_transactions", "events", "accounts"},
		"orb":    {"customers", "customer", "balance_transactions"},
	}
	Codes = []string{"200", "400", "401", "403", "404", "429", "500", "503", "error"}

	// ThrottleReasons are the reason labels of syncd_source_throttled_total:
	// Stripe's Stripe-Rate-Limited-Reason values, lock_timeout (an object
	// lock, not a limit) and unknown (a 429 naming no limit). Orb names none
	// and documents one limit: its 429s are global-rate.
	ThrottleReasons = []string{"global-rate", "endpoint-rate", "global-concurrency", "endpoint-concurrency",
		"resource-specific", "lock_timeout", "unknown"}

	EventTypes = map[string][]string{
		"stripe": {
			"customer.created", "customer.updated", "customer.deleted",
			"invoice.finalized", "invoice.paid", "invoice.voided", "invoice.marked_uncollectible", "invoice.updated",
			"credit_note.created", "credit_note.updated", "credit_note.voided",
			"checkout.session.completed", "customer_balance_transaction", Other,
		},
		"orb": {"customer.balance_transaction_created", Other},
	}
)

// Other is the label value for anything not in the known sets.
const Other = "other"

// Metrics holds syncd's collectors.
type Metrics struct {
	Registry *prometheus.Registry

	WebhookRequests *prometheus.CounterVec
	WebhookAck      prometheus.Histogram
	Events          *prometheus.CounterVec
	SinkRows        *prometheus.CounterVec
	SinkFlush       prometheus.Histogram
	SinkQueueRows   prometheus.Gauge
	SinkErrors      prometheus.Counter
	SourceRequests  *prometheus.CounterVec
	SourceSeconds   *prometheus.HistogramVec
	// SourceThrottled counts 429s by the limit they name; SourceLimit is
	// the limit this process applies (its fleet share, lowered by 429s).
	SourceThrottled  *prometheus.CounterVec
	SourceLimit      *prometheus.GaugeVec
	RefreshQueue     prometheus.Gauge
	BackfillCustomer *prometheus.CounterVec
	SyncLag          *prometheus.GaugeVec

	BackfillDeleted *prometheus.CounterVec // customers a backfill found deleted (404) after listing them
	// BackfillBalances is how long a backfill took to read every customer
	// whose balance is non-zero (its first phase), set when it has.
	BackfillBalances *prometheus.GaugeVec
	RefreshSkipped   prometheus.Counter // trigger events stored, not refreshed: their account is outside --stripe-accounts

	// Read from ClickHouse by every serve process, so each reports the
	// fleet's figure: alert on max() across pods.
	RefreshOwed       prometheus.Gauge
	RefreshOwedOldest prometheus.Gauge
	FleetMembers      prometheus.Gauge
	RefreshParked     *prometheus.CounterVec
	RecoveredRows     *prometheus.CounterVec
}

// New registers every series on a fresh registry.
func New() *Metrics {
	r := prometheus.NewRegistry()
	m := &Metrics{
		Registry: r,
		WebhookRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "syncd_webhook_requests_total", Help: "Webhook requests by provider and outcome.",
		}, []string{"provider", "outcome"}),
		WebhookAck: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "syncd_webhook_ack_seconds", Help: "Time from a webhook request's arrival to its answer.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
		Events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "syncd_events_total", Help: "Verified webhook events by provider and type.",
		}, []string{"provider", "type"}),
		SinkRows: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "syncd_sink_rows_total", Help: "Rows committed to ClickHouse by table.",
		}, []string{"table"}),
		SinkFlush: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "syncd_sink_flush_seconds", Help: "Duration of one ClickHouse insert.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 12),
		}),
		SinkQueueRows: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "syncd_sink_queue_rows", Help: "Rows waiting to be written to ClickHouse.",
		}),
		SinkErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "syncd_sink_errors_total", Help: "Failed ClickHouse inserts (each is retried).",
		}),
		SourceRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "syncd_source_requests_total", Help: "Requests to a source API by provider, endpoint and HTTP status (error: no response).",
		}, []string{"provider", "endpoint", "code"}),
		SourceSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "syncd_source_request_seconds", Help: "Source API request duration.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 12),
		}, []string{"provider"}),
		RefreshQueue: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "syncd_refresh_queue_depth", Help: "Customers waiting for a refresh.",
		}),
		BackfillCustomer: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "syncd_backfill_customers_total", Help: "Customers fully read by backfill or verify.",
		}, []string{"provider"}),
		SyncLag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "syncd_sync_lag_seconds", Help: "Age of the oldest change not yet mirrored (0 when caught up).",
		}, []string{"provider"}),
	}
	m.SourceThrottled = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "syncd_source_throttled_total", Help: "Source API answers 429 by provider and reason (Stripe-Rate-Limited-Reason; lock_timeout: an object lock; unknown: none given).",
	}, []string{"provider", "reason"})
	m.SourceLimit = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "syncd_source_rate_limit", Help: "Limit this process applies to a source API budget now (global and endpoint: requests/s; concurrency: requests in flight; 0: none, or the source is unused): its fleet share, lowered after 429s.",
	}, []string{"provider", "limit"})
	m.RefreshOwed = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "syncd_refresh_owed_customers", Help: "Customers whose acknowledged trigger events await a refresh, across every syncd process sharing the database (from ClickHouse).",
	})
	m.RefreshOwedOldest = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "syncd_refresh_owed_oldest_seconds", Help: "Age of the oldest acknowledged trigger event still awaiting its refresh, across the fleet (0 when none).",
	})
	m.FleetMembers = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "syncd_fleet_members", Help: "Live syncd processes sharing this database, as this one sees them.",
	})
	m.RefreshParked = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "syncd_refresh_parked_total", Help: "Refreshes given up on a permanent API error (401, 403), by status.",
	}, []string{"code"})
	m.BackfillDeleted = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "syncd_backfill_deleted_customers_total", Help: "Customers a backfill listed and then found deleted (404): skipped, their rows kept.",
	}, []string{"provider"})
	m.BackfillBalances = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "syncd_backfill_balances_seconds", Help: "Seconds the running backfill took to read every customer with a non-zero balance, its first phase (set when that phase ends).",
	}, []string{"provider"})
	m.RefreshSkipped = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "syncd_refresh_skipped_events_total", Help: "Trigger events stored but not refreshed: their account is outside --stripe-accounts.",
	})
	m.RecoveredRows = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "syncd_recovered_rows_total", Help: "Transaction rows of acknowledged object events written again from the intake log because they were missing.",
	}, []string{"provider"})
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "syncd_build_info", Help: "Build identity; always 1.",
	}, []string{"version", "commit", "goversion"})
	build.WithLabelValues(version.Version, version.CommitOrVCS(), runtime.Version()).Set(1)

	r.MustRegister(m.WebhookRequests, m.WebhookAck, m.Events, m.SinkRows, m.SinkFlush, m.SinkQueueRows,
		m.SinkErrors, m.SourceRequests, m.SourceSeconds, m.RefreshQueue, m.BackfillCustomer, m.SyncLag, build,
		m.RefreshOwed, m.RefreshOwedOldest, m.FleetMembers, m.RefreshParked, m.RecoveredRows, m.BackfillDeleted, m.RefreshSkipped,
		m.SourceThrottled, m.SourceLimit, m.BackfillBalances,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	for _, p := range Providers {
		for _, o := range Outcomes {
			m.WebhookRequests.WithLabelValues(p, o)
		}
		for _, t := range EventTypes[p] {
			m.Events.WithLabelValues(p, t)
		}
		for _, e := range Endpoints[p] {
			for _, c := range Codes {
				m.SourceRequests.WithLabelValues(p, e, c)
			}
		}
		m.SourceSeconds.WithLabelValues(p)
		for _, r := range ThrottleReasons {
			m.SourceThrottled.WithLabelValues(p, r)
		}
		for _, l := range []string{"global", "endpoint", "concurrency"} {
			m.SourceLimit.WithLabelValues(p, l)
		}
		m.BackfillCustomer.WithLabelValues(p)
		m.BackfillDeleted.WithLabelValues(p)
		m.BackfillBalances.WithLabelValues(p)
		m.RecoveredRows.WithLabelValues(p)
		m.SyncLag.WithLabelValues(p)
	}
	for _, c := range []string{"401", "403"} {
		m.RefreshParked.WithLabelValues(c)
	}
	for _, t := range Tables {
		m.SinkRows.WithLabelValues(t)
	}
	return m
}

// Handler serves the registry in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry})
}

// EventType folds t into the known set of provider's event types.
func EventType(provider, t string) string {
	for _, k := range EventTypes[provider] {
		if k == t {
			return t
		}
	}
	return Other
}

// Code is the code label for an HTTP status, or for no response at all.
func Code(status int) string {
	if status == 0 {
		return "error"
	}
	return strconv.Itoa(status)
}
