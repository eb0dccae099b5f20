"""The release bundle (`nanomesh release build`) and installing from it offline
(``peers/install.sh --bundle``), issue 15.

The bundles here are built for this machine only (``--platform native``) from
a wheelhouse of nanomesh's dependencies made once per machine and kept in
``~/.cache/nanomesh-tests`` (making it needs a package index; without one
these tests are skipped, and say so). After that nothing is fetched: the
builds run with ``--no-index`` and the installs with every index pointed at a
dead address, so an install that tried the network would fail.

The installer runs for real against a fake root (``--root DIR``): it makes the
venv there from the bundle's wheels, writes config, key and unit, and runs
``systemctl --root=DIR enable`` (where systemctl is installed). It cannot
``systemctl restart`` the unit: that needs a device running systemd, so the
restart on upgrade is not exercised here. The cross-platform wheelhouse
(aarch64, armv7l) needs the index and takes minutes: it is not built here
(``nanomesh release build`` with no ``--platform`` does it).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest

from nanomesh import __version__
from nanomesh.bundles.release import MANIFEST, verify_tree
from nanomesh.cli import main
from nanomesh.cli.release_bundle import (
    default_source,
    is_pure,
    pack,
    protocol_info,
    sha256_file,
    wheel_pin,
)
from nanomesh.versions import THIS
from nanomesh.wire import PROTOCOL_MAX, PROTOCOL_MIN, PROTOCOL_VERSION, generate_key

REPO = Path(__file__).resolve().parent.parent
INSTALL = REPO / "peers" / "install.sh"

OFFLINE = {"PIP_INDEX_URL": "http://127.0.0.1:9/", "PIP_EXTRA_INDEX_URL": "http://127.0.0.1:9/"}
"""An index nobody answers at: pip fails at once if it tries to fetch anything."""


def offline_env() -> dict[str, str]:
    """No extra wheels, no index, and no PYTHONPATH (the installed venv must
    import its own nanomesh, not this checkout)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PIP_FIND_LINKS", "PYTHONPATH")}
    return {**env, **OFFLINE}


# ------------------------------------------------------------------ pure parts

def test_wheel_names_give_pins_and_purity() -> None:
    assert wheel_pin("trio_asyncio-0.16.0-py3-none-any.whl") == "trio_asyncio==0.16.0"
    assert is_pure("outcome-1.3.0.post0-py2.py3-none-any.whl")
    assert not is_pure("psutil-7.2.2-cp36-abi3-manylinux2010_x86_64.whl")
    assert not is_pure("msgpack-1.2.4-cp311-cp311-linux_armv7l.whl")


def test_default_source_is_this_checkout() -> None:
    assert default_source() == REPO


def test_verify_tree_names_missing_and_changed_files(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("one")
    (tmp_path / "b").write_text("two")
    manifest = {"files": {"a": sha256_file(tmp_path / "a"), "b": sha256_file(tmp_path / "b"),
                          "c": "0" * 64}}
    assert verify_tree(tmp_path, manifest) == ["c: missing"]
    (tmp_path / "b").write_text("changed")
    assert verify_tree(tmp_path, manifest) == [
        "b: sha256 differs from the manifest", "c: missing"]


def test_version_says_the_protocol_range(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["version"] == __version__ and info["protocol"] == protocol_info()
    assert main(["version"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"nanomesh {__version__}\n")
    assert f"wire protocol {PROTOCOL_VERSION} (accepts {PROTOCOL_MIN} to {PROTOCOL_MAX}" in text
    assert f"raft {THIS.raft.low}..{THIS.raft.high}" in text
    assert info["protocols"] == THIS.protocols_json()


def test_help_is_plain_text() -> None:
    done = subprocess.run([str(INSTALL), "--help"], capture_output=True, text=True, timeout=10)
    assert done.returncode == 0
    assert done.stdout.startswith("Install, upgrade or remove")
    assert "--bundle FILE" in done.stdout and "--uninstall" in done.stdout
    for shell in ("set -euo", "$(", "#!/", "esac"):
        assert shell not in done.stdout


# ------------------------------------------------------------------ bundles

def _dependency_key() -> str:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    wanted = [*pyproject["project"]["dependencies"], *pyproject["build-system"]["requires"],
              sys.version, sys.platform, os.uname().machine]
    return hashlib.sha256(json.dumps(wanted).encode()).hexdigest()[:16]


@pytest.fixture(scope="session")
def wheelhouse() -> Path:
    """nanomesh's dependencies and build requirements as wheels for this
    machine, made once (needs an index) and kept between runs."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "nanomesh-tests"
    house = cache / f"wheelhouse-{_dependency_key()}"
    if (house / "complete").exists():
        return house
    building = cache / f"building-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    for args in (["wheel", "-w", str(building), *pyproject["project"]["dependencies"]],
                 ["download", "-d", str(building), *pyproject["build-system"]["requires"]]):
        done = subprocess.run([sys.executable, "-m", "pip", "-q", *args],
                              capture_output=True, text=True, timeout=540)
        if done.returncode != 0:
            shutil.rmtree(building, ignore_errors=True)
            pytest.skip(f"cannot make the test wheelhouse (needs a package index): "
                        f"{done.stderr.strip().splitlines()[-1:]}")
    (building / "complete").touch()
    shutil.rmtree(house, ignore_errors=True)
    building.rename(house)
    return house


def build(version: str, tmp: Path, wheelhouse: Path) -> Path:
    out = tmp / f"dist-{version}"
    done = subprocess.run(
        [sys.executable, "-m", "nanomesh", "release", "build", "--platform", "native",
         "--set-version", version, "-o", str(out),
         "--find-links", str(wheelhouse), "--no-index"],
        capture_output=True, text=True, timeout=300, env={**offline_env(), "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    return out / f"nanomesh-{version}-bundle.tar"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory, wheelhouse: Path) -> dict[str, Path]:
    """Bundles of versions 1.0.0 and 1.0.1 of this checkout, built with no index."""
    tmp = tmp_path_factory.mktemp("bundles")
    return {version: build(version, tmp, wheelhouse) for version in ("1.0.0", "1.0.1")}


def unpack(bundle: Path, dest: Path) -> Path:
    with tarfile.open(bundle) as tar:
        tar.extractall(dest, filter="data")
    (top,) = dest.iterdir()
    return top


def test_bundle_round_trip(bundles: dict[str, Path], tmp_path: Path) -> None:
    bundle = bundles["1.0.0"]
    expected = bundle.with_name(bundle.name + ".sha256").read_text()
    assert expected == f"{sha256_file(bundle)}  {bundle.name}\n"
    assert (bundle.parent / "install.sh").read_bytes() == INSTALL.read_bytes()

    top = unpack(bundle, tmp_path)
    assert top.name == "nanomesh-1.0.0"
    manifest = json.loads((top / MANIFEST).read_text())
    assert manifest["version"] == "1.0.0"
    assert manifest["protocol"] == protocol_info()
    assert manifest["platforms"]["native"]["complete"] is True
    assert verify_tree(top, manifest) == []
    on_disk = {str(p.relative_to(top)) for p in top.rglob("*") if p.is_file()}
    assert on_disk == {*manifest["files"], MANIFEST}
    assert {"peers/install.sh", "peers/nanomesh.service", "peers/pir-pi.toml"} <= on_disk

    wheels = {wheel_pin(p.name).split("==")[0].lower().replace("_", "-")
              for p in (top / "wheels").glob("*.whl")}
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    for requirement in pyproject["project"]["dependencies"]:
        name = requirement.split(">")[0].split("<")[0].split("=")[0].strip().lower()
        assert name in wheels, f"no wheel of {name} in the bundle"
    assert (top / "wheels" / "nanomesh-1.0.0-py3-none-any.whl").is_file()


def install(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(INSTALL), "--root", str(root), *args],
                          capture_output=True, text=True, timeout=300, env=offline_env())


def installed_version(root: Path) -> str:
    done = subprocess.run([str(root / "opt/nanomesh/venv/bin/nanomesh"), "version", "--json"],
                          capture_output=True, text=True, timeout=60, env=offline_env())
    assert done.returncode == 0, done.stderr
    version: str = json.loads(done.stdout)["version"]
    return version


def without_wheel(bundle: Path, prefix: str, dest: Path) -> Path:
    """``bundle`` repacked without its ``prefix`` wheel, as a build that found
    none for it makes it: sound as a file (checksum and manifest agree), the
    manifest says what is missing, and it does not install."""
    top = unpack(bundle, dest / "unpacked")
    (wheel,) = (top / "wheels").glob(f"{prefix}-*.whl")
    wheel.unlink()
    manifest = json.loads((top / MANIFEST).read_text())
    del manifest["files"][f"wheels/{wheel.name}"]
    manifest["platforms"]["native"].update(complete=False, missing=[wheel_pin(wheel.name)])
    (top / MANIFEST).write_text(json.dumps(manifest))
    return pack(top, dest / "broken" / bundle.name)


def test_install_offline_then_upgrade_keeps_config_key_and_data(
        bundles: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    key = tmp_path / "cluster.key"
    key.write_text(generate_key() + "\n")
    done = install(root, "--bundle", str(bundles["1.0.0"]), "--bind", "192.0.2.10",
                   "--join", "192.0.2.1",
                   "--key-file", str(key), "--config", "pir-pi.toml")
    assert done.returncode == 0, done.stderr
    assert installed_version(root) == "1.0.0"
    assert "journalctl -u nanomesh -f" in done.stdout and "nanomesh status" in done.stdout
    etc = root / "etc" / "nanomesh"
    assert (etc / "cluster.key").read_bytes() == key.read_bytes()
    assert oct((etc / "cluster.key").stat().st_mode & 0o777) == "0o600"
    config = (etc / "peer.toml").read_text()
    assert 'name = "room-pd1"' in config and 'join = ["192.0.2.1"]' in config
    assert (root / "etc/systemd/system/nanomesh.service").is_file()
    assert os.readlink(root / "usr/local/bin/nanomesh") == "/opt/nanomesh/venv/bin/nanomesh"

    # What the peer and the operator made since: kept by every upgrade.
    data = root / "var" / "lib" / "nanomesh" / "room-pd1"
    data.mkdir(parents=True)
    (data / "raft.journal").write_bytes(b"entries")
    (etc / "peer.toml").write_text(config + "\n# edited by the operator\n")
    before = {p: p.read_bytes() for p in (etc / "peer.toml", etc / "cluster.key",
                                          data / "raft.journal")}
    venv = root / "opt" / "nanomesh" / "venv"
    first = os.readlink(venv)

    # An upgrade that cannot install (a wheel missing) changes nothing.
    broken = without_wheel(bundles["1.0.1"], "trio", tmp_path)
    done = install(root, "--bundle", str(broken))
    assert done.returncode != 0 and "unchanged" in done.stderr
    assert "this bundle has no wheels for native of: trio==" in done.stderr
    assert os.readlink(venv) == first and installed_version(root) == "1.0.0"
    assert [p.name for p in (root / "opt/nanomesh/versions").iterdir()] == [Path(first).name]

    done = install(root, "--bundle", str(bundles["1.0.1"]))
    assert done.returncode == 0, done.stderr
    assert installed_version(root) == "1.0.1"
    assert {p: p.read_bytes() for p in before} == before
    # The previous version stays beside it (a manual rollback), no more.
    versions = sorted(p.name for p in (root / "opt/nanomesh/versions").iterdir())
    assert versions == sorted([Path(first).name, Path(os.readlink(venv)).name])

    # The same bundle again reuses its venv.
    done = install(root, "--bundle", str(bundles["1.0.1"]))
    assert done.returncode == 0 and "installed already" in done.stdout


def test_corrupt_bundle_is_refused_before_anything_changes(bundles: dict[str, Path],
                                                          tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    bad = tmp_path / "bad" / bundles["1.0.0"].name
    bad.parent.mkdir()
    blob = bytearray(bundles["1.0.0"].read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    bad.write_bytes(bytes(blob))
    sums = bad.name + ".sha256"
    shutil.copy2(bundles["1.0.0"].with_name(sums), bad.with_name(sums))
    done = install(root, "--bundle", str(bad))
    assert done.returncode != 0 and "does not match its checksum" in done.stderr
    assert list(root.iterdir()) == []

    (bad.with_name(bad.name + ".sha256")).unlink()
    done = install(root, "--bundle", str(bad))
    assert done.returncode != 0 and ".sha256 is missing" in done.stderr
    assert list(root.iterdir()) == []

    # A bundle whose checksum matches but whose content is not what its
    # manifest says (repacked by hand) is refused too.
    top = unpack(bundles["1.0.0"], tmp_path / "unpacked")
    unit = top / "peers" / "nanomesh.service"
    unit.write_text(unit.read_text().replace("NoNewPrivileges=yes", "NoNewPrivileges=no"))
    repacked = pack(top, tmp_path / "repacked" / bundles["1.0.0"].name)
    done = install(root, "--bundle", str(repacked))
    assert done.returncode != 0
    assert "peers/nanomesh.service in the bundle does not match its manifest" in done.stderr
    assert list(root.iterdir()) == []


# ------------------------------------------------------------------ uninstall

@pytest.fixture
def installed(tmp_path: Path) -> Path:
    """A fake root installed from this checkout with a stand-in venv (as in
    test_install.py), with some peer data."""
    root = tmp_path / "root"
    bin_dir = root / "opt" / "nanomesh" / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name, args in (("python", ""), ("nanomesh", " -m nanomesh")):
        script = bin_dir / name
        script.write_text(f'#!/bin/sh\nPYTHONPATH="{REPO}" exec "{sys.executable}"{args} "$@"\n')
        script.chmod(0o755)
    done = install(root, "--skip-venv", "--bind", "192.0.2.10")
    assert done.returncode == 0, done.stderr
    (root / "var" / "lib" / "nanomesh").mkdir(parents=True)
    (root / "var" / "lib" / "nanomesh" / "cluster.key").write_text("kept\n")
    return root


def test_uninstall_keeps_the_data_dir(installed: Path) -> None:
    done = subprocess.run([str(INSTALL), "--root", str(installed), "--uninstall"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "kept in /var/lib/nanomesh" in done.stdout
    for gone in ("opt/nanomesh", "etc/nanomesh", "etc/systemd/system/nanomesh.service",
                 "etc/systemd/system/multi-user.target.wants/nanomesh.service",
                 "usr/local/bin/nanomesh"):
        assert not (installed / gone).exists() and not (installed / gone).is_symlink(), gone
    assert (installed / "var/lib/nanomesh/cluster.key").read_text() == "kept\n"


def test_uninstall_purge_removes_the_data_dir_too(installed: Path) -> None:
    done = subprocess.run([str(INSTALL), "--root", str(installed), "--uninstall", "--purge"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert not (installed / "var/lib/nanomesh").exists()
    assert not (installed / "opt/nanomesh").exists() and not (installed / "etc/nanomesh").exists()


def test_purge_without_uninstall_is_refused(installed: Path) -> None:
    done = subprocess.run([str(INSTALL), "--root", str(installed), "--purge"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "--uninstall" in done.stderr
    assert (installed / "opt/nanomesh/venv/bin/nanomesh").exists()


@pytest.mark.parametrize(("version", "ok"), [
    ("1.0.1", True), ("2.0rc1", True), ("0.1.2.dev3", True), ("1.0+local", True),
    ("", False), ("1.0 beta", False), ('1"; import os', False),
])
def test_set_version_rewrites_the_copy_and_refuses_what_is_not_a_version(
        tmp_path: Path, version: str, ok: bool) -> None:
    from nanomesh.cli.release_bundle import _set_version
    from nanomesh.errors import NanomeshError
    init = tmp_path / "nanomesh" / "__init__.py"
    init.parent.mkdir()
    init.write_text('"""doc"""\n\n__version__ = "0.1.0"\n')
    if ok:
        _set_version(tmp_path, version)
        assert init.read_text() == f'"""doc"""\n\n__version__ = "{version}"\n'
    else:
        with pytest.raises(NanomeshError, match="not a version"):
            _set_version(tmp_path, version)
        assert '__version__ = "0.1.0"' in init.read_text()
