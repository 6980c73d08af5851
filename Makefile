# genepanel: `make demo` and `make test` work on a fresh machine (Python ≥ 3.10, network to PyPI).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test lint bench configs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

# Selects a 30-gene panel from the PBMC example that ships inside scanpy (700 cells × 765 genes).
demo: $(STAMP)
	$(BIN)/python examples/make_pbmc_example.py examples/pbmc68k.h5ad
	$(BIN)/genepanel select examples/pbmc68k.h5ad --config configs/demo.yaml --out demo_out/pbmc30 --overwrite
	@echo "panel: demo_out/pbmc30/panel.tsv   metrics: demo_out/pbmc30/run.json"

test: $(STAMP)
	$(BIN)/ruff check genepanel tests benchmarks examples
	$(BIN)/python -m pytest -q

# configs/default.yaml is generated from genepanel/config.py (a test checks it is current).
configs: $(STAMP)
	$(BIN)/python -c "from genepanel.config import default_yaml; print(default_yaml(), end='')" > configs/default.yaml

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_speed.py

clean:
	rm -rf demo_out examples/pbmc68k.h5ad .pytest_cache .ruff_cache
