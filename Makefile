# envkit — the front door. `make help` lists the targets.
# On a fresh machine `make demo` and `make test` each set themselves up.

SHELL        := /bin/bash
.SHELLFLAGS  := -eu -o pipefail -c
PYTHON       ?= python3.11
VENV         ?= .venv
BIN          := $(VENV)/bin
EXTRAS       ?= torch,tf,dev
# On a GPU host, point pip at a CUDA wheel index, e.g. TORCH_INDEX=https://download.pytorch.org/whl/cu130
TORCH_INDEX  ?=
PIP_EXTRA    := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX),)
ENGINE       ?= pytorch
# auto: the GPUs where the backend sees them, else the CPU suite
BENCH_DEVICE ?= auto
PRESET       ?= tiny
RUN_DIR      ?= runs/$(PRESET)-$(ENGINE)
INVENTORY    ?= ansible/inventories/example
PYTEST_ARGS  ?=
STAMP        := $(VENV)/.envkit-installed

.DEFAULT_GOAL := help
.PHONY: help setup demo test test-unit lint doctor bench train images provision clean

help: ## List the targets
	@awk 'BEGIN{FS=":.*## "} /^[a-zA-Z_-]+:.*## /{printf "  \033[1m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(PIP_EXTRA) -e ".[$(EXTRAS)]"
	@touch $@

setup: $(STAMP) ## Create .venv and install envkit with the torch, tf and dev extras

demo: $(STAMP) ## Doctor, a quick bench and the tiny train -> fine-tune -> test cycle (embedded data)
	$(BIN)/envkit doctor
	$(BIN)/envkit bench matmul --preset quick --device cpu --backend numpy,torch --dtype fp32 --out results/demo-bench.json --plot results/demo-bench.png
	$(BIN)/envkit train cycle --preset tiny run_dir=runs/demo

test: $(STAMP) ## Run the whole test suite (unit, integration, containers, ansible)
	$(BIN)/pytest $(PYTEST_ARGS)

test-unit: $(STAMP) ## Run only the fast unit tests
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

lint: $(STAMP) ## ruff, hadolint, yamllint and ansible-lint
	$(BIN)/ruff check .
	$(BIN)/hadolint --config .hadolint.yaml Dockerfiles/*.Dockerfile
	cd ansible && ../$(BIN)/yamllint -s . && ../$(BIN)/ansible-lint --profile production

doctor: $(STAMP) ## Check this machine's stack (driver, GPUs, CUDA, frameworks, Docker)
	$(BIN)/envkit doctor --output results/doctor.json $(DOCTOR_ARGS)

bench: $(STAMP) ## Quick CPU bench (matmul numpy/torch/TF, memory, gloo all-reduce), JSON + PNG under results/
	$(BIN)/envkit bench matmul --preset quick --device $(BENCH_DEVICE) --backend numpy,torch,tensorflow --out results/bench-matmul.json --plot results/bench-matmul.png
	$(BIN)/envkit bench memory --device $(BENCH_DEVICE) --out results/bench-memory.json
	$(BIN)/envkit bench allreduce --backend gloo --nproc 2 --max-size 16MiB --out results/bench-allreduce.json

train: $(STAMP) ## The tiny cycle: prepare, pretrain, fine-tune, test (ENGINE=pytorch|tensorflow)
	$(BIN)/envkit train cycle --preset $(PRESET) engine=$(ENGINE) run_dir=$(RUN_DIR)

images: $(STAMP) ## Build the images (CPU variants here, all variants on a GPU build host)
	bash scripts/docker-engine.sh
	$(BIN)/envkit images build --all

provision: $(STAMP) ## Provision the hosts of INVENTORY with ansible/playbooks/site.yml
	cd ansible && ../$(BIN)/ansible-playbook -i $(abspath $(INVENTORY)) playbooks/site.yml $(ANSIBLE_ARGS)

clean: ## Remove build and run outputs (keeps .venv)
	rm -rf build dist *.egg-info results runs .pytest_cache .ruff_cache
