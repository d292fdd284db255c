# Quick start:  make demo   (install + run the main job)     make test   (install + run the tests)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
LOCK   := requirements/lock.txt
PIP    := $(BIN)/python -m pip install --disable-pip-version-check -q -c $(LOCK)
# Sharding tests run on 8 fake CPU devices; the suite runs on as many workers as cores.
TEST_ENV := XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu MPLBACKEND=Agg
PYTEST_ARGS ?= -n auto --dist loadfile

.PHONY: demo demo-paper test layers install install-test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.runtime: $(BIN)/python $(LOCK) pyproject.toml
	$(PIP) -e .
	touch $@

$(VENV)/.test: $(VENV)/.runtime
	$(PIP) -e '.[test]'
	touch $@

install: $(VENV)/.runtime
install-test: $(VENV)/.test

## The main job on its embedded default: a tiny CLIP vs MaMMUT scaling study on the synthetic shapes, trained,
## evaluated, fitted and compared here (runs/demo/report.md; rerun to resume).
demo: $(VENV)/.runtime
	MPLBACKEND=Agg $(BIN)/vlscale study --config configs/study/tiny_shapes.py --dir runs/demo

## The second example: CLIP vs MaMMUT on the paper's published results table.
demo-paper: $(VENV)/.runtime
	MPLBACKEND=Agg $(BIN)/vlscale compare --out runs/demo-paper

test: $(VENV)/.test
	$(BIN)/python tools/check_layers.py
	$(TEST_ENV) $(BIN)/python -m pytest $(PYTEST_ARGS) tests

## The import contract alone (layers.ini; also the first step of `make test`).
layers: $(VENV)/.test
	$(BIN)/python tools/check_layers.py

bench: $(VENV)/.test
	$(BIN)/python bench/fit_speed.py

clean:
	rm -rf $(VENV) runs build *.egg-info
