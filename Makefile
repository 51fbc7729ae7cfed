# astep-cal: the two set-up commands are `make demo` and `make test` (see README.md).
# Both install what is missing: Debian packages (as root, or through sudo) and a .venv.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEBIAN_PACKAGES := astrometry.net astrometry-data-tycho2-07-littleendian \
	astrometry-data-tycho2-08-littleendian astrometry-data-tycho2-09-littleendian \
	libsystemd-dev pkg-config gcc python3-dev python3-venv fitsverify libcfitsio-bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=

.PHONY: all system-deps venv demo test test-faults bench bench-compression clean install install-app install-files \
	install-activate test-systemd print-debian-packages

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

# Plain against tile-compressed CAL files (README "Compact files"): ~1 min at 2048².
bench-compression: system-deps venv
	$(BIN)/python -m astep_cal.bench_compression $(BENCH_COMPRESSION_ARGS)

# --- deployment (README "Deploying the service") -------------------------------------------------
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
	$(DESTDIR)$(APP_DIR)/bin/pip install -q --upgrade pip
	@# Built from a copy: pip's in-tree build would write into the (possibly read-only) source tree.
	src=$$(mktemp -d) && trap 'rm -rf "$$src"' EXIT && cp -r pyproject.toml README.md daemon "$$src"/ && \
	  $(DESTDIR)$(APP_DIR)/bin/pip install -q --upgrade "$$src"
	@if [ -n "$(DESTDIR)" ]; then for f in $(DESTDIR)$(APP_DIR)/bin/*; do \
	  [ -L "$$f" ] || sed -i "1s|^#!$(DESTDIR)|#!|" "$$f"; done; fi

install-files:
	install -d $(DESTDIR)$(PREFIX)/bin
	ln -sfn $(APP_DIR)/bin/astep-cal $(DESTDIR)$(PREFIX)/bin/astep-cal
	install -d $(DESTDIR)$(UNIT_DIR) $(DESTDIR)$(SYSUSERS_DIR) $(DESTDIR)$(CONF_DIR)
	sed -e 's|/usr/local/bin/astep-cal|$(PREFIX)/bin/astep-cal|' -e 's|^ReadWritePaths=-/srv/astep$$|ReadWritePaths=-$(DATA_ROOT)|' \
	  -e 's|/etc/astep-cal/|$(CONF_DIR)/|g' service/astep-cal.service > $(DESTDIR)$(UNIT_DIR)/astep-cal.service
	install -m 644 service/astep-cal.sysusers.conf $(DESTDIR)$(SYSUSERS_DIR)/astep-cal.conf
	@# The default config with the data root and the ledger in the service's StateDirectory; an existing
	@# config is the site's: never overwritten.
	@conf=$(DESTDIR)$(CONF_DIR)/astep-cal.toml; if [ -e $$conf ]; then echo "keeping existing $$conf"; else \
	  sed -e 's|^data_root = ""|data_root = "$(DATA_ROOT)"|' -e 's|^ledger = ""|ledger = "$(STATE_DIR)/ledger.json"|' \
	    etc/astep-cal.toml > $$conf.new && \
	  grep -q '^data_root = "$(DATA_ROOT)"' $$conf.new && grep -q '^ledger = "$(STATE_DIR)/ledger.json"' $$conf.new && \
	  chmod 644 $$conf.new && mv $$conf.new $$conf && echo "installed $$conf"; fi

install-activate:
	@if [ -n "$(DESTDIR)" ]; then echo "DESTDIR set: no user created, systemd not reloaded"; exit 0; fi; \
	if command -v systemd-sysusers >/dev/null; then systemd-sysusers $(SYSUSERS_DIR)/astep-cal.conf; \
	else echo "make install: no systemd-sysusers; create the system user astep-cal yourself" >&2; fi; \
	if [ ! -e $(DATA_ROOT) ] && id astep-cal >/dev/null 2>&1; then \
	  install -d -o astep-cal -g astep-cal -m 2775 $(DATA_ROOT) && echo "created data root $(DATA_ROOT)"; fi; \
	if [ -d /run/systemd/system ]; then systemctl daemon-reload && \
	  echo "next: systemctl enable --now astep-cal   (already running: systemctl restart astep-cal)"; \
	else echo "systemd is not running here: unit installed, not loaded"; fi

test-systemd:
	bash tests/systemd/run.sh

print-debian-packages:
	@echo $(DEBIAN_PACKAGES)

clean:
	rm -rf $(VENV) build *.egg-info daemon/*.egg-info .pytest_cache
