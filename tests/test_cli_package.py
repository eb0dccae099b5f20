"""The `nanomesh` command line as a package: every command dispatches, the
exit codes, a fast start, and imports that go one way."""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from nanomesh.cli import main, mesh
from nanomesh.cli.main import build_parser

CLI_DIR = Path(__file__).parents[1] / "nanomesh" / "cli"


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
              ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every (sub)command path and its parser, depth first in --help order."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name))


def test_top_level_commands_in_help_order() -> None:
    top = [p[0] for p, _ in _commands(build_parser()) if len(p) == 1]
    assert top == ["peer", "members", "profile", "deploy", "undeploy", "activate", "idle",
                   "logs", "resolve", "call", "registry", "keys", "services", "placement",
                   "status", "monitor", "keygen", "lab", "demo", "experiment", "release", "version",
                   "upgrade"]


def test_every_leaf_command_dispatches() -> None:
    """A command without subcommands sets ``func``; a group without one
    (``peer``, ``lab``, ...) prints the help and exits 2 (`main`)."""
    for path, parser in _commands(build_parser()):
        groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if path and not groups:
            assert callable(parser.get_default("func")), path


def test_exit_codes(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
                    ) -> None:
    assert main([]) == 2
    assert main(["lab"]) == 2
    assert "usage: nanomesh" in capsys.readouterr().out
    assert main(["deploy"]) == 1  # no source given: a ConfigError, before any request
    assert capsys.readouterr().err.startswith("nanomesh: error: give one of")

    def interrupted(args: argparse.Namespace) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(mesh, "_status", interrupted)
    assert main(["status"]) == 130


def test_help_does_not_load_the_daemon() -> None:
    """``nanomesh --help`` (which imports every command module) stays fast:
    trio, the daemon, the consensus package and aiocoap load only in the
    commands that use them."""
    code = ("import sys, nanomesh.cli; print(' '.join(sorted(m for m in sys.modules if "
            "m.split('.')[0] in ('trio', 'aiocoap', 'zmq', 'pysyncobj') or "
            "m.startswith(('nanomesh.daemon', 'nanomesh.consensus', 'nanomesh.runtime')))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout.split()
    assert loaded == []


def test_no_function_level_import_of_the_package() -> None:
    """The command modules import `common` (and `lab`, `demo`) at the top;
    nothing inside the package imports it back from a function (the cycle
    the package replaced)."""
    late = []
    for path in sorted(CLI_DIR.glob("*.py")):
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(fn):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                         [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                late += [f"{path.name}: {n}" for n in names
                         if n == "nanomesh.cli" or n.startswith("nanomesh.cli.")]
    assert late == []
