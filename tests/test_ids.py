"""Instance ids and service names (`nanomesh.ids`), as tables.

The expected values are what the code did before the format had one home
(``placement.spec.split_instance_id``, ``naming.service_of``,
``reconcile._service_of``, bare ``rpartition("/")`` and
``oci.container_id``), so moving every site onto this module changes nothing.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nanomesh.ids import (
    SERVICE_NAME_RULE,
    instance_id,
    is_instance_id,
    is_service_name,
    partition_instance_id,
    service_of,
    split_instance_id,
)
from nanomesh.placement import SpecError, service_spec_from_dict
from nanomesh.runtime.oci import container_id
from nanomesh.runtime.reconcile_core import wanted_here

# id, strict split (None: ValueError), tolerant service, container id
ID_TABLE: list[tuple[str, tuple[str, int] | None, str, str]] = [
    ("hello/0", ("hello", 0), "hello", "nm-hello-0"),
    ("sensor-reader/12", ("sensor-reader", 12), "sensor-reader", "nm-sensor-reader-12"),
    ("x.y_z/3", ("x.y_z", 3), "x.y_z", "nm-x.y_z-3"),
    ("a/01", ("a", 1), "a", "nm-a-01"),             # leading zero: accepted, not canonical
    ("", None, "", "nm"),
    ("/", None, "", "nm"),
    ("a/", None, "a", "nm-a"),                      # no index
    ("/1", None, "", "nm--1"),                      # no service
    ("abc", None, "", "nm-abc"),                    # no slash at all
    ("a/x", None, "a", "nm-a-x"),
    ("a/-1", None, "a", "nm-a--1"),
    ("a/+1", None, "a", "nm-a--1"),
    ("a/ 1", None, "a", "nm-a--1"),
    ("a/1 ", None, "a", "nm-a-1"),
    ("a/1_0", None, "a", "nm-a-1_0"),               # int() would take it; the id rule not
    ("a/\u00b2", None, "a", "nm-a"),                # superscript two: a digit, not decimal
    ("a/\u0663", ("a", 3), "a", "nm-a"),            # Arabic-Indic three: decimal, int() reads it
    # The split is at the LAST slash. The service part is then no valid name
    # (see SERVICE_NAME), but the id itself parses, as it always did.
    ("a/b/1", ("a/b", 1), "a/b", "nm-a-b-1"),
    ("a//1", ("a/", 1), "a/", "nm-a--1"),
    ("h\u00e9llo/1", ("h\u00e9llo", 1), "h\u00e9llo", "nm-h-llo-1"),
    ("a b/2", ("a b", 2), "a b", "nm-a-b-2"),
    ("a\x00/1", ("a\x00", 1), "a\x00", "nm-a--1"),
]


@pytest.mark.parametrize(("iid", "split", "service", "_cid"), ID_TABLE)
def test_split_instance_id(iid: str, split: tuple[str, int] | None, service: str,
                           _cid: str) -> None:
    if split is None:
        with pytest.raises(ValueError, match="malformed instance id"):
            split_instance_id(iid)
        assert not is_instance_id(iid)
    else:
        assert split_instance_id(iid) == split
        assert is_instance_id(iid)


@pytest.mark.parametrize(("iid", "split", "service", "_cid"), ID_TABLE)
def test_tolerant_readings_never_raise(iid: str, split: tuple[str, int] | None, service: str,
                                       _cid: str) -> None:
    assert service_of(iid) == service
    # the idiom still used by the daemon and CLI until they switch over
    assert service_of(iid) == iid.rpartition("/")[0]
    head, index = partition_instance_id(iid)
    assert head == service
    assert (head + "/" + index if "/" in iid else index) == iid
    if split is not None:  # both readings agree on a well-formed id
        assert service == split[0]


@pytest.mark.parametrize(("iid", "_split", "_service", "cid"), ID_TABLE)
def test_container_id_of_any_id(iid: str, _split: object, _service: str, cid: str) -> None:
    assert container_id(iid) == cid


def test_wanted_here_skips_malformed_ids() -> None:
    services = {"a": {}, "a/b": {}, "": {}}
    plan = {iid: "me" for iid, *_ in ID_TABLE}
    assert wanted_here("me", plan, services) == {
        "a/01": "a", "a/\u0663": "a", "a/b/1": "a/b"}
    assert wanted_here("other", plan, services) == {}


@given(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", fullmatch=True),
       st.integers(min_value=0, max_value=10**6))
def test_instance_id_round_trips(service: str, index: int) -> None:
    iid = instance_id(service, index)
    assert split_instance_id(iid) == (service, index)
    assert service_of(iid) == service
    assert partition_instance_id(iid) == (service, str(index))


NAME_TABLE: list[tuple[object, bool]] = [
    ("a", True),
    ("A9", True),
    ("9lives", True),
    ("x.y_z-1", True),
    ("spo2", True),
    ("a" * 63, True),
    ("a" * 64, False),
    ("", False),
    ("-a", False),
    (".a", False),
    ("_a", False),
    ("a/b", False),
    ("a b", False),
    ("a\n", False),
    ("h\u00e9llo", False),
    ("a:b", False),
    ("a@1", False),
    (None, False),
    (5, False),
    (b"a", False),
]


@pytest.mark.parametrize(("name", "ok"), NAME_TABLE)
def test_service_name_rule(name: object, ok: bool) -> None:
    assert is_service_name(name) is ok


@pytest.mark.parametrize(("name", "ok"), NAME_TABLE)
def test_spec_parser_uses_the_name_rule(name: object, ok: bool) -> None:
    if ok:
        assert service_spec_from_dict({"name": name}).name == name
    else:
        with pytest.raises(SpecError, match=re.escape(f"must be {SERVICE_NAME_RULE}")):
            service_spec_from_dict({"name": name})
