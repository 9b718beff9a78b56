# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/vertebral-marrow demo --out demo-output
	@echo "Open demo-output/report.html in a browser; load demo-output/VertebralMarrow.mrml in Slicer."

test: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python bench/bench_adc.py
	$(BIN)/python bench/bench_analyze.py
	$(BIN)/python bench/bench_stats.py

clean:
	rm -rf $(VENV) demo-output
