# vault-plugin-secrets-bearer
PLUGIN_NAME    := vault-plugin-secrets-bearer
VERSION        ?= v0.1.0
MODULE         := github.com/bearer-vault/vault-plugin-secrets-bearer
LDFLAGS        := -s -w -X $(MODULE).Version=$(VERSION)
BIN_DIR        := bin
GOFUMPT        := mvdan.cc/gofumpt@v0.12.0
STATICCHECK    := honnef.co/go/tools/cmd/staticcheck@v0.8.2
FUZZTIME       ?= 60s

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  %-13s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: build
build: ## Build the plugin binary into bin/
	CGO_ENABLED=0 go build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN_DIR)/$(PLUGIN_NAME) ./cmd/$(PLUGIN_NAME)

.PHONY: release
release: ## Reproducible binaries for linux and darwin (amd64, arm64) in dist/, SHA256SUMS, register commands (VERSION=vX.Y.Z required)
	@[ "$(origin VERSION)" != file ] || { echo "make release: give the version, e.g. make release VERSION=v0.2.0" >&2; exit 2; }
	./scripts/release.sh $(VERSION)

.PHONY: test
test: unit e2e ## Everything that proves it works: unit tests with -race, then the real-Vault end-to-end suite

.PHONY: unit
unit: ## Unit tests with the race detector (fuzz seed corpora included)
	go test -race -count=1 ./...

.PHONY: e2e
e2e: ## End-to-end suite: real Vault, real plugin binary, fosite provider, Prometheus (builds Vault, installs Prometheus if needed)
	cd e2e && E2E_INSTALL_PROMETHEUS=$${E2E_INSTALL_PROMETHEUS:-1} go test -count=1 -timeout 30m ./...

.PHONY: bench
bench: ## Performance figures as one table: backend benchmarks and the real-Vault comparison (BENCH_README=1: also into README.md)
	cd e2e && go run ./cmd/benchtable $(if $(BENCH_README),-readme ../README.md)

.PHONY: bench-readme
bench-readme: ## make bench, writing the table into README.md between the bench markers
	@$(MAKE) --no-print-directory bench BENCH_README=1

.PHONY: fuzz
fuzz: ## Run each fuzz target for FUZZTIME (default 60s)
	go test -run '^$$' -fuzz '^FuzzParseTokenResponse$$' -fuzztime $(FUZZTIME) .
	go test -run '^$$' -fuzz '^FuzzExpiry$$' -fuzztime $(FUZZTIME) .

.PHONY: dev
dev: ## Build, start a demo provider and a dev Vault with the plugin, read bearer/creds/demo
	./scripts/dev.sh

.PHONY: fmt
fmt: ## Format the code with gofumpt (plugin and e2e module)
	go run $(GOFUMPT) -w .

.PHONY: lint
lint: ## Fail on code gofumpt would reformat, go vet and staticcheck findings (plugin and e2e module)
	@unformatted="$$(go run $(GOFUMPT) -l .)"; [ -z "$$unformatted" ] || { echo "gofumpt would reformat these files (make fmt):" >&2; echo "$$unformatted" >&2; exit 1; }
	go vet ./...
	go run $(STATICCHECK) ./...
	cd e2e && go vet ./... && go run $(STATICCHECK) ./...

.PHONY: clean
clean: ## Remove build output (bin/, dist/)
	rm -rf $(BIN_DIR) dist
