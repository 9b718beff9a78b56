# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Python 3.10 or newer (3.11 or 3.12 as Slicer 5.10+ bundles); choose one with PYTHON=python3.12.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYVER := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
# A venv is rebuilt when it was made by another Python; each stamp is written only on success.
MADE := $(VENV)/.made-by-python$(PYVER)
RUNTIME := $(VENV)/.runtime-installed
TESTING := $(VENV)/.test-installed
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: demo test bench clean

$(MADE):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "error: VertebralMarrow needs Python 3.10 or newer, not %s; run e.g.: make PYTHON=python3.12 demo" % sys.version.split()[0])'
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	touch $@

# The demo writes DICOM SEG, SR and parametric map (highdicom: the `dicom` extra), and every
# README example runs after it, `batch` included (Dask: the `batch` extra).
$(RUNTIME): $(MADE) pyproject.toml constraints.txt
	$(PIP) -e '.[dicom,batch]'
	touch $@

$(TESTING): $(RUNTIME)
	$(PIP) -e '.[test]'
	touch $@

demo: $(RUNTIME)
	$(BIN)/vertebral-marrow demo --out demo-output
	@echo "Open demo-output/report.html in a browser; load demo-output/VertebralMarrow.mrml in Slicer."
	@echo "To use the vertebral-marrow command yourself: . .venv/bin/activate"

test: $(TESTING)
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -q

bench: $(RUNTIME)
	$(BIN)/python bench/bench_adc.py
	$(BIN)/python bench/bench_analyze.py
	$(BIN)/python bench/bench_stats.py

clean:
	rm -rf $(VENV) demo-output
