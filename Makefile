# syncd's developer and CI entry points: `make demo` shows the whole job,
# `make test` runs every test against a real ClickHouse.
#
# SYNCD_TEST_CLICKHOUSE picks the ClickHouse that the tests, the demo and the
# benchmarks start: `server` (default; the installed clickhouse-server, which
# is 18.16.1 on Debian bookworm) or `chdb` (the ClickHouse 26.7 engine from
# the npm package @chdb/lib-linux-x64-gnu, installed on first use).

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

.PHONY: build test test-sql lint bench fuzz check-clickhouse demo

# Static, like the image (Dockerfile): CGO_ENABLED=0 on the build line only,
# since the race detector in `make test` needs cgo.
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/syncd ./cmd/syncd

# Tests run against a real ClickHouse: a server binary to start privately, or
# SYNCD_TEST_CLICKHOUSE_DSN naming a running server. The cluster tests also
# start Debian's ZooKeeper and two private 18.16 servers (internal/chtest's
# Cluster); scripts/ensure-clickhouse installs the zookeeper package when it
# can. They skip under -short, so they run in `make test` and not in the
# chDB pass of `make test-sql`.
check-clickhouse:
	@scripts/ensure-clickhouse

# Helm renders the chart in deploy/helm's tests; built once into bin/ so the
# test run itself does not spend minutes compiling it.
HELM_VERSION ?= v3.22.0
bin/helm-$(HELM_VERSION):
	GOBIN=$(CURDIR)/bin.tmp $(GO) install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)
	mkdir -p bin && mv bin.tmp/helm $@ && rmdir bin.tmp

# stripe-mock serves Stripe's official OpenAPI fixtures for the conformance test.
STRIPE_MOCK_VERSION ?= v0.203.0
bin/stripe-mock-$(STRIPE_MOCK_VERSION):
	GOBIN=$(CURDIR)/bin.tmp $(GO) install github.com/stripe/stripe-mock@$(STRIPE_MOCK_VERSION)
	mkdir -p bin/stripe-mock-$(STRIPE_MOCK_VERSION).d && mv bin.tmp/stripe-mock bin/stripe-mock-$(STRIPE_MOCK_VERSION).d/stripe-mock && rmdir bin.tmp
	touch $@

test: check-clickhouse bin/helm-$(HELM_VERSION) bin/stripe-mock-$(STRIPE_MOCK_VERSION)
	PATH=$(CURDIR)/bin/stripe-mock-$(STRIPE_MOCK_VERSION).d:$$PATH HELM=$(CURDIR)/bin/helm-$(HELM_VERSION) $(GO) test -race -count=1 -timeout 12m ./...

# Every package whose tests talk SQL (they import chtest or chserver): CI's
# second pass runs these on ClickHouse 26.7 (SYNCD_TEST_CLICKHOUSE=chdb).
# TEST_SQL_FLAGS is -short there: the tests that start, kill and drain
# several syncd processes (they skip under -short) run in the first pass
# only, since the chDB engine, clickhouse-local with listeners, was seen to
# exit without a word under one of them (docs/operations.md, "ClickHouse
# releases"). make test-sql TEST_SQL_FLAGS= runs them all.
SQL_PACKAGES = $(shell $(GO) list -f '{{.ImportPath}} {{join .TestImports " "}} {{join .XTestImports " "}}' ./... | grep -E 'internal/(chtest|chserver)( |$$)' | cut -d' ' -f1)
TEST_SQL_FLAGS ?= -short
test-sql: check-clickhouse bin/stripe-mock-$(STRIPE_MOCK_VERSION)
	PATH=$(CURDIR)/bin/stripe-mock-$(STRIPE_MOCK_VERSION).d:$$PATH $(GO) test -race -count=1 -timeout 12m $(TEST_SQL_FLAGS) $(SQL_PACKAGES)

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

# The whole job end to end on local defaults: a private ClickHouse (or
# SYNCD_CLICKHOUSE_DSN's server), the Stripe and Orb emulators, migrate,
# backfill, serve with live signed webhooks, verify, and a printed report.
demo: build check-clickhouse
	$(GO) build -o bin/emulator ./cmd/emulator
	$(GO) build -o bin/demo ./cmd/demo
	bin/demo --syncd bin/syncd --emulator bin/emulator
