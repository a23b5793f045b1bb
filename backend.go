// Package bearer is a Vault secrets engine that keeps an OAuth2 account's username and
// password in Vault and hands out bearer tokens obtained with the password grant and
// renewed with rotating refresh tokens.
package bearer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

const (
	// configPrefix holds connections: provider endpoint and account credentials.
	configPrefix = "config/"
	// rolePrefix holds roles: what a consumer may read.
	rolePrefix = "roles/"
	// tokenPrefix holds each role's session: its tokens and failure record.
	tokenPrefix = "tokens/"
	// accountPrefix holds each connection's safety state: the provider's rejection of
	// its credentials, and a spare session.
	accountPrefix = "accounts/"
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
	b.storage = conf.StorageView
	return b, nil
}

type backend struct {
	*framework.Backend

	// now, sleep and afterFunc are the clock; tests replace them.
	now       func() time.Time
	sleep     func(context.Context, time.Duration) error
	afterFunc func(d time.Duration, f func()) (stop func() bool)

	// storage is the mount's storage, for the background work outside requests.
	storage logical.Storage

	// roles maps a role name to its *roleState, conns a connection name to its
	// *connState (state.go).
	roles sync.Map
	conns sync.Map

	// bg runs the background renewals.
	bg *background
	// metrics counts what the engine does, per node.
	metrics *metrics
}

func newBackend() *backend {
	b := &backend{
		now:   func() time.Time { return time.Now().UTC() },
		sleep: sleepContext,
		afterFunc: func(d time.Duration, f func()) func() bool {
			return time.AfterFunc(d, f).Stop
		},
		metrics: newMetrics(),
	}
	b.bg = newBackground(b)
	b.Backend = &framework.Backend{
		Help:        strings.TrimSpace(backendHelp),
		BackendType: logical.TypeLogical,
		PathsSpecial: &logical.Paths{
			SealWrapStorage: []string{configPrefix, tokenPrefix, accountPrefix},
		},
		Paths: framework.PathAppend(
			pathConfig(b),
			pathRoles(b),
			pathCreds(b),
			pathMetrics(b),
			pathHealth(b),
		),
		Invalidate:     b.invalidate,
		Clean:          b.clean,
		PeriodicFunc:   b.periodic,
		RunningVersion: Version,
	}
	return b
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

func getJSON(ctx context.Context, s logical.Storage, key string, v any) (bool, error) {
	entry, err := s.Get(ctx, key)
	if err != nil {
		return false, fmt.Errorf("reading %s: %w", key, err)
	}
	if entry == nil {
		return false, nil
	}
	if err := json.Unmarshal(entry.Value, v); err != nil {
		return false, fmt.Errorf("decoding %s: %w", key, err)
	}
	return true, nil
}

func putJSON(ctx context.Context, s logical.Storage, key string, v any) error {
	entry, err := logical.StorageEntryJSON(key, v)
	if err != nil {
		return fmt.Errorf("encoding %s: %w", key, err)
	}
	if err := s.Put(ctx, entry); err != nil {
		if isReadOnlyErr(err) {
			// Bare, so that Vault sees it and runs the request on a node that can write.
			return logical.ErrReadOnly
		}
		return fmt.Errorf("writing %s: %w", key, err)
	}
	return nil
}
