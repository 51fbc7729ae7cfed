#!/usr/bin/env bash
# The files of the service and their activation, shared by `make install` and the bundle's install.sh.
#
#   layout.sh files UNIT SYSUSERS CONFIG   the command link, the unit, the sysusers file, the config
#                                          (only when there is none: the site's is never overwritten)
#   layout.sh activate                     the system user, the data root (when missing), daemon-reload
#
# Settings (environment, the Makefile's names and defaults): DESTDIR PREFIX COMMAND (what the command
# links to) DATA_ROOT CONF_DIR UNIT_DIR SYSUSERS_DIR STATE_DIR. With DESTDIR, files are staged under it
# and `activate` creates no user and does not tell systemd.
set -euo pipefail

DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/usr/local}
COMMAND=${COMMAND:-/opt/astep-cal/bin/astep-cal}
DATA_ROOT=${DATA_ROOT:-/srv/astep}
CONF_DIR=${CONF_DIR:-/etc/astep-cal}
UNIT_DIR=${UNIT_DIR:-/etc/systemd/system}
SYSUSERS_DIR=${SYSUSERS_DIR:-/usr/lib/sysusers.d}
STATE_DIR=${STATE_DIR:-/var/lib/astep-cal}

die() { echo "layout: $*" >&2; exit 2; }

files() {
    local unit=$1 sysusers=$2 config=$3 f
    for f in "$unit" "$sysusers" "$config"; do [ -f "$f" ] || die "missing $f"; done
    install -d "$DESTDIR$PREFIX/bin"
    ln -sfn "$COMMAND" "$DESTDIR$PREFIX/bin/astep-cal"
    install -d "$DESTDIR$UNIT_DIR" "$DESTDIR$SYSUSERS_DIR" "$DESTDIR$CONF_DIR"
    sed -e "s|/usr/local/bin/astep-cal|$PREFIX/bin/astep-cal|" -e "s|^ReadWritePaths=-/srv/astep\$|ReadWritePaths=-$DATA_ROOT|" \
        -e "s|/etc/astep-cal/|$CONF_DIR/|g" "$unit" > "$DESTDIR$UNIT_DIR/astep-cal.service.new"
    mv "$DESTDIR$UNIT_DIR/astep-cal.service.new" "$DESTDIR$UNIT_DIR/astep-cal.service"
    install -m 644 "$sysusers" "$DESTDIR$SYSUSERS_DIR/astep-cal.conf"
    # The default config with the data root and the ledger in the service's StateDirectory; an existing
    # config is the site's: never overwritten.
    local conf=$DESTDIR$CONF_DIR/astep-cal.toml
    if [ -e "$conf" ]; then
        echo "keeping existing $conf"
    else
        sed -e "s|^data_root = \"\"|data_root = \"$DATA_ROOT\"|" -e "s|^ledger = \"\"|ledger = \"$STATE_DIR/ledger.json\"|" \
            "$config" > "$conf.new"
        grep -q "^data_root = \"$DATA_ROOT\"" "$conf.new" && grep -q "^ledger = \"$STATE_DIR/ledger.json\"" "$conf.new" \
            || { rm -f "$conf.new"; die "$config has no empty data_root/ledger to fill in"; }
        chmod 644 "$conf.new" && mv "$conf.new" "$conf" && echo "installed $conf"
    fi
}

activate() {
    if [ -n "$DESTDIR" ]; then echo "DESTDIR set: no user created, systemd not reloaded"; return 0; fi
    if command -v systemd-sysusers >/dev/null; then systemd-sysusers "$SYSUSERS_DIR/astep-cal.conf"
    else echo "no systemd-sysusers; create the system user astep-cal yourself" >&2; fi
    if [ ! -e "$DATA_ROOT" ] && id astep-cal >/dev/null 2>&1; then
        install -d -o astep-cal -g astep-cal -m 2775 "$DATA_ROOT" && echo "created data root $DATA_ROOT"
    fi
    if [ -d /run/systemd/system ]; then systemctl daemon-reload
    else echo "systemd is not running here: unit installed, not loaded"; fi
}

case ${1:-} in
    files) [ $# = 4 ] || die "usage: layout.sh files UNIT SYSUSERS CONFIG"; files "$2" "$3" "$4" ;;
    activate) activate ;;
    *) die "usage: layout.sh files UNIT SYSUSERS CONFIG | layout.sh activate" ;;
esac
