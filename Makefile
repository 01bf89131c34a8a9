# PicoGrid: every target sets up its own virtualenv first, so a fresh machine needs only python3.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
EXIT   ?= 0

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/picogrid demo $(if $(filter 1,$(EXIT)),--exit,)

test: $(STAMP)
	PICOGRID_REQUIRE_TYPECHECK=1 $(PY) -m pytest -q

bench: $(STAMP)
	$(VENV)/bin/picogrid bench

clean:
	rm -rf $(VENV) build *.egg-info
