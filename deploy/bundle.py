"""`make bundle` / `make upgrade-bundle`: everything the service needs, in one archive, for a machine
without a network (Concordia).

A full bundle holds the project's wheel, every Python dependency as a wheel (the versions of
requirements.lock, checked against its hashes; the sdists without a wheel are built here), the Debian
packages the service needs that a minimal Debian with systemd lacks (apt-get download), the unit, the
sysusers file, the example config, install.sh and layout.sh, a manifest and SHA256SUMS. An upgrade
bundle (--from the manifest of the bundle installed there) holds only what changed: normally the
project's wheel; the manifest lists what it needs from the base (install.sh refuses without it).

Run on a connected machine of the same Debian release and architecture as the target, with the venv's
interpreter (the same CPython as the target's): .venv/bin/python deploy/bundle.py --help
Downloads are cached (--cache), so a second build fetches nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FORMAT = "1"
PROJECT = "astep-cal"
# What the service needs from Debian (besides a minimal system with systemd): solve-field and the
# Tycho-2 index files a 1° field needs, and the venv module of Debian's Python.
DEBIAN_PACKAGES = ("astrometry.net", "astrometry-data-tycho2-07-littleendian",
                   "astrometry-data-tycho2-08-littleendian", "astrometry-data-tycho2-09-littleendian",
                   "python3-venv")
# Besides the packages of priority "required": what any machine running the service already has.
DEBIAN_BASE = ("apt", "systemd", "systemd-sysv", "dbus", "procps")
BUNDLE_FILES = {  # name in the bundle -> source in the repository
    "install.sh": "deploy/install.sh",
    "layout.sh": "deploy/layout.sh",
    "files/astep-cal.service": "service/astep-cal.service",
    "files/astep-cal.sysusers.conf": "service/astep-cal.sysusers.conf",
    "files/astep-cal.toml": "etc/astep-cal.toml",
}


class BundleError(Exception):
    """A failure with a message for the user (no traceback)."""


def say(message: str) -> None:
    print(f"bundle: {message}", flush=True)


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, check=True, text=True, **kwargs)
    except FileNotFoundError as exc:
        raise BundleError(f"{cmd[0]} not found") from exc
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or "").strip().splitlines()[-5:] if isinstance(exc.stderr, str) else []
        raise BundleError(f"{' '.join(cmd[:4])} … failed (exit {exc.returncode})"
                          + ("".join(f"\n  {line}" for line in detail))) from exc


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- the manifest ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Item:
    """A wheel or a Debian package: `path` is set when the bundle holds it, empty when only needed."""
    kind: str       # "wheel" or "deb"
    name: str
    version: str
    path: str = ""
    sha256: str = ""


@dataclass
class Manifest:
    fields: dict[str, str]
    items: list[Item]
    files: dict[str, str]  # bundle path -> sha256 (install.sh, unit …)

    def render(self) -> str:
        lines = ["# astep-cal bundle manifest: one record a line, tab-separated. Read by install.sh and by",
                 "# `make upgrade-bundle FROM=` (what the installed bundle holds). kind: full or upgrade.",
                 "# wheel/deb: in this bundle; needs-wheel/needs-deb: not in it, must be installed already."]
        lines += [f"{key}\t{value}" for key, value in self.fields.items()]
        for item in sorted(self.items, key=lambda i: (i.kind, i.name)):
            tag = item.kind if item.path else f"needs-{item.kind}"
            lines.append("\t".join((tag, item.name, item.version, item.path or "-", item.sha256 or "-")))
        lines += [f"file\t{path}\t{digest}" for path, digest in sorted(self.files.items())]
        return "\n".join(lines) + "\n"

    @classmethod
    def parse(cls, text: str, origin: str = "manifest") -> Manifest:
        fields: dict[str, str] = {}
        items: list[Item] = []
        files: dict[str, str] = {}
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.startswith("#"):
                continue
            parts = line.split("\t")
            tag = parts[0]
            if tag in ("wheel", "deb", "needs-wheel", "needs-deb") and len(parts) == 5:
                _, name, version, path, digest = parts
                items.append(Item(tag.removeprefix("needs-"), name, version,
                                  "" if path == "-" else path, "" if digest == "-" else digest))
            elif tag == "file" and len(parts) == 3:
                files[parts[1]] = parts[2]
            elif len(parts) == 2:
                fields[tag] = parts[1]
            else:
                raise BundleError(f"{origin}:{number}: not a manifest line: {line[:80]!r}")
        if fields.get("format") != FORMAT:
            raise BundleError(f"{origin}: not an astep-cal bundle manifest (format {fields.get('format')!r})")
        return cls(fields, items, files)


def upgrade_items(current: list[Item], base: Manifest) -> list[Item]:
    """The items of a full build, as an upgrade on top of `base`: what the base has (same name and
    version, held or needed by it) becomes a need; the project's own wheel is always carried."""
    have = {(i.kind, i.name, i.version): i for i in base.items}
    out = []
    for item in current:
        known = have.get((item.kind, item.name, item.version))
        if known is not None and item.name != PROJECT:
            # The base's hash: the file installed there (a wheel built here from an sdist differs per build).
            out.append(Item(item.kind, item.name, item.version, "", known.sha256 or item.sha256))
        else:
            out.append(item)
    return out


# --- the host ---------------------------------------------------------------------------------------

def host_facts(os_release: Path = Path("/etc/os-release")) -> dict[str, str]:
    release = ""
    for line in os_release.read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            release = line.split("=", 1)[1].strip().strip('"')
    arch = run(["dpkg", "--print-architecture"], capture_output=True).stdout.strip()
    if not release or not arch:
        raise BundleError("cannot tell the Debian release (VERSION_CODENAME) or the architecture of this machine")
    return {"debian": release, "arch": arch, "python": f"{sys.version_info.major}.{sys.version_info.minor}"}


def project_version(source: Path) -> str:
    match = re.search(r'^__version__ = "([^"]+)"', (source / "daemon/astep_cal/__init__.py").read_text(), re.M)
    if not match:
        raise BundleError("no __version__ in daemon/astep_cal/__init__.py")
    return match.group(1)


# --- Python wheels ----------------------------------------------------------------------------------

def pip(*args: str) -> list[str]:
    return [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]


def wheel_name_version(filename: str) -> tuple[str, str]:
    name, version = filename.split("-")[:2]
    return re.sub(r"[-_.]+", "-", name).lower(), version


def python_wheels(lock: Path, cache: Path) -> list[Path]:
    """The wheel of every distribution in the lock file: downloaded (hash-checked) or built from its sdist."""
    downloads, built = cache / "pip-download", cache / "pip-built"
    downloads.mkdir(parents=True, exist_ok=True)
    say(f"Python distributions of {lock.name} (cache {downloads})")
    run(pip("download", "-q", "--require-hashes", "--no-deps", "--dest", str(downloads), "-r", str(lock)))
    wanted = {}
    for line in lock.read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split(" ")[0].split("==")
            wanted[re.sub(r"[-_.]+", "-", name).lower()] = version
    wheels = []
    for path in sorted(downloads.iterdir()):
        if path.name.endswith(".whl"):
            key = wheel_name_version(path.name)
        elif path.name.endswith((".tar.gz", ".zip")):  # an sdist: NAME-VERSION.tar.gz, NAME may hold dashes
            stem = re.sub(r"\.(tar\.gz|zip)$", "", path.name).rsplit("-", 1)
            key = (re.sub(r"[-_.]+", "-", stem[0]).lower(), stem[-1])
        else:
            continue
        if wanted.get(key[0]) != key[1]:
            continue
        if path.name.endswith(".whl"):
            wheels.append(path)
            continue
        out = built / sha256(path)[:16]  # one build per sdist: the cached wheel is reused
        if not any(out.glob("*.whl")):
            say(f"building a wheel of {path.name}")
            shutil.rmtree(out, ignore_errors=True)
            run(pip("wheel", "-q", "--no-deps", "--no-build-isolation", "--wheel-dir", str(out), str(path)))
        wheels += sorted(out.glob("*.whl"))
    found = {wheel_name_version(w.name)[0] for w in wheels}
    missing = sorted(set(wanted) - found)
    if missing:
        raise BundleError(f"no wheel for {', '.join(missing)}")
    return wheels


def project_wheel(source: Path, version: str, out: Path) -> Path:
    """The project's wheel, built from a copy of the tree (with `version` written into the copy)."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "src"
        copy.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(source / name, copy / name)
        shutil.copytree(source / "daemon", copy / "daemon",
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        init = copy / "daemon/astep_cal/__init__.py"
        init.write_text(re.sub(r'^__version__ = "[^"]+"', f'__version__ = "{version}"', init.read_text(), flags=re.M))
        run(pip("wheel", "-q", "--no-deps", "--no-build-isolation", "--wheel-dir", str(out), str(copy)))
    wheels = [w for w in out.glob("astep_cal-*.whl") if wheel_name_version(w.name)[1] == version]
    if len(wheels) != 1:
        raise BundleError(f"the project's wheel {version} was not built")
    return wheels[0]


# --- Debian packages --------------------------------------------------------------------------------

def apt_closure(packages: list[str], empty_status: Path) -> dict[str, tuple[str, str]]:
    """name -> (version, arch) of everything apt installs for `packages` on an empty system."""
    out = run(["apt-get", "-s", "-o", f"Dir::State::status={empty_status}", "-o", "APT::Install-Recommends=false",
               "-o", "Debug::NoLocking=1", "install", *packages], capture_output=True).stdout
    found = {}
    for match in re.finditer(r"^Inst (\S+) \((\S+) .*\[(\S+)\]\)", out, re.M):
        found[match.group(1)] = (match.group(2), match.group(3))
    return found


def required_packages() -> list[str]:
    out = run(["apt-cache", "dumpavail"], capture_output=True).stdout
    names, name = set(), ""
    for line in out.splitlines():
        if line.startswith("Package: "):
            name = line.split()[1]
        elif line == "Priority: required":
            names.add(name)
    return sorted(names)


def debian_packages(cache: Path) -> list[tuple[str, str, Path]]:
    """(name, version, .deb) of what the service needs that a minimal Debian with systemd lacks."""
    with tempfile.NamedTemporaryFile() as empty:
        wanted = apt_closure(list(DEBIAN_PACKAGES), Path(empty.name))
        base = apt_closure(required_packages() + list(DEBIAN_BASE), Path(empty.name))
    if not all(p in wanted for p in DEBIAN_PACKAGES):
        raise BundleError(f"apt does not know all of {' '.join(DEBIAN_PACKAGES)} (apt-get update?)")
    debs_dir = cache / "debs"
    debs_dir.mkdir(parents=True, exist_ok=True)
    debs, fetch = [], []
    for name, (version, arch) in sorted(wanted.items()):
        if name in base:
            continue
        filename = f"{name}_{version.replace(':', '%3a')}_{arch}.deb"
        path = debs_dir / filename
        if not path.exists() and (Path("/var/cache/apt/archives") / filename).exists():
            shutil.copy2(Path("/var/cache/apt/archives") / filename, path)
        if not path.exists():
            fetch.append(f"{name}={version}")
        debs.append((name, version, path))
    if fetch:
        say(f"apt-get download of {len(fetch)} Debian packages (cache {debs_dir})")
        run(["apt-get", "download", "-q", *fetch], cwd=debs_dir, capture_output=True)
    missing = [str(p) for _, _, p in debs if not p.exists()]
    if missing:
        raise BundleError(f"not downloaded: {', '.join(missing)}")
    return debs


# --- the bundle -------------------------------------------------------------------------------------

def owned_by_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def build(args: argparse.Namespace) -> Path:
    source = args.source.resolve()
    facts = host_facts()
    version = args.version or project_version(source)
    base = None
    if args.base:
        base = Manifest.parse(args.base.read_text(), str(args.base))
        for key in ("debian", "arch", "python"):
            if base.fields.get(key) != facts[key]:
                raise BundleError(f"{args.base} is for {key} {base.fields.get(key)}, this machine is {facts[key]}: "
                                  "build the upgrade on a machine like the target")
        if base.fields.get("version") == version:
            raise BundleError(f"the base is already version {version}: set VERSION= (or bump __version__)")
    kind = "upgrade" if base else "full"
    name = (f"astep-cal-upgrade-{version}-from-{base.fields['version']}" if base else f"astep-cal-{version}") \
        + f"-{facts['debian']}-{facts['arch']}"
    cache = args.cache.resolve()
    out_dir = args.out.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)

    wheels = python_wheels(source / "requirements.lock", cache)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        own = project_wheel(source, version, Path(tmp))
        debs = debian_packages(cache)
        sources = {f"wheels/{w.name}": w for w in wheels + [own]} | {f"debs/{p.name}": p for *_, p in debs}
        items = [Item("wheel", *wheel_name_version(w.name), f"wheels/{w.name}", sha256(w)) for w in wheels + [own]]
        items += [Item("deb", n, v, f"debs/{p.name}", sha256(p)) for n, v, p in debs]
        if base:
            items = upgrade_items(items, base)
        fields = {"name": name, "kind": kind, "version": version,
                  "base": base.fields["version"] if base else "-", **facts}
        sources |= {dest: source / src for dest, src in BUNDLE_FILES.items()}
        archive = assemble(out_dir, fields, items, sources, compress=bool(base))
    digest = sha256(archive)
    n_wheels = sum(1 for i in items if i.kind == "wheel" and i.path)
    n_debs = sum(1 for i in items if i.kind == "deb" and i.path)
    size = archive.stat().st_size
    human = f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.1f} kB"
    say(f"{archive}  ({kind}: {n_wheels} wheels, {n_debs} Debian packages"
        + (f", needs {len(items) - n_wheels - n_debs} from {base.fields['name']}" if base else "") + ")")
    print(f"size   {size} bytes ({human})")
    print(f"sha256 {digest}")
    print(f"manifest {out_dir / (name + '.manifest')}")
    if args.sign_key:
        key_file = sign(archive, args.sign_key)
        print(f"signature {archive}.sig (key {args.sign_key}; first install: ./install.sh --trust-key {key_file.name})")
    return archive


def sign(archive: Path, key: str) -> Path:
    """A detached OpenPGP signature ARCHIVE.sig by `key` (gpg, GNUPGHOME as set), and the public key
    beside it as bundle-signing-key.gpg: the station checks later bundles with gpgv against that key,
    kept at the first install (install.sh --trust-key), before it reads anything of them."""
    if shutil.which("gpg") is None:
        raise BundleError("signing needs gpg (Debian package gnupg)")
    signature = archive.with_name(archive.name + ".sig")
    run(["gpg", "--batch", "--yes", "--local-user", key, "--detach-sign", "--output", str(signature), str(archive)])
    public = archive.parent / "bundle-signing-key.gpg"
    exported = subprocess.run(["gpg", "--batch", "--export", key], capture_output=True, check=False).stdout  # bytes
    if not exported:
        raise BundleError(f"gpg has no public key {key}")
    public.write_bytes(exported)
    return public


def assemble(out_dir: Path, fields: dict[str, str], items: list[Item], sources: dict[str, Path],
             compress: bool = False) -> Path:
    """Write OUT/NAME.tar[.gz] (+ .sha256, + .manifest): `items` that have a path and the BUNDLE_FILES are
    read from `sources` (bundle path -> file); wheels.lock, manifest.txt and SHA256SUMS are written here."""
    name = fields["name"]
    # An upgrade goes through the satellite: gzip it (a full bundle is wheels and .debs, compressed already).
    archive = out_dir / (f"{name}.tar.gz" if compress else f"{name}.tar")
    held = {i.path: i for i in items if i.path}  # read from the cache straight into the archive
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        stage = Path(tmp) / name
        for sub in ("wheels", "debs", "files"):
            (stage / sub).mkdir(parents=True)
        files = {}
        for dest in BUNDLE_FILES:
            shutil.copy2(sources[dest], stage / dest)
            files[dest] = sha256(stage / dest)
        # What pip installs in the new venv: every wheel (held or needed), hash-checked.
        wheel_items = sorted((i for i in items if i.kind == "wheel"), key=lambda i: i.name)
        (stage / "wheels.lock").write_text("".join(f"{i.name}=={i.version} --hash=sha256:{i.sha256}\n"
                                                   for i in wheel_items))
        files["wheels.lock"] = sha256(stage / "wheels.lock")
        fields = {"format": FORMAT, "name": name, "archive": archive.name, **fields,
                  "created": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
        (stage / "manifest.txt").write_text(Manifest(fields, items, files).render())
        listed = ["manifest.txt", *sorted(files), *sorted(held)]
        sums = {p: held[p].sha256 if p in held else sha256(stage / p) for p in listed}
        (stage / "SHA256SUMS").write_text("".join(f"{sums[p]}  {p}\n" for p in listed))
        partial = archive.with_name(archive.name + ".part")
        with tarfile.open(partial, "w:gz" if compress else "w", format=tarfile.PAX_FORMAT) as tar:
            # The manifest and the checksums first: even a truncated copy says what it should hold.
            for sub in ("", "/wheels", "/debs", "/files"):
                tar.add(stage.parent / (name + sub), arcname=name + sub, recursive=False, filter=owned_by_root)
            for path in ["SHA256SUMS", *listed]:
                tar.add(sources[path] if path in held else stage / path, arcname=f"{name}/{path}", filter=owned_by_root)
        partial.rename(archive)
        shutil.copy2(stage / "manifest.txt", out_dir / f"{name}.manifest")
    (out_dir / f"{archive.name}.sha256").write_text(f"{sha256(archive)}  {archive.name}\n")
    return archive


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="base", type=Path, help="manifest of the installed bundle: build an upgrade")
    parser.add_argument("--version", help="version to build (default: __version__ of the tree)")
    parser.add_argument("--cache", type=Path, default=REPO / ".bundle-cache", help="downloads and built wheels")
    parser.add_argument("--out", type=Path, default=REPO / "dist", help="where the archive goes")
    parser.add_argument("--sign-key", help="gpg key (id or fingerprint) to sign the archive with (ARCHIVE.sig)")
    parser.add_argument("--source", type=Path, default=REPO, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        build(args)
    except BundleError as exc:
        print(f"bundle: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"bundle: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
