"""Where the CLI finds the management token when no flag names it: the
running lab's, else the installed daemon's (`nanomesh.cli.common`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from nanomesh.cli import common


def no_flags() -> argparse.Namespace:
    return argparse.Namespace(token=None, token_file=None)


@pytest.fixture
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    lab_dir, installed = tmp_path / "lab", tmp_path / "var-lib" / "management.token"
    monkeypatch.setenv("NANOMESH_LAB_DIR", str(lab_dir))
    monkeypatch.delenv("NANOMESH_TOKEN", raising=False)
    monkeypatch.setattr(common, "INSTALLED_TOKEN", installed)
    return lab_dir, installed


def write_token(path: Path, token: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(token + "\n")
    path.chmod(0o600)


def test_flags_win_over_every_default(places: tuple[Path, Path], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    write_token(places[1], "installed")
    assert common.management_token(argparse.Namespace(token="flag", token_file=None)) == "flag"
    monkeypatch.setenv("NANOMESH_TOKEN", "env")
    assert common.management_token(no_flags()) == "env"


def test_the_running_labs_token_then_the_installed_one(places: tuple[Path, Path]) -> None:
    lab_dir, installed = places
    assert common.management_token(no_flags()) is None
    write_token(installed, "installed")
    assert common.management_token(no_flags()) == "installed"
    # a lab's leftover token counts only while the lab runs (lab.json lists peers)
    write_token(lab_dir / common.lab.FOUNDER / "management.token", "lab")
    assert common.management_token(no_flags()) == "installed"
    (lab_dir / common.lab.STATE_FILE).write_text(json.dumps({"peers": [{
        "name": "peer-1", "pid": 1, "ip": "127.0.0.2", "gossip_port": 7946,
        "api_port": 7947, "log": "peer-1.log"}]}))
    assert common.management_token(no_flags()) == "lab"
