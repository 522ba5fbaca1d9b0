# Two commands matter: `make run` (the whole system on this machine) and `make test`.
# Both create the virtual environment and install the pinned packages themselves.
SHELL := /bin/bash
# The first Python 3.12 that runs (a pyenv shim without that version complains: the probe swallows it), found once.
ifndef PYTHON
PYTHON := $(shell for p in python3.12 $$HOME/.pyenv/versions/3.12*/bin/python3.12 /root/.pyenv/versions/3.12*/bin/python3.12 python3; do \
	$$p -c 'import sys' >/dev/null 2>&1 && { echo $$p; break; }; done 2>/dev/null)
endif
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# checkov pins an older boto3 than the project's, so it lives in a venv of its own (requirements-checkov.txt).
CHECKOV_VENV := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed
PORT ?= 3000
PRACTICE ?= prac_demo
export AWS_DEFAULT_REGION ?= us-east-1
export PYTHONPATH := $(CURDIR)/layers/billing:$(CURDIR)

.PHONY: run test token lint typecheck validate artifacts unit integration e2e check-system check-test-system clean bench

$(STAMP): requirements-dev.txt layers/billing/requirements.txt functions/render_invoice/requirements.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	@touch $(STAMP)

$(CHECKOV_STAMP): requirements-checkov.txt
	@test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --no-compile -r requirements-checkov.txt
	@touch $(CHECKOV_STAMP)

check-system:
	@$(PYTHON) local/check_system.py

check-test-system:
	@$(PYTHON) local/check_system.py --tests

run: $(STAMP) check-system
	PORT=$(PORT) $(BIN)/python -m local.stack

token: $(STAMP)
	@$(BIN)/python -m local.tokens --practice $(PRACTICE) $(if $(ROLE),--role $(ROLE)) $(if $(CLIENT),--client $(CLIENT))

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# The IaC gate: cfn-lint with the Serverless Rules, SAM's own validation, checkov (.checkov.yaml). Every waiver
# sits in template.yaml (a resource's Metadata, or the template's for cfn-lint) or .checkov.yaml with its reason.
validate: $(STAMP) $(CHECKOV_STAMP)
	$(BIN)/cfn-lint --append-rules cfn_lint_serverless.rules -- template.yaml
	$(BIN)/sam validate --lint --template template.yaml --region $(AWS_DEFAULT_REGION)
	$(CHECKOV_VENV)/bin/checkov --config-file .checkov.yaml

# The deploy artifacts, built without a container (no Docker here or in CI): every function and layer but those
# named in CONTAINER_ONLY, whose BuildMethod needs the Lambda build image (`sam build --use-container`, README
# "Deploying with SAM"); then each one's unzipped size, and each function's with its layers, against Lambda's limit.
# Its own build folder, so that `sam deploy` never picks up a build that lacks those.
CONTAINER_ONLY := WeasyPrintLayer
ARTIFACTS := .aws-sam/artifacts
BUILT := $(ARTIFACTS)/build/template.yaml

# python3.12 on PATH is the venv's: SAM installs the requirements with it (manylinux wheels for the runtime).
$(BUILT): $(STAMP) template.yaml samconfig.toml $(shell find functions layers -type f -not -path '*/__pycache__/*')
	@mkdir -p $(ARTIFACTS)
	@echo "sam build (all but $(CONTAINER_ONLY)) into $(ARTIFACTS)/build"
	@PATH="$(CURDIR)/$(BIN):$$PATH" SAM_CLI_TELEMETRY=0 $(BIN)/sam build --template template.yaml --cached --parallel \
		--build-dir $(ARTIFACTS)/build --cache-dir $(ARTIFACTS)/cache $(addprefix --exclude ,$(CONTAINER_ONLY)) \
		>$(ARTIFACTS)/sam-build.log 2>&1 || { cat $(ARTIFACTS)/sam-build.log; exit 1; }

artifacts: $(BUILT)
	@$(BIN)/python -m local.artifact_sizes --build-dir $(ARTIFACTS)/build $(addprefix --not-built ,$(CONTAINER_ONLY))

unit: $(STAMP)
	$(BIN)/pytest tests/unit -q

integration: $(STAMP)
	$(BIN)/pytest tests/integration -q

e2e: $(STAMP)
	$(BIN)/pytest tests/e2e -q

test: $(STAMP) check-test-system lint typecheck validate artifacts
	$(BIN)/pytest -q -n 2 tests

# Not part of `make test`: cold starts, round-trips, the night at scale, documents and API latency, each against
# a baseline measured in the same run; writes bench/results.md (README "Performance"). BENCH=--quick: small sizes.
bench: $(STAMP) check-system $(BUILT)
	$(BIN)/python -m bench $(BENCH)

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) .pytest_cache .mypy_cache .ruff_cache .aws-sam
