package emulator

import (
	"bytes"
	"context"
	"net/http"
	"sync/atomic"
	"time"
)

// WebhookConfig says where and how a WebhookQueue delivers.
type WebhookConfig struct {
	URL      string        // empty disables delivery
	Sync     bool          // deliver inside Enqueue instead of in the background
	Attempts int           // per body; 0 means 5
	Backoff  time.Duration // first retry delay, doubling up to 5s; 0 means 50ms
	Client   *http.Client  // nil means a 10s-timeout client
	// Header sets the provider's headers (content type, user agent,
	// signature) on each attempt; it is called anew for every POST.
	Header func(h http.Header, body []byte)
}

// DeliveryStats counts webhook deliveries. An emulator converts it to its
// own exported type with the same fields.
type DeliveryStats struct {
	Attempts  int64 // POSTs sent
	Delivered int64 // bodies answered 2xx
	Failed    int64 // bodies given up after every retry
	Pending   int64 // bodies queued or being retried
}

// WebhookQueue POSTs webhook bodies, retrying each with backoff until it is
// answered 2xx or its attempts run out, at most 8 at a time.
type WebhookQueue struct {
	cfg     WebhookConfig
	sem     chan struct{}
	closing context.Context
	stop    context.CancelFunc

	attempts, delivered, failed, pending atomic.Int64
}

// NewWebhookQueue returns a queue delivering as cfg says, defaults filled in.
func NewWebhookQueue(cfg WebhookConfig) *WebhookQueue {
	if cfg.Attempts <= 0 {
		cfg.Attempts = 5
	}
	if cfg.Backoff <= 0 {
		cfg.Backoff = 50 * time.Millisecond
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{Timeout: 10 * time.Second}
	}
	q := &WebhookQueue{cfg: cfg, sem: make(chan struct{}, 8)}
	q.closing, q.stop = context.WithCancel(context.Background())
	return q
}

// Enqueue delivers body, in the background unless cfg.Sync; it does nothing
// when no URL is configured.
func (q *WebhookQueue) Enqueue(body []byte) {
	if q.cfg.URL == "" {
		return
	}
	q.pending.Add(1)
	if q.cfg.Sync {
		q.send(body)
		return
	}
	go func() {
		q.sem <- struct{}{}
		defer func() { <-q.sem }()
		q.send(body)
	}()
}

// send POSTs body until it is answered 2xx or the attempts run out.
func (q *WebhookQueue) send(body []byte) {
	defer q.pending.Add(-1)
	backoff := q.cfg.Backoff
	for attempt := 0; attempt < q.cfg.Attempts; attempt++ {
		if attempt > 0 {
			select {
			case <-q.closing.Done():
				q.failed.Add(1)
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 5*time.Second)
		}
		if q.post(body) {
			q.delivered.Add(1)
			return
		}
	}
	q.failed.Add(1)
}

func (q *WebhookQueue) post(body []byte) bool {
	q.attempts.Add(1)
	req, err := http.NewRequestWithContext(q.closing, http.MethodPost, q.cfg.URL, bytes.NewReader(body))
	if err != nil {
		return false
	}
	if q.cfg.Header != nil {
		q.cfg.Header(req.Header, body)
	}
	resp, err := q.cfg.Client.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode >= 200 && resp.StatusCode < 300
}

// Stats reports deliveries so far.
func (q *WebhookQueue) Stats() DeliveryStats {
	return DeliveryStats{Attempts: q.attempts.Load(), Delivered: q.delivered.Load(),
		Failed: q.failed.Load(), Pending: q.pending.Load()}
}

// Wait blocks until no delivery is pending or ctx is done.
func (q *WebhookQueue) Wait(ctx context.Context) error {
	t := time.NewTicker(2 * time.Millisecond)
	defer t.Stop()
	for q.pending.Load() > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

// Close abandons pending retries and waits for in-flight deliveries.
func (q *WebhookQueue) Close() {
	q.stop()
	_ = q.Wait(context.Background())
}
