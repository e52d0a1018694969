# The two commands of the README: `make demo` and `make test`. Each creates .venv and installs
# requirements.txt when the venv is missing or the requirements changed; both are idempotent.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install clean-runs

install: $(STAMP)

$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) main_multi_trials.py --config_exp config/demo_synthetic.yaml

test: $(STAMP)
	$(PY) -m pytest -q tests

clean-runs:
	rm -rf runs wandb out_csv/*.csv .cache
