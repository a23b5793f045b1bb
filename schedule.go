package bearer

import (
	"container/heap"
	"encoding/binary"
	"hash/fnv"
	"sync"
	"time"
)

const (
	// The background renews a token that is being read at a jittered point of the time
	// reads accept it (from when it was obtained until it has min_ttl left): between
	// leadMin and leadMax of that span before its end, so that roles created together do
	// not renew in the same second and a backlog has time to drain.
	leadMin = 0.10
	leadMax = 0.25
	// maxKeepAliveLead bounds how long before its expiry an idle refresh token is used.
	maxKeepAliveLead = 24 * time.Hour
	// unknownKeepAlive is how often an idle session whose refresh token's lifetime is
	// unknown is refreshed: providers (Keycloak's offline sessions) still end idle ones.
	unknownKeepAlive = 24 * time.Hour
	// keepAliveJitter spreads the keep-alive refreshes of sessions obtained together.
	keepAliveJitter = time.Hour
)

// dueTime is when the background should next look at a role's session; zero means
// never (no session, or background refresh off). For a token being read (served) it is
// the earlier of the renewal point and the keep-alive point, for an idle one the
// keep-alive point; never before the end of a retry window.
func dueTime(name string, role *roleEntry, sess *sessionEntry, served bool) time.Time {
	if !role.BackgroundRefresh || sess == nil {
		return time.Time{}
	}
	t := &sess.Tokens
	var due time.Time
	if served && t.AccessToken != "" {
		due = renewalPoint(name, role, t)
	}
	if keep := keepAlivePoint(name, t); !keep.IsZero() && (due.IsZero() || keep.Before(due)) {
		due = keep
	}
	if !due.IsZero() && sess.Failure.NextAttemptAt.After(due) {
		due = sess.Failure.NextAttemptAt
	}
	return due
}

// renewalPoint is when a token that is being read is renewed in the background: always
// strictly before reads stop accepting it, whatever min_ttl.
func renewalPoint(name string, role *roleEntry, t *sessionTokens) time.Time {
	end := t.readableUntil(role.MinTTL)
	span := end.Sub(t.ObtainedAt)
	if span <= 0 {
		return t.ObtainedAt
	}
	lead := time.Duration(float64(span) * (leadMin + (leadMax-leadMin)*jitter(name, t.ObtainedAt)))
	return end.Add(-max(lead, time.Millisecond))
}

// keepAlivePoint is when an idle session's refresh token is used to keep it alive: a
// quarter of its lifetime (at most a day) before it expires, or a day after it was
// obtained when its lifetime is unknown. Zero when there is no refresh token.
func keepAlivePoint(name string, t *sessionTokens) time.Time {
	if t.RefreshToken == "" {
		return time.Time{}
	}
	spread := time.Duration(float64(keepAliveJitter) * jitter(name, t.ObtainedAt))
	if t.RefreshExpiresAt.IsZero() {
		return t.ObtainedAt.Add(unknownKeepAlive - spread)
	}
	lead := min(t.RefreshExpiresAt.Sub(t.ObtainedAt)/4, maxKeepAliveLead)
	return t.RefreshExpiresAt.Add(-lead - min(spread, lead/4))
}

// jitter is a number in [0, 1) fixed for a role's token: the same every time it is
// computed, different across roles and tokens.
func jitter(name string, obtained time.Time) float64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(name))
	var buf [8]byte
	binary.LittleEndian.PutUint64(buf[:], uint64(obtained.UnixNano()))
	_, _ = h.Write(buf[:])
	return float64(h.Sum64()>>11) / (1 << 53)
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

// setIfAbsent records when a role is next due unless it is scheduled already.
func (s *schedule) setIfAbsent(name string, at time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.due[name]; ok {
		return false
	}
	s.setLocked(name, at)
	return true
}

// touch makes a role due now, so that the next run re-reads it; used when another
// node changed it. It acts only on a built schedule (a node that never runs the
// background keeps none), and reports whether it did.
func (s *schedule) touch(name string, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.built {
		s.setLocked(name, now)
	}
	return s.built
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

// next is the earliest due time; zero when nothing is scheduled.
func (s *schedule) next() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.queue) > 0 {
		item := s.queue[0]
		if at, ok := s.due[item.name]; ok && at.Equal(item.at) {
			return item.at
		}
		heap.Pop(&s.queue)
	}
	return time.Time{}
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
