"""A peer's install root (`nanomesh.daemon.upgrade.InstallRoot`) and the
launcher (peers/nanomesh-launch): switching, confirming and rolling back
versions, and the launcher's rollback of a version that keeps failing to
start. Fake venvs (a ``bin/nanomesh`` shell script), real files and a real
``sh``; the full install from a bundle is exercised by
experiments/upgrade_lab.py (minutes, it builds two bundles)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nanomesh.bundles import BundleError
from nanomesh.bundles.release import MANIFEST, open_release
from nanomesh.daemon.upgrade import LAUNCH_TRIES, InstallRoot, UpgradeError

LAUNCHER = Path(__file__).resolve().parent.parent / "peers" / "nanomesh-launch"


def fake_root(tmp_path: Path, *versions: str) -> InstallRoot:
    """An install root whose venvs' ``nanomesh`` prints its version and its
    arguments, running the first version."""
    root = tmp_path / "root"
    for version in versions:
        bin_dir = root / "versions" / version / "bin"
        bin_dir.mkdir(parents=True)
        script = bin_dir / "nanomesh"
        script.write_text(f'#!/bin/sh\necho "{version} $*"\n')
        script.chmod(0o755)
    os.symlink(f"versions/{versions[0]}", root / "venv")
    shutil.copy2(LAUNCHER, root / "launch")
    return InstallRoot(root)


def launch(root: InstallRoot) -> str:
    done = subprocess.run([str(root.root / "launch"), "peer", "run"], capture_output=True,
                          text=True, timeout=30, check=True)
    return done.stdout.strip()


def test_switch_runs_the_new_version_on_trial_and_keeps_the_old_as_previous(
        tmp_path: Path) -> None:
    root = fake_root(tmp_path, "a", "b")
    assert root.switch("versions/b") == "versions/a"
    assert (root.link("venv"), root.link("previous"), root.on_trial) == (
        "versions/b", "versions/a", True)
    assert launch(root) == "b peer run"


def test_confirm_ends_the_trial_and_prunes_all_but_running_and_previous(
        tmp_path: Path) -> None:
    root = fake_root(tmp_path, "a", "b", "c")
    root.switch("versions/b")
    root.switch("versions/c")
    assert root.link("previous") == "versions/b"
    assert root.confirm() == ["a"]
    assert not root.on_trial and not (root.root / "trial.starts").exists()
    assert sorted(p.name for p in (root.root / "versions").iterdir()) == ["b", "c"]


def test_rollback_runs_the_previous_version(tmp_path: Path) -> None:
    root = fake_root(tmp_path, "a", "b")
    root.switch("versions/b")
    assert root.rollback() == "versions/a"
    assert root.link("venv") == "versions/a" and not root.on_trial
    assert launch(root) == "a peer run"


def test_rollback_without_a_previous_version_is_refused_and_changes_nothing(
        tmp_path: Path) -> None:
    root = fake_root(tmp_path, "a")
    with pytest.raises(UpgradeError, match="no previous version"):
        root.rollback()
    assert root.link("venv") == "versions/a"


def test_the_launcher_rolls_back_a_version_never_confirmed(tmp_path: Path) -> None:
    """Each start of an unconfirmed version is counted; after LAUNCH_TRIES
    the launcher switches back by itself (the new version could not start,
    so nobody could ask it to roll back)."""
    root = fake_root(tmp_path, "a", "b")
    root.switch("versions/b")
    assert [launch(root) for _ in range(LAUNCH_TRIES)] == ["b peer run"] * LAUNCH_TRIES
    assert launch(root) == "a peer run"
    assert root.link("venv") == "versions/a" and not root.on_trial
    assert launch(root) == "a peer run"


def test_the_launcher_keeps_a_confirmed_version(tmp_path: Path) -> None:
    root = fake_root(tmp_path, "a", "b")
    root.switch("versions/b")
    launch(root)
    root.confirm()
    assert [launch(root) for _ in range(LAUNCH_TRIES + 2)] == ["b peer run"] * (
        LAUNCH_TRIES + 2)


def test_the_launcher_and_the_daemon_agree_on_the_number_of_tries() -> None:
    assert f"LAUNCH_TRIES={LAUNCH_TRIES} " in LAUNCHER.read_text()


def test_a_failed_install_leaves_nothing_and_the_running_version_untouched(
        tmp_path: Path) -> None:
    """A stand-in interpreter makes a venv whose pip fails (a real venv with
    pip takes a minute on a busy machine; experiments/upgrade_lab.py runs it)."""
    fake_python = tmp_path / "python3"
    fake_python.write_text('#!/bin/sh\n[ "$2" = venv ] || exit 2\nmkdir -p "$3/bin"\n'
                           'printf \'#!/bin/sh\\necho "no matching distribution" >&2\\n'
                           'exit 1\\n\' > "$3/bin/python"\nchmod +x "$3/bin/python"\n')
    fake_python.chmod(0o755)
    root = InstallRoot(fake_root(tmp_path, "a").root, python=str(fake_python))
    release = tmp_path / "release"
    (release / "wheels").mkdir(parents=True)
    with pytest.raises(UpgradeError, match="pip install from the bundle's wheels failed: no "
                                           "matching distribution"):
        root.prepare(release, "9.9.9", "9.9.9-abc")
    assert not (root.root / "versions" / "9.9.9-abc").exists()
    assert root.link("venv") == "versions/a" and not root.on_trial


def release_dir(tmp_path: Path, files: dict[str, bytes], manifest: dict[str, object]) -> Path:
    import json
    top = tmp_path / "extracted" / "nanomesh-1.0"
    for name, data in files.items():
        (top / name).parent.mkdir(parents=True, exist_ok=True)
        (top / name).write_bytes(data)
    (top / MANIFEST).write_text(json.dumps(manifest))
    return top.parent


def test_open_release_checks_every_file_against_the_manifest(tmp_path: Path) -> None:
    import hashlib
    good = {"wheels/x.whl": b"wheel"}
    digests = {k: hashlib.sha256(v).hexdigest() for k, v in good.items()}
    manifest = {"format": 1, "name": "nanomesh", "version": "1.0", "files": digests}
    top, found = open_release(release_dir(tmp_path / "ok", good, manifest))
    assert found["version"] == "1.0" and (top / "wheels/x.whl").exists()
    changed = release_dir(tmp_path / "bad", {"wheels/x.whl": b"other"}, manifest)
    with pytest.raises(BundleError, match="sha256 differs"):
        open_release(changed)
    service = tmp_path / "service"
    (service / "echo").mkdir(parents=True)
    with pytest.raises(BundleError, match="not a nanomesh release"):
        open_release(service)


@pytest.mark.skipif(not sys.executable, reason="no interpreter path")
def test_the_launcher_ignores_pythonpath(tmp_path: Path) -> None:
    """A checkout on PYTHONPATH must not shadow the venv's nanomesh."""
    root = fake_root(tmp_path, "a")
    script = root.root / "versions" / "a" / "bin" / "nanomesh"
    script.write_text('#!/bin/sh\necho "path=${PYTHONPATH:-unset}"\n')
    done = subprocess.run([str(root.root / "launch")], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": "/somewhere"}, check=True)
    assert done.stdout.strip() == "path=unset"
