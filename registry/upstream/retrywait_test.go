package upstream

import (
	"testing"
	"time"
)

// TestRetryWaitManyAttempts: the backoff doubles RetryDelay per attempt
// up to MaxRetryWait. max_retries has no upper bound in a mirror's config
// (the zot adapter takes up to 100): past 37 attempts with the default
// 100ms, the doubling overflowed int64, and a negative wait made the
// jitter's rand.Int64N panic (a fill or a sync runs in a goroutine of
// its own: the whole process died), or a zero wait retried at once.
func TestRetryWaitManyAttempts(t *testing.T) {
	for _, c := range []*Client{
		{delay: 100 * time.Millisecond, maxWait: 5 * time.Second},
		{delay: time.Nanosecond, maxWait: time.Millisecond},
		{delay: time.Duration(1) << 62, maxWait: time.Duration(1) << 62},
	} {
		for attempt := 1; attempt <= 200; attempt++ {
			func() {
				defer func() {
					if p := recover(); p != nil {
						t.Fatalf("delay %s, attempt %d: panic %v", c.delay, attempt, p)
					}
				}()
				w, ok := c.retryWait(0, attempt)
				if !ok || w <= 0 || w > c.maxWait {
					t.Fatalf("delay %s, attempt %d: wait %s, %v; want in (0, %s]", c.delay, attempt, w, ok, c.maxWait)
				}
			}()
		}
	}
}
