"""Management tokens (`nanomesh.security.auth`): what the operator types."""

from __future__ import annotations

import argparse

import pytest

from nanomesh.security import auth


def test_a_token_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--token -abc`` is an argparse error; 1 token in 64 started so."""
    drawn = iter(["-first-draw", "second-draw"])
    monkeypatch.setattr(auth.secrets, "token_urlsafe", lambda n: next(drawn))
    assert auth.generate_token() == "second-draw"


def test_generated_tokens_pass_as_a_cli_argument() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--token")
    for _ in range(500):  # before the fix, 500 draws all passed 0.04 % of the time
        token = auth.generate_token()
        assert parser.parse_args(["--token", token]).token == token
