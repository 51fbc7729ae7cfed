#!/usr/bin/env bash
# `make test-systemd`: the service installed from the offline bundle under a real systemd, in a container
# without any network (the host's systemd is not PID 1).
#
# `make bundle` and `make upgrade-bundle` run here on the host (downloads cached in BUNDLE_CACHE, the
# archives in $CACHE/dist). A minimal Debian bookworm with systemd (mmdebstrap, cached in
# $CACHE/rootfs-offline: no Python, no astrometry.net) is booted with systemd-nspawn --private-network on
# a throw-away overlay, the bundle is handed in read-only (as on a USB disk), and inside, with no
# network interface but `lo`: install.sh installs everything from the bundle alone (twice: idempotent,
# config kept); the unit starts and reports its STATUS=; a synthetic night dropped into the data root is
# calibrated and plate-solved by the real solve-field under the unit's hardening; `systemctl reload`
# triggers a rescan; the journal holds the structured fields; an upgrade bundle of another version is
# applied (the service restarts on it, keeps the ledger, processes a second night); `install.sh
# --rollback` returns to the first version (which reads the ledger the new one wrote); `systemctl stop`
# ends cleanly; the watchdog is fed; a SIGKILLed daemon is restarted. Torn down on any exit.
#
# Needs root, and on the host a Debian mirror and PyPI (make bundle, the root file system). Wall time on
# a loaded 2-core machine: ~6 min the first time (root file system, downloads), ~4 min after.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${ASTEP_TEST_CACHE:-/var/cache/astep-cal-test}
BASE=$CACHE/rootfs-offline
NIGHT2=2026-07-02
NIGHT=2026-07-01
N_SCIENCE=3
started=$(date +%s)

say() { printf 'test-systemd [%4ds] %s\n' $(( $(date +%s) - started )) "$*"; }
die() { say "FAIL: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (systemd-nspawn, mmdebstrap, overlay mounts)"

# --- host tools ------------------------------------------------------------------------------------
if ! command -v systemd-nspawn >/dev/null || ! command -v mmdebstrap >/dev/null || ! command -v gpg >/dev/null; then
    say "installing systemd-container mmdebstrap gnupg"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd-container mmdebstrap gnupg
fi

# --- the bundles, built here as on any connected machine -------------------------------------------
mkdir -p "$CACHE"
DIST=$(mktemp -d "$CACHE/dist.XXXXXX")  # this run's archives (runs may overlap)
trap 'rm -rf "$DIST"' EXIT
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$REPO/daemon/astep_cal/__init__.py")
upgrade_version="$version+upgradetest"
# Signed, as the project's bundles are: a throw-away Ed25519 key (never in the container's view).
KEYHOME=$(mktemp -d)
trap 'rm -rf "$DIST" "$KEYHOME"' EXIT
export GNUPGHOME=$KEYHOME
gpg --batch --passphrase '' --quick-gen-key "astep-cal test bundles <bundles@astep.test>" ed25519 sign never \
    > "$CACHE/gpg.log" 2>&1 || { cat "$CACHE/gpg.log"; die "gpg could not make the signing key"; }
SIGN=bundles@astep.test
say "make bundle (astep-cal $version) and make upgrade-bundle ($upgrade_version), signed"
make -s -C "$REPO" bundle BUNDLE_OUT="$DIST" SIGN_KEY=$SIGN > "$CACHE/bundle.log" 2>&1 || { tail -20 "$CACHE/bundle.log"; die "make bundle failed"; }
full=$(cd "$DIST" && ls astep-cal-"$version"-*.tar) || die "no bundle in $DIST"
make -s -C "$REPO" upgrade-bundle BUNDLE_OUT="$DIST" FROM="$DIST/${full%.tar}.manifest" VERSION="$upgrade_version" SIGN_KEY=$SIGN \
    > "$CACHE/upgrade-bundle.log" 2>&1 || { tail -20 "$CACHE/upgrade-bundle.log"; die "make upgrade-bundle failed"; }
upgrade=$(cd "$DIST" && ls astep-cal-upgrade-"$upgrade_version"-*.tar.gz) || die "no upgrade bundle in $DIST"
say "bundle $full: $(du -m "$DIST/$full" | cut -f1) MB; upgrade $upgrade: $(du -k "$DIST/$upgrade" | cut -f1) kB"

# --- the cached root file system -------------------------------------------------------------------
# A minimal Debian bookworm that runs systemd (what bundle.py assumes the target has: DEBIAN_BASE): no
# Python, no astrometry.net, no make — the bundle brings them. The .debs the host already has are
# hard-linked in instead of downloaded.
packages="systemd,systemd-sysv,dbus,procps"
# Runs may overlap (developers share a machine): the root is (re)built under an exclusive lock, and
# every run then holds a shared one, so no rebuild pulls the root from under a running container.
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
# The run's changes (what install.sh installs, ~2.5 GB with two releases) go to a tmpfs: dropped in an
# instant at the end.
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
    rm -rf "$DIST" "${KEYHOME:-}"
    say "$([ "$code" = 0 ] && echo PASSED || echo FAILED) in $(( $(date +%s) - started )) s"
    exit "$code"
}
trap teardown EXIT
trap 'exit 130' INT TERM

mount -t tmpfs -o size=6G,mode=0755 astep-cal-test "$RUN"
mkdir -p "$RUN/upper" "$RUN/work" "$RUN/root"
mount -t overlay overlay -o "lowerdir=$BASE,upperdir=$RUN/upper,workdir=$RUN/work" "$RUN/root"

say "booting the container (no network)"
# --private-network: a network namespace of its own with nothing but `lo`. Only the bundles come in,
# read-only, as from a USB disk.
setsid systemd-nspawn --quiet --register=no --keep-unit --private-network -D "$RUN/root" -M "astep-cal-test-$$" \
    --bind-ro="$DIST:/media/bundles" --boot --console=read-only systemd.firstboot=off > "$RUN/console.log" 2>&1 &
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
        HOME=/root LANG=C.UTF-8 "$@"
}
state=$(C systemctl is-system-running --wait || true)
links=$(C ls /sys/class/net | tr '\n' ' ')
say "container up: $state; network interfaces: $links"
[ "$links" = "lo " ] || die "the container has a network ($links): the install must be tested without one"
C sh -c 'command -v python3 || command -v solve-field' && die "the root already has Python or solve-field: not a minimal system"

# wait_for SECONDS DESCRIPTION 'SHELL CONDITION': poll until the condition (evaluated here) holds.
wait_for() {
    local limit=$1 what=$2 condition=$3
    for _ in $(seq "$limit"); do eval "$condition" >/dev/null 2>&1 && return 0; sleep 1; done
    die "$what: not seen within $limit s"
}
status_text() { C systemctl show -P StatusText astep-cal; }
events() { C journalctl -u astep-cal -o json --no-pager "EVENT=$1" | grep -c . || true; }

# --- install from the bundle, as an engineer would ---------------------------------------------------
# Copied from the disk, checked against the checksum printed by make bundle, extracted, installed.
install_from() {  # install_from ARCHIVE [install.sh arguments]: time and log of install.sh
    local archive=$1 dir; shift
    dir=$(basename "$archive" | sed 's/\.tar\(\.gz\)\{0,1\}$//')
    C sh -c "cd /root && cp /media/bundles/$archive /media/bundles/$archive.sha256 . && sha256sum -c $archive.sha256 \
        && tar -xf $archive && rm $archive" > /dev/null || die "could not copy, check or extract $archive"
    local t0; t0=$(date +%s)
    C "/root/$dir/install.sh" "$@" > "$RUN/install.log" 2>&1 || { tail -30 "$RUN/install.log"; die "install.sh of $archive failed"; }
    install_seconds=$(( $(date +%s) - t0 ))
    C rm -rf "/root/$dir"  # the installed system must not need the bundle any more
}
# Every install after the first: the installed install.sh checks the signature before reading the bundle.
install_signed() {  # install_signed ARCHIVE [install.sh arguments]
    local archive=$1; shift
    local t0; t0=$(date +%s)
    C /opt/astep-cal/install.sh --bundle "/media/bundles/$archive" "$@" > "$RUN/install.log" 2>&1 \
        || { tail -30 "$RUN/install.log"; die "install.sh --bundle $archive failed"; }
    install_seconds=$(( $(date +%s) - t0 ))
    grep -q "signature of $archive verified" "$RUN/install.log" || { cat "$RUN/install.log"; die "no signature check"; }
}
say "install.sh from $full (inside, no network)"
install_from "$full" --trust-key /media/bundles/bundle-signing-key.gpg
say "installed in $install_seconds s: $(tail -1 "$RUN/install.log")"
C id astep-cal > /dev/null || die "install.sh did not create the user astep-cal"
C systemctl cat astep-cal > /dev/null || die "systemd does not know astep-cal.service after install.sh"
[ "$(C astep-cal --version)" = "astep-cal $version" ] || die "astep-cal --version: $(C astep-cal --version)"
C test -x /usr/bin/solve-field || die "solve-field is not installed"
install_signed "$full"
grep -q "keeping existing /etc/astep-cal/astep-cal.toml" "$RUN/install.log" || die "second install.sh did not keep the config"
grep -q "already installed" "$RUN/install.log" || die "second install.sh rebuilt the release"
say "second install.sh: nothing rebuilt, config kept ($install_seconds s)"

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
arrive() {  # arrive DATE N_SCIENCE: a synthetic night moved into the data root, with its marker
    say "a synthetic $1 night arrives ($2 science frames)"
    C sh -c "umask 002 && mkdir -p /srv/incoming && /opt/astep-cal/current/bin/python -c '
from pathlib import Path
from astep_cal.devtools.synthetic import NightSpec, make_night
# tests/conftest.py SMALL: 512² frames of a 1° field, solvable with the Tycho-2 07/08 indexes
spec = NightSpec(date=\"$1\", shape=(512, 512), pixel_scale_arcsec=7.2, fwhm_arcsec=18.0, n_science=$2,
                 n_cosmic_rays=40, n_hot_pixels=80, dead_column=150)
make_night(Path(\"/srv/incoming\"), spec)
' && chgrp -R astep-cal /srv/incoming/$1 && mv /srv/incoming/$1 /srv/astep/ && touch /srv/astep/$1/NIGHT_COMPLETE" \
        || die "could not make the synthetic night $1"
}
arrive "$NIGHT" "$N_SCIENCE"
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
# A logged exception keeps its traceback in the real journald: EXCEPTION=, and after MESSAGE's first line.
C systemd-run --quiet --wait -p User=astep-cal /opt/astep-cal/current/bin/python -c '
from astep_cal.support import logs
logs.configure("journal", "info")
try:
    {}["missing"]
except KeyError:
    logs.get_logger().exception("traceback_check", error="KeyError")
' || die "systemd-run of the traceback check failed"
wait_for 10 "the traceback_check event" 'C journalctl -o json --no-pager EVENT=traceback_check | grep -q .'
C journalctl -o json --no-pager EVENT=traceback_check | tail -1 > "$RUN/traceback.json"
/usr/bin/python3 - "$RUN/traceback.json" <<'EOF' || die "the journal lost the traceback"
import json, sys
entry = json.loads(open(sys.argv[1]).read())
text = lambda v: bytes(v).decode() if isinstance(v, list) else v  # journalctl gives unprintable values as bytes
exception, message = text(entry.get("EXCEPTION", "")), text(entry["MESSAGE"])
assert "Traceback (most recent call last)" in exception and "KeyError" in exception, entry
assert "Traceback (most recent call last)" in message, message
print("journal traceback:", len(exception.splitlines()), "lines in EXCEPTION")
EOF

# --- reload = rescan -------------------------------------------------------------------------------
before=$(events rescan)
C systemctl reload astep-cal || die "systemctl reload failed"
wait_for 30 "a rescan after reload" '[ "$(events rescan)" -gt "$before" ]'
[ "$(C systemctl show -P MainPID astep-cal)" = "$pid" ] || die "reload restarted the process"
[ "$(events config_reloaded)" -ge 1 ] || die "no config_reloaded event"
say "reload: rescan events $before -> $(events rescan), same pid $pid"

# --- an upgrade bundle of another version, then a rollback ------------------------------------------
# install.sh restarts the running service on the version it installs. The ledger stays where it is:
# the new version must count the night the old one did, do nothing again, and process a new night; the
# old one, back after --rollback, must read the ledger the new one wrote and redo nothing either.
daemon_version() {  # VERSION field of the last daemon_started event
    C journalctl -u astep-cal -o json --no-pager EVENT=daemon_started | tail -1 \
        | /usr/bin/python3 -c 'import json, sys; print(json.loads(sys.stdin.read()).get("VERSION", ""))'
}
calibrated=$(events frame_calibrated)
# An altered copy of the upgrade (one byte) is refused before anything of it is read.
C sh -c "cp /media/bundles/$upgrade /media/bundles/$upgrade.sig /root/ && \
    printf 'x' | dd of=/root/$upgrade bs=1 seek=1000 conv=notrunc status=none"
if C /opt/astep-cal/install.sh --bundle "/root/$upgrade" > "$RUN/tampered.log" 2>&1; then
    cat "$RUN/tampered.log"; die "an altered bundle was installed"
fi
grep -q "does not verify" "$RUN/tampered.log" || { cat "$RUN/tampered.log"; die "the altered bundle was not refused for its signature"; }
C rm -f "/root/$upgrade" "/root/$upgrade.sig"
say "an altered upgrade bundle: refused ($(grep -o 'error: the signature[^:]*' "$RUN/tampered.log"))"
say "install.sh --bundle $upgrade ($(du -k "$DIST/$upgrade" | cut -f1) kB, inside, no network, signature checked)"
install_signed "$upgrade"
upgrade_seconds=$install_seconds
grep -q "restarted astep-cal.service: it runs astep-cal $upgrade_version" "$RUN/install.log" \
    || { cat "$RUN/install.log"; die "install.sh did not restart the service on $upgrade_version"; }
# (", last NIGHT" when it finished the close the old daemon's stop left pending: close_delay_s; nothing recalibrated)
wait_for 60 "the upgraded daemon idle with the ledger's night" 'case "$(status_text)" in "idle — 1 nights done"*) true;; *) false;; esac'
[ "$(daemon_version)" = "$upgrade_version" ] || die "the service runs $(daemon_version), not $upgrade_version"
[ "$(C astep-cal --version)" = "astep-cal $upgrade_version" ] || die "astep-cal --version: $(C astep-cal --version)"
[ "$(events frame_calibrated)" = "$calibrated" ] || die "the upgraded daemon recalibrated frames"
say "upgraded in $upgrade_seconds s: the service runs $(daemon_version), same ledger: $(status_text)"
arrive "$NIGHT2" 1
wait_for 300 "night $NIGHT2 processed by $upgrade_version" '[ "$(status_text)" = "idle — 2 nights done, last $NIGHT2" ]'
[ "$(events frame_failed)" = 0 ] || die "frames failed: $(C journalctl -u astep-cal --no-pager EVENT=frame_failed)"
calibrated=$(events frame_calibrated)

C /opt/astep-cal/install.sh --rollback > "$RUN/rollback.log" 2>&1 || { cat "$RUN/rollback.log"; die "install.sh --rollback failed"; }
grep -q "rolled back: astep-cal $upgrade_version -> $version" "$RUN/rollback.log" || { cat "$RUN/rollback.log"; die "no rollback"; }
wait_for 60 "the rolled-back daemon idle with both nights" 'case "$(status_text)" in "idle — 2 nights done"*) true;; *) false;; esac'
[ "$(daemon_version)" = "$version" ] || die "after --rollback the service runs $(daemon_version), not $version"
[ "$(events frame_calibrated)" = "$calibrated" ] || die "the rolled-back daemon recalibrated frames"
say "rolled back: the service runs $(daemon_version) on the ledger $upgrade_version wrote: $(status_text)"
C astep-cal status --config /etc/astep-cal/astep-cal.toml /srv/astep | grep -q "$NIGHT2" || die "status lacks $NIGHT2"
pid=$(C systemctl show -P MainPID astep-cal)

# --- stop ------------------------------------------------------------------------------------------
stopped_before=$(events daemon_stopped)
t0=$(date +%s)
C systemctl stop astep-cal || die "systemctl stop failed"
result=$(C systemctl show -P Result astep-cal)
code=$(C systemctl show -P ExecMainStatus astep-cal)
say "stopped in $(( $(date +%s) - t0 )) s: Result=$result ExecMainStatus=$code"
[ "$result" = success ] && [ "$code" = 0 ] || die "unclean stop"
[ "$(events daemon_stopped)" = $((stopped_before + 1)) ] || die "no daemon_stopped event"

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
case "$(status_text)" in "idle — 2 nights done"*) ;; *) die "after a restart the ledger's night is not counted: $(status_text)";; esac
C kill -KILL "$pid"
wait_for 30 "a restart after SIGKILL" '[ "$(C systemctl show -P NRestarts astep-cal)" = 1 ] && case "$(status_text)" in "idle — 2 nights done"*) true;; *) false;; esac'
say "watchdog fed for 12 s at WatchdogSec=4s; SIGKILL -> restarted (pid $pid -> $(C systemctl show -P MainPID astep-cal))"
C journalctl -u astep-cal --no-pager > "$CACHE/last-journal.txt" || true
C systemctl stop astep-cal
