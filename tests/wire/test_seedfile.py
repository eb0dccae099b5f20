"""The seed-file encoding in `nanomesh.wire.seedfile` (fields: tests/bundles/test_seed.py)."""

from __future__ import annotations

import pytest

from nanomesh.errors import RemoteProtocolError
from nanomesh.wire.seedfile import pack_seed_file, unpack_seed_file

LIMITS = {"max_bin_len": 16, "max_str_len": 16, "max_container_len": 4}


def test_bytes_and_text_stay_apart() -> None:
    fields = {"text": "abc", "blob": b"abc", "none": None, "list": [1.5, "x"]}
    assert unpack_seed_file(pack_seed_file(fields), **LIMITS) == fields


@pytest.mark.parametrize(("fields", "detail"), [
    ({"blob": b"x" * 17}, "ValueError"),             # bin over max_bin_len
    ({"text": "x" * 17}, "ValueError"),              # str over max_str_len
    ({"a": 1, "b": 2, "c": 3, "d": 4, "e": 5}, "ValueError"),  # map over max_container_len
])
def test_limits_are_enforced(fields: dict[str, object], detail: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        unpack_seed_file(pack_seed_file(fields), **LIMITS)
    assert (info.value.reason, info.value.detail) == ("malformed", detail)


@pytest.mark.parametrize(("data", "detail"), [
    (b"", "ValueError"),                             # nothing at all
    (pack_seed_file({"a": 1}) + b"\x00", "ExtraData"),
    (pack_seed_file({"a": 1})[:-1], "ValueError"),   # truncated
    (b"\xc1", "FormatError"),                        # the one reserved msgpack byte
    (b"\x81\x01\x02", "ValueError"),                 # int map key (strict_map_key)
])
def test_garbage_is_a_remote_protocol_error(data: bytes, detail: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        unpack_seed_file(data, **LIMITS)
    assert info.value.detail == detail
