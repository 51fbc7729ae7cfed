# astep-cal: the two set-up commands are `make demo` and `make test` (see README.md).
# Both install what is missing: Debian packages (as root, or through sudo) and a .venv.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEBIAN_PACKAGES := astrometry.net astrometry-data-tycho2-07-littleendian \
	astrometry-data-tycho2-08-littleendian astrometry-data-tycho2-09-littleendian \
	libsystemd-dev pkg-config gcc python3-dev python3-venv
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=

.PHONY: all system-deps venv demo test test-faults bench clean

all: test

system-deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "Installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

venv: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml | system-deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

demo: system-deps venv
	$(BIN)/astep-cal demo

test: system-deps venv
	$(BIN)/pytest -m "not faults" $(PYTEST_ARGS)

# SIGKILL at every named point of the pipeline, then a restart (tests/test_crash.py): a few minutes.
test-faults: system-deps venv
	$(BIN)/pytest -m faults $(PYTEST_ARGS)

bench: system-deps venv
	$(BIN)/python -m astep_cal.bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info daemon/*.egg-info .pytest_cache
