#!/usr/bin/env bash
# install.sh — install or upgrade astep-cal from this bundle, without any network (docs/pages/operations.md,
# "Installing at the station"). Run as root from the extracted bundle:
#
#   ./install.sh               install (a full bundle) or upgrade (an upgrade bundle); run again: no change
#   ./install.sh --check       only verify the bundle against this machine (checksums, release, base)
#   ./install.sh --rollback    return to the previous version and restart the service (refused when the
#                              ledger has a schema that version does not read; --force: anyway)
#   ./install.sh --no-system   the Python part and the files only: no Debian packages, no user, no systemd
#                              (a staging tree; with APP_DIR= PREFIX= CONF_DIR= UNIT_DIR= SYSUSERS_DIR=)
#   ./install.sh --trust-key KEY.gpg   (first install) trust this OpenPGP public key for later bundles:
#                              it is kept as CONF_DIR/bundle-keyring.gpg (check its fingerprint out of band)
#   /opt/astep-cal/install.sh --bundle ARCHIVE [options]   every later install or upgrade: the installed
#                              (trusted) install.sh copies ARCHIVE and ARCHIVE.sig into a root-only
#                              directory, checks the detached signature with gpgv against the kept key
#                              before anything of the bundle is read, extracts the copy there and runs its
#                              install.sh. A machine with a kept key refuses a bundle not installed this
#                              way (--unsigned: anyway, e.g. a bundle built without SIGN_KEY).
#
# Layout: APP_DIR/releases/VERSION (one venv a version), APP_DIR/current and APP_DIR/previous (links),
# APP_DIR/wheels (every wheel installed so far: what an upgrade bundle builds its venv from),
# PREFIX/bin/astep-cal -> APP_DIR/current/bin/astep-cal. The config is never overwritten.
# Everything is checked before the first change: a bundle for another architecture or Debian release,
# a damaged (truncated, altered) bundle, an upgrade whose base is not installed are refused, and
# nothing is changed.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
APP_DIR=${APP_DIR:-/opt/astep-cal}
INSTALL_PYTHON=${INSTALL_PYTHON:-/usr/bin/python3}
OS_RELEASE=${OS_RELEASE:-/etc/os-release}
SERVICE=astep-cal.service
export PREFIX=${PREFIX:-/usr/local} DATA_ROOT=${DATA_ROOT:-/srv/astep} CONF_DIR=${CONF_DIR:-/etc/astep-cal} \
    UNIT_DIR=${UNIT_DIR:-/etc/systemd/system} SYSUSERS_DIR=${SYSUSERS_DIR:-/usr/lib/sysusers.d} \
    STATE_DIR=${STATE_DIR:-/var/lib/astep-cal} COMMAND=$APP_DIR/current/bin/astep-cal
MANIFEST=$HERE/manifest.txt

KEYRING=$CONF_DIR/bundle-keyring.gpg  # the key bundles must be signed with, kept at the first install

mode=install
system=1
force=""
changing=""
unsigned=""
trust_key=""
bundle_archive=""
passed=()  # the options handed on to the bundle's own install.sh (--bundle)
while [ $# -gt 0 ]; do
    arg=$1; shift
    case $arg in
        --rollback) mode=rollback; passed+=("$arg") ;;
        --check) mode=check; passed+=("$arg") ;;
        --force) force=1; passed+=("$arg") ;;
        --no-system) system=""; passed+=("$arg") ;;
        --unsigned) unsigned=1 ;;
        --trust-key) [ $# -gt 0 ] || { echo "install.sh: --trust-key needs a file" >&2; exit 2; }
                     trust_key=$1; shift ;;
        --bundle) [ $# -gt 0 ] || { echo "install.sh: --bundle needs an archive" >&2; exit 2; }
                  bundle_archive=$1; shift ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "install.sh: unknown argument $arg (see --help)" >&2; exit 2 ;;
    esac
done

say() { echo "install.sh: $*"; }
work=""
die() {
    [ -z "$work" ] || rm -rf "$work"
    echo "install.sh: error: $*" >&2
    if [ -z "$changing" ]; then echo "install.sh: nothing was changed" >&2
    else echo "install.sh: stopped half-way (current version: $(current_version)); fix the cause and run it again" >&2; fi
    exit 2
}
failed_at=""
trap 'failed_at=${failed_at:-$LINENO: $BASH_COMMAND}' ERR
reported=""
trap 'rc=$?; [ $rc = 0 ] || [ $rc = 2 ] || [ -n "$reported" ] || die "a command failed (exit $rc, line ${failed_at:-?})"' EXIT

current_version() { local t; t=$(readlink "$APP_DIR/current" 2>/dev/null) && basename "$t" || echo "none"; }
field() { awk -F'\t' -v key="$1" '$1 == key && NF == 2 { print $2; exit }' "$MANIFEST"; }
# manifest records of one tag: NAME VERSION PATH SHA256, tab-separated
records() { awk -F'\t' -v tag="$1" '$1 == tag && NF == 5 { print $2 "\t" $3 "\t" $4 "\t" $5 }' "$MANIFEST"; }
deb_status() { dpkg-query -W -f='${Status}\t${Version}' "$1" 2>/dev/null || true; }

# --- --bundle: the signature checked by this (installed, trusted) copy before the bundle is read ---------
# Everything is copied first into a directory only root can reach, so the files checked are the files
# used (no time-of-check gap with a writable drop folder); gpgv is on every Debian (apt needs it).
SAFE_NAME='^astep-cal(-upgrade)?-[A-Za-z0-9][A-Za-z0-9.+~_-]*$'
[ -z "$trust_key" ] || [ -f "$trust_key" ] || die "no key file $trust_key"
if [ -n "$bundle_archive" ]; then
    [ "$(id -u)" = 0 ] || [ -z "$system" ] || die "run as root (or --no-system for a staging tree)"
    [ -f "$KEYRING" ] || die "no trusted key $KEYRING: install the first bundle with ./install.sh --trust-key KEY.gpg"
    read -r key_uid key_mode < <(stat -c '%u %a' "$KEYRING")
    { [ "$key_uid" = "$(id -u)" ] && [ $(( 8#$key_mode & 8#022 )) = 0 ]; } \
        || die "$KEYRING must belong to $(id -un) and be writable by nobody else (mode $key_mode)"
    [ -f "$bundle_archive" ] || die "no bundle $bundle_archive"
    [ -f "$bundle_archive.sig" ] || die "no signature $bundle_archive.sig beside the bundle (make bundle SIGN_KEY=...)"
    command -v gpgv > /dev/null || die "gpgv is missing (Debian package gpgv)"
    work=$(mktemp -d "${TMPDIR:-/var/tmp}/astep-cal-bundle.XXXXXX")  # mode 0700, ours; die() removes it
    cp -- "$bundle_archive" "$work/bundle.tar"
    cp -- "$bundle_archive.sig" "$work/bundle.tar.sig"
    if ! gpg_out=$(gpgv --keyring "$KEYRING" "$work/bundle.tar.sig" "$work/bundle.tar" 2>&1); then
        die "the signature of $bundle_archive does not verify against $KEYRING: $(tail -2 <<< "$gpg_out" | tr '\n' ' ')"
    fi
    top=$(tar -tf "$work/bundle.tar" | awk -F/ '{ print $1 }' | sort -u)
    [ "$(wc -l <<< "$top")" = 1 ] && [[ $top =~ $SAFE_NAME ]] \
        || die "$bundle_archive does not hold one astep-cal bundle directory"
    if tar -tf "$work/bundle.tar" | grep -qE '(^|/)\.\.(/|$)|^/'; then die "$bundle_archive holds paths outside its directory"; fi
    tar -xf "$work/bundle.tar" -C "$work" --no-same-owner
    say "signature of $(basename "$bundle_archive") verified ($(grep -o 'using [A-Za-z0-9]* key [0-9A-F]*' <<< "$gpg_out" | head -1))"
    status=0
    ASTEP_BUNDLE_VERIFIED=1 bash "$work/$top/install.sh" "${passed[@]}" || status=$?
    rm -rf "$work"
    reported=1
    exit "$status"
fi

# --- rollback: needs nothing from the bundle --------------------------------------------------------
# A service in use (running, or enabled: perhaps failing on the version being left) is restarted on the
# current version; systemctl waits for its READY=1.
restart_if_running() {
    [ -n "$system" ] && [ -d /run/systemd/system ] || return 0
    if systemctl is-active --quiet "$SERVICE" || systemctl is-enabled --quiet "$SERVICE" 2>/dev/null; then
        systemctl reset-failed "$SERVICE" 2>/dev/null || true
        if systemctl restart "$SERVICE"; then
            say "restarted $SERVICE: it runs astep-cal $(current_version)"
        else
            echo "install.sh: error: $SERVICE did not start on astep-cal $(current_version) (journalctl -u ${SERVICE%.service});" \
                "$APP_DIR/install.sh --rollback returns to the previous version" >&2
            reported=1
            exit 1
        fi
    else
        say "next: systemctl enable --now ${SERVICE%.service}"
    fi
}

if [ "$mode" = rollback ]; then
    [ -n "$system" ] && [ "$(id -u)" != 0 ] && die "run as root"
    prev=$(readlink "$APP_DIR/previous" 2>/dev/null) || die "no previous version in $APP_DIR to roll back to"
    cur=$(readlink "$APP_DIR/current" 2>/dev/null) || die "no current version in $APP_DIR"
    [ -x "$APP_DIR/$prev/bin/astep-cal" ] || die "the previous version $APP_DIR/$prev is incomplete"
    # The ledger must be one the previous version reads: a version knows the ledger schemas up to its
    # SCHEMA_VERSION (it sets a newer one aside as corrupt and rebuilds it from the CAL files).
    ledger=$(sed -n 's/^ledger *= *"\(.*\)".*/\1/p' "$CONF_DIR/astep-cal.toml" 2>/dev/null | head -1)
    ledger=${ledger:-$STATE_DIR/ledger.json}
    # state/ledger.py since the layer sub-packages; ledger.py at the package root before them.
    reads=$(cat "$APP_DIR/$prev"/lib/python3*/site-packages/astep_cal/state/ledger.py \
                "$APP_DIR/$prev"/lib/python3*/site-packages/astep_cal/ledger.py 2>/dev/null \
            | sed -n 's/^SCHEMA_VERSION = \([0-9]*\).*/\1/p' | head -1 || true)
    schema=$(grep -o '"schema": *[0-9]*' "$ledger" 2>/dev/null | head -1 | grep -o '[0-9]*$' || true)
    if [ -n "$reads" ] && [ -n "$schema" ] && [ "$schema" -gt "$reads" ] && [ -z "$force" ]; then
        die "the ledger $ledger has schema $schema (written by astep-cal $(basename "$cur")); astep-cal $(basename "$prev") reads schemas up to $reads and would set it aside and rebuild it from the CAL files. Roll back anyway: --rollback --force"
    fi
    changing=1
    ln -sfn "$prev" "$APP_DIR/current.new" && mv -T "$APP_DIR/current.new" "$APP_DIR/current"
    ln -sfn "$cur" "$APP_DIR/previous.new" && mv -T "$APP_DIR/previous.new" "$APP_DIR/previous"
    say "rolled back: astep-cal $(basename "$cur") -> $(basename "$prev") (--rollback again returns to $(basename "$cur"))"
    restart_if_running
    exit 0
fi

# --- checks, before any change ----------------------------------------------------------------------
[ -f "$MANIFEST" ] && [ -f "$HERE/SHA256SUMS" ] \
    || die "$HERE is not a whole astep-cal bundle (manifest.txt or SHA256SUMS missing): extract the archive again"
[ "$(field format)" = 1 ] || die "$MANIFEST: not an astep-cal bundle manifest of format 1"
name=$(field name); kind=$(field kind); version=$(field version)
# The manifest's fields name directories (releases/VERSION) and are printed: only safe values.
[[ $name =~ $SAFE_NAME ]] || die "$MANIFEST: the bundle name is not a safe name"
[[ $version =~ ^[0-9A-Za-z][0-9A-Za-z.+~_-]{0,63}$ ]] || die "$MANIFEST: the version is not a safe version string"
[[ $kind == full || $kind == upgrade ]] || die "$MANIFEST: unknown bundle kind"
if [ -f "$KEYRING" ] && [ -z "${ASTEP_BUNDLE_VERIFIED:-}" ] && [ -z "$unsigned" ] && [ "$mode" = install ]; then
    die "this machine checks bundle signatures ($KEYRING): install with $APP_DIR/install.sh --bundle ARCHIVE (or --unsigned)"
fi

# Every file must be there with its checksum: a truncated copy lacks files or ends short, an altered one
# differs. And every file the manifest names must be under the checksums.
if ! sums_out=$(cd "$HERE" && sha256sum --strict -c SHA256SUMS 2>&1); then
    die "bundle $name is damaged (a truncated or altered copy): $(grep -v ': OK$' <<< "$sums_out" | head -5 | tr '\n' ';')
copy the archive again and check it first: sha256sum -c $(field archive).sha256"
fi
listed=$(awk '{ print $2 }' "$HERE/SHA256SUMS")
while IFS=$'\t' read -r path; do
    grep -qxF "$path" <<< "$listed" || die "bundle $name is damaged: $path is not under SHA256SUMS"
done < <(awk -F'\t' '($1 == "wheel" || $1 == "deb") && NF == 5 { print $4 } $1 == "file" && NF == 3 { print $2 }' "$MANIFEST")
while IFS=$'\t' read -r _ _ path digest; do
    grep -qxF "$digest  $path" "$HERE/SHA256SUMS" || die "bundle $name is damaged: $path differs from its manifest entry"
done < <(records wheel; records deb)

host_arch=$(dpkg --print-architecture 2>/dev/null || uname -m)
host_release=$(sed -n 's/^VERSION_CODENAME=//p' "$OS_RELEASE" 2>/dev/null | tr -d '"' || true)
[ "$(field arch)" = "$host_arch" ] \
    || die "bundle $name is for the architecture $(field arch), this machine is $host_arch: build one on a $host_arch machine (make bundle)"
[ "$(field debian)" = "$host_release" ] \
    || die "bundle $name is for Debian $(field debian), this machine runs ${host_release:-an unknown release}: build one on a $host_release machine (make bundle)"
if [ -x "$INSTALL_PYTHON" ]; then
    py=$("$INSTALL_PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    [ "$py" = "$(field python)" ] || die "bundle $name holds wheels for Python $(field python), $INSTALL_PYTHON is $py"
fi

# An upgrade needs what its base installed: the wheels (in APP_DIR/wheels, same checksum) and the Debian
# packages (installed; at any version, as the full bundle leaves one that was installed before it).
missing=()
if [ -n "$system" ]; then
    while IFS=$'\t' read -r pkg ver _ _; do
        [[ $(deb_status "$pkg") == "install ok installed"* ]] || missing+=("Debian package $pkg $ver")
    done < <(records needs-deb)
fi
if [ -n "$(records needs-wheel)" ]; then
    store_sums=$(cat "$APP_DIR/wheels/SHA256SUMS" 2>/dev/null || true)
    while IFS=$'\t' read -r whl ver _ digest; do
        file=$(awk -v d="$digest" '$1 == d { print $2; exit }' <<< "$store_sums")
        if [ -z "$file" ] || [ "$(sha256sum < "$APP_DIR/wheels/$file" 2>/dev/null | cut -d' ' -f1)" != "$digest" ]; then
            missing+=("wheel $whl $ver")
        fi
    done < <(records needs-wheel)
fi
if [ ${#missing[@]} -gt 0 ]; then
    die "upgrade $name applies on top of astep-cal $(field base) (installed here: $(current_version)); missing: $(printf '%s, ' "${missing[@]:0:6}")$([ ${#missing[@]} -gt 6 ] && echo "… (${#missing[@]} in all)")
install the full bundle astep-cal-$(field base)-$(field debian)-$(field arch) first (or an upgrade built FROM the installed one's manifest)"
fi

# Debian packages of the bundle not installed yet (an upgrade bundle's also when installed at an older
# version: it carries a package only when it changed since its base), and whether apt can install them
# from here alone. A full bundle leaves installed packages alone, whatever their version.
debs=()
deb_names=" "
if [ -n "$system" ]; then
    while IFS=$'\t' read -r pkg ver path _; do
        status=$(deb_status "$pkg")
        if [[ $status != "install ok installed"* ]] \
            || { [ "$kind" = upgrade ] && dpkg --compare-versions "${status#*$'\t'}" lt "$ver"; }; then
            debs+=("$HERE/$path"); deb_names+="$pkg "
        fi
    done < <(records deb)
fi
apt_opts=(-y -q --no-install-recommends -o Dpkg::Options::=--force-confold -o Dpkg::Use-Pty=0)
if [ ${#debs[@]} -gt 0 ]; then
    # apt resolves first: it must find everything among these files and what is installed.
    sim=$(apt-get -s "${apt_opts[@]}" install "${debs[@]}" 2>&1) \
        || die "apt cannot install the bundle's Debian packages here: $(echo "$sim" | grep -E '^(E:| )' | head -8 | tr '\n' ' ')"
    extra=$(awk '/^Inst / { print $2 }' <<< "$sim" | while read -r pkg; do
        [[ $deb_names == *" $pkg "* ]] || echo "$pkg"; done | tr '\n' ' ')
    [ -z "$extra" ] || die "apt would need Debian packages the bundle does not hold: $extra(this machine lacks what a minimal Debian with systemd has?)"
fi

# Room for what is written: the unpacked packages and a release venv (625 MB measured) with margin.
if [ "$(cat "$APP_DIR/releases/$version/.bundle-lock" 2>/dev/null)" != "$(sha256sum < "$HERE/wheels.lock" | cut -d' ' -f1)" ]; then
    need_mb=$(( 1200 + $(du -smc "${debs[@]}" /dev/null 2>/dev/null | tail -1 | cut -f1) * 3 ))
    probe=$APP_DIR; while [ ! -d "$probe" ]; do probe=$(dirname "$probe"); done
    free_mb=$(df -Pm "$probe" | awk 'NR == 2 { print $4 }')
    [ "$free_mb" -ge "$need_mb" ] || die "not enough space: $free_mb MB free on $probe, about $need_mb MB needed"
fi

if [ "$mode" = check ]; then
    say "bundle $name ($kind, astep-cal $version) verified for this machine: ${#debs[@]} Debian packages to install; installed now: $(current_version)"
    exit 0
fi
[ -z "$system" ] || [ "$(id -u)" = 0 ] || die "run as root (or --no-system for a staging tree)"

# --- changes ----------------------------------------------------------------------------------------
mkdir -p "$APP_DIR"
exec 8>"$APP_DIR/.install.lock"
flock -n 8 || die "another install.sh runs on $APP_DIR"
changing=1
started=$(date +%s)

if [ ${#debs[@]} -gt 0 ]; then
    say "installing ${#debs[@]} Debian packages from the bundle"
    DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" install "${debs[@]}" > "$APP_DIR/apt.log" 2>&1 \
        || die "apt-get install failed: $(tail -5 "$APP_DIR/apt.log" | tr '\n' ';') (log: $APP_DIR/apt.log)"
fi
[ -x "$INSTALL_PYTHON" ] || die "no $INSTALL_PYTHON (INSTALL_PYTHON=…)"
py=$("$INSTALL_PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$py" = "$(field python)" ] || die "bundle $name holds wheels for Python $(field python), $INSTALL_PYTHON is $py"

# The wheel store: what this bundle holds, added to what earlier bundles left.
install -d "$APP_DIR/wheels"
while IFS=$'\t' read -r _ _ path digest; do
    dest=$APP_DIR/wheels/$(basename "$path")
    if [ ! -e "$dest" ] || [ "$(sha256sum < "$dest" | cut -d' ' -f1)" != "$digest" ]; then
        cp "$HERE/$path" "$dest.new" && mv "$dest.new" "$dest"
    fi
    grep -qxF "$digest  $(basename "$path")" "$APP_DIR/wheels/SHA256SUMS" 2>/dev/null \
        || echo "$digest  $(basename "$path")" >> "$APP_DIR/wheels/SHA256SUMS"
done < <(records wheel)

# The release: a venv of its own, built beside and moved into place whole.
release=$APP_DIR/releases/$version
lock_sum=$(sha256sum < "$HERE/wheels.lock" | cut -d' ' -f1)
if [ "$(cat "$release/.bundle-lock" 2>/dev/null)" = "$lock_sum" ]; then
    say "astep-cal $version is already installed in $release"
else
    say "installing astep-cal $version and its Python dependencies into $release (no network: the bundle's wheels)"
    partial=$release.partial
    rm -rf "$partial"
    mkdir -p "$APP_DIR/releases"
    "$INSTALL_PYTHON" -m venv "$partial"
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/nonexistent LANG=C.UTF-8 PIP_CONFIG_FILE=/dev/null \
        "$partial/bin/python" -m pip install -q --no-cache-dir --disable-pip-version-check --no-index \
        --find-links "$APP_DIR/wheels" --no-deps --require-hashes -r "$HERE/wheels.lock" > "$APP_DIR/pip.log" 2>&1 \
        || die "pip install from the bundle's wheels failed: $(tail -5 "$APP_DIR/pip.log" | tr '\n' ';') (log: $APP_DIR/pip.log)"
    # A venv names its own path in its scripts: give them the final one, then move it into place.
    grep -rlF "$partial" "$partial/bin" | while read -r f; do sed -i "s|$partial|$release|g" "$f"; done
    cp "$MANIFEST" "$partial/bundle-manifest.txt"
    echo "$lock_sum" > "$partial/.bundle-lock"
    [ -e "$release" ] && [ "$(readlink "$APP_DIR/current")" != "releases/$version" ] && rm -rf "$release"
    if [ -e "$release" ]; then  # the running version rebuilt from a different bundle: swap through a link
        mv -T "$release" "$release.old" && mv -T "$partial" "$release" && rm -rf "$release.old"
    else
        mv -T "$partial" "$release"
    fi
    "$release/bin/astep-cal" --version > /dev/null || die "$release/bin/astep-cal does not run"
fi

# current -> this release, previous -> the one it replaces; older releases are removed.
cur=$(readlink "$APP_DIR/current" 2>/dev/null || true)
if [ "$cur" != "releases/$version" ]; then
    if [ -n "$cur" ]; then ln -sfn "$cur" "$APP_DIR/previous.new" && mv -T "$APP_DIR/previous.new" "$APP_DIR/previous"; fi
    ln -sfn "releases/$version" "$APP_DIR/current.new" && mv -T "$APP_DIR/current.new" "$APP_DIR/current"
    say "current version: astep-cal $version$([ -n "$cur" ] && echo " (previous: $(basename "$cur"), install.sh --rollback returns to it)")"
fi
prev=$(readlink "$APP_DIR/previous" 2>/dev/null || true)
for old in "$APP_DIR"/releases/*; do
    [ -d "$old" ] || continue
    case ${old#"$APP_DIR/"} in "releases/$version"|"$prev") ;; *) rm -rf "$old" && say "removed the old release $old" ;; esac
done
# Rollback needs no bundle: install.sh keeps a copy of itself.
cp "$HERE/install.sh" "$APP_DIR/install.sh.new" && mv "$APP_DIR/install.sh.new" "$APP_DIR/install.sh"
if [ -n "$trust_key" ]; then
    if [ -f "$KEYRING" ] && ! cmp -s "$trust_key" "$KEYRING" && [ -z "$force" ]; then
        die "$KEYRING holds another key: replace it with --trust-key KEY.gpg --force"
    fi
    mkdir -p "$CONF_DIR"
    install -m 0644 "$trust_key" "$KEYRING.new" && mv -f "$KEYRING.new" "$KEYRING"
    say "trusting the bundle key $trust_key: later bundles install with $APP_DIR/install.sh --bundle ARCHIVE"
fi

# The files and their activation, as `make install` does them.
bash "$HERE/layout.sh" files "$HERE/files/astep-cal.service" "$HERE/files/astep-cal.sysusers.conf" "$HERE/files/astep-cal.toml"
[ -z "$system" ] || bash "$HERE/layout.sh" activate
restart_if_running
say "done in $(( $(date +%s) - started )) s: astep-cal $(current_version) installed from $name"
