"""The bytes of a seed file: one msgpack map (format in :mod:`nanomesh.bundles.seed`).

Text is msgpack ``str``, the bundle and the state blob are ``bin``
(``use_bin_type``), so bytes and text stay apart on a round trip. This
module only turns the map into bytes and back, within size limits;
:mod:`nanomesh.bundles.seed` owns the fields and checks every one of them.
"""

from __future__ import annotations

from typing import Any

import msgpack

from nanomesh.errors import RemoteProtocolError


def pack_seed_file(fields: dict[str, Any]) -> bytes:
    """The file bytes of a seed map (str, bytes, numbers, None, lists, dicts)."""
    return msgpack.packb(fields, use_bin_type=True)


def unpack_seed_file(data: bytes, *, max_bin_len: int, max_str_len: int,
                     max_container_len: int) -> Any:
    """The object in `data`, unchecked beyond msgpack's own limits: no
    ``bin`` longer than `max_bin_len`, no ``str`` longer than `max_str_len`,
    no array or map with more than `max_container_len` items.

    Raises RemoteProtocolError(``"malformed"``) for truncated, trailing or
    corrupt bytes; its ``detail`` is the msgpack error's class name
    (``"ExtraData"``, ``"ValueError"``, ...).
    """
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True,
                               max_bin_len=max_bin_len, max_str_len=max_str_len,
                               max_array_len=max_container_len,
                               max_map_len=max_container_len)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError,
            TypeError, RecursionError) as exc:
        raise RemoteProtocolError("malformed", type(exc).__name__) from None
