# Two entry points, both self-contained on a fresh machine with only Python and pip:
#   make demo   -- create .venv, install everything, run the main job on the bundled data
#   make test   -- same set-up, then the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.exitwise-installed

.PHONY: demo test lint bench install clean docs

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install_torch.sh
	$(PYTHON) -m venv $(VENV)
	sh scripts/install_torch.sh $(PY)
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/exitwise report --out report

test: $(STAMP)
	$(PY) -m ruff check exitwise tests benchmarks examples
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check exitwise tests benchmarks examples

bench: $(STAMP)
	$(PY) benchmarks/metrics.py
	$(PY) benchmarks/evaluator.py
	$(PY) benchmarks/calibrators.py
	$(PY) benchmarks/tuning.py
	$(PY) benchmarks/vocabulary.py
	$(PY) benchmarks/fixed_width.py
	$(PY) benchmarks/contention.py
	$(PY) benchmarks/certify.py
	$(PY) benchmarks/sharded_pipeline.py

docs: $(STAMP)
	$(PY) -m pip install -q -e ".[docs]"
	$(PY) -m mkdocs build --strict

clean:
	rm -rf $(VENV) build *.egg-info
