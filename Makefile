# astep-cal: the two set-up commands are `make demo` and `make test` (see README.md).
# Both install what is missing: Debian packages (as root, or through sudo) and a .venv.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEBIAN_PACKAGES := astrometry.net astrometry-data-tycho2-07-littleendian \
	astrometry-data-tycho2-08-littleendian astrometry-data-tycho2-09-littleendian \
	libsystemd-dev pkg-config gcc python3-dev python3-venv fitsverify libcfitsio-bin gnupg gpgv
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=

.PHONY: all system-deps venv demo test test-slow test-faults docs season bench bench-health bench-state bench-photometry bench-compression bench-late bench-unsolvable soak soak-short fuzz fuzz-short clean install \
	install-app install-files install-activate test-systemd print-debian-packages lock bundle upgrade-bundle

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

# LOCKED_INSTALL(venv, lock files): install exactly the lock files into a venv, immune to what the index
# holds on the day (docs/pages/development.md, "Set-up"). First the locked pip, setuptools and wheel
# (requirements-bootstrap.lock), so that nothing depends on the pip the interpreter ships (Debian bookworm's venv brings pip 23.0.1, which
# resolves extras such as dask[array] against the index). Then every locked distribution with --no-deps:
# no resolver runs, so nothing outside the lock can be chosen; --require-hashes checks each file and
# --no-build-isolation builds the few sdists with the locked setuptools instead of the index's newest.
# `pip check` then proves the lock is closed (every requirement of every installed distribution met).
PIP_QUIET := -q --disable-pip-version-check --no-input
define LOCKED_INSTALL
	$(1)/bin/python -m pip install $(PIP_QUIET) --require-hashes --no-deps -r requirements-bootstrap.lock
	$(1)/bin/python -m pip install $(PIP_QUIET) --require-hashes --no-deps --no-build-isolation $(foreach f,$(2),-r $(f))
	$(1)/bin/python -m pip check
endef

# Exactly the versions of the lock files (the ones the bundle ships), checked against their hashes; then
# the project itself, editable, without resolving anything more.
$(BIN)/.installed: pyproject.toml requirements-bootstrap.lock requirements.lock requirements-test.lock | system-deps
	$(PYTHON) -m venv $(VENV)
	$(call LOCKED_INSTALL,$(VENV),requirements.lock requirements-test.lock)
	$(BIN)/python -m pip install $(PIP_QUIET) --no-deps --no-build-isolation -e .
	touch $@

# Regenerate the lock files from .venv (after changing the dependencies in pyproject.toml and installing
# them there: .venv/bin/pip install -e '.[test]'), then commit them.
lock:
	$(BIN)/python deploy/lock.py

demo: system-deps venv
	$(BIN)/astep-cal demo

test: system-deps venv
	$(BIN)/pytest -m "not faults and not slow" $(PYTEST_ARGS)

# The long end-to-end tests kept out of make test's ~13 min (the solve budget's timed nights, the three
# front-ends compared on one archive); .ci/run runs them right after make test.
test-slow: system-deps venv
	$(BIN)/pytest -m slow $(PYTEST_ARGS)

# The documentation site (docs/pages/, configured by docs/mkdocs.yml) into site/; --strict: a broken link or anchor is an error.
docs: venv
	$(BIN)/mkdocs build --strict --config-file docs/mkdocs.yml

# SIGKILL at every named point of the pipeline, then a restart (tests/test_crash.py), and the fault
# scenarios of tests/test_faults.py (disk full, data root gone, broken solver, backlog): ~6 min.
test-faults: system-deps venv
	$(BIN)/pytest -m faults $(PYTEST_ARGS)

# The instrument-health season (docs/pages/health.md) through the real daemon with 22 nights (~6 min);
# make test runs the same test with 8 nights (~2 min).
season: system-deps venv
	ASTEP_SEASON_NIGHTS=22 $(BIN)/pytest -q -s tests/test_health.py $(PYTEST_ARGS)

# The health steps' cost against the frame work of a 4096² night, same run, medians (~8 min).
bench-health: system-deps venv
	$(BIN)/python -m astep_cal.devtools.bench_health $(BENCH_HEALTH_ARGS)

bench: system-deps venv
	$(BIN)/python -m astep_cal.devtools.bench $(BENCH_ARGS)

# The state at archive scale: ledgers of 150 and 500 nights x 1000 frames (~10 min, ~1.5 GB of scratch).
bench-state: system-deps venv
	$(BIN)/python -m astep_cal.devtools.bench_state $(BENCH_STATE_ARGS)

# A winter compressed into minutes through the real daemon, with faults (docs/pages/performance.md; root: tmpfs
# mounts). Full: 30 nights, ~6 min; soak-short: 8 nights, ~2 min (.ci/run).
SOAK_ARGS ?=
soak: system-deps venv
	$(BIN)/python -m astep_cal.devtools.soak $(SOAK_ARGS)

soak-short: system-deps venv
	$(BIN)/python -m astep_cal.devtools.soak --nights 8 --out bench-results/soak-short.json $(SOAK_ARGS)

# Hostile input (docs/pages/hostile-input.md): mutated FITS files, ledgers, summaries and configs through the
# real commands, under a memory cap; fails on any traceback, hang or input not recorded exactly once.
# Full: 10 000 inputs (~30 min); fuzz-short: 400 (~2 min, .ci/run).
FUZZ_ARGS ?=
fuzz: system-deps venv
	$(BIN)/python -m astep_cal.devtools.fuzz --count 10000 --out bench-results/fuzz.json $(FUZZ_ARGS)

fuzz-short: system-deps venv
	$(BIN)/python -m astep_cal.devtools.fuzz --count 400 --out bench-results/fuzz-short.json $(FUZZ_ARGS)

# Closing a winter night's light curves: 1400 catalogues of 4000 sources, time and peak RSS (~1 min).
bench-photometry: system-deps venv
	$(BIN)/python -m astep_cal.devtools.bench_photometry $(BENCH_PHOTOMETRY_ARGS)

# Plain against tile-compressed CAL files (docs/pages/compression.md): ~1 min at 2048².
bench-compression: system-deps venv
	$(BIN)/python -m astep_cal.devtools.bench_compression $(BENCH_COMPRESSION_ARGS)

# A late frame's cost and the bytes a night writes, compressed (default) beside plain (docs/pages/compression.md).
bench-late: system-deps venv
	$(BIN)/python -m astep_cal.devtools.bench_late $(BENCH_LATE_ARGS)

# A night of 100 frames that cannot be plate-solved against the same night with solving off, through the real
# daemon, alternated rounds (docs/pages/headers-and-targets.md, "A bounded solve cost"): ~4 min a round at 512².
BENCH_UNSOLVABLE_ARGS ?=
bench-unsolvable: system-deps venv
	$(BIN)/python -m astep_cal.devtools.bench_unsolvable $(BENCH_UNSOLVABLE_ARGS)

# --- deployment (docs/pages/operations.md) ----------------------------------------------------------------
# `make install` (as root) on the observatory machine; running it again upgrades in place and keeps
# /etc/astep-cal/astep-cal.toml. DESTDIR stages every file under another root (packaging, a chroot): the
# venv's scripts still name the final paths, and no user is created and systemd is not told.
DESTDIR ?=
PREFIX ?= /usr/local
APP_DIR ?= /opt/astep-cal
# Debian's Python, not a pyenv one: the service user must be able to run it (ProtectHome hides /root).
INSTALL_PYTHON ?= /usr/bin/python3
DATA_ROOT ?= /srv/astep
CONF_DIR ?= /etc/astep-cal
UNIT_DIR ?= /etc/systemd/system
SYSUSERS_DIR ?= /usr/lib/sysusers.d
STATE_DIR := /var/lib/astep-cal

install: system-deps install-app install-files install-activate

install-app:
	@[ -x $(INSTALL_PYTHON) ] || { echo "make install: no $(INSTALL_PYTHON) (set INSTALL_PYTHON=...)" >&2; exit 2; }
	$(INSTALL_PYTHON) -m venv $(DESTDIR)$(APP_DIR)
	@# The locked versions (those make test ran with and the bundle ships), then the project alone.
	$(call LOCKED_INSTALL,$(DESTDIR)$(APP_DIR),requirements.lock)
	@# Built from a copy: pip's in-tree build would write into the (possibly read-only) source tree.
	src=$$(mktemp -d) && trap 'rm -rf "$$src"' EXIT && cp -r pyproject.toml README.md daemon "$$src"/ && \
	  $(DESTDIR)$(APP_DIR)/bin/python -m pip install $(PIP_QUIET) --no-deps --no-build-isolation --upgrade "$$src"
	@if [ -n "$(DESTDIR)" ]; then for f in $(DESTDIR)$(APP_DIR)/bin/*; do \
	  [ -L "$$f" ] || sed -i "1s|^#!$(DESTDIR)|#!|" "$$f"; done; fi

LAYOUT := DESTDIR='$(DESTDIR)' PREFIX='$(PREFIX)' COMMAND='$(APP_DIR)/bin/astep-cal' DATA_ROOT='$(DATA_ROOT)' \
	CONF_DIR='$(CONF_DIR)' UNIT_DIR='$(UNIT_DIR)' SYSUSERS_DIR='$(SYSUSERS_DIR)' STATE_DIR='$(STATE_DIR)' bash deploy/layout.sh

install-files:
	@$(LAYOUT) files service/astep-cal.service service/astep-cal.sysusers.conf etc/astep-cal.toml

install-activate:
	@$(LAYOUT) activate
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then \
	  echo "next: systemctl enable --now astep-cal   (already running: systemctl restart astep-cal)"; fi

# --- the offline bundle (docs/pages/operations.md, "Installing at the station") ----------------------------
# On a connected machine of the target's Debian release and architecture. Downloads are cached in
# BUNDLE_CACHE (a rerun fetches nothing); the archive, its .sha256 and its .manifest go to BUNDLE_OUT.
# VERSION= builds the project's wheel with another version (default: __version__ of the tree).
BUNDLE_CACHE ?= $(shell [ -w /var/cache ] && echo /var/cache/astep-cal-bundle || echo .bundle-cache)
BUNDLE_OUT ?= dist
VERSION ?=
# SIGN_KEY=<gpg key id>: sign the archive (ARCHIVE.sig, and the public key as bundle-signing-key.gpg).
SIGN_KEY ?=
BUNDLE := $(BIN)/python deploy/bundle.py --cache '$(BUNDLE_CACHE)' --out '$(BUNDLE_OUT)' $(if $(VERSION),--version '$(VERSION)') $(if $(SIGN_KEY),--sign-key '$(SIGN_KEY)')

bundle: system-deps venv
	@$(BUNDLE)

# FROM=<the .manifest of the bundle installed there>: only what changed (normally the project's wheel).
upgrade-bundle: system-deps venv
	@[ -n "$(FROM)" ] || { echo "make upgrade-bundle: set FROM=<manifest of the installed bundle> (dist/*.manifest)" >&2; exit 2; }
	@$(BUNDLE) --from '$(FROM)'

test-systemd:
	bash tests/systemd/run.sh

print-debian-packages:
	@echo $(DEBIAN_PACKAGES)

clean:
	rm -rf $(VENV) build *.egg-info daemon/*.egg-info .pytest_cache dist site
