"""Packing: deterministic ids, exclusions, refused files, caps."""

from __future__ import annotations

import io
import os
import shutil
import socket
import tarfile
from pathlib import Path

import pytest
from bundle_helpers import make_service

from nanomesh.bundles import BundleError, pack_bundle, pack_bundle_to, sha256_of
from nanomesh.bundles import pack as pack_mod


def names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.getnames()


def test_same_folder_packs_to_the_same_id(tmp_path: Path) -> None:
    folder = make_service(tmp_path / "svc")
    a, b = pack_bundle(folder), pack_bundle(folder)
    assert a.sha256 == b.sha256 == sha256_of(a.data)
    assert a.data == b.data


def test_id_ignores_mtimes_owners_and_location(tmp_path: Path) -> None:
    folder = make_service(tmp_path / "svc")
    first = pack_bundle(folder)
    copy = tmp_path / "elsewhere" / "svc-copy"
    shutil.copytree(folder, copy)
    for p in [copy, *copy.rglob("*")]:
        os.utime(p, (1_000_000, 1_234_567))
    (copy / "main.py").chmod(0o600)  # no execute bit either way: still 0644
    assert pack_bundle(copy).sha256 == first.sha256


def test_content_and_exec_bit_change_the_id(tmp_path: Path) -> None:
    folder = make_service(tmp_path / "svc")
    base = pack_bundle(folder).sha256
    (folder / "main.py").chmod(0o755)
    executable = pack_bundle(folder).sha256
    (folder / "main.py").write_text("print('changed')\n")
    assert len({base, executable, pack_bundle(folder).sha256}) == 3


def test_entries_are_normalised(tmp_path: Path) -> None:
    folder = make_service(tmp_path / "svc")
    (folder / "main.py").chmod(0o775)
    with tarfile.open(fileobj=io.BytesIO(pack_bundle(folder).data)) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["lib", "lib/util.py", "main.py", "nanoservice.toml"]
    for m in members:
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "")
    modes = {m.name: m.mode for m in members}
    assert modes == {"lib": 0o755, "lib/util.py": 0o644, "main.py": 0o755,
                     "nanoservice.toml": 0o644}


def test_build_artefacts_are_left_out(tmp_path: Path) -> None:
    folder = make_service(tmp_path / "svc", extra={
        "__pycache__/main.cpython-311.pyc": b"x", "lib/__pycache__/u.pyc": b"x",
        "stale.pyc": b"x", ".git/HEAD": b"ref", ".venv/bin/python": b"x"})
    base = pack_bundle(folder)
    assert names(base.data) == ["lib", "lib/util.py", "main.py", "nanoservice.toml"]
    clean = make_service(tmp_path / "clean")
    assert pack_bundle(clean).sha256 == base.sha256


def test_relative_symlink_inside_is_kept(tmp_path: Path) -> None:
    folder = make_service(tmp_path / "svc")
    (folder / "lib" / "link.py").symlink_to("../main.py")
    with tarfile.open(fileobj=io.BytesIO(pack_bundle(folder).data)) as tar:
        link = tar.getmember("lib/link.py")
    assert link.issym() and link.linkname == "../main.py"


@pytest.mark.parametrize("target", ["/etc/passwd", "../../outside", "../.."])
def test_symlink_leaving_the_bundle_is_refused(tmp_path: Path, target: str) -> None:
    folder = make_service(tmp_path / "svc")
    (folder / "lib" / "bad").symlink_to(target)
    with pytest.raises(BundleError, match=r"lib/bad.*(absolute|outside)"):
        pack_bundle(folder)


def test_fifo_and_socket_are_refused(tmp_path: Path) -> None:
    folder = make_service(tmp_path / "svc")
    os.mkfifo(folder / "pipe")
    with pytest.raises(BundleError, match=r"pipe.*FIFO"):
        pack_bundle(folder)
    os.unlink(folder / "pipe")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(folder / "sock"))
        with pytest.raises(BundleError, match=r"sock"):
            pack_bundle(folder)


def test_folder_without_manifest_is_refused_unless_asked(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    (rootfs / "bin" / "sh").write_bytes(b"\x7fELF")
    with pytest.raises(BundleError, match=r"no nanoservice.toml"):
        pack_bundle(rootfs)
    assert names(pack_bundle(rootfs, require_manifest=False).data) == ["bin", "bin/sh"]
    with pytest.raises(BundleError, match=r"not a directory"):
        pack_bundle(tmp_path / "missing")


def test_size_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = make_service(tmp_path / "svc", extra={"data.bin": b"\0" * 100_000})
    monkeypatch.setattr(pack_mod, "MAX_BUNDLE_BYTES", 50_000)
    with pytest.raises(BundleError, match=r"exceeds 50000 bytes"):
        pack_bundle(folder)


def test_entry_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = make_service(tmp_path / "svc")
    monkeypatch.setattr(pack_mod, "MAX_BUNDLE_ENTRIES", 3)
    with pytest.raises(BundleError, match=r"more than 3 files"):
        pack_bundle(folder)


def test_streaming_pack_matches_in_memory(tmp_path: Path) -> None:
    folder = make_service(tmp_path / "svc")
    out = io.BytesIO()
    sha, size = pack_bundle_to(folder, out)
    bundle = pack_bundle(folder)
    assert (sha, size, out.getvalue()) == (bundle.sha256, bundle.size, bundle.data)
