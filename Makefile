# chimera: `make up` runs the example placements, `make test` runs the CPU test suite.
# Both install into .venv on first use (and again when pyproject.toml changes).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-test
FILE   ?= placements/example.yaml
ARGS   ?=

.PHONY: up test chromium test-fast test-gpu lint check install clean plan sim sim-bench bench-smoke

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

up: $(STAMP)
	$(BIN)/chimera-orch up $(FILE) $(ARGS)

check: $(STAMP)
	$(BIN)/chimera-orch check $(FILE)

lint: $(STAMP)
	$(BIN)/ruff check orchestrator simsglang cumem_shim bench tests
	$(BIN)/ruff format --check orchestrator simsglang cumem_shim bench tests
	$(BIN)/mypy

# Debian's chromium for the dashboard's browser test, when /usr/bin/chromium is missing.
chromium:
	.ci/install-chromium

# promtool (from Debian's prometheus package, extracted into .ci/bin/) for the metrics checks.
promtool:
	.ci/install-promtool

# GPU tests (@pytest.mark.gpu) skip themselves here when there is no CUDA GPU.
# pytest exit code 5 (no test collected) is turned into a failure.
test: lint chromium promtool
	$(BIN)/python -m pytest -q -rs; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

# Unit tests only (tests/unit), no lint: the loop while editing, under 40 s on 2 cores.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/unit; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

# On a GPU host after `pip install -e '.[gpu,test]'` (docs/gpu-testing.md).
test-gpu: $(STAMP)
	$(BIN)/python -m pytest -q -m gpu -rA

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache

# Dry run: per-GPU memory budget and the placement the global scheduler would choose.
plan: $(STAMP)
	$(BIN)/chimera-orch plan $(FILE) $(ARGS)

# Discrete-event simulator experiments (SIMULATED numbers; docs/bench-sim.md).
sim: $(STAMP)
	$(BIN)/python -m bench.sim experiments

sim-bench: $(STAMP)
	$(BIN)/python -m bench.sim microbench

# 60-second live benchmark on the sim engine (CPU); report and plots in runs/bench-smoke/
bench-smoke: $(STAMP)
	$(BIN)/python -m bench.live.run --placements placements/example.yaml --trace synthetic --rate 4 --duration 60 --out runs/bench-smoke
