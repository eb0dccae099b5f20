"""Packing a service folder into a deterministic, content-addressed tar.

A bundle's id is the SHA-256 of its tar bytes, so the tar must depend on the
folder's *content* only: entries in sorted depth-first order, mtime 0, uid/gid
0, no user or group names, modes normalised to 0644 / 0755 (0755 when any
execute bit is set), directories included, PAX format (long names are a PAX
record, itself deterministic). Packing the same folder twice, on any machine,
at any time, gives the same id.

Left out: ``__pycache__/``, ``*.pyc``, ``.git``, ``.venv`` (built or local
artefacts, different on every machine). Symlinks are kept when their target
is relative and stays inside the bundle; any other symlink, and devices,
FIFOs and sockets, make packing fail with the offending path named, since a
bundle that silently lost a file would fail far away, on another peer.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from nanomesh.bundles.errors import BundleError

MAX_BUNDLE_BYTES = 256 * 1024 * 1024
"""Largest bundle (tar bytes) packed, stored or fetched. A Python nanoservice
is kilobytes and a busybox rootfs 2 MB; 256 MiB leaves room for a small
distro rootfs while keeping a hostile or mistaken push from filling a Pi's SD
card (the store holds the tar *and* its extracted copy, so twice this)."""

MAX_BUNDLE_ENTRIES = 20_000
"""Most tar entries (files, directories, links) in one bundle: a Debian-slim
rootfs has about 8k; the cap bounds extraction work and inode use."""

MANIFEST_FILE = "nanoservice.toml"
"""The manifest at the top of every service bundle."""

EXCLUDED_NAMES = frozenset({"__pycache__", ".git", ".venv"})
"""Directory (or file) names never packed, at any depth."""

EXCLUDED_SUFFIXES = (".pyc",)
"""File name endings never packed."""

_TAR_FORMAT = tarfile.PAX_FORMAT


@dataclass(frozen=True)
class Bundle:
    """A packed bundle: its tar bytes and their SHA-256 (lowercase hex)."""

    data: bytes
    sha256: str

    @property
    def size(self) -> int:
        return len(self.data)


class _CappedHashWriter:
    """A write-only file that hashes, counts and caps what tarfile writes."""

    def __init__(self, out: BinaryIO | None, cap: int, folder: Path) -> None:
        self.out = out
        self.cap = cap
        self.folder = folder
        self.size = 0
        self.hash = hashlib.sha256()
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.size += len(data)
        if self.size > self.cap:
            raise BundleError(f"{self.folder}: bundle exceeds {self.cap} bytes "
                              f"(MAX_BUNDLE_BYTES); leave large data out of the service "
                              f"folder or fetch it at run time")
        self.hash.update(data)
        if self.out is not None:
            self.out.write(data)
        else:
            self.chunks.append(bytes(data))
        return len(data)


def pack_bundle(folder: Path, *, require_manifest: bool = True) -> Bundle:
    """Pack `folder` into a deterministic tar in memory. BundleError (naming
    the path) if the folder is missing, has no manifest (unless
    `require_manifest` is false, for a bare rootfs), holds an unpackable file,
    or exceeds the size or entry caps."""
    writer = _CappedHashWriter(None, MAX_BUNDLE_BYTES, folder)
    _pack(folder, writer, require_manifest)
    return Bundle(b"".join(writer.chunks), writer.hash.hexdigest())


def pack_bundle_to(folder: Path, out: BinaryIO, *, require_manifest: bool = True
                   ) -> tuple[str, int]:
    """Like `pack_bundle`, streaming the tar to `out`; returns (sha256, size)."""
    writer = _CappedHashWriter(out, MAX_BUNDLE_BYTES, folder)
    _pack(folder, writer, require_manifest)
    return writer.hash.hexdigest(), writer.size


def _pack(folder: Path, writer: _CappedHashWriter, require_manifest: bool) -> None:
    if not folder.is_dir():
        raise BundleError(f"{folder}: not a directory; a bundle is a service folder")
    if require_manifest and not (folder / MANIFEST_FILE).is_file():
        raise BundleError(f"{folder}: no {MANIFEST_FILE}; a bundle is a service folder "
                          f"with its manifest at the top")
    count = 0
    # "w|" is tarfile's stream mode: it only ever calls write(), never tell()/seek().
    with tarfile.open(fileobj=writer, mode="w|", format=_TAR_FORMAT) as tar:  # type: ignore[call-overload]
        for rel, path, st in _walk(folder):
            count += 1
            if count > MAX_BUNDLE_ENTRIES:
                raise BundleError(f"{folder}: more than {MAX_BUNDLE_ENTRIES} files and "
                                  f"directories (MAX_BUNDLE_ENTRIES)")
            _add_entry(tar, rel, path, st, folder)


def _walk(folder: Path, rel: str = "") -> Iterator[tuple[str, Path, os.stat_result]]:
    """(archive name, path, lstat) depth-first, siblings sorted by name."""
    try:
        names = sorted(os.listdir(folder / rel if rel else folder))
    except OSError as exc:
        raise BundleError(f"{folder / rel}: cannot list: {exc.strerror}") from None
    for name in names:
        if name in EXCLUDED_NAMES or name.endswith(EXCLUDED_SUFFIXES):
            continue
        _check_name(name, folder / rel)
        arc = f"{rel}/{name}" if rel else name
        path = folder / arc
        try:
            st = path.lstat()
        except OSError as exc:
            raise BundleError(f"{path}: cannot read: {exc.strerror}") from None
        yield arc, path, st
        if stat.S_ISDIR(st.st_mode):
            yield from _walk(folder, arc)


def _check_name(name: str, parent: Path) -> None:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise BundleError(f"{parent}: file name {name!r} is not valid UTF-8; "
                          f"rename it") from None


def _add_entry(tar: tarfile.TarFile, rel: str, path: Path, st: os.stat_result,
               folder: Path) -> None:
    info = tarfile.TarInfo(rel)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if stat.S_ISDIR(st.st_mode):
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
    elif stat.S_ISLNK(st.st_mode):
        info.type, info.mode = tarfile.SYMTYPE, 0o777
        info.linkname = os.readlink(path)
        problem = symlink_problem(rel, info.linkname)
        if problem:
            raise BundleError(f"{path}: {problem}; make it a relative link inside "
                              f"{folder} or copy the file in")
        tar.addfile(info)
    elif stat.S_ISREG(st.st_mode):
        info.type = tarfile.REGTYPE
        info.mode = 0o755 if st.st_mode & 0o111 else 0o644
        info.size = st.st_size
        _add_file(tar, info, path)
    else:
        raise BundleError(f"{path}: a device, FIFO or socket cannot go into a bundle; "
                          f"remove it from the service folder")


def _add_file(tar: tarfile.TarFile, info: tarfile.TarInfo, path: Path) -> None:
    try:
        with path.open("rb") as f:
            tar.addfile(info, f)
    except OSError as exc:
        # tarfile raises a bare OSError when the file shrank while we read it.
        raise BundleError(f"{path}: cannot read ({exc.strerror or exc}); was it "
                          f"changing while packing?") from None


def symlink_problem(name: str, target: str) -> str | None:
    """Why a symlink at archive path `name` pointing at `target` may not be in a
    bundle, or None if it may: the target must be relative and, resolved
    lexically from the link's directory, stay inside the bundle."""
    if not target:
        return "symlink with an empty target"
    if "\0" in target or os.path.isabs(target):
        return f"symlink to absolute path {target!r}"
    resolved = os.path.normpath(os.path.join(os.path.dirname(name), target))
    if resolved == ".." or resolved.startswith("../"):
        return f"symlink to {target!r} points outside the bundle"
    return None


def sha256_of(data: bytes) -> str:
    """The bundle id of `data`."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(f: BinaryIO, cap: int = MAX_BUNDLE_BYTES) -> tuple[str, int]:
    """(sha256, size) of the rest of an open file; BundleError above `cap`."""
    h, size = hashlib.sha256(), 0
    while chunk := f.read(io.DEFAULT_BUFFER_SIZE * 64):
        size += len(chunk)
        if size > cap:
            raise BundleError(f"bundle exceeds {cap} bytes (MAX_BUNDLE_BYTES)")
        h.update(chunk)
    return h.hexdigest(), size
