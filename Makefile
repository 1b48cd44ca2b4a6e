# Every target that needs Python builds .venv first; `make install` is idempotent.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_VERSION := 2.13.0

export RECEIPT_PIPELINE_DEPLOYMENT ?= local
export RECEIPT_PIPELINE_DATA_DIR ?= $(CURDIR)/.data
export SROIE_DIR ?= $(abspath $(CURDIR)/../shared/data/sroie)
LOCAL_AWS_PORT ?= 5466

.PHONY: install browser demo test dev bench lint wheel deploy-check publish clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -qq --upgrade pip
	# torch first, pinned: the CPU build on this machine; a looser requirement pulls CUDA wheels
	$(BIN)/pip install -qq torch==$(TORCH_VERSION)
	$(BIN)/pip install -qq -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/receipt-pipeline demo --port $(LOCAL_AWS_PORT)

dev: install
	$(BIN)/receipt-pipeline dev --port $(LOCAL_AWS_PORT)

# the UI test drives Debian's chromium; installed as root (CI) when missing, else that test says how
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
	  echo "chromium not installed: run 'sudo apt-get install chromium chromium-driver' for the UI test"

test: install browser deploy-check
	$(BIN)/python -m pytest -q

# the prod stack's template against CloudFormation's resource specs and rules
deploy-check: install
	$(BIN)/cfn-lint deploy/cloudformation/receipt-pipeline.yaml

# rewrites BENCHMARKS.md's sections; BENCH="windowing demo" runs only those (names: see benchmarks/__main__.py)
bench: install
	$(BIN)/python -m benchmarks --write $(BENCH)

# the wheel GPU instances install (upload it under the launcher's wheel_prefix)
wheel: install
	$(BIN)/pip wheel --quiet --no-deps --wheel-dir dist .

# builds the wheel and uploads it, with deploy/prod/dagster.yaml, under the stack's wheel prefix: make publish STACK=name
publish: install
	@test -n "$(STACK)" || { echo "usage: make publish STACK=<the prod stack's name>"; exit 2; }
	$(BIN)/receipt-pipeline publish --stack $(STACK)

lint: install
	$(BIN)/ruff check receipt_pipeline receipt_pipeline_tests benchmarks

clean:
	rm -rf $(VENV) .data .dagster_home dist test-artifacts
