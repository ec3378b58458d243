# xreg: the two commands of the README's quick start.
#   make demo   set up, then sort a small mixed-format folder and show the registry
#   make test   set up, then run the test suite
#   make lint   ruff + mypy (strict) on the package; make bench: throughput figures
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.xreg-installed

.PHONY: demo test bench lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[train,serve,ray,test,pacs]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) scripts/demo.py

lint: $(STAMP)
	$(PY) -m pip install --quiet mypy ruff types-PyYAML
	$(PY) -m ruff check xreg tests benchmarks scripts
	$(PY) -m mypy xreg

bench: $(STAMP)
	$(PY) benchmarks/sort_throughput.py

clean:
	rm -rf .demo build *.egg-info
