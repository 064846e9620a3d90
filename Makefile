# Every target creates .venv itself: a clean clone needs only Python 3.11 and make.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip

.PHONY: run test lint bench clean proto

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(PIP) install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(PIP) install --quiet -e '.[dev]'
	touch $(VENV)/.installed $@

run: $(VENV)/.installed
	$(BIN)/hcs simulate --inventory examples/inventory --pods examples/pods
	@echo
	@echo "Starting the extender on http://127.0.0.1:8888 and the webhook on https://127.0.0.1:8443"
	@echo "(certificates in .hcs/certs; Ctrl-C stops both). Try:"
	@echo "  curl -s -XPOST localhost:8888/filter -d @examples/requests/filter.json"
	@echo "  curl -s -XPOST localhost:8888/prioritize -d @examples/requests/prioritize.json"
	@echo "  curl -s -XPOST localhost:8888/bind -d @examples/requests/bind.json"
	@echo "  curl -s --cacert .hcs/certs/ca.crt https://localhost:8443/mutate -d @examples/requests/admission-review.json"
	@echo "  curl -s localhost:8888/metrics | grep ^hcs_"
	$(BIN)/hcs serve --inventory examples/inventory --cert-dir .hcs/certs

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest

bench: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/engine.py
	$(BIN)/python benchmarks/extender_http.py
	$(BIN)/python benchmarks/webhook_https.py
	$(BIN)/python benchmarks/node.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis

# Kubelet's device plugin API: regenerate the Python modules from hcs/agent/v1beta1/api.proto.
proto: $(VENV)/.installed-dev
	$(BIN)/python -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. \
		hcs/agent/v1beta1/api.proto
