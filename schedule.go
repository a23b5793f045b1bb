package bearer

import (
	"container/heap"
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/vault/sdk/helper/locksutil"
	"github.com/hashicorp/vault/sdk/logical"
)

const (
	// backgroundLead is how much earlier than min_ttl the background renews a token that
	// is being read: Vault runs the periodic function about once a minute, so a token
	// is renewed between 30 and 90 seconds before reads would have to wait for it.
	backgroundLead = 90 * time.Second
	// maxKeepAliveLead bounds how long before its expiry an idle refresh token is used.
	maxKeepAliveLead = 24 * time.Hour
)

// dueTime is when the background should next look at a role's session; zero means
// never (no session, or background refresh off). It is the earlier of the access
// token's renewal point and the idle refresh token's keep-alive point.
func dueTime(role *roleEntry, st *tokenEntry, now time.Time) time.Time {
	if !role.BackgroundRefresh || st == nil || st.AccessToken == "" {
		return time.Time{}
	}
	due := renewalPoint(role, st)
	if keep := keepAlivePoint(st); !keep.IsZero() && keep.Before(due) {
		due = keep
	}
	return due
}

// renewalPoint is when a token that is being read is renewed in the background.
func renewalPoint(role *roleEntry, st *tokenEntry) time.Time {
	lead := min(st.effectiveMinTTL(role.MinTTL)+backgroundLead, st.lifetime()/2)
	return st.ExpiresAt.Add(-lead)
}

// keepAlivePoint is when an idle session's refresh token is used to keep it alive: a
// quarter of its lifetime (at most a day) before it expires. Zero when its expiry is
// unknown or there is no refresh token.
func keepAlivePoint(st *tokenEntry) time.Time {
	if st.RefreshToken == "" || st.RefreshExpiresAt.IsZero() {
		return time.Time{}
	}
	lead := min(st.RefreshExpiresAt.Sub(st.ObtainedAt)/4, maxKeepAliveLead)
	return st.RefreshExpiresAt.Add(-lead)
}

// periodic is Vault's PeriodicFunc: it renews the sessions that are due. It does work
// only where this node may write storage; its cost grows with the number of sessions
// due, not with the number of roles.
func (b *backend) periodic(ctx context.Context, req *logical.Request) error {
	if !b.canWrite() {
		return nil
	}
	if err := b.sched.build(func() (map[string]time.Time, error) { return b.scanDue(ctx, req.Storage) }); err != nil {
		return err
	}
	for _, name := range b.sched.popDue(b.now()) {
		if err := ctx.Err(); err != nil {
			b.sched.set(name, b.now())
			continue
		}
		b.background(ctx, req.Storage, name)
	}
	return nil
}

// scanDue reads every role once to build the schedule. Only a failure to list the
// roles fails the build.
func (b *backend) scanDue(ctx context.Context, s logical.Storage) (map[string]time.Time, error) {
	names, err := s.List(ctx, rolePrefix)
	if err != nil {
		return nil, fmt.Errorf("listing roles: %w", err)
	}
	due := make(map[string]time.Time, len(names))
	now := b.now()
	for _, name := range names {
		lock := locksutil.LockForKey(b.roleLocks, name)
		lock.Lock()
		rc, err := b.loadState(ctx, s, name)
		lock.Unlock()
		if err != nil {
			// One unreadable role must not stop the background for the others, nor make
			// every run scan again: it is tried alone at the next run.
			b.Logger().Warn("background renewal could not load the role", "role", name, "error", err)
			due[name] = now.Add(time.Minute)
			continue
		}
		if rc != nil {
			if at := dueTime(rc.role, rc.token, now); !at.IsZero() {
				due[name] = at
			}
		}
	}
	return due, nil
}

// background renews one role's session if it is due: a token being read at its
// renewal point, an idle one at its refresh token's keep-alive point.
func (b *backend) background(ctx context.Context, s logical.Storage, name string) {
	// A renewal, once started, runs to its end and is saved (see getToken).
	ctx = context.WithoutCancel(ctx)
	lock := locksutil.LockForKey(b.roleLocks, name)
	lock.Lock()
	defer lock.Unlock()

	served := false
	if cached, ok := b.cacheLoaded(name); ok {
		served = cached.served.Load()
	}
	rc, err := b.loadState(ctx, s, name)
	if err != nil {
		b.Logger().Warn("background renewal could not load the role", "role", name, "error", err)
		b.sched.set(name, b.now().Add(time.Minute))
		return
	}
	if rc == nil || rc.token == nil || rc.token.AccessToken == "" || !rc.role.BackgroundRefresh {
		return
	}
	now := b.now()
	if rc.unsaved {
		if err := b.persist(ctx, s, name, rc.role, rc.token); err != nil {
			return
		}
	}
	st := rc.token
	keep := keepAlivePoint(st)
	renewAt := renewalPoint(rc.role, st)
	switch {
	case served && !now.Before(renewAt):
	case !keep.IsZero() && !now.Before(keep):
	default:
		// Not due: an idle token waits for its refresh token's keep-alive point.
		next := keep
		if served && (keep.IsZero() || renewAt.Before(keep)) {
			next = renewAt
		}
		b.sched.set(name, next)
		return
	}
	if _, _, err := b.renew(ctx, s, name, rc); err != nil {
		b.Logger().Warn("background renewal failed", "role", name, "error", err)
		b.sched.set(name, b.now().Add(time.Minute))
	}
}

// markServed records that a role's current token was handed out. The first time, it
// makes sure the background renews the token by its renewal point: while nobody read
// it, the schedule may have put it off until its refresh token's keep-alive point.
func (b *backend) markServed(name string, rc *roleCache) {
	if rc.served.Load() || rc.served.Swap(true) {
		return
	}
	if rc.role.BackgroundRefresh {
		b.sched.advance(name, renewalPoint(rc.role, rc.token))
	}
}

// schedule is the in-memory set of due times of background work, in a min-heap.
type schedule struct {
	// mu guards every field.
	mu    sync.Mutex
	built bool
	due   map[string]time.Time
	// queue may hold stale items; an item counts only while due[name] equals its time.
	queue dueQueue
}

func newSchedule() *schedule {
	return &schedule{due: map[string]time.Time{}}
}

// set records when a role is next due; a zero time removes it.
func (s *schedule) set(name string, at time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.setLocked(name, at)
}

func (s *schedule) setLocked(name string, at time.Time) {
	if at.IsZero() {
		delete(s.due, name)
		return
	}
	if cur, ok := s.due[name]; ok && cur.Equal(at) {
		return
	}
	s.due[name] = at
	heap.Push(&s.queue, dueItem{name: name, at: at})
	if len(s.queue) > 2*len(s.due)+64 {
		s.compact()
	}
}

// advance makes a role due at at, unless it is due earlier already. Like touch, it
// acts only on a built schedule: building computes every due time anyway, and a node
// that never runs the background (a standby) keeps no schedule.
func (s *schedule) advance(name string, at time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if cur, ok := s.due[name]; !s.built || (ok && !cur.After(at)) {
		return
	}
	s.setLocked(name, at)
}

// touch makes a role due now, so that the next run re-reads it; used when another
// node changed it.
func (s *schedule) touch(name string, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.built {
		s.setLocked(name, now)
	}
}

// build fills the schedule once from storage; roles set since keep their time.
func (s *schedule) build(scan func() (map[string]time.Time, error)) error {
	s.mu.Lock()
	built := s.built
	s.mu.Unlock()
	if built {
		return nil
	}
	due, err := scan()
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.built {
		return nil
	}
	for name, at := range due {
		if _, ok := s.due[name]; !ok {
			s.setLocked(name, at)
		}
	}
	s.built = true
	return nil
}

// popDue removes and returns the roles due at or before now.
func (s *schedule) popDue(now time.Time) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var names []string
	for len(s.queue) > 0 && !s.queue[0].at.After(now) {
		item := heap.Pop(&s.queue).(dueItem)
		if at, ok := s.due[item.name]; ok && at.Equal(item.at) {
			delete(s.due, item.name)
			names = append(names, item.name)
		}
	}
	return names
}

// len is the number of roles scheduled.
func (s *schedule) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.due)
}

func (s *schedule) reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.built = false
	s.due = map[string]time.Time{}
	s.queue = nil
}

// compact drops stale items. The caller holds mu.
func (s *schedule) compact() {
	q := make(dueQueue, 0, len(s.due))
	for name, at := range s.due {
		q = append(q, dueItem{name: name, at: at})
	}
	heap.Init(&q)
	s.queue = q
}

type dueItem struct {
	name string
	at   time.Time
}

type dueQueue []dueItem

func (q dueQueue) Len() int           { return len(q) }
func (q dueQueue) Less(i, j int) bool { return q[i].at.Before(q[j].at) }
func (q dueQueue) Swap(i, j int)      { q[i], q[j] = q[j], q[i] }
func (q *dueQueue) Push(x any)        { *q = append(*q, x.(dueItem)) }
func (q *dueQueue) Pop() any {
	old := *q
	item := old[len(old)-1]
	*q = old[:len(old)-1]
	return item
}
