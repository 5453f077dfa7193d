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
// probes begun while it waited: one that timed out fails it, two since
// the last answer that got no answer fail it, any answer says alive.
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
	// Each tick begins a probe whether or not the last one has answered:
	// a call that joined while a probe hung (begun before it waited, so
	// not its judge) is judged by one begun within every of its joining,
	// and fails within every + stallTimeout. Waiting for the hung probe
	// first made that twice stallTimeout (a closing PUT answered after
	// 60 s). On a hung server at most stallTimeout/every probes are in
	// flight at once.
	var probes sync.WaitGroup
	defer func() {
		probes.Wait()
		close(r.exited)
	}()
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
		probes.Add(1)
		go func() {
			defer probes.Done()
			p.judge(ctx, r, n)
		}()
	}
}

// judge runs probe n of r and fails the calls it finds the server hung
// for: those that were waiting when it began.
func (p *prober) judge(ctx context.Context, r *probeRun, n int) {
	err := p.probe(ctx)
	if ctx.Err() != nil {
		return // nobody waits any more
	}
	alive := err == nil || answered(err)
	hung := errors.Is(err, errStalled)
	p.mu.Lock()
	defer p.mu.Unlock()
	for w := range r.waiters {
		if w.joined >= n {
			continue // joined while this probe ran: a later one judges it
		}
		switch {
		case alive:
			w.unanswered = 0
		case hung:
			w.fail(errStalled)
			delete(r.waiters, w)
		default:
			// No answer at all (see watchAlive): twice since the last
			// answer.
			if w.unanswered++; w.unanswered == 2 {
				w.fail(errStalled)
				delete(r.waiters, w)
			}
		}
	}
}
