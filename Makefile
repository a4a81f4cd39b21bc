# GraphPilot developer entry points. `make demo` and `make test` work on a fresh machine.
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup demo test lint unit integration e2e gpu system-deps cluster-tools cluster-up cluster-down clean

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install --upgrade --quiet pip
	$(VPY) -m pip install --progress-bar off -e '.[test]'
	touch $@

setup: $(VENV)/.installed ## Python environment with every dependency

demo: setup ## the main job: runtime (+ autotuner) on the CPU with the tiny preset, a short load, a report
	$(VPY) examples/local_demo.py

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy sidecar operator runtime/profile.py

unit: setup
	$(VPY) -m pytest tests/unit -q

integration: setup
	$(VPY) -m pytest tests/integration -q

e2e: setup cluster-tools ## the operator and control-plane tests on the local Kubernetes
	$(VPY) -m pytest tests/e2e -q

test: setup system-deps cluster-tools lint ## everything CI runs: lint, unit, integration, e2e (GPU tests skip without a GPU)
	$(VPY) -m pytest tests -q

gpu: ## GPU tier, on a CUDA machine with torch and pytest (graphpilot imported from this tree, no install)
	. hack/source-env.sh && $(PY) -m pytest tests/gpu tests/unit/test_kernels.py -q -m gpu -s

system-deps: ## Debian packages the tests use (Prometheus server, promtool, openssl)
	bash hack/system-deps.sh

cluster-tools: ## build (or reuse from cache) the Kubernetes control plane, etcd, kwok, helm
	@bash tests/cluster/build.sh

cluster-up: cluster-tools ## start the local control plane with fake GPU nodes; prints `export KUBECONFIG=...`
	@bash tests/cluster/up.sh

cluster-down: ## stop it (logs stay in the state dir)
	@bash tests/cluster/down.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
