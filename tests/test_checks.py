"""The shared field predicates (`nanomesh.checks`), as tables.

Each row is a value a parser may meet in a manifest, a spec, a plan or a
gossiped profile; the columns are the answers the parsers gave before they
shared these functions (``bool`` is never a number, nan and inf are not
finite numbers).
"""

from __future__ import annotations

import pytest

from nanomesh.checks import is_int, is_number, is_port, is_sha256_hex, kind_name

NAN, INF = float("nan"), float("inf")

# value, is_int, is_number, is_port
NUMBER_TABLE: list[tuple[object, bool, bool, bool]] = [
    (0, True, True, False),
    (1, True, True, True),
    (-1, True, True, False),
    (65535, True, True, True),
    (65536, True, True, False),
    (2**63, True, True, False),
    (1.0, False, True, False),                  # a float is never a port or a count
    (0.5, False, True, False),
    (-0.0, False, True, False),
    (NAN, False, False, False),
    (INF, False, False, False),
    (-INF, False, False, False),
    (True, False, False, False),                # bool is an int subclass; never a number here
    (False, False, False, False),
    (None, False, False, False),
    ("1", False, False, False),
    ("80", False, False, False),
    ([1], False, False, False),
]


@pytest.mark.parametrize(("value", "integer", "number", "port"), NUMBER_TABLE)
def test_number_predicates(value: object, integer: bool, number: bool, port: bool) -> None:
    assert is_int(value) is integer
    assert is_number(value) is number
    assert is_port(value) is port


SHA = "0123456789abcdef" * 4


@pytest.mark.parametrize(("value", "ok"), [
    (SHA, True),
    ("f" * 64, True),
    (SHA.upper(), False),                       # lowercase only: it is a file name too
    (SHA[:-1], False),
    (SHA + "0", False),
    (SHA[:-1] + "g", False),
    (SHA[:-1] + "\n", False),
    ("\u0661" * 64, False),                     # Arabic-Indic digits are not hex
    ("", False),
    (None, False),
    (SHA.encode(), False),
])
def test_is_sha256_hex(value: object, ok: bool) -> None:
    assert is_sha256_hex(value) is ok


@pytest.mark.parametrize(("value", "name"), [
    (None, "null"), (1, "int"), (True, "bool"), ("x", "str"), ([], "list"), ({}, "dict"),
    (1.5, "float"), (b"", "bytes"),
])
def test_kind_name(value: object, name: str) -> None:
    assert kind_name(value) == name
