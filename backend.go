// Package bearer is a Vault secrets engine that keeps an OAuth2 account's username and
// password in Vault and hands out bearer tokens obtained with the password grant and
// renewed with rotating refresh tokens.
package bearer

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/helper/locksutil"
	"github.com/hashicorp/vault/sdk/logical"
)

const (
	// configPrefix holds connections: provider endpoint and account credentials.
	configPrefix = "config/"
	// rolePrefix holds roles: what a consumer may read.
	rolePrefix = "roles/"
	// tokenPrefix holds each role's current access and refresh tokens and failure state.
	tokenPrefix = "tokens/"
	// operationPrefix prefixes every OpenAPI operation ID.
	operationPrefix = "bearer"
)

// Version is the plugin's semantic version, set at build time with
// -ldflags "-X github.com/bearer-vault/vault-plugin-secrets-bearer.Version=vX.Y.Z".
var Version = "v0.0.0-dev"

var _ logical.Factory = Factory

// Factory builds the backend for Vault.
func Factory(ctx context.Context, conf *logical.BackendConfig) (logical.Backend, error) {
	if conf == nil {
		return nil, errors.New("configuration passed into backend is nil")
	}
	b := newBackend()
	if err := b.Setup(ctx, conf); err != nil {
		return nil, err
	}
	return b, nil
}

type backend struct {
	*framework.Backend

	// now and sleep are the clock; tests replace them.
	now   func() time.Time
	sleep func(context.Context, time.Duration) error

	// roleLocks serialise token requests and state changes per role name.
	roleLocks []*locksutil.LockEntry

	// cache maps a role name to its *roleCache: what the fast path reads without locks.
	cache sync.Map
	// conns maps a connection name to its *connEntry as stored.
	conns sync.Map
	// clients maps a connection name to the *tokenClient built for it.
	clients sync.Map
	// pending maps a role name to a *tokenEntry that could not be persisted yet.
	// Read and written only under the role's lock.
	pending sync.Map
	// attempts maps a role name to a *attemptState (rate limit of failing requests).
	// Read and written only under the role's lock.
	attempts sync.Map
	// rejections maps a connection name to a *connRejection: its credentials were
	// rejected, so no role using it logs in before the backoff passes.
	rejections sync.Map

	// invalidateMu makes "check the generation, then cache" atomic against Invalidate.
	invalidateMu sync.Mutex
	// generation counts invalidations, so a load that raced one is not cached.
	generation atomic.Uint64

	// sched is the in-memory schedule of background renewals.
	sched *schedule
}

func newBackend() *backend {
	b := &backend{
		now:       func() time.Time { return time.Now().UTC() },
		sleep:     sleepContext,
		roleLocks: locksutil.CreateLocks(),
		sched:     newSchedule(),
	}
	b.Backend = &framework.Backend{
		Help:        strings.TrimSpace(backendHelp),
		BackendType: logical.TypeLogical,
		PathsSpecial: &logical.Paths{
			SealWrapStorage: []string{configPrefix, rolePrefix, tokenPrefix},
		},
		Paths: framework.PathAppend(
			pathConfig(b),
			pathRoles(b),
			pathCreds(b),
		),
		Invalidate:     b.invalidate,
		Clean:          b.clean,
		PeriodicFunc:   b.periodic,
		RunningVersion: Version,
	}
	return b
}

// invalidate drops the cached item whose storage key another node changed.
func (b *backend) invalidate(_ context.Context, key string) {
	b.invalidateMu.Lock()
	defer b.invalidateMu.Unlock()
	b.generation.Add(1)
	switch {
	case strings.HasPrefix(key, rolePrefix):
		name := strings.TrimPrefix(key, rolePrefix)
		b.cache.Delete(name)
		b.sched.touch(name, b.now())
	case strings.HasPrefix(key, tokenPrefix):
		name := strings.TrimPrefix(key, tokenPrefix)
		b.cache.Delete(name)
		b.sched.touch(name, b.now())
	case strings.HasPrefix(key, configPrefix):
		name := strings.TrimPrefix(key, configPrefix)
		b.dropConnection(name)
	}
}

// dropConnection forgets a connection and the cached state of every role using it.
// The caller holds invalidateMu.
func (b *backend) dropConnection(name string) {
	b.conns.Delete(name)
	b.clients.Delete(name)
	b.cache.Range(func(key, value any) bool {
		if value.(*roleCache).role.Config == name {
			b.cache.Delete(key)
		}
		return true
	})
}

// clean drops every cache and the schedule when Vault unmounts or reloads the backend.
func (b *backend) clean(context.Context) {
	b.invalidateMu.Lock()
	defer b.invalidateMu.Unlock()
	b.generation.Add(1)
	b.cache.Clear()
	b.conns.Clear()
	b.clients.Range(func(_, v any) bool {
		v.(*tokenClient).http.CloseIdleConnections()
		return true
	})
	b.clients.Clear()
	b.sched.reset()
}

// cacheIfCurrent stores value under key in m unless an invalidation happened since gen
// was read: then storage may already hold something newer than value.
func (b *backend) cacheIfCurrent(m *sync.Map, key string, value any, gen uint64) {
	b.invalidateMu.Lock()
	defer b.invalidateMu.Unlock()
	if b.generation.Load() == gen {
		m.Store(key, value)
	}
}

// itemOperations are the operations on a connection or a role. Writes and deletes are
// always run on the active node; reads are served where they arrive.
func itemOperations(write, read, del framework.OperationFunc) map[logical.Operation]framework.OperationHandler {
	forwarded := func(f framework.OperationFunc) *framework.PathOperation {
		return &framework.PathOperation{Callback: f, ForwardPerformanceStandby: true, ForwardPerformanceSecondary: true}
	}
	return map[logical.Operation]framework.OperationHandler{
		logical.CreateOperation: forwarded(write),
		logical.UpdateOperation: forwarded(write),
		logical.ReadOperation:   &framework.PathOperation{Callback: read},
		logical.DeleteOperation: forwarded(del),
	}
}

// canWrite reports whether this node may write storage (and so may call the provider).
func (b *backend) canWrite() bool {
	return b.WriteSafeReplicationState()
}

// isReadOnlyErr matches read-only storage errors; they cross the plugin's gRPC boundary
// as plain strings, so errors.Is cannot be used.
func isReadOnlyErr(err error) bool {
	return err != nil && (errors.Is(err, logical.ErrReadOnly) || strings.Contains(err.Error(), logical.ErrReadOnly.Error()))
}

const backendHelp = `
The bearer secrets engine keeps an OAuth2 account's username and password in Vault
and hands out bearer access tokens. It logs in with the password grant, renews with
rotating single-use refresh tokens and persists both tokens in Vault storage.

Write a connection at config/<name>, a role at roles/<name> that uses it, and read
creds/<role> to get a valid access token.
`
