package bearer

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// maxBackgroundRenewals bounds the background renewals running at once, over all
// connections; each connection also keeps within its max_concurrent_requests.
const maxBackgroundRenewals = 64

// background runs the renewals that come due, off the request path and only on a node
// that may write storage. It times them itself (a timer for the next due session);
// Vault's periodic call is the safety net and the start. Each connection has its own
// queue and at most max_concurrent_requests workers, so a provider that hangs holds up
// only its own roles.
type background struct {
	b     *backend
	sched *schedule
	// global bounds the renewals running at once over all connections.
	global chan struct{}

	// mu guards the fields below.
	mu     sync.Mutex
	ctx    context.Context
	cancel context.CancelFunc
	// active: this node may write, so the timer runs.
	active  bool
	stopped bool
	// dispatching: a dispatch runs; again: another was asked for meanwhile.
	dispatching, again bool
	queues             map[string]*connQueue
	// queued holds the roles waiting in a queue or being renewed.
	queued map[string]bool
	// busy counts dispatches and workers running; idle is signalled when it drops to 0.
	busy int
	idle *sync.Cond
	// timer wakes the dispatcher at timerAt.
	timer   func() bool
	timerAt time.Time
	// gen counts stops: a timer armed before one does nothing.
	gen uint64
}

// connQueue is one connection's background work, earliest deadline first: when it
// backs up, the tokens reads are about to stop accepting go first.
type connQueue struct {
	items   dueQueue // at: the deadline
	workers int
}

func newBackground(b *backend) *background {
	bg := &background{
		b: b, sched: newSchedule(), global: make(chan struct{}, maxBackgroundRenewals),
		queues: map[string]*connQueue{}, queued: map[string]bool{},
	}
	bg.idle = sync.NewCond(&bg.mu)
	bg.ctx, bg.cancel = context.WithCancel(context.Background())
	return bg
}

// periodic is Vault's PeriodicFunc: on a node that may write it starts a dispatch of
// the due renewals and returns at once; the renewals run in the background.
func (b *backend) periodic(context.Context, *logical.Request) error {
	if !b.canWrite() {
		b.bg.setActive(false)
		return nil
	}
	b.bg.setActive(true)
	b.bg.kick()
	return nil
}

func (bg *background) setActive(active bool) {
	bg.mu.Lock()
	defer bg.mu.Unlock()
	bg.active = active && !bg.stopped
	if !bg.active {
		bg.disarmLocked()
	}
}

// kick starts a dispatch, or asks the running one to go again.
func (bg *background) kick() {
	bg.mu.Lock()
	defer bg.mu.Unlock()
	if bg.stopped {
		return
	}
	if bg.dispatching {
		bg.again = true
		return
	}
	bg.dispatching = true
	bg.busy++
	go bg.dispatch()
}

// dispatch builds the schedule once, hands the due roles to their connections'
// queues and arms the timer for the next one.
func (bg *background) dispatch() {
	defer bg.done()
	for {
		if err := bg.sched.build(func() (map[string]time.Time, error) { return bg.b.scanDue(bg.ctx) }); err != nil {
			bg.b.Logger().Warn("background renewal could not list the roles", "error", err)
		} else {
			for _, name := range bg.sched.popDue(bg.b.now()) {
				bg.enqueue(name)
			}
		}
		bg.mu.Lock()
		if next := bg.sched.next(); !next.IsZero() && bg.active {
			bg.armLocked(next)
		}
		if !bg.again || bg.stopped {
			bg.dispatching = false
			bg.mu.Unlock()
			return
		}
		bg.again = false
		bg.mu.Unlock()
	}
}

// enqueue puts a due role in its connection's queue and starts a worker there if the
// connection has fewer than max_concurrent_requests.
func (bg *background) enqueue(name string) {
	conn, limit := bg.b.backgroundTarget(bg.ctx, name)
	deadline := bg.b.deadline(name)
	bg.mu.Lock()
	defer bg.mu.Unlock()
	if bg.stopped || bg.queued[name] {
		return
	}
	bg.queued[name] = true
	q := bg.queues[conn]
	if q == nil {
		q = &connQueue{}
		bg.queues[conn] = q
	}
	heap.Push(&q.items, dueItem{name: name, at: deadline})
	// One connection never takes more than half the global bound: a hanging provider
	// leaves the others room.
	if q.workers < min(limit, maxBackgroundRenewals/2) {
		q.workers++
		bg.busy++
		go bg.work(conn, q)
	}
}

// work renews the roles of one connection's queue until it is empty.
func (bg *background) work(conn string, q *connQueue) {
	defer bg.done()
	for {
		bg.mu.Lock()
		if len(q.items) == 0 || bg.stopped {
			q.workers--
			if q.workers == 0 && len(q.items) == 0 && bg.queues[conn] == q {
				delete(bg.queues, conn)
			}
			bg.mu.Unlock()
			return
		}
		name := heap.Pop(&q.items).(dueItem).name
		bg.mu.Unlock()

		select {
		case bg.global <- struct{}{}:
			bg.b.renewInBackground(bg.ctx, name)
			<-bg.global
		case <-bg.ctx.Done():
		}
		bg.mu.Lock()
		delete(bg.queued, name)
		bg.mu.Unlock()
	}
}

func (bg *background) done() {
	bg.mu.Lock()
	defer bg.mu.Unlock()
	bg.busy--
	if bg.busy == 0 {
		bg.idle.Broadcast()
	}
}

// wait returns when no dispatch and no renewal is running (for tests and Clean).
func (bg *background) wait() {
	bg.mu.Lock()
	defer bg.mu.Unlock()
	for bg.busy > 0 {
		bg.idle.Wait()
	}
}

// schedule records when a role is next due (zero: never) and wakes the dispatcher
// earlier if needed.
func (bg *background) schedule(name string, at time.Time) {
	bg.sched.set(name, at)
	if at.IsZero() {
		return
	}
	bg.mu.Lock()
	defer bg.mu.Unlock()
	if bg.active && !bg.stopped && (bg.timer == nil || at.Before(bg.timerAt)) {
		bg.armLocked(at)
	}
}

// touch makes a role due now, so that the background reads it again (another node
// changed it).
func (bg *background) touch(name string) {
	now := bg.b.now()
	if bg.sched.touch(name, now) {
		bg.mu.Lock()
		defer bg.mu.Unlock()
		if bg.active && !bg.stopped && (bg.timer == nil || now.Before(bg.timerAt)) {
			bg.armLocked(now)
		}
	}
}

// armLocked sets the timer to wake the dispatcher at at. The caller holds mu.
func (bg *background) armLocked(at time.Time) {
	bg.disarmLocked()
	bg.timerAt = at
	gen := bg.gen
	bg.timer = bg.b.afterFunc(max(at.Sub(bg.b.now()), 0), func() {
		bg.mu.Lock()
		if bg.gen != gen {
			bg.mu.Unlock()
			return // armed before a stop
		}
		if bg.timerAt.Equal(at) {
			bg.timer = nil // fired: the next schedule arms a new one
		}
		bg.mu.Unlock()
		bg.kick()
	})
}

func (bg *background) disarmLocked() {
	if bg.timer != nil {
		bg.timer()
		bg.timer = nil
	}
}

// goTracked runs f in the background; stop waits for it.
func (bg *background) goTracked(f func(ctx context.Context)) {
	bg.mu.Lock()
	defer bg.mu.Unlock()
	if bg.stopped {
		return
	}
	bg.busy++
	go func() {
		defer bg.done()
		f(bg.ctx)
	}()
}

// stop ends background work: no new renewal starts, and those running finish (each is
// bounded by its connection's request_timeout). The schedule is dropped; a later
// periodic call starts over from storage.
func (bg *background) stop() {
	bg.mu.Lock()
	bg.stopped, bg.active = true, false
	bg.gen++
	bg.disarmLocked()
	bg.cancel()
	bg.mu.Unlock()
	bg.wait()
	bg.sched.reset()
	bg.mu.Lock()
	bg.queues, bg.queued = map[string]*connQueue{}, map[string]bool{}
	bg.ctx, bg.cancel = context.WithCancel(context.Background())
	bg.stopped = false
	bg.mu.Unlock()
}

// backgroundTarget names the connection a role's renewals go to and how many may run
// at once there.
func (b *backend) backgroundTarget(ctx context.Context, name string) (string, int) {
	var conn string
	if v := b.roleState(name).view.Load(); v != nil {
		conn = v.role.Config
	} else if role, err := b.role(ctx, b.storage, name); err == nil && role != nil {
		conn = role.Config
	}
	limit := defaultMaxConcurrentRequests
	if conn == "" {
		return conn, limit
	}
	if _, entry, err := b.connection(ctx, b.storage, conn); err == nil && entry != nil {
		limit = max(entry.MaxConcurrentRequests, 1)
	}
	return conn, limit
}

// deadline is when a role's renewal must be done: when reads stop accepting its token,
// or its refresh token expires; the time it is due when neither is known.
func (b *backend) deadline(name string) time.Time {
	v := b.roleState(name).view.Load()
	t := v.tokens()
	if t == nil {
		return b.now()
	}
	d := t.readableUntil(v.role.MinTTL)
	if !v.served.Load() || t.AccessToken == "" {
		d = time.Time{}
	}
	if !t.RefreshExpiresAt.IsZero() && (d.IsZero() || t.RefreshExpiresAt.Before(d)) {
		d = t.RefreshExpiresAt
	}
	if d.IsZero() {
		return b.now()
	}
	return d
}

// renewInBackground renews one role's session if it is due.
func (b *backend) renewInBackground(ctx context.Context, name string) {
	if ctx.Err() != nil {
		return
	}
	res, err := b.renewFor(ctx, b.storage, b.roleState(name), renewOptions{background: true})
	var uerr *userError
	var perr *providerError
	switch {
	case err == nil && res.how == answeredRenewed:
		b.metrics.background(backgroundRenewed)
	case err == nil && res.how == answeredStale:
		b.metrics.background(backgroundFailed)
		// Served the old token without a new one (a mark not written, the account
		// record unreadable): unless the renewal scheduled its next look, try again.
		if b.bg.sched.setIfAbsent(name, b.now().Add(time.Minute)) {
			b.bg.schedule(name, b.now().Add(time.Minute))
		}
	case err == nil, errors.As(err, &uerr):
		// Not due after all, or the role (or its connection) is gone.
		b.metrics.background(backgroundSkipped)
	case errors.As(err, &perr):
		b.metrics.background(backgroundFailed)
		b.Logger().Warn("background renewal failed", "role", name, "error", err)
	default:
		b.metrics.background(backgroundFailed)
		// Storage failed: try again in a minute.
		b.Logger().Warn("background renewal failed", "role", name, "error", err)
		b.bg.schedule(name, b.now().Add(time.Minute))
	}
}

// scanDue reads every role once to build the schedule. Only a failure to list the
// roles fails the build; a role that cannot be read is tried alone a minute later.
func (b *backend) scanDue(ctx context.Context) (map[string]time.Time, error) {
	names, err := b.storage.List(ctx, rolePrefix)
	if err != nil {
		return nil, fmt.Errorf("listing roles: %w", err)
	}
	due := make(map[string]time.Time, len(names))
	now := b.now()
	for _, name := range names {
		at, err := b.roleDue(ctx, name)
		if err != nil {
			b.Logger().Warn("background renewal could not load the role", "role", name, "error", err)
			due[name] = now.Add(time.Minute)
			continue
		}
		if !at.IsZero() {
			due[name] = at
		}
	}
	return due, nil
}

// roleDue is when a role is due, from storage.
func (b *backend) roleDue(ctx context.Context, name string) (time.Time, error) {
	role, err := b.role(ctx, b.storage, name)
	if err != nil || role == nil {
		return time.Time{}, err
	}
	sess, _, err := readSession(ctx, b.storage, name)
	if err != nil {
		return time.Time{}, err
	}
	served := false
	if v := b.roleState(name).view.Load(); v != nil {
		served = v.served.Load()
	}
	return dueTime(name, role, sess, served), nil
}
