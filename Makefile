# Two commands on a fresh machine:  `make demo`  (install + fit the default model + metrics)
#                                   `make test`  (install + the test suite)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# 2-core machines: one intra-op thread per process measured fastest (see README, "Threads").
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1

.PHONY: venv demo test test-fast bench clean

venv: $(BIN)/.installed

$(BIN)/.installed: requirements-cpu.txt setup.cfg pyproject.toml packaging/fbgemm-gpu-shim/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -r requirements-cpu.txt
	$(BIN)/pip check
	touch $@

demo: venv
	$(BIN)/recsys fit --config experiments/deepfm_synthetic.yaml --report true

test: venv
	$(BIN)/python -m pytest -q tests

test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow" tests

bench: venv
	$(BIN)/python experiments/bench/ctr_models.py

clean:
	rm -rf $(VENV) runs lightning_logs
