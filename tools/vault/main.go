// Command vault builds the pinned Vault release that the end-to-end suite
// and `make dev` use when no vault binary is on PATH.
package main

import (
	"os"

	"github.com/hashicorp/vault/command"
)

func main() {
	os.Exit(command.Run(os.Args[1:]))
}
