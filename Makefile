# Two commands on a fresh machine: `make run` (set up, start the app) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch and torchvision are pinned to the releases this machine carries on disk;
# the pyproject ranges admit them, so pip installs nothing newer.
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: run test lint bench bench-smoke mutants fuzz clean

$(VENV)/bin/activate:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.installed: $(VENV)/bin/activate pyproject.toml
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e ".[cam]"
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(PIP) install -q -e ".[test,dev,oidc,cam,ray]"
	touch $@

run: $(VENV)/.installed
	$(VENV)/bin/streamlit run app.py

test: $(VENV)/.installed-test
	$(PY) -m pytest

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(VENV)/.installed
	for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# The same scripts at tiny sizes (seconds each): they run, their ratios mean nothing.
bench-smoke: $(VENV)/.installed
	for b in bench/*.py; do echo "== $$b"; $(PY) $$b --smoke || exit 1; done

# Plausible bugs applied one at a time to a copy of the tree; fails if a test misses one.
mutants: $(VENV)/.installed-test
	$(PY) tests/mutants.py

# Every page from 400 random and hostile URLs (make test tries 80 per page).
fuzz: $(VENV)/.installed-test
	KDWB_FUZZ_QUERIES=400 $(PY) -m pytest -q tests/test_url_fuzz.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
