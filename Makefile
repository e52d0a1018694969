# The two commands of the README: `make demo` and `make test`. Each creates .venv and installs
# requirements-dev.txt (runtime + test tools) when the venv is missing or the requirements
# changed; both are idempotent. `make test` runs ruff and the whole suite on two pytest-xdist
# workers (one thread each; a file's tests stay on one worker, so its fixtures are built once;
# `make test WORKERS=8` on a bigger machine); `make test-fast` skips the end-to-end runs marked slow.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -n $(WORKERS) --dist loadfile

.PHONY: demo test test-fast lint install clean-runs

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) main_multi_trials.py --config_exp config/demo_synthetic.yaml

lint: $(STAMP)
	$(PY) -m ruff check .

test: lint
	$(PYTEST) tests

test-fast: lint
	$(PYTEST) -m "not slow" tests

clean-runs:
	rm -rf runs wandb out_csv/*.csv out_csv/*.png .cache
