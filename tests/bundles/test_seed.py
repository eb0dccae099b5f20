"""Seed files: round trip, atomic 0600 writes, strict reads (fuzzed)."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import msgpack
import pytest
from bundle_helpers import make_service
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nanomesh.bundles import pack_bundle
from nanomesh.bundles.seed import Seed, SeedError, decode_seed, encode_seed, read_seed, write_seed
from nanomesh.runtime.manifest import load_manifest


@pytest.fixture(scope="module")
def seed(tmp_path_factory: pytest.TempPathFactory) -> Seed:
    folder = make_service(tmp_path_factory.mktemp("seed") / "svc")
    bundle = pack_bundle(folder)
    return Seed(service=load_manifest(folder), bundle=bundle.data,
                bundle_sha256=bundle.sha256, state=b"\x00counter=41\xff",
                saved_at=1_700_000_000.25, saved_from="ward-pi-4")


def test_round_trip(tmp_path: Path, seed: Seed) -> None:
    path = tmp_path / "thermo.seed"
    write_seed(path, seed)
    assert read_seed(path) == seed
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["thermo.seed"]  # no temporary left behind


def test_round_trip_without_bundle_or_state(tmp_path: Path, seed: Seed) -> None:
    bare = Seed(seed.service, None, None, None, 0.0, "p")
    write_seed(tmp_path / "s", bare)
    assert read_seed(tmp_path / "s") == bare


def test_overwrite_is_atomic(tmp_path: Path, seed: Seed) -> None:
    path = tmp_path / "s"
    write_seed(path, seed)
    newer = Seed(seed.service, None, None, b"new", 2.0, "p")
    write_seed(path, newer)
    assert read_seed(path) == newer and os.listdir(tmp_path) == ["s"]


def test_damaged_bundle_is_refused(tmp_path: Path, seed: Seed) -> None:
    assert seed.bundle is not None
    damaged = bytearray(seed.bundle)
    damaged[700] ^= 1
    obj = msgpack.unpackb(encode_seed(seed))
    obj["bundle"] = bytes(damaged)
    with pytest.raises(SeedError, match=r"bundle is damaged"):
        decode_seed(msgpack.packb(obj))


@pytest.mark.parametrize(("change", "message"), [
    ({"version": 2}, "version 2 is not supported"),
    ({"format": "other"}, "not a nanomesh seed"),
    ({"extra": 1}, "unexpected: \\['extra'\\]"),
    ({"bundle": None}, "both present"),
    ({"state": "text"}, "state must be bytes"),
    ({"saved_at": float("nan")}, "saved_at"),
    ({"saved_from": None}, "saved_from"),
    ({"service": {"run": {}}}, "service must be a service document"),
    ({"service": {"name": "x", "blob": b"bin"}}, "non-JSON"),
])
def test_invalid_fields_are_named(seed: Seed, change: dict[str, object], message: str) -> None:
    obj = {**msgpack.unpackb(encode_seed(seed)), **change}
    with pytest.raises(SeedError, match=message):
        decode_seed(msgpack.packb(obj))


def test_missing_field(seed: Seed) -> None:
    obj = msgpack.unpackb(encode_seed(seed))
    del obj["state"]
    with pytest.raises(SeedError, match=r"missing: \['state'\]"):
        decode_seed(msgpack.packb(obj))


def test_every_truncation_is_refused(seed: Seed) -> None:
    data = encode_seed(seed)
    cuts = sorted({*range(0, 64), *range(0, len(data), 97), len(data) - 1})
    for n in cuts:
        with pytest.raises(SeedError):
            decode_seed(data[:n], where=f"cut at {n}")


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(SeedError, match=r"cannot read seed file"):
        read_seed(tmp_path / "missing")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_garbage_never_crashes(data: bytes) -> None:
    """Any bytes give a Seed or a SeedError with a message, never another error."""
    try:
        got = decode_seed(data)
    except SeedError as exc:
        assert str(exc).startswith("seed: ")  # names the file, then says what is wrong
    else:
        assert isinstance(got, Seed)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_seed_is_refused_or_valid(seed: Seed, data: st.DataObject) -> None:
    """Flipping bytes anywhere gives SeedError or a seed that passes every
    check (e.g. a changed state byte); a damaged bundle is never accepted."""
    raw = bytearray(encode_seed(seed))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    try:
        got = decode_seed(bytes(raw))
    except SeedError:
        return
    assert got.bundle == seed.bundle or got.bundle is None


@settings(max_examples=50, deadline=None)
@given(state=st.one_of(st.none(), st.binary(max_size=512)),
       saved_at=st.floats(min_value=0, max_value=4e9),
       saved_from=st.text(max_size=40))
def test_round_trip_property(state: bytes | None, saved_at: float, saved_from: str) -> None:
    s = Seed({"name": "x", "spec": {"requires": {}}}, None, None, state, saved_at, saved_from)
    assert decode_seed(encode_seed(s)) == s


# Written by `encode_seed` before the encoding moved to nanomesh.wire.seedfile
# (commit 8be6a2f): seed files on disk from then must still load, byte for byte.
GOLDEN_SEED = bytes.fromhex(
    "88a6666f726d6174ad6e616e6f6d6573682d73656564a776657273696f6e01a7736572766963"
    "6583a46e616d65a6746865726d6fa776657273696f6ea5312e302e30a47370656383a46e616d"
    "65a6746865726d6fa87265706c6963617302a8726571756972657381a3637075cb3fe0000000"
    "000000a662756e646c65c4166e6f742061207461722c206f6e6c7920686173686564ad62756e"
    "646c655f736861323536d940333562343539393331346533333938663831613662323566643430"
    "35303462636532643635656262666638396430313835346337316265666436326630633631a5"
    "7374617465c40c00636f756e7465723d3431ffa873617665645f6174cb41d954fc40100000aa"
    "73617665645f66726f6da9776172642d70692d34")


def test_golden_seed_bytes_still_load() -> None:
    bundle = b"not a tar, only hashed"
    expected = Seed(
        service={"name": "thermo", "version": "1.0.0",
                 "spec": {"name": "thermo", "replicas": 2, "requires": {"cpu": 0.5}}},
        bundle=bundle, bundle_sha256=hashlib.sha256(bundle).hexdigest(),
        state=b"\x00counter=41\xff", saved_at=1_700_000_000.25, saved_from="ward-pi-4")
    assert decode_seed(GOLDEN_SEED) == expected
    assert encode_seed(expected) == GOLDEN_SEED


def test_corrupt_bytes_name_the_msgpack_error() -> None:
    with pytest.raises(SeedError, match=r"^seed: not a seed file \(truncated or corrupt: "
                                        r"ExtraData\)$"):
        decode_seed(GOLDEN_SEED + b"\x00")
    with pytest.raises(SeedError, match=r"truncated or corrupt: ValueError\)$"):
        decode_seed(GOLDEN_SEED[:-1])
