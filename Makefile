# syncd's developer and CI entry points. `make demo` lives elsewhere.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

GO ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT ?= $(shell git rev-parse HEAD 2>/dev/null)
LDFLAGS := -X github.com/syncd/syncd/internal/version.Version=$(VERSION) -X github.com/syncd/syncd/internal/version.Commit=$(COMMIT)

# staticcheck 2026.2.2; older releases do not understand Go 1.26.
STATICCHECK_VERSION ?= v0.8.2
DEBIAN_CLICKHOUSE ?= /usr/sbin/clickhouse-server
BENCHTIME ?= 1s
FUZZTIME ?= 20s

.PHONY: build test lint bench fuzz check-clickhouse

# Static, like the image (Dockerfile): CGO_ENABLED=0 on the build line only,
# since the race detector in `make test` needs cgo.
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/syncd ./cmd/syncd

# Tests run against a real ClickHouse: a server binary to start privately, or
# SYNCD_TEST_CLICKHOUSE_DSN naming a running server.
check-clickhouse:
	@if [ -z "$${SYNCD_TEST_CLICKHOUSE_DSN:-}" ] && [ ! -x $(DEBIAN_CLICKHOUSE) ] \
		&& ! command -v clickhouse-server >/dev/null && ! command -v clickhouse >/dev/null; then \
		echo "make test: no ClickHouse server found (looked for $(DEBIAN_CLICKHOUSE)," >&2; \
		echo "  and clickhouse-server or clickhouse on PATH). Either:" >&2; \
		echo "  - Debian/Ubuntu: sudo apt-get install -y clickhouse-server clickhouse-client" >&2; \
		echo "  - elsewhere: put the single clickhouse binary on PATH (https://clickhouse.com/docs/install)" >&2; \
		echo "  - or point the tests at a running server: SYNCD_TEST_CLICKHOUSE_DSN=clickhouse://host:9000/default" >&2; \
		exit 1; \
	fi

# Helm renders the chart in deploy/helm's tests; built once into bin/ so the
# test run itself does not spend minutes compiling it.
HELM_VERSION ?= v3.22.0
bin/helm-$(HELM_VERSION):
	GOBIN=$(CURDIR)/bin.tmp $(GO) install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)
	mkdir -p bin && mv bin.tmp/helm $@ && rmdir bin.tmp

test: check-clickhouse bin/helm-$(HELM_VERSION)
	HELM=$(CURDIR)/bin/helm-$(HELM_VERSION) $(GO) test -race -count=1 -timeout 12m ./...

lint:
	@unformatted=$$(gofmt -l .); \
	if [ -n "$$unformatted" ]; then echo "gofmt -l: not formatted:" >&2; echo "$$unformatted" >&2; exit 1; fi
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...

bench: check-clickhouse
	$(GO) test -run '^$$' -bench . -benchmem -benchtime $(BENCHTIME) ./internal/...

# Every Fuzz target of every package, FUZZTIME each.
fuzz:
	@for pkg in $$($(GO) list ./...); do \
		list=$$($(GO) test -list '^Fuzz' "$$pkg"); \
		for target in $$(grep '^Fuzz' <<<"$$list" || true); do \
			echo "fuzz $$pkg $$target ($(FUZZTIME))"; \
			$(GO) test -run '^$$' -fuzz "^$$target\$$" -fuzztime $(FUZZTIME) "$$pkg"; \
		done; \
	done
