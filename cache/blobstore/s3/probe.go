package s3

import (
	"context"
	"errors"
	"sync"
	"time"
)

// prober asks one client's server whether it is alive on behalf of every
// call waiting on it at once (watchAlive). Each call probing on its own
// made the server's load of probes grow with the calls it was slow to
// answer: 20 slow PUTs, 160 HeadBuckets in 4 s. One probe per probeEvery
// serves them all, with each call's outcome judged as before by the
// probes begun while it waited: one that timed out fails it, two in a
// row that got no answer fail it, any answer says alive.
type prober struct {
	probe func(context.Context) error

	mu  sync.Mutex
	run *probeRun // nil while no call waits
}

// probeRun is the probing for one stretch of calls waiting: it ends when
// the last of them leaves.
type probeRun struct {
	cancel  context.CancelFunc
	exited  chan struct{}
	waiters map[*probeWaiter]struct{}
	begun   int // probes begun so far
}

type probeWaiter struct {
	joined     int // probes begun before it joined
	unanswered int // probes in a row begun since that got no answer
	fail       context.CancelCauseFunc
}

func newProber(probe func(context.Context) error) *prober { return &prober{probe: probe} }

// join adds a waiting call, failed through fail (with errStalled) if the
// server turns out hung; the call calls leave when it ends. leave
// returns once no probe is left running for nobody: when the last call
// leaves, the probe in flight is cancelled and waited for.
func (p *prober) join(fail context.CancelCauseFunc) (leave func()) {
	p.mu.Lock()
	r := p.run
	if r == nil {
		ctx, cancel := context.WithCancel(context.Background())
		r = &probeRun{cancel: cancel, exited: make(chan struct{}), waiters: map[*probeWaiter]struct{}{}}
		p.run = r
		go p.loop(ctx, r, probeEvery())
	}
	w := &probeWaiter{joined: r.begun, fail: fail}
	r.waiters[w] = struct{}{}
	p.mu.Unlock()
	return func() {
		p.mu.Lock()
		delete(r.waiters, w)
		last := len(r.waiters) == 0 && p.run == r
		if last {
			p.run = nil
		}
		p.mu.Unlock()
		if last {
			r.cancel()
			<-r.exited
		}
	}
}

func (p *prober) loop(ctx context.Context, r *probeRun, every time.Duration) {
	defer close(r.exited)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		p.mu.Lock()
		r.begun++
		n := r.begun
		p.mu.Unlock()
		err := p.probe(ctx)
		if ctx.Err() != nil {
			return // nobody waits any more
		}
		alive := err == nil || answered(err)
		hung := errors.Is(err, errStalled)
		p.mu.Lock()
		for w := range r.waiters {
			if w.joined >= n {
				continue // joined while this probe ran: it judges the next
			}
			switch {
			case alive:
				w.unanswered = 0
			case hung:
				w.fail(errStalled)
				delete(r.waiters, w)
			default:
				// No answer at all (see watchAlive): twice in a row.
				if w.unanswered++; w.unanswered == 2 {
					w.fail(errStalled)
					delete(r.waiters, w)
				}
			}
		}
		p.mu.Unlock()
	}
}
