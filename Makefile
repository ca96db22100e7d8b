# Set-up and the two jobs of README.md; everything installs into .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= configs/cartpole.yaml
RUN_DIR ?= lightning_logs/cartpole
FIT_ARGS ?=
TEST_WORKERS ?= auto

.PHONY: run test bench venv clean

$(BIN)/activate:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: a bare `torch` requirement would pull a multi-GB CUDA build on a CPU machine
	$(BIN)/python -m pip install -q torch==2.13.0

$(VENV)/.installed: $(BIN)/activate pyproject.toml
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

venv: $(VENV)/.installed

# Meta-train on the default config (a fresh run folder each time), then print the adaptation report.
# FIT_ARGS adds flags to the fit, e.g. FIT_ARGS="--data.collection process" (README, Speed).
run: venv
	rm -rf $(RUN_DIR)
	$(BIN)/mamldqn fit --config $(CONFIG) --run_dir $(RUN_DIR) $(FIT_ARGS)
	$(BIN)/mamldqn test --config $(CONFIG) --run_dir $(RUN_DIR)

# The suite in parallel, one worker per core (pytest-xdist); the tests that share a module-scoped run (the DDP
# run, a trained CLI run, ...) carry one xdist_group and stay on one worker, so that the run is made once.
# At most 8 workers (each imports torch and Lightning: a few hundred MB). TEST_WORKERS=0 runs it in this process.
test: venv
	$(BIN)/ruff check mamldqn_pl tests benchmarks
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --maxprocesses 8 --dist loadgroup

clean:
	rm -rf $(VENV) lightning_logs/*/

# Speed goals of issue 7: ratios measured side by side, medians over repeats, printed as a markdown table.
bench: venv
	$(BIN)/python benchmarks/bench.py
