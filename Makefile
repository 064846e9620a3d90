# Every target creates .venv itself: a clean clone needs only Python 3.11 and make.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
EXTENDER_PORT ?= 8888
WEBHOOK_PORT  ?= 8443
# make image: docker or podman, whichever is present; the tag is the package version.
ENGINE ?= $(shell command -v docker || command -v podman)
IMAGE  ?= hcs:$(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' hcs/__init__.py)

.PHONY: run test lint bench clean proto image

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
	@echo "Starting the extender on http://127.0.0.1:$(EXTENDER_PORT) and the webhook on https://127.0.0.1:$(WEBHOOK_PORT)"
	@echo "(certificates in .hcs/certs; Ctrl-C stops both; other ports: make run EXTENDER_PORT=... WEBHOOK_PORT=...)."
	@echo "The hcs command is $(BIN)/hcs (or: . $(BIN)/activate). Try:"
	@echo "  curl -s -XPOST localhost:$(EXTENDER_PORT)/filter -d @examples/requests/filter.json"
	@echo "  curl -s -XPOST localhost:$(EXTENDER_PORT)/prioritize -d @examples/requests/prioritize.json"
	@echo "  curl -s -XPOST localhost:$(EXTENDER_PORT)/bind -d @examples/requests/bind.json"
	@echo "  curl -s --cacert .hcs/certs/ca.crt https://localhost:$(WEBHOOK_PORT)/mutate -d @examples/requests/admission-review.json \\"
	@echo "    | $(BIN)/python -c 'import base64,json,sys; r=json.load(sys.stdin)[\"response\"]; print(json.dumps(json.loads(base64.b64decode(r.get(\"patch\",\"W10=\"))), indent=1))'"
	@echo "  curl -s localhost:$(EXTENDER_PORT)/metrics | grep ^hcs_"
	$(BIN)/hcs serve --inventory examples/inventory --cert-dir .hcs/certs \
		--extender-port $(EXTENDER_PORT) --webhook-port $(WEBHOOK_PORT)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile

# The Dockerfile's RUN --mount needs BuildKit (Docker's buildx plugin; Podman has it built in).
image:
	@test -n "$(ENGINE)" || { echo "make image: needs docker or podman on PATH" >&2; exit 1; }
	@case "$(notdir $(ENGINE))" in docker*) $(ENGINE) buildx version >/dev/null 2>&1 || { \
	  echo "make image: $(ENGINE) has no BuildKit (the Dockerfile uses RUN --mount): install the docker buildx plugin (Docker 23+ ships it), or use ENGINE=podman" >&2; exit 1; };; esac
	DOCKER_BUILDKIT=1 $(ENGINE) build -t $(IMAGE) .

test: lint
	$(BIN)/python -m pytest

bench: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/engine.py
	$(BIN)/python benchmarks/extender_http.py
	$(BIN)/python benchmarks/cycle_stages.py
	$(BIN)/python benchmarks/webhook_https.py
	$(BIN)/python benchmarks/device_plugin.py
	$(BIN)/python benchmarks/burst.py
	$(BIN)/python benchmarks/dra_prepare.py
	$(BIN)/python benchmarks/cluster_memory.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis

# Kubelet's device plugin and PodResources APIs: regenerate the Python modules from the protos.
proto: $(VENV)/.installed-dev
	$(BIN)/python -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. \
		node/v1beta1/api.proto node/podresources/v1/api.proto \
		node/pluginregistration/v1/api.proto node/dra/v1/api.proto node/dra/v1beta1/api.proto
