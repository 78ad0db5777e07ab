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

# Ratios against bare grpcio servers measured in the same run; writes docs/benchmarks.md.
# Server benchmarks (docs/benchmarks.md), then training and recommendation (docs/benchmarks-training.md).
bench: $(STAMP)
	$(PY) bench/run.py
	$(PY) bench/training.py

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache
