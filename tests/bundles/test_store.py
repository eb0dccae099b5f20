"""The bundle store: verified, atomic adds; hostile tars refused; corrupt
entries detected and removed."""

from __future__ import annotations

import io
import logging
import os
import tarfile
from pathlib import Path

import pytest
from bundle_helpers import entry, make_service, raw_tar

from nanomesh.bundles import BundleError, BundleStore, pack_bundle, sha256_of
from nanomesh.bundles import store as store_mod


@pytest.fixture
def store(tmp_path: Path) -> BundleStore:
    return BundleStore(tmp_path / "bundles")


def visible(store: BundleStore) -> list[str]:
    """Everything in the store outside its staging directory."""
    return sorted(p.name for p in store.root.iterdir() if p.name != ".tmp")


def test_add_bytes_then_read_back(tmp_path: Path, store: BundleStore) -> None:
    bundle = pack_bundle(make_service(tmp_path / "svc"))
    path = store.add(bundle.data, bundle.sha256)
    assert path == store.path(bundle.sha256)
    assert (path / "main.py").read_text() == "print('hello')\n"
    assert store.has(bundle.sha256) and store.held() == [bundle.sha256]
    with store.open_tar(bundle.sha256) as f:
        assert f.read() == bundle.data
    [info] = store.list()
    assert (info.sha, info.size, info.name, info.version) == (
        bundle.sha256, bundle.size, "thermo", "1.0.0")
    assert store.profile_section() == [bundle.sha256[:16]]
    assert store.add(bundle.data, bundle.sha256) == path  # idempotent


def test_add_from_file_and_fileobj(tmp_path: Path, store: BundleStore) -> None:
    bundle = pack_bundle(make_service(tmp_path / "svc"))
    tar = tmp_path / "b.tar"
    tar.write_bytes(bundle.data)
    store.add(tar, bundle.sha256)
    assert tar.exists()  # a file outside the staging area is copied, not moved
    store.remove(bundle.sha256)
    store.add(io.BytesIO(bundle.data), bundle.sha256)
    assert store.held() == [bundle.sha256]


@pytest.mark.parametrize("how", ["bytes", "file", "fileobj"])
def test_wrong_hash_leaves_nothing_behind(tmp_path: Path, store: BundleStore, how: str
                                          ) -> None:
    bundle = pack_bundle(make_service(tmp_path / "svc"))
    wrong = sha256_of(b"something else")
    tar = tmp_path / "b.tar"
    tar.write_bytes(bundle.data)
    source = {"bytes": bundle.data, "file": tar, "fileobj": io.BytesIO(bundle.data)}[how]
    with pytest.raises(BundleError, match=r"hash to .* not the expected"):
        store.add(source, wrong)
    assert visible(store) == [] and list((store.root / ".tmp").iterdir()) == []


def test_bad_ids_are_refused(store: BundleStore) -> None:
    for bad in ["", "ABC", "a" * 63, "A" * 64, "../" + "a" * 61]:
        with pytest.raises(BundleError, match=r"not a bundle id"):
            store.add(b"x", bad)
        with pytest.raises(BundleError, match=r"not a bundle id"):
            store.path(bad)


HOSTILE = {
    "absolute path": ([entry("/etc/evil")], "absolute"),
    "dotdot": ([entry("../evil")], "canonical"),
    "dotdot inside": ([entry("a/../../evil")], "canonical"),
    "dot component": ([entry("./x")], "canonical"),
    "absolute symlink": ([entry("l", tarfile.SYMTYPE, "/etc")], "absolute"),
    "escaping symlink": ([entry("d", tarfile.DIRTYPE),
                          entry("d/l", tarfile.SYMTYPE, "../../etc")], "outside"),
    "write through symlink": ([entry("l", tarfile.SYMTYPE, "sub"), entry("sub", tarfile.DIRTYPE),
                               entry("l/x")], "beneath a symlink"),
    "device": ([entry("dev", tarfile.CHRTYPE)], "device"),
    "fifo": ([entry("fifo", tarfile.FIFOTYPE)], "FIFO"),
    "hard link": ([entry("a"), entry("b", tarfile.LNKTYPE, "a")], "hard link"),
    "duplicate": ([entry("a"), entry("a")], "twice"),
    # Each link looks harmless lexically; together they resolve to the parent.
    # In this order tarfile's data filter sees it; in the next, only our final check.
    "link chain": ([entry("sub", tarfile.DIRTYPE), entry("sub/l", tarfile.SYMTYPE, ".."),
                    entry("m", tarfile.SYMTYPE, "sub/l/..")], "outside"),
    "link chain, late": ([entry("sub", tarfile.DIRTYPE), entry("m", tarfile.SYMTYPE, "sub/l/.."),
                          entry("sub/l", tarfile.SYMTYPE, "..")], "resolves outside"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_tars_are_refused(tmp_path: Path, store: BundleStore, case: str) -> None:
    entries, message = HOSTILE[case]
    data = raw_tar(entries)
    with pytest.raises(BundleError, match=message):
        store.add(data, sha256_of(data))
    assert visible(store) == [] and list((store.root / ".tmp").iterdir()) == []
    assert not (tmp_path / "evil").exists() and not (store.root / "evil").exists()


def test_link_then_entry_beneath_it_refused_whatever_the_order(store: BundleStore) -> None:
    data = raw_tar([entry("d", tarfile.DIRTYPE), entry("d/x"),
                    entry("d", tarfile.SYMTYPE, "elsewhere")])
    with pytest.raises(BundleError, match=r"twice|beneath"):
        store.add(data, sha256_of(data))
    data = raw_tar([entry("x/y"), entry("x", tarfile.SYMTYPE, "z")])
    with pytest.raises(BundleError, match=r"beneath a symlink"):
        store.add(data, sha256_of(data))


def test_garbage_is_not_a_tar(store: BundleStore) -> None:
    data = b"this is not a tar file at all" * 40
    with pytest.raises(BundleError, match=r"not a valid tar"):
        store.add(data, sha256_of(data))


def test_entry_and_size_caps(store: BundleStore, monkeypatch: pytest.MonkeyPatch) -> None:
    data = raw_tar([entry(f"f{i}") for i in range(5)])
    monkeypatch.setattr(store_mod, "MAX_BUNDLE_ENTRIES", 4)
    with pytest.raises(BundleError, match=r"more than 4 entries"):
        store.add(data, sha256_of(data))
    monkeypatch.setattr(store_mod, "MAX_BUNDLE_ENTRIES", 100)
    big = raw_tar([entry("big")], {"big": b"x" * 5000})
    monkeypatch.setattr(store_mod, "MAX_BUNDLE_BYTES", 4000)
    with pytest.raises(BundleError, match=r"MAX_BUNDLE_BYTES"):
        store.add(big, sha256_of(big))
    assert visible(store) == []


def test_extraction_failure_mid_add_leaves_nothing(tmp_path: Path, store: BundleStore,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash (here: an error) during extraction never leaves a half bundle."""
    bundle = pack_bundle(make_service(tmp_path / "svc"))

    def boom(tar_path: Path, dest: Path) -> None:
        (dest / "partial").write_text("half")
        raise OSError("disk full")

    monkeypatch.setattr(store_mod, "extract_checked", boom)
    with pytest.raises(OSError, match=r"disk full"):
        store.add(bundle.data, bundle.sha256)
    assert visible(store) == [] and list((store.root / ".tmp").iterdir()) == []
    assert not store.has(bundle.sha256)


def test_strays_from_a_crash_are_removed_on_open(tmp_path: Path, store: BundleStore) -> None:
    bundle = pack_bundle(make_service(tmp_path / "svc"))
    other = pack_bundle(make_service(tmp_path / "svc2", name="other"))
    store.add(bundle.data, bundle.sha256)
    store.add(other.data, other.sha256)
    # crash between the directory rename and the tar rename: directory only
    (store.root / f"{bundle.sha256}.tar").unlink()
    # the extracted copy lost: tar only
    store._rmtree(store.root / other.sha256)
    (store.root / ".tmp" / "leftover").write_text("x")
    reopened = BundleStore(store.root)
    assert reopened.held() == [] and visible(reopened) == []
    assert list((store.root / ".tmp").iterdir()) == []


def test_corrupt_tar_is_detected_and_removed(tmp_path: Path, store: BundleStore,
                                             caplog: pytest.LogCaptureFixture) -> None:
    bundle = pack_bundle(make_service(tmp_path / "svc"))
    store.add(bundle.data, bundle.sha256)
    assert store.verify(bundle.sha256)
    tar = store.root / f"{bundle.sha256}.tar"
    with tar.open("r+b") as f:
        f.seek(600)
        byte = f.read(1)
        f.seek(600)
        f.write(bytes([byte[0] ^ 0xFF]))
    with (caplog.at_level(logging.WARNING, logger="nanomesh.bundles"),
          pytest.raises(BundleError, match=r"not held")):
        store.open_tar(bundle.sha256)
    assert "corrupt" in caplog.text
    assert not store.has(bundle.sha256) and visible(store) == []


def test_check_all_removes_only_corrupt(tmp_path: Path, store: BundleStore) -> None:
    good = pack_bundle(make_service(tmp_path / "a", name="a"))
    bad = pack_bundle(make_service(tmp_path / "b", name="b"))
    store.add(good.data, good.sha256)
    store.add(bad.data, bad.sha256)
    (store.root / f"{bad.sha256}.tar").write_bytes(bad.data[:-1024])
    assert store.check_all() == [bad.sha256]
    assert store.held() == [good.sha256]


def test_verification_is_cached_until_the_file_changes(tmp_path: Path, store: BundleStore,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = pack_bundle(make_service(tmp_path / "svc"))
    store.add(bundle.data, bundle.sha256)
    assert store.verify(bundle.sha256)
    calls = []
    real = store_mod.sha256_file
    monkeypatch.setattr(store_mod, "sha256_file",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    assert store.verify(bundle.sha256) and calls == []
    os.utime(store.root / f"{bundle.sha256}.tar", ns=(1, 1))
    assert store.verify(bundle.sha256) and calls == [1]


def test_gc_and_remove(tmp_path: Path, store: BundleStore) -> None:
    shas = []
    for n in ("a", "b", "c"):
        b = pack_bundle(make_service(tmp_path / n, name=n))
        store.add(b.data, b.sha256)
        shas.append(b.sha256)
    keep = {shas[1]}
    assert sorted(store.gc(keep)) == sorted([shas[0], shas[2]])
    assert store.held() == [shas[1]]
    assert store.remove(shas[1]) and not store.remove(shas[1])
    assert visible(store) == []


def test_profile_section_is_sorted_prefixes(tmp_path: Path, store: BundleStore) -> None:
    for n in ("a", "b", "c", "d"):
        b = pack_bundle(make_service(tmp_path / n, name=n))
        store.add(b.data, b.sha256)
    section = store.profile_section()
    assert section == sorted(section) and all(len(p) == 16 for p in section)
    assert section == sorted(s[:16] for s in store.held())


def test_list_without_readable_manifest(store: BundleStore) -> None:
    data = raw_tar([entry("bin", tarfile.DIRTYPE), entry("bin/sh")], {"bin/sh": b"x"})
    store.add(data, sha256_of(data))
    [info] = store.list()
    assert (info.name, info.version) == (None, None)


def test_a_nanomesh_release_is_listed_by_its_manifest(store: BundleStore) -> None:
    """`nanomesh upgrade` stores nanomesh's own release bundle like a service's."""
    manifest = b'{"format": 1, "name": "nanomesh", "version": "0.2.0", "files": {}}'
    data = raw_tar([entry("nanomesh-0.2.0", tarfile.DIRTYPE),
                    entry("nanomesh-0.2.0/manifest.json")],
                   {"nanomesh-0.2.0/manifest.json": manifest})
    store.add(data, sha256_of(data))
    [info] = store.list()
    assert (info.name, info.version) == ("nanomesh", "0.2.0")


def test_extracted_modes_are_sane(store: BundleStore) -> None:
    setuid = entry("tool")
    setuid.mode = 0o4777
    data = raw_tar([setuid], {"tool": b"#!/bin/sh\n"})
    path = store.add(data, sha256_of(data))
    mode = (path / "tool").stat().st_mode & 0o7777
    assert not mode & 0o4000 and not mode & 0o022
