package authscope

import (
	"context"
	"sync"
)

// TokenRequestsPerClient bounds the token requests of one client address
// the token proxy forwards at once. Each forwarded request holds a
// connection to the token service for as long as it takes to answer, so
// without a bound one client multiplied them at will: against the binary
// with a token service that took 20 s, four HTTP/2 connections of 250
// anonymous token requests each held 1,000 connections to it, and under
// a 512-descriptor limit took every descriptor of the process (515
// answers 502), past oci_fd_reserve, which counts accepted connections
// only. A docker or containerd pull asks for one token at a time per
// repository, so a client near the bound is a crowd behind one address
// or a flood; one past it waits for a turn (TurnWait), then gets 429.
const TokenRequestsPerClient = 8

// clientTurns holds Turns of TokenRequestsPerClient per client key, each
// kept only while a request of that client holds or awaits a turn, so
// the table is as large as the requests in flight.
type clientTurns struct {
	mu    sync.Mutex
	lanes map[string]*clientLane
}

type clientLane struct {
	turns *Turns
	users int // requests holding or awaiting one of turns
}

// take waits for one of key's turns as Turns.Take does and returns its
// release, or *ErrTooManyGuesses with Busy set.
func (c *clientTurns) take(ctx context.Context, key string) (release func(), err error) {
	c.mu.Lock()
	if c.lanes == nil {
		c.lanes = make(map[string]*clientLane)
	}
	lane := c.lanes[key]
	if lane == nil {
		lane = &clientLane{turns: NewTurns(func() int { return TokenRequestsPerClient })}
		c.lanes[key] = lane
	}
	lane.users++
	c.mu.Unlock()
	leave := func() {
		c.mu.Lock()
		if lane.users--; lane.users == 0 {
			delete(c.lanes, key)
		}
		c.mu.Unlock()
	}
	give, err := lane.turns.Take(ctx, nil)
	if err != nil {
		leave()
		return nil, err
	}
	return func() { give(); leave() }, nil
}
