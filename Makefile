# PicoGrid: every target sets up its own virtualenv first, so a fresh machine needs only python3.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
EXIT   ?= 0

.PHONY: setup demo test bench clean browser screenshots

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/picogrid demo $(if $(filter 1,$(EXIT)),--exit,)

# Debian's chromium for the browser tests: installed when running as root with apt-get;
# elsewhere those tests are skipped and say why.
browser:
	@test -x /usr/bin/chromium || { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  (apt-get update -q && apt-get install -y -q chromium) || echo "chromium could not be installed: browser tests will be skipped"; \
	else echo "not root or no apt-get: chromium not installed, browser tests will be skipped"; fi; }

test: $(STAMP) browser
	PICOGRID_REQUIRE_TYPECHECK=1 PICOGRID_REQUIRE_MICROPYTHON=1 $(PY) -m pytest -q

screenshots: $(STAMP) browser
	$(VENV)/bin/picogrid screenshots --out var/screenshots

bench: $(STAMP)
	$(VENV)/bin/picogrid bench

clean:
	rm -rf $(VENV) build *.egg-info
