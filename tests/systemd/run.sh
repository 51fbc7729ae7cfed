#!/usr/bin/env bash
# `make test-systemd`: the service under a real systemd (the host's systemd is not PID 1).
#
# A Debian bookworm root (mmdebstrap, cached in $CACHE/rootfs) is booted with systemd-nspawn on a
# throw-away overlay, `make install` runs inside it exactly as an engineer would run it, and then:
# the unit starts and reports its STATUS=, a synthetic night dropped into the data root is calibrated
# and plate-solved under the unit's hardening, `systemctl reload` triggers a rescan, the journal holds
# the structured fields, and `systemctl stop` ends cleanly. The container is torn down on any exit.
#
# Needs root, a Debian mirror (from the host's apt sources) and PyPI (pip inside the container; its
# cache, kept in $CACHE/pip, spares rebuilding systemd-python). Wall time on a loaded 2-core machine:
# ~5 min the first time (the root file system), ~2.5 min after.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${ASTEP_TEST_CACHE:-/var/cache/astep-cal-test}
BASE=$CACHE/rootfs
NIGHT=2026-07-01
N_SCIENCE=3
started=$(date +%s)

say() { printf 'test-systemd [%4ds] %s\n' $(( $(date +%s) - started )) "$*"; }
die() { say "FAIL: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (systemd-nspawn, mmdebstrap, overlay mounts)"

# --- host tools ------------------------------------------------------------------------------------
if ! command -v systemd-nspawn >/dev/null || ! command -v mmdebstrap >/dev/null; then
    say "installing systemd-container mmdebstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd-container mmdebstrap
fi

# --- the cached root file system -------------------------------------------------------------------
# Debian bookworm with systemd and the project's own Debian packages, so that `make install` in each
# run (from this pristine root) finds them installed and does not apt-get ~400 MB every time.
# mmdebstrap rather than debootstrap: apt resolves the packages (debootstrap's resolver does not follow
# virtual ones) and downloads in parallel; the .debs the host already has (`make test` installed the
# same packages) are hard-linked in instead of downloaded. Together ~2.5x faster than debootstrap.
packages="systemd,systemd-sysv,dbus,procps,python3,make,$(make -s -C "$REPO" print-debian-packages | tr ' ' ',')"
# Runs may overlap (developers share a machine): the root is (re)built under an exclusive lock, and
# every run then holds a shared one, so no rebuild pulls the root from under a running container.
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock -x 9
if [ "$(cat "$BASE/.astep-cal-packages" 2>/dev/null)" != "$packages" ]; then
    mirror=${DEBIAN_MIRROR:-$(sed -n 's/^URIs: *\([^ ]*debian\/*\)$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)}
    [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $2 ~ /debian\/?$/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null)
    [ -n "$mirror" ] || die "no Debian mirror in the apt sources: set DEBIAN_MIRROR"
    say "mmdebstrap bookworm into $BASE (once)"
    rm -rf "$BASE.new"
    mmdebstrap --variant=minbase --include="$packages" --dpkgopt=force-unsafe-io \
        --setup-hook='mkdir -p "$1/var/cache/apt/archives"; cp -l /var/cache/apt/archives/*.deb "$1/var/cache/apt/archives/" 2>/dev/null || true' \
        bookworm "$BASE.new" "$mirror" > "$CACHE/mmdebstrap.log" 2>&1 \
        || { tail -20 "$CACHE/mmdebstrap.log"; die "mmdebstrap failed (log: $CACHE/mmdebstrap.log)"; }
    echo "$packages" > "$BASE.new/.astep-cal-packages"
    rm -rf "$BASE" && mv "$BASE.new" "$BASE"
fi
flock -s 9

# --- boot a throw-away copy ------------------------------------------------------------------------
# The run's changes (the venv of `make install`, ~600 MB) go to a tmpfs: dropped in an instant at the end.
RUN=$(mktemp -d /var/tmp/astep-cal-systemd.XXXXXX)
NSPAWN=""
PID1=""

teardown() {
    local code=$?
    if [ -n "$PID1" ] && [ "$code" != 0 ]; then
        say "--- systemctl status / journal of astep-cal (failure) ---"
        C systemctl status --no-pager -n 0 astep-cal 2>&1 || true
        C journalctl -u astep-cal --no-pager 2>&1 | tail -40 || true
    fi
    if [ -n "$NSPAWN" ] && kill -0 "$NSPAWN" 2>/dev/null; then
        [ -n "$PID1" ] && kill -RTMIN+4 "$PID1" 2>/dev/null  # systemd's "poweroff" signal
        for _ in $(seq 30); do kill -0 "$NSPAWN" 2>/dev/null || break; sleep 1; done
        kill -KILL "$NSPAWN" 2>/dev/null && sleep 1
    fi
    # Never rm through a mount: the overlay's lower directory is the cached root.
    umount "$RUN/root" 2>/dev/null || true
    umount "$RUN" 2>/dev/null || true
    if mountpoint -q "$RUN/root" || mountpoint -q "$RUN"; then say "warning: $RUN still mounted, left in place"
    else rm -rf "$RUN"; fi
    say "$([ "$code" = 0 ] && echo PASSED || echo FAILED) in $(( $(date +%s) - started )) s"
    exit "$code"
}
trap teardown EXIT
trap 'exit 130' INT TERM

mount -t tmpfs -o size=4G,mode=0755 astep-cal-test "$RUN"
mkdir -p "$RUN/upper" "$RUN/work" "$RUN/root" "$CACHE/pip"
mount -t overlay overlay -o "lowerdir=$BASE,upperdir=$RUN/upper,workdir=$RUN/work" "$RUN/root"

binds=(--bind-ro="$REPO:/src/astep-cal" --bind="$CACHE/pip:/root/.cache/pip")
# pip inside trusts what the host trusts (some sites reach PyPI through a TLS proxy with its own CA).
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then binds+=(--bind-ro=/etc/ssl/certs/ca-certificates.crt:/etc/ssl/host-ca.crt); fi

say "booting the container"
# The host's network namespace: `make install` needs PyPI. The unit has PrivateNetwork=yes anyway.
setsid systemd-nspawn --quiet --register=no --keep-unit -D "$RUN/root" -M "astep-cal-test-$$" \
    "${binds[@]}" --boot --console=read-only systemd.firstboot=off > "$RUN/console.log" 2>&1 &
NSPAWN=$!
for _ in $(seq 60); do  # the container's PID 1 ends up a child of nspawn (a subreaper)
    PID1=$(cat /proc/"$NSPAWN"/task/*/children 2>/dev/null | awk '{print $1}')
    [ -n "$PID1" ] && [ -S "/proc/$PID1/root/run/systemd/private" ] && break
    kill -0 "$NSPAWN" 2>/dev/null || { cat "$RUN/console.log"; die "systemd-nspawn exited"; }
    PID1=""; sleep 1
done
[ -n "$PID1" ] || die "the container's systemd did not come up in 60 s"

# A command inside the container, with a clean environment (not the host's PATH, pip settings …).
C() {
    timeout 600 nsenter -t "$PID1" -a env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LANG=C.UTF-8 ${PIP_CERT_IN:+PIP_CERT=$PIP_CERT_IN} "$@"
}
PIP_CERT_IN=""
[ -f /etc/ssl/certs/ca-certificates.crt ] && PIP_CERT_IN=/etc/ssl/host-ca.crt
state=$(C systemctl is-system-running --wait || true)
say "container up: $state"

# wait_for SECONDS DESCRIPTION 'SHELL CONDITION': poll until the condition (evaluated here) holds.
wait_for() {
    local limit=$1 what=$2 condition=$3
    for _ in $(seq "$limit"); do eval "$condition" >/dev/null 2>&1 && return 0; sleep 1; done
    die "$what: not seen within $limit s"
}
status_text() { C systemctl show -P StatusText astep-cal; }
events() { C journalctl -u astep-cal -o json --no-pager "EVENT=$1" | grep -c . || true; }

# --- install as an engineer would ------------------------------------------------------------------
say "make install (inside)"
C make -s -C /src/astep-cal install > "$RUN/install.log" 2>&1 || { tail -30 "$RUN/install.log"; die "make install failed"; }
say "make install done"
C id astep-cal > /dev/null || die "make install did not create the user astep-cal"
C systemctl cat astep-cal > /dev/null || die "systemd does not know astep-cal.service after make install"
C make -s -C /src/astep-cal install > "$RUN/install2.log" 2>&1 || { tail -30 "$RUN/install2.log"; die "second make install failed"; }
grep -q "keeping existing /etc/astep-cal/astep-cal.toml" "$RUN/install2.log" || die "second make install did not keep the config"

# --- start -----------------------------------------------------------------------------------------
C systemctl enable --now astep-cal || die "systemctl enable --now astep-cal failed"
wait_for 60 "STATUS= idle" '[ "$(status_text)" = "idle — 0 nights done" ]'
status=$(C systemctl status --no-pager astep-cal || true)
echo "$status" | sed -n '1,6p'
echo "$status" | grep -q "Active: active (running)" || die "not active (running)"
echo "$status" | grep -q 'Status: "idle — 0 nights done"' || die "STATUS= text missing: $(status_text)"
pid=$(C systemctl show -P MainPID astep-cal)

# The live unit's exposure, as systemd itself computes it.
exposure=$(C systemd-analyze security --no-pager astep-cal | sed -n 's/.*Overall exposure level for astep-cal.service: \([0-9.]*\).*/\1/p')
say "systemd-analyze security astep-cal (live): $exposure"
awk -v e="$exposure" 'BEGIN { exit !(e != "" && e <= 2.0) }' || die "exposure $exposure > 2.0"

# --- a night arrives -------------------------------------------------------------------------------
# Written the way a transfer does it: elsewhere, then moved in, then the completion marker. Group
# astep-cal + group-writable: the service writes the night's _CAL directory next to the raw ones.
say "a synthetic $NIGHT night arrives"
C sh -c "umask 002 && mkdir -p /srv/incoming && /opt/astep-cal/bin/python -c '
from pathlib import Path
from astep_cal.synthetic import NightSpec, make_night
# tests/conftest.py SMALL: 512² frames of a 1° field, solvable with the Tycho-2 07/08 indexes
spec = NightSpec(date=\"$NIGHT\", shape=(512, 512), pixel_scale_arcsec=7.2, fwhm_arcsec=18.0, n_science=$N_SCIENCE,
                 n_cosmic_rays=40, n_hot_pixels=80, dead_column=150)
make_night(Path(\"/srv/incoming\"), spec)
' && chgrp -R astep-cal /srv/incoming/$NIGHT && mv /srv/incoming/$NIGHT /srv/astep/ && touch /srv/astep/$NIGHT/NIGHT_COMPLETE" \
    || die "could not make the synthetic night"
wait_for 300 "night $NIGHT processed (event night_done)" '[ "$(events night_done)" -ge 1 ]'
wait_for 10 "STATUS= after the night" '[ "$(status_text)" = "idle — 1 nights done, last $NIGHT" ]'
say "processed: $(status_text)"
solved=$(events frame_solved)
[ "$solved" = "$N_SCIENCE" ] || die "$solved frames solved, expected $N_SCIENCE (solve-field under the hardening)"
[ "$(events frame_failed)" = 0 ] || die "frames failed: $(C journalctl -u astep-cal --no-pager EVENT=frame_failed)"
cal=$(C sh -c "ls /srv/astep/$NIGHT/$NIGHT-CAMS_CAL/*_CAL.fits | wc -l")
[ "$cal" = "$N_SCIENCE" ] || die "$cal CAL files, expected $N_SCIENCE"
C test -f /var/lib/astep-cal/ledger.json || die "no ledger in the StateDirectory"
C test ! -e /srv/astep/.astep-cal || die "the ledger went into the data root, not the StateDirectory"
C astep-cal status --config /etc/astep-cal/astep-cal.toml /srv/astep | tee "$RUN/status.txt"
grep -q "daemon (pid $pid)" "$RUN/status.txt" || die "astep-cal status does not show the running daemon"

# Structured journal fields (logs.py sends them through systemd.journal under systemd).
C journalctl -u astep-cal -o json --no-pager EVENT=frame_solved | head -1 > "$RUN/event.json"
/usr/bin/python3 - "$RUN/event.json" "$NIGHT" <<'EOF' || die "journal entry lacks structured fields"
import json, sys
entry = json.loads(open(sys.argv[1]).read())
missing = [k for k in ("EVENT", "NIGHT", "FRAME", "DURATION_S") if k not in entry]
assert not missing and entry["NIGHT"] == sys.argv[2], (missing, entry.get("NIGHT"))
print("journal fields:", {k: entry[k] for k in ("EVENT", "NIGHT", "FRAME", "DURATION_S", "PRIORITY")})
EOF

# --- reload = rescan -------------------------------------------------------------------------------
before=$(events rescan)
C systemctl reload astep-cal || die "systemctl reload failed"
wait_for 30 "a rescan after reload" '[ "$(events rescan)" -gt "$before" ]'
[ "$(C systemctl show -P MainPID astep-cal)" = "$pid" ] || die "reload restarted the process"
[ "$(events config_reloaded)" -ge 1 ] || die "no config_reloaded event"
say "reload: rescan events $before -> $(events rescan), same pid $pid"

# --- stop ------------------------------------------------------------------------------------------
t0=$(date +%s)
C systemctl stop astep-cal || die "systemctl stop failed"
result=$(C systemctl show -P Result astep-cal)
code=$(C systemctl show -P ExecMainStatus astep-cal)
say "stopped in $(( $(date +%s) - t0 )) s: Result=$result ExecMainStatus=$code"
[ "$result" = success ] && [ "$code" = 0 ] || die "unclean stop"
[ "$(events daemon_stopped)" = 1 ] || die "no daemon_stopped event"

# --- watchdog and restart, for real: a short WatchdogSec must be fed by the idle daemon's pings, and a
# killed daemon must be restarted (Restart=on-failure) and find its ledger in the StateDirectory.
C mkdir -p /etc/systemd/system/astep-cal.service.d
C sh -c 'printf "[Service]\nWatchdogSec=4s\nRestartSec=1s\n" > /etc/systemd/system/astep-cal.service.d/test.conf'
C systemctl daemon-reload
C systemctl start astep-cal || die "restart after stop failed"
pid=$(C systemctl show -P MainPID astep-cal)
sleep 12  # three watchdog periods: without WATCHDOG=1 every 2 s systemd would have killed it
[ "$(C systemctl show -P MainPID astep-cal)" = "$pid" ] && [ "$(C systemctl show -P NRestarts astep-cal)" = 0 ] \
    || die "the service did not survive WatchdogSec=4s (watchdog pings missing)"
[ "$(status_text)" = "idle — 1 nights done" ] || die "after a restart the ledger's night is not counted: $(status_text)"
C kill -KILL "$pid"
wait_for 30 "a restart after SIGKILL" '[ "$(C systemctl show -P NRestarts astep-cal)" = 1 ] && [ "$(status_text)" = "idle — 1 nights done" ]'
say "watchdog fed for 12 s at WatchdogSec=4s; SIGKILL -> restarted (pid $pid -> $(C systemctl show -P MainPID astep-cal))"
C journalctl -u astep-cal --no-pager > "$CACHE/last-journal.txt" || true
C systemctl stop astep-cal
