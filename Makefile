# Every routine step of the project. `make run` and `make test` set up .venv themselves.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BUF := node_modules/.bin/buf
PROTOS := $(wildcard proto/repwise/v1/*.proto)

.PHONY: install run test proto proto-check lint typecheck check bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

$(BUF): package.json
	npm ci --silent --no-audit --no-fund
	touch $(BUF)

run: $(STAMP)
	$(VENV)/bin/repwise serve

# node_modules too: tests/test_parity.py runs the JavaScript client (@grpc/grpc-js).
test: $(STAMP) $(BUF)
	$(PY) -m pytest $(PYTEST_ARGS)

proto: $(STAMP)
	$(PY) scripts/gen_protos.py

proto-check: $(STAMP)
	$(PY) scripts/gen_protos.py --check

lint: $(STAMP) $(BUF)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(BUF) lint

typecheck: $(STAMP)
	$(VENV)/bin/mypy

check: proto-check lint typecheck test

# Every benchmark as a ratio to a baseline measured in the same run (about 25 minutes): the
# server, then training and recommendation, each writing $(BENCH_RESULTS)/*.json, then the page.
# The whole chain in a few minutes (a check, not a measurement):
#   make bench BENCH_RUN_ARGS="--rounds 1 --reps 1 --seconds 1" BENCH_TRAINING_ARGS=--quick \
#     BENCH_RESULTS=/tmp/bench BENCH_PAGE=/tmp/bench/benchmarks.md
BENCH_RESULTS ?= bench/results
BENCH_PAGE ?= docs/benchmarks.md
bench: $(STAMP)
	$(PY) bench/run.py --results $(BENCH_RESULTS) $(BENCH_RUN_ARGS)
	$(PY) bench/training.py --results $(BENCH_RESULTS) $(BENCH_TRAINING_ARGS)
	$(PY) bench/report.py --results $(BENCH_RESULTS) --page $(BENCH_PAGE)

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache
