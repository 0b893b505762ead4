# Developer and CI entry points. `make test` is the test command: it installs the venv if
# needed, starts the Kafka broker (kafka/broker.sh) if it is not running, runs every test tier
# and leaves the broker up for the next run; `make broker-down` stops it. `make check` runs lint,
# mypy and the fast tiers (no broker, nothing marked slow); `make test-slow` the slow tier.

SHELL := /bin/bash

# Interpreter that creates the venv (needs Python 3.11+).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Extra pytest arguments, e.g. `make test PYTEST_ARGS='-k refund -x'`.
PYTEST_ARGS ?=

# The broker's client port (kafka/broker.sh reads it) and the address the tests connect to.
export QRIS_KAFKA_PORT ?= 9092
export QRIS_BOOTSTRAP ?= 127.0.0.1:$(QRIS_KAFKA_PORT)

.PHONY: demo install broker-up broker-down broker-reset test check lint typecheck test-fast test-slow fmt clean distclean \
	compiled test-compiled test-compiled-kafka chaos-compiled bench-replay bench-detection bench-live bench-scale bench-latency test-rebalance chaos

# The main job: the 29 March 2025 outage end to end on the real broker, then a report for
# payment operations. Installs and starts the broker if needed; stops its worker at the end
# (the broker stays up; `make broker-down` stops it).
demo: install broker-up
	$(PY) -m stream demo

install: $(VENV)/.installed

# Re-installs when pyproject.toml changes; `rm .venv/.installed` forces it.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --disable-pip-version-check -e '.[dev]'
	touch $@

broker-up:
	kafka/broker.sh start

broker-down:
	kafka/broker.sh stop

# Stop the broker and delete its data (all topics and committed offsets).
broker-reset:
	kafka/broker.sh reset

# pytest exits 5 when it collected no test; that is reported and fails, never passes quietly.
test: install broker-up
	@rc=0; $(PY) -m pytest tests -m "not known_flaky" $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5)" >&2; fi; \
	exit $$rc

# The two-worker rebalance test, five times (its record of passes: README, Tests).
test-rebalance: install broker-up
	for i in 1 2 3 4 5; do $(PY) -m pytest tests/test_kafka_worker.py -k second_worker_joining $(PYTEST_ARGS) || exit 1; done

# Workers killed (SIGKILL) at 5 seeded random moments on a realistic day with an outage, store
# kept and store wiped, two workers with one killed; the broker killed 3 times (a broker of the
# test's own on free ports, never the shared one); every decision compared with offline replay;
# prints the summary line. `make test` runs a short version of the worker kills (not the broker
# kills: two broker starts take a minute). QRIS_TEST_CHAOS_SEED picks other moments.
chaos: install broker-up
	QRIS_TEST_CHAOS=full $(PY) -m pytest tests -m chaos -s $(PYTEST_ARGS)

check: lint typecheck test-fast

lint: install
	$(PY) -m ruff check .

typecheck: install
	$(PY) -m mypy

# The fast tiers: no broker, no test marked slow (README "Tests" lists the tiers).
test-fast: install
	$(PY) -m pytest tests -m "not kafka and not slow" $(PYTEST_ARGS)

# The slow tier without a broker: simulated days, the fuzz suite, CLI subprocesses.
test-slow: install
	$(PY) -m pytest tests -m "slow and not kafka" $(PYTEST_ARGS)

# The compiled build, opt-in (README, "The compiled build"): stream/ copied into build/compiled
# and the hot core modules compiled there by mypyc (gcc and the Python headers needed; about 1.5
# CPU minutes, the C files compiled one per CPU: about a minute on two idle CPUs). Nothing is
# compiled in the source tree (`make check` fails on a compiled module there). Rebuilt when a
# source is newer than the build. A compiled copy whose sources changed since it was built
# refuses to import, naming the file. It runs with the copy first on the path and the current
# directory off it (the sources would come first from the repository's root):
# `PYTHONSAFEPATH=1 PYTHONPATH=build/compiled python -m stream ...`.
COMPILED := $(CURDIR)/build/compiled
RUN_COMPILED := PYTHONSAFEPATH=1 PYTHONPATH=$(COMPILED)
compiled: $(COMPILED)/stream/compiled-manifest.json

$(COMPILED)/stream/compiled-manifest.json: $(shell find stream -name '*.py') bench/build_compiled.py | install
	$(PY) bench/build_compiled.py --out $(COMPILED)

# The fast tiers against the compiled build (subprocesses of the tests too: they inherit both
# variables); the repository root after it, for the tests' own modules.
test-compiled: compiled
	$(RUN_COMPILED):$(CURDIR) $(PY) -c 'import stream as s, sys; s.BUILD == "compiled" or sys.exit(s.buildinfo.describe())'
	$(RUN_COMPILED):$(CURDIR) $(PY) -m pytest tests -m "not kafka and not slow" $(PYTEST_ARGS)

# The Kafka tier and the full chaos run against the compiled build, on the real broker (each
# worker the tests start logs `build: compiled`).
test-compiled-kafka: compiled broker-up
	$(RUN_COMPILED):$(CURDIR) $(PY) -c 'import stream as s, sys; s.BUILD == "compiled" or sys.exit(s.buildinfo.describe())'
	$(RUN_COMPILED):$(CURDIR) $(PY) -m pytest tests -m "kafka and not chaos" $(PYTEST_ARGS)

chaos-compiled: compiled broker-up
	$(RUN_COMPILED):$(CURDIR) $(PY) -c 'import stream as s, sys; s.BUILD == "compiled" or sys.exit(s.buildinfo.describe())'
	QRIS_TEST_CHAOS=full $(RUN_COMPILED):$(CURDIR) $(PY) -m pytest tests -m chaos -s $(PYTEST_ARGS)

fmt: install
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

# Benchmarks (not tests): offline replay on 1M simulated records; the live worker beside raw
# aiokafka on the real broker. Numbers go in the README with the machine they ran on.
bench-replay: install
	$(PY) bench/replay_throughput.py --records 1000000

bench-detection: install
	$(PY) bench/detection.py

bench-live: install broker-up
	$(PY) bench/live_throughput.py --records 200000

# One worker process against two in one consumer group on the same 8-partition backlog,
# alternated over 2 rounds, beside raw aiokafka.
bench-scale: install broker-up
	$(PY) bench/scale_out.py --records 200000 --partitions 8 --rounds 2

# Deadline-to-refund latency (issue 9): traffic offered in real time at 1k, 5k and 10k records/s,
# the worker as shipped and with its consumer's fetch.max.wait.ms at 100 ms.
bench-latency: install broker-up
	$(PY) bench/refund_latency.py --rate 1000 5000 10000 --seconds 60 --fetch-max-wait-ms 0 100

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache .hypothesis build *.egg-info
	find . -name __pycache__ -type d -not -path './$(VENV)/*' -prune -exec rm -rf {} +

# Also the venv, the cached Kafka jars and the broker's data (stops the broker first).
distclean: clean broker-down
	rm -rf $(VENV) kafka/.cache kafka/.run
