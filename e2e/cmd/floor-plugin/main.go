// Command floor-plugin is a secrets engine that does nothing: a read of
// creds/<name> answers constant data shaped like the bearer engine's creds read.
// Built with the same SDK as the product and served the same way
// (plugin.ServeMultiplex), it measures what Vault's external-plugin RPC alone
// costs: the floor that `make bench` compares the bearer engine against.
package main

import (
	"context"
	"os"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/hashicorp/vault/sdk/plugin"
)

func main() {
	if err := plugin.ServeMultiplex(&plugin.ServeOpts{BackendFactoryFunc: factory}); err != nil {
		hclog.New(&hclog.LoggerOptions{}).Error("plugin shutting down", "error", err)
		os.Exit(1)
	}
}

func factory(ctx context.Context, conf *logical.BackendConfig) (logical.Backend, error) {
	b := &framework.Backend{
		Help:        "A do-nothing engine: creds/<name> returns constant data.",
		BackendType: logical.TypeLogical,
		Paths: []*framework.Path{{
			// The same pattern and fields as the bearer engine's creds path, so that
			// routing and field parsing cost the same.
			Pattern: "creds/" + framework.GenericNameRegex("name"),
			Fields: map[string]*framework.FieldSchema{
				"name":    {Type: framework.TypeLowerCaseString, Required: true},
				"min_ttl": {Type: framework.TypeDurationSecond, Query: true},
			},
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.ReadOperation: &framework.PathOperation{Callback: read},
			},
		}},
	}
	if err := b.Setup(ctx, conf); err != nil {
		return nil, err
	}
	return b, nil
}

// accessToken has the length of the e2e provider's access tokens
// (ory_at_<43 chars>.<43 chars>).
const accessToken = "ory_at_floorfloorfloorfloorfloorfloorfloorfloo.rfloorfloorfloorfloorfloorfloorfloorfloorfl"

func read(_ context.Context, _ *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	_ = d.Get("name").(string)
	_ = d.Get("min_ttl").(int)
	return &logical.Response{Data: map[string]any{
		"access_token":    accessToken,
		"token_type":      "Bearer",
		"expires_at":      "2030-01-01T00:00:00Z",
		"expires_in":      int64(3599),
		"ttl":             int64(3539),
		"rotation_period": int64(3600),
	}}, nil
}
