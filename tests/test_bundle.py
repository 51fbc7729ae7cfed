"""The offline bundle (deploy/bundle.py, deploy/install.sh) on tiny fake bundles: no download.

Each fake bundle is written by the real writer (`bundle.assemble`) with two hand-made wheels (a fake
`astep-cal` whose command prints its version, and a dependency), then extracted and installed by the
real install.sh with --no-system into a temporary tree. The bad cases — another architecture or Debian
release, a truncated or altered copy, an upgrade without its base — must be refused with a clear
message and change nothing. The real bundle in a container without a network: `make test-systemd`.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("astep_bundle", REPO / "deploy" / "bundle.py")
bundle = importlib.util.module_from_spec(spec)
sys.modules["astep_bundle"] = bundle
spec.loader.exec_module(bundle)

pytestmark = pytest.mark.skipif(shutil.which("dpkg") is None or not Path("/usr/bin/python3").exists(),
                                reason="needs a Debian system (dpkg, /usr/bin/python3)")

HOST_PYTHON = subprocess.run(["/usr/bin/python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True).stdout.strip() if Path("/usr/bin/python3").exists() else ""
HOST_ARCH = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip() \
    if shutil.which("dpkg") else ""


def record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def fake_wheel(where: Path, name: str, version: str, requires: tuple[str, ...] = (), schema: int = 2) -> Path:
    """A pure-Python wheel; `astep-cal` gets a console script printing `astep-cal VERSION` and an
    astep_cal/state/ledger.py (where the package keeps it) reading ledger schemas up to `schema`."""
    dist = name.replace("-", "_")
    module = f"{dist}_fake"
    info = f"{dist}-{version}.dist-info"
    files = {
        f"{module}.py": f"def main():\n    print('astep-cal {version}')\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                            + "".join(f"Requires-Dist: {r}\n" for r in requires),
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    if name == "astep-cal":
        files[f"{info}/entry_points.txt"] = f"[console_scripts]\nastep-cal = {module}:main\n"
        files["astep_cal/state/ledger.py"] = f"SCHEMA_VERSION = {schema}\n"
    record = "".join(f"{path},{record_hash(text.encode())},{len(text.encode())}\n" for path, text in files.items())
    path = where / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for name_in, text in files.items():
            wheel.writestr(name_in, text)
        wheel.writestr(f"{info}/RECORD", record + f"{info}/RECORD,,\n")
    return path


def make_bundle(tmp: Path, version: str, *, arch: str = HOST_ARCH, debian: str = "bookworm",
                base: bundle.Manifest | None = None, schema: int = 2) -> tuple[Path, Path]:
    """(archive, manifest) of a fake full bundle, or of an upgrade on top of `base`."""
    src = tmp / f"src-{version}"
    src.mkdir()
    wheels = [fake_wheel(src, "fakedep", "1.0"), fake_wheel(src, "astep-cal", version, ("fakedep==1.0",), schema)]
    items = [bundle.Item("wheel", *bundle.wheel_name_version(w.name), f"wheels/{w.name}", bundle.sha256(w))
             for w in wheels]
    if base is not None:
        items = bundle.upgrade_items(items, base)
    name = (f"astep-cal-upgrade-{version}-from-{base.fields['version']}" if base else f"astep-cal-{version}") \
        + f"-{debian}-{arch}"
    fields = {"name": name, "kind": "upgrade" if base else "full", "version": version,
              "base": base.fields["version"] if base else "-", "debian": debian, "arch": arch, "python": HOST_PYTHON}
    sources = {f"wheels/{w.name}": w for w in wheels} | {d: REPO / s for d, s in bundle.BUNDLE_FILES.items()}
    out = tmp / "dist"
    out.mkdir(exist_ok=True)
    archive = bundle.assemble(out, fields, items, sources, compress=base is not None)
    return archive, out / f"{name}.manifest"


def extract(archive: Path, where: Path) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        # The "data" filter (no links out, no devices) where tarfile has it: 3.11.4 and later, not Debian
        # bookworm's 3.11.2, which make test must run on too; the archives here are the test's own.
        tar.extractall(where, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        top = tar.getnames()[0].split("/")[0]
    return where / top


class Target:
    """A staging tree for install.sh --no-system."""

    def __init__(self, root: Path):
        self.root = root
        self.app = root / "opt/astep-cal"
        os_release = root / "os-release"
        root.mkdir(parents=True, exist_ok=True)
        os_release.write_text('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nVERSION_CODENAME=bookworm\n')
        self.env = {"PATH": os.environ["PATH"], "APP_DIR": str(self.app), "PREFIX": str(root / "usr/local"),
                    "CONF_DIR": str(root / "etc/astep-cal"), "UNIT_DIR": str(root / "etc/systemd/system"),
                    "SYSUSERS_DIR": str(root / "usr/lib/sysusers.d"), "DATA_ROOT": "/srv/astep",
                    "STATE_DIR": str(root / "var/lib/astep-cal"),
                    "OS_RELEASE": str(os_release)}

    def install(self, bundle_dir: Path, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(bundle_dir / "install.sh"), "--no-system", *args], env=self.env,
                              capture_output=True, text=True, timeout=300)

    def version(self) -> str:
        return subprocess.run([str(self.root / "usr/local/bin/astep-cal")], capture_output=True, text=True,
                              timeout=60).stdout.strip()

    def snapshot(self) -> dict[str, bytes | str]:
        """Every path under the tree with its content (or link target): to prove nothing changed."""
        found: dict[str, bytes | str] = {}
        for path in sorted(self.root.rglob("*")):
            key = str(path.relative_to(self.root))
            if path.is_symlink():
                found[key] = "-> " + os.readlink(path)
            elif path.is_file():
                found[key] = path.read_bytes()
            else:
                found[key] = "dir"
        return found


def refused(completed: subprocess.CompletedProcess, *words: str) -> None:
    assert completed.returncode == 2, completed.stdout + completed.stderr
    assert "nothing was changed" in completed.stderr, completed.stderr
    assert "Traceback" not in completed.stderr
    for word in words:
        assert word in completed.stderr, completed.stderr


# --- the manifest and the upgrade's contents (pure) ------------------------------------------------

def test_manifest_round_trip_and_upgrade_holds_only_what_changed():
    items = [bundle.Item("wheel", "numpy", "2.4.6", "wheels/numpy.whl", "a" * 64),
             bundle.Item("wheel", "astep-cal", "0.1.0", "wheels/astep_cal.whl", "b" * 64),
             bundle.Item("deb", "astrometry.net", "0.93", "debs/astrometry.deb", "c" * 64)]
    base = bundle.Manifest({"format": "1", "name": "n", "version": "0.1.0"}, items, {"install.sh": "d" * 64})
    assert bundle.Manifest.parse(base.render()).items == sorted(items, key=lambda i: (i.kind, i.name))

    new = [bundle.Item("wheel", "numpy", "2.4.6", "wheels/numpy.whl", "e" * 64),  # rebuilt: other hash
           bundle.Item("wheel", "scipy", "1.17.1", "wheels/scipy.whl", "f" * 64),  # new dependency
           bundle.Item("wheel", "astep-cal", "0.2.0", "wheels/astep_cal2.whl", "0" * 64),
           bundle.Item("deb", "astrometry.net", "0.93", "debs/astrometry.deb", "c" * 64)]
    upgrade = {i.name: i for i in bundle.upgrade_items(new, base)}
    assert upgrade["numpy"].path == "" and upgrade["numpy"].sha256 == "a" * 64  # needed, as installed
    assert upgrade["astrometry.net"].path == ""
    assert upgrade["scipy"].path and upgrade["astep-cal"].path  # carried
    parsed = bundle.Manifest.parse(bundle.Manifest({"format": "1"}, list(upgrade.values()), {}).render())
    assert {i.name for i in parsed.items if not i.path} == {"numpy", "astrometry.net"}


def test_manifest_of_another_format_is_refused():
    with pytest.raises(bundle.BundleError, match="not an astep-cal bundle manifest"):
        bundle.Manifest.parse("format\t9\n")
    with pytest.raises(bundle.BundleError, match="not a manifest line"):
        bundle.Manifest.parse("format\t1\nwheel\tx\t1.0\n")


# --- install.sh ------------------------------------------------------------------------------------

def test_install_upgrade_rollback_from_fake_bundles(tmp_path):
    archive, manifest = make_bundle(tmp_path, "1.0.0")
    target = Target(tmp_path / "target")
    before = target.snapshot()
    check = target.install(extract(archive, tmp_path / "x1"), "--check")
    assert check.returncode == 0 and "verified for this machine" in check.stdout, check.stdout + check.stderr
    assert target.snapshot() == before
    first = target.install(tmp_path / "x1" / archive.name.removesuffix(".tar"))
    assert first.returncode == 0, first.stdout + first.stderr
    assert target.version() == "astep-cal 1.0.0"
    assert "installed " in first.stdout and (target.root / "etc/astep-cal/astep-cal.toml").is_file()
    unit = (target.root / "etc/systemd/system/astep-cal.service").read_text()
    assert f"ExecStart={target.root}/usr/local/bin/astep-cal run" in unit

    # Again: nothing rebuilt, the config kept.
    again = target.install(tmp_path / "x1" / archive.name.removesuffix(".tar"))
    assert again.returncode == 0, again.stderr
    assert "already installed" in again.stdout and "keeping existing" in again.stdout

    # The upgrade holds only the project's wheel; it builds on the base's wheels in APP_DIR/wheels.
    up_archive, _ = make_bundle(tmp_path, "1.0.1", base=bundle.Manifest.parse(manifest.read_text()))
    with tarfile.open(up_archive) as tar:
        assert [n for n in tar.getnames() if n.endswith(".whl")] == [
            f"{up_archive.name.removesuffix('.tar.gz')}/wheels/astep_cal-1.0.1-py3-none-any.whl"]
    up = target.install(extract(up_archive, tmp_path / "x2"))
    assert up.returncode == 0, up.stdout + up.stderr
    assert target.version() == "astep-cal 1.0.1"
    assert os.readlink(target.app / "previous") == "releases/1.0.0"

    # Rollback, without the bundle (the copy install.sh keeps of itself), and back.
    back = subprocess.run(["bash", str(target.app / "install.sh"), "--no-system", "--rollback"], env=target.env,
                          capture_output=True, text=True, timeout=60)
    assert back.returncode == 0, back.stderr
    assert "rolled back: astep-cal 1.0.1 -> 1.0.0" in back.stdout
    assert target.version() == "astep-cal 1.0.0"
    forth = target.install(tmp_path / "x2" / up_archive.name.removesuffix(".tar.gz"), "--rollback")
    assert forth.returncode == 0 and target.version() == "astep-cal 1.0.1"


def test_rollback_to_a_version_that_cannot_read_the_ledger_is_refused(tmp_path):
    archive, manifest = make_bundle(tmp_path, "1.0.0", schema=1)
    target = Target(tmp_path / "target")
    assert target.install(extract(archive, tmp_path / "x1")).returncode == 0
    up_archive, _ = make_bundle(tmp_path, "2.0.0", base=bundle.Manifest.parse(manifest.read_text()), schema=2)
    up_dir = extract(up_archive, tmp_path / "x2")
    assert target.install(up_dir).returncode == 0
    ledger = target.root / "var/lib/astep-cal/ledger.json"  # where the installed config puts it
    ledger.parent.mkdir(parents=True)
    ledger.write_text('{"schema": 2, "nights": {}}')
    before = target.snapshot()
    refused(target.install(up_dir, "--rollback"), "has schema 2", "astep-cal 1.0.0 reads schemas up to 1", "--force")
    assert target.snapshot() == before and target.version() == "astep-cal 2.0.0"
    forced = target.install(up_dir, "--rollback", "--force")
    assert forced.returncode == 0 and target.version() == "astep-cal 1.0.0", forced.stderr


def test_bundle_for_another_architecture_is_refused(tmp_path):
    archive, _ = make_bundle(tmp_path, "1.0.0", arch="s390x" if HOST_ARCH != "s390x" else "amd64")
    target = Target(tmp_path / "target")
    before = target.snapshot()
    refused(target.install(extract(archive, tmp_path / "x")), "is for the architecture", HOST_ARCH)
    assert target.snapshot() == before


def test_bundle_for_another_debian_release_is_refused(tmp_path):
    archive, _ = make_bundle(tmp_path, "1.0.0", debian="trixie")
    target = Target(tmp_path / "target")
    before = target.snapshot()
    refused(target.install(extract(archive, tmp_path / "x")), "is for Debian trixie", "bookworm")
    assert target.snapshot() == before


def test_truncated_bundle_is_refused(tmp_path):
    archive, _ = make_bundle(tmp_path, "1.0.0")
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) * 2 // 3])  # a copy cut short: the last files end short or are missing
    where = tmp_path / "x"
    where.mkdir()
    # tar may or may not complain (a cut at a member boundary looks like a shorter archive): the
    # engineer may not notice, install.sh must.
    subprocess.run(["tar", "-xf", str(archive), "-C", str(where)], capture_output=True, text=True)
    check = subprocess.run(["sha256sum", "-c", archive.name + ".sha256"], cwd=archive.parent, capture_output=True)
    assert check.returncode != 0
    target = Target(tmp_path / "target")
    before = target.snapshot()
    refused(target.install(next(where.iterdir())), "is damaged", "sha256sum -c")
    assert target.snapshot() == before


def test_altered_bundle_is_refused(tmp_path):
    archive, _ = make_bundle(tmp_path, "1.0.0")
    top = extract(archive, tmp_path / "x")
    wheel = next((top / "wheels").glob("astep_cal-*.whl"))
    wheel.write_bytes(wheel.read_bytes() + b"\0")
    target = Target(tmp_path / "target")
    before = target.snapshot()
    refused(target.install(top), "is damaged", wheel.name)
    assert target.snapshot() == before

    # Altered along with its checksum line: the manifest's own entry still disagrees.
    sums = top / "SHA256SUMS"
    lines = [f"{bundle.sha256(wheel)}  wheels/{wheel.name}" if line.endswith(wheel.name) else line
             for line in sums.read_text().splitlines()]
    sums.write_text("\n".join(lines) + "\n")
    refused(target.install(top), "differs from its manifest entry")
    assert target.snapshot() == before


def test_upgrade_without_its_base_is_refused(tmp_path):
    _, manifest = make_bundle(tmp_path, "1.0.0")
    up_archive, _ = make_bundle(tmp_path, "1.0.1", base=bundle.Manifest.parse(manifest.read_text()))
    target = Target(tmp_path / "target")
    before = target.snapshot()
    refused(target.install(extract(up_archive, tmp_path / "x")), "applies on top of astep-cal 1.0.0",
            "installed here: none", "wheel fakedep 1.0", "install the full bundle")
    assert target.snapshot() == before


def test_rollback_without_a_previous_version_is_refused(tmp_path):
    target = Target(tmp_path / "target")
    refused(subprocess.run(["bash", str(REPO / "deploy/install.sh"), "--no-system", "--rollback"], env=target.env,
                           capture_output=True, text=True, timeout=60), "no previous version")


def test_bundle_build_errors_are_messages(tmp_path, capsys):
    other = tmp_path / "other.manifest"
    other.write_text("format\t1\nversion\t0.0.1\ndebian\tbullseye\narch\tarmhf\npython\t3.9\n")
    assert bundle.main(["--from", str(other), "--cache", str(tmp_path), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "bundle: error:" in err and "build the upgrade on a machine like the target" in err


# --- the lock files --------------------------------------------------------------------------------

def lock_pins(path: Path) -> dict[str, tuple[str, str]]:
    """name -> (version, sha256) of a lock file; every entry must carry a sha256 hash."""
    pins = {}
    text = path.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        spec, *options = line.split()
        name, version = spec.split("==")
        hashes = [o.removeprefix("--hash=sha256:") for o in options if o.startswith("--hash=sha256:")]
        assert hashes and all(len(h) == 64 for h in hashes), line
        pins[name] = (version, hashes[0])
    return pins


def test_this_environment_runs_the_locked_versions_and_the_lock_pins_every_dependency():
    from importlib import metadata

    spec = importlib.util.spec_from_file_location("astep_lock", REPO / "deploy" / "lock.py")
    lock = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lock)
    runtime = lock_pins(REPO / "requirements.lock")
    test = lock_pins(REPO / "requirements-test.lock")
    assert not set(runtime) & set(test)
    for name, (version, _) in {**runtime, **test}.items():
        assert metadata.version(name) == version, f"{name}: {metadata.version(name)} installed, {version} locked"
    dists = lock.installed()
    assert lock.closure(dists, "astep-cal") <= set(runtime)
    assert lock.closure(dists, "astep-cal", ("test",)) <= set(runtime) | set(test)


# --- the signed bundle -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def signing_keys(tmp_path_factory):
    """Two real OpenPGP Ed25519 keys (the project's, a stranger's) in a throw-away GNUPGHOME."""
    if shutil.which("gpg") is None or shutil.which("gpgv") is None:
        pytest.skip("gpg and gpgv are needed (Debian gnupg, gpgv)")
    home = tmp_path_factory.mktemp("gnupg")
    home.chmod(0o700)
    env = dict(os.environ, GNUPGHOME=str(home))
    for uid in ("astep-cal bundles <bundles@astep.test>", "someone else <other@astep.test>"):
        subprocess.run(["gpg", "--batch", "--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", "never"],
                       env=env, check=True, capture_output=True)
    yield env
    # gpg started an agent for this home: end it with the test (no daemon left behind).
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], env=env, capture_output=True)


def sign_archive(archive: Path, env: dict[str, str], uid: str = "bundles@astep.test") -> Path:
    """What `make bundle SIGN_KEY=...` does (deploy/bundle.py's sign): ARCHIVE.sig and the public key."""
    os.environ["GNUPGHOME"], old = env["GNUPGHOME"], os.environ.get("GNUPGHOME")
    try:
        return bundle.sign(archive, uid)
    finally:
        if old is None:
            del os.environ["GNUPGHOME"]
        else:
            os.environ["GNUPGHOME"] = old


def install_signed(target: "Target", archive: Path, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    """The installed (trusted) install.sh checks and installs an archive: --bundle ARCHIVE."""
    env = dict(target.env, TMPDIR=str(tmp))
    return subprocess.run(["bash", str(target.app / "install.sh"), "--no-system", "--bundle", str(archive), *args],
                          env=env, capture_output=True, text=True, timeout=300)


def test_signed_bundles_install_and_a_tampered_or_foreign_one_is_refused_before_it_is_read(tmp_path, signing_keys):
    archive, manifest = make_bundle(tmp_path, "1.0.0")
    key = sign_archive(archive, signing_keys)
    target = Target(tmp_path / "target")
    first = target.install(extract(archive, tmp_path / "x1"), "--trust-key", str(key))
    assert first.returncode == 0, first.stdout + first.stderr
    keyring = target.root / "etc/astep-cal/bundle-keyring.gpg"
    assert keyring.read_bytes() == key.read_bytes()

    up_archive, _ = make_bundle(tmp_path, "1.0.1", base=bundle.Manifest.parse(manifest.read_text()))
    sign_archive(up_archive, signing_keys)
    scratch = tmp_path / "scratch"
    scratch.mkdir()

    # Altered after signing (one byte of the compressed archive): refused, nothing extracted or changed.
    tampered = tmp_path / "tampered" / up_archive.name
    tampered.parent.mkdir()
    data = bytearray(up_archive.read_bytes())
    data[len(data) // 2] ^= 0x01
    tampered.write_bytes(bytes(data))
    shutil.copy2(f"{up_archive}.sig", f"{tampered}.sig")
    before = target.snapshot()
    refused(install_signed(target, tampered, scratch), "does not verify")
    assert target.snapshot() == before and not list(scratch.iterdir())

    # Signed by a key the station does not trust: refused the same way.
    foreign = tmp_path / "foreign" / up_archive.name
    foreign.parent.mkdir()
    shutil.copy2(up_archive, foreign)
    sign_archive(foreign, signing_keys, uid="other@astep.test")
    refused(install_signed(target, foreign, scratch), "does not verify")
    # No signature at all: refused.
    unsigned = tmp_path / "unsigned" / up_archive.name
    unsigned.parent.mkdir()
    shutil.copy2(up_archive, unsigned)
    refused(install_signed(target, unsigned, scratch), "no signature")
    # The bundle's own install.sh run directly, on a machine that keeps a key: refused.
    refused(target.install(extract(up_archive, tmp_path / "x2")), "checks bundle signatures")
    assert target.snapshot() == before

    good = install_signed(target, up_archive, scratch)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "signature of" in good.stdout and target.version() == "astep-cal 1.0.1"
    assert not list(scratch.iterdir())  # the checked copy is removed


def test_a_manifest_naming_an_unsafe_version_is_refused(tmp_path):
    archive, _ = make_bundle(tmp_path, "1.0.0")
    root = extract(archive, tmp_path / "x")
    manifest = root / "manifest.txt"
    manifest.write_text(manifest.read_text().replace("version\t1.0.0", "version\t../../../../tmp/evil"))
    sums = root / "SHA256SUMS"
    sums.write_text("".join(f"{bundle.sha256(manifest)}  manifest.txt\n" if line.endswith("  manifest.txt") else
                            line + "\n" for line in sums.read_text().splitlines()))
    target = Target(tmp_path / "target")
    refused(target.install(root), "not a safe version")
