# AthenaOS — the front door. `make run` and `make test` set everything up on a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
WEB := edge/web
PYTEST_ARGS ?=
EVAL_ARGS ?=
# How every process runs gRPC, the tests' and benchmarks' own included (mesh/server.py GRPC_EXPERIMENTS).
export GRPC_EXPERIMENTS ?= -event_engine_client,-event_engine_listener,-event_engine_for_all_other_endpoints

.PHONY: help install web run test test-fast lint format proto proto-check bench bench-memory bench-chat bench-floor bench-timeline bench-ab bench-health eval-memory chaos check clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[local,dev]'
	@touch $@

$(WEB)/node_modules/.installed: $(WEB)/package.json $(WEB)/package-lock.json
	cd $(WEB) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

install: $(VENV)/.installed $(WEB)/node_modules/.installed ## Create the virtualenv and install everything

WEB_SOURCES := $(shell find $(WEB)/src -type f) $(WEB)/build.mjs $(WEB)/icons.mjs $(WEB)/build-files.json $(WEB)/tsconfig.json $(WEB)/tsconfig.sw.json $(wildcard gen/ts/athena/*/v1/*.ts gen/ts/buf/validate/*.ts)
$(WEB)/dist/index.html: $(WEB)/node_modules/.installed $(WEB_SOURCES)
	cd $(WEB) && npm run --silent typecheck && node build.mjs

web: $(WEB)/dist/index.html ## Type-check and build the browser client (edge/web/dist)

run: install web ## Start the whole mesh on loopback (Ctrl-C stops it); PROMETHEUS=1 adds Prometheus with the SLO rules
	$(BIN)/python -m devstack $(if $(PROMETHEUS),--prometheus)

test: install web ## Run every test (unit, service, end-to-end)
	$(BIN)/pytest $(PYTEST_ARGS)

test-fast: install ## Unit and service tests only
	$(BIN)/pytest -m "not e2e" $(PYTEST_ARGS)

lint: install ## ruff, mypy, buf lint, buf breaking of proto/ (against main)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	cd $(WEB) && npm run --silent typecheck
	PATH=$(CURDIR)/$(BIN):$$PATH buf lint
	PATH=$(CURDIR)/$(BIN):$$PATH buf breaking proto --against '.git#branch=main,subdir=proto'

format: install ## Apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

proto: install ## Regenerate gen/ (Python and TypeScript) from proto/ and third_party/
	PATH=$(CURDIR)/$(BIN):$$PATH buf generate

bench: bench-memory bench-chat bench-floor bench-timeline bench-health eval-memory ## All benchmarks (results in bench/results/)

bench-memory: install ## Memory recall latency and recall@10 at 100k and 1M memories
	$(BIN)/python -m bench.memory

bench-chat: install ## Streaming cost: overhead to first delta (tracing off and on), 1/50/200/1,000 paced streams against the model direct, 1,000 held
	$(BIN)/python -m bench.chat

bench-floor: install ## What the transports alone cost a stream: the mesh against skeletons making the same calls, and with one hop less
	$(BIN)/python -m bench.floor

bench-timeline: install ## Where one turn's time goes (each kind of span at its median start and end), then a 50-stream burst's (p50/p95 from the burst), from the mesh's traces
	$(BIN)/python -m bench.timeline

A ?= HEAD
B ?= .
STREAMS ?= 50
ROUNDS ?= 10
DELAY_MS ?= 20
NAME ?= ab
bench-ab: install ## Two revisions side by side (A=<rev> B=<rev>, default HEAD against the working tree): bursts alternating, first delta and CPU per turn
	$(BIN)/python -m bench.ab --a $(A) --b $(B) --streams $(STREAMS) --rounds $(ROUNDS) --delay-ms $(DELAY_MS) --name $(NAME)

bench-health: install web ## Apple Health import: a 200+ MB export uploaded through the edge, the importer's peak RSS
	$(BIN)/python -m bench.apple_health

eval-memory: install ## Long-term memory in LongMemEval's five abilities through the public API (offline)
	$(BIN)/python -m bench.memory_eval $(EVAL_ARGS)

chaos: install ## Kill each service, stop PostgreSQL and Valkey under chat load: recovery and messages lost
	$(BIN)/python -m bench.chaos

check: lint test ## Everything CI checks

clean: ## Remove the virtualenv, node modules and local data
	rm -rf $(VENV) $(WEB)/node_modules var
