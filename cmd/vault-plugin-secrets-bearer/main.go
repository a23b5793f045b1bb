// Command vault-plugin-secrets-bearer serves the bearer secrets engine to Vault.
package main

import (
	"os"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/sdk/plugin"

	bearer "github.com/bearer-vault/vault-plugin-secrets-bearer"
)

func main() {
	// Vault 1.12 and later speak plugin protocol 5 with automatic mTLS, so no TLS
	// provider is needed.
	if err := plugin.ServeMultiplex(&plugin.ServeOpts{BackendFactoryFunc: bearer.Factory}); err != nil {
		hclog.New(&hclog.LoggerOptions{}).Error("plugin shutting down", "error", err)
		os.Exit(1)
	}
}
