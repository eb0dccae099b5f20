"""The release bundle: one file to copy to every device and install offline.

``nanomesh release build`` (`build_bundle`) packs, in ``nanomesh-VERSION-bundle.tar``:

    nanomesh-VERSION/
        manifest.json        version, protocol range, Python, platforms, sha256 of every file
        peers/install.sh     the installer (``install.sh --bundle THIS.tar ...``)
        peers/nanomesh.service, peers/nanomesh-podman.conf   the hardened unit
        peers/*.toml         the example peer configs
        wheels/              nanomesh's wheel and its dependencies' wheels for every
                             target platform, side by side: pip picks the ones whose
                             tags fit the device (``pip install --no-index --find-links``)

and writes ``nanomesh-VERSION-bundle.tar.sha256`` (``sha256sum -c`` format) and a
copy of ``install.sh`` beside it, so a device needs those three files and the key.

How the wheelhouse is made, with pip only:
 1. ``pip wheel`` of the checkout and its dependencies for the build machine: this
    resolves the versions (the pins) and turns sdist-only dependencies (pysyncobj)
    into wheels. A pure wheel (``none-any``) serves every platform.
 2. For each target platform, ``pip download --no-deps --only-binary :all:`` of the
    pins that are not pure, with that platform's tags and the target Python. What
    has no wheel there is listed as missing, in the build output and the manifest
    (``platforms.NAME.missing``), instead of failing the build: a bundle may serve
    some platforms and not others, and says which.
Known limit: the pins come from the build machine's resolution, so a dependency
that only another platform needs (an environment marker on the machine) is not
looked for there.

The tar is not compressed (wheels already are) and is reproducible in its
layout: sorted names, owner root, fixed times.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nanomesh.errors import NanomeshError

# The manifest's rules (`MANIFEST`, `FORMAT`, `verify_tree`) live in
# `nanomesh.bundles.release`: a peer checks a release it fetched from the
# mesh. Imported where used: `nanomesh.bundles` loads trio, which
# `nanomesh --help` must not (tests/test_cli_package.py).

DEFAULT_PYTHON = "3.11"
"""The devices' Python: Debian 12 and Raspberry Pi OS (bookworm) ship 3.11."""


def _glibc_tags(arch: str) -> tuple[str, ...]:
    """Every manylinux tag a Debian 12 device (glibc 2.36) can run, newest
    first; pip does not expand ``--platform manylinux_2_36_ARCH`` to the older
    ones itself. Wheels on PyPI use 2_17 (alias manylinux2014) to 2_34."""
    minors = (36, 35, 34, 33, 32, 31, 28, 27, 26, 24, 17)
    return (*(f"manylinux_2_{m}_{arch}" for m in minors), f"manylinux2014_{arch}")


PLATFORMS: dict[str, tuple[str, ...]] = {
    "x86_64": _glibc_tags("x86_64"),
    "aarch64": _glibc_tags("aarch64"),        # Raspberry Pi OS 64-bit, Pi 3/4/5
    "armv7l": (*_glibc_tags("armv7l"), "linux_armv7l"),  # Raspberry Pi OS 32-bit
}
"""Target platforms by name, as pip ``--platform`` tags. ``native`` (not in this
table) is the build machine's own platform and Python, as pip sees them: what
the tests use, with no cross-platform download."""
DEFAULT_PLATFORMS = ("x86_64", "aarch64", "armv7l")

Log = Callable[[str], None]


@dataclass
class PlatformReport:
    """What the wheelhouse holds for one target platform."""

    tags: tuple[str, ...]
    missing: list[str] = field(default_factory=list)
    """``name==version`` of the dependencies with no wheel for it."""

    def to_json(self) -> dict[str, Any]:
        return {"complete": not self.missing, "missing": self.missing, "tags": list(self.tags)}


# ---------------------------------------------------------------- pure helpers

def bundle_name(version: str) -> str:
    return f"nanomesh-{version}-bundle.tar"


def wheel_pin(filename: str) -> str:
    """``name==version`` of a wheel file (PEP 427: name-version-[build-]py-abi-plat)."""
    name, version = filename.split("-")[:2]
    return f"{name}=={version}"


def is_pure(filename: str) -> bool:
    """A wheel with no compiled code for any platform (``py3-none-any``)."""
    abi, platform = filename.removesuffix(".whl").split("-")[-2:]
    return abi == "none" and platform == "any"


def protocol_info() -> dict[str, int]:
    """The wire protocol this build speaks and the range it accepts."""
    from nanomesh.wire.envelope import PROTOCOL_MAX, PROTOCOL_MIN, PROTOCOL_VERSION
    return {"speaks": PROTOCOL_VERSION, "accepts_min": PROTOCOL_MIN,
            "accepts_max": PROTOCOL_MAX}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def make_manifest(version: str, python: str, platforms: dict[str, PlatformReport],
                  files: dict[str, str]) -> dict[str, Any]:
    from nanomesh.bundles.release import FORMAT
    return {"format": FORMAT, "name": "nanomesh", "version": version,
            "protocol": protocol_info(), "python": python,
            "platforms": {name: report.to_json() for name, report in platforms.items()},
            "files": dict(sorted(files.items()))}


# ---------------------------------------------------------------- the build

def build_bundle(source: Path, out_dir: Path, platforms: Sequence[str],
                 python: str = DEFAULT_PYTHON, find_links: Sequence[Path] = (),
                 no_index: bool = False, log: Log = print,
                 set_version: str | None = None) -> Path:
    """Build the bundle of the checkout ``source`` into ``out_dir``; return its path.

    ``set_version``: build it as that version instead of the checkout's
    ``__version__`` (the wheel and ``nanomesh version`` say it): a rehearsal
    of an upgrade, the tests' two versions of one checkout.

    ``find_links``/``no_index`` are passed to pip (e.g. a wheelhouse made
    before, to build with no index reachable). Raises `NanomeshError` when the
    checkout has no pyproject.toml or pip fails for a reason other than a
    missing platform wheel."""
    if not (source / "pyproject.toml").is_file():
        raise NanomeshError(f"{source} is not a nanomesh checkout (no pyproject.toml); "
                            "pass --source DIR")
    if "native" in platforms:
        python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    pip_opts = [*(f"--find-links={p}" for p in find_links), *(["--no-index"] if no_index else [])]
    with tempfile.TemporaryDirectory(prefix="nanomesh-release-") as tmp:
        work = Path(tmp)
        native = work / "native"
        log(f"building nanomesh and resolving its dependencies with {sys.executable} ...")
        copy = _clean_copy(source, work)
        if set_version is not None:
            _set_version(copy, set_version)
        _pip("wheel", "-q", "-w", str(native), *pip_opts, str(copy))
        built = sorted(p.name for p in native.glob("nanomesh-*.whl"))
        if len(built) != 1:
            raise NanomeshError(f"expected one nanomesh wheel, pip made {built}")
        version = built[0].split("-")[1]
        stage = work / f"nanomesh-{version}"
        wheels = stage / "wheels"
        wheels.mkdir(parents=True)
        reports = _fill_wheelhouse(native, wheels, platforms, python, pip_opts, log)
        _copy_support_files(source, stage)
        files = {str(p.relative_to(stage)): sha256_file(p)
                 for p in sorted(stage.rglob("*")) if p.is_file()}
        manifest = make_manifest(version, python, reports, files)
        (stage / release_manifest()).write_text(json.dumps(manifest, indent=2) + "\n")
        bundle = pack(stage, out_dir / bundle_name(version))
    shutil.copy2(source / "peers" / "install.sh", out_dir / "install.sh")
    _log_summary(bundle, reports, log)
    return bundle


WHEEL_SOURCES = ("pyproject.toml", "README.md", "nanomesh")
"""What the wheel is built from (pyproject.toml's packages and readme)."""


def _clean_copy(source: Path, work: Path) -> Path:
    """The wheel's sources alone, copied: setuptools builds in the tree it is
    given and leaves build/ and *.egg-info there, and a stale build/lib would
    put files deleted from the checkout into the wheel."""
    copy = work / "source"
    for name in WHEEL_SOURCES:
        if (source / name).is_dir():
            shutil.copytree(source / name, copy / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            copy.mkdir(exist_ok=True)
            shutil.copy2(source / name, copy / name)
    return copy


VERSION_RE = re.compile(r"[0-9]+(\.[0-9]+)*([.+-]?[a-z0-9]+)*")
"""What ``--set-version`` accepts: a PEP 440 version, roughly (pip checks the rest)."""


def _set_version(copy: Path, version: str) -> None:
    """Make the copied sources say they are ``version``."""
    if not VERSION_RE.fullmatch(version):
        raise NanomeshError(f"--set-version {version!r}: not a version like 1.2.3 or 1.2.3rc1")
    init = copy / "nanomesh" / "__init__.py"
    text, found = re.subn(r'(?m)^__version__ = "[^"]*"$', f'__version__ = "{version}"',
                          init.read_text())
    if found != 1:
        raise NanomeshError(f"{init}: no __version__ line to set")
    init.write_text(text)


def _fill_wheelhouse(native: Path, wheels: Path, platforms: Sequence[str], python: str,
                     pip_opts: list[str], log: Log) -> dict[str, PlatformReport]:
    names = sorted(p.name for p in native.glob("*.whl"))
    for name in names:
        if is_pure(name) or "native" in platforms:
            shutil.copy2(native / name, wheels / name)
    binary_pins = [wheel_pin(n) for n in names if not is_pure(n)]
    reports = {}
    for platform in platforms:
        if platform == "native":
            reports[platform] = PlatformReport(tags=("native",))
            continue
        log(f"downloading wheels for {platform} (Python {python}): {len(binary_pins)} "
            "with compiled code")
        reports[platform] = _download_for(platform, binary_pins, wheels, python, pip_opts)
    return reports


def _download_for(platform: str, pins: list[str], dest: Path, python: str,
                  pip_opts: list[str]) -> PlatformReport:
    """Download ``pins`` for ``platform``: all at once, and one by one only when
    that fails, to name every pin that has no wheel there."""
    report = PlatformReport(tags=PLATFORMS[platform])
    opts = ["download", "-q", "--no-deps", "--only-binary", ":all:", "--python-version",
            python, "--implementation", "cp", "-d", str(dest), *pip_opts,
            *(f"--platform={tag}" for tag in report.tags)]
    if not pins or _pip(*opts, *pins, check=False):
        return report
    report.missing = [pin for pin in pins if not _pip(*opts, pin, check=False)]
    return report


SUPPORT_FILES = ("install.sh", "nanomesh-launch", "nanomesh.service", "nanomesh-podman.conf")
"""What the bundle takes from the checkout's peers/, besides the configs."""


def _copy_support_files(source: Path, stage: Path) -> None:
    """peers/ as in the checkout, so install.sh finds its files where it does there."""
    (stage / "peers").mkdir()
    peers = source / "peers"
    for path in [*(peers / name for name in SUPPORT_FILES), *sorted(peers.glob("*.toml"))]:
        shutil.copy2(path, stage / "peers" / path.name)


def pack(stage: Path, bundle: Path) -> Path:
    """Write the directory ``stage`` as the tar ``bundle`` and its ``.sha256``
    beside it; return ``bundle``."""
    bundle.parent.mkdir(parents=True, exist_ok=True)
    _write_tar(stage, bundle)
    bundle.with_name(bundle.name + ".sha256").write_text(
        f"{sha256_file(bundle)}  {bundle.name}\n")
    return bundle


def _write_tar(stage: Path, bundle: Path) -> None:
    def normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mtime = 0
        return info

    with tarfile.open(bundle, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in [stage, *sorted(stage.rglob("*"))]:
            tar.add(path, arcname=str(path.relative_to(stage.parent)), recursive=False,
                    filter=normalise)


def _log_summary(bundle: Path, reports: dict[str, PlatformReport], log: Log) -> None:
    for platform, report in reports.items():
        if report.missing:
            log(f"WARNING: {platform}: no wheel for {', '.join(report.missing)}: this bundle "
                f"cannot install on {platform} (listed in the manifest)")
        else:
            log(f"{platform}: complete")
    log(f"wrote {bundle} ({bundle.stat().st_size // 1024} KiB) and {bundle.name}.sha256")


def _pip(*args: str, check: bool = True) -> bool:
    """Run pip of this interpreter; True when it succeeded."""
    done = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise NanomeshError(f"pip {args[0]} failed:\n{_last_lines(done.stderr)}")
    return done.returncode == 0


def _last_lines(text: str, count: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-count:])


def read_manifest(bundle: Path) -> dict[str, Any]:
    """The manifest of a bundle file, without unpacking the rest."""
    with tarfile.open(bundle) as tar:
        for member in tar.getmembers():
            if member.name.endswith("/" + release_manifest()) and member.name.count("/") == 1:
                f = tar.extractfile(member)
                if f is not None:
                    loaded: dict[str, Any] = json.loads(f.read())
                    return loaded
    raise NanomeshError(f"{bundle}: no {release_manifest()} in it; not a nanomesh bundle")


def release_manifest() -> str:
    """The manifest's file name (`nanomesh.bundles.release.MANIFEST`)."""
    from nanomesh.bundles.release import MANIFEST
    return MANIFEST


def default_source() -> Path:
    """The checkout this nanomesh runs from (an editable install's source)."""
    return Path(__file__).resolve().parents[2]
