"""A peer's content-addressed bundle store (``<data_dir>/bundles``).

Layout::

    <root>/<sha>.tar     the bundle exactly as hashed (served to other peers)
    <root>/<sha>/        its extracted copy (what the runtime runs)
    <root>/.tmp/         staging; emptied when the store is opened

`add` verifies the SHA-256 *before* anything becomes visible, extracts into a
staging directory, then renames the directory and finally the tar into place.
The tar is the commit marker: a bundle is held iff both exist, so a crash
leaves at worst a stray directory, removed at the next open.

Extraction trusts nothing in the tar. Before a byte is written every entry is
checked: a canonical relative name (no absolute path, no ``..``, no ``.``, no
duplicates), a regular file, directory or symlink only (no hard links,
devices, FIFOs or sparse files), no entry beneath a symlink (so no write can
be redirected through a link, whatever the link points at), symlink targets
relative and lexically inside, and the entry and size caps. Then tarfile's
own ``filter="data"`` extracts (no owners, no setuid bits), and finally every
symlink's *physical* resolution is checked, which catches link chains that
each look harmless. All methods block: the daemon calls them through
``trio.to_thread``.

A tar whose hash no longer matches its name (disk corruption, tampering) is
removed with a log line when `verify`, `open_tar` or `check_all` meets it.
"""

from __future__ import annotations

import builtins
import logging
import os
import re
import shutil
import tarfile
import threading
import tomllib
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

from nanomesh.bundles.errors import BundleError
from nanomesh.bundles.pack import (
    MANIFEST_FILE,
    MAX_BUNDLE_BYTES,
    MAX_BUNDLE_ENTRIES,
    sha256_file,
    sha256_of,
    symlink_problem,
)
from nanomesh.bundles.release import release_name_version

log = logging.getLogger("nanomesh.bundles")

PROFILE_PREFIX_LEN = 16
"""Hex characters of a bundle id gossiped per held bundle: 64 bits, so a false
'holder' needs a 2^-64 collision, at a quarter of the profile bytes."""

SHA_RE = re.compile(r"[0-9a-f]{64}")
_TMP = ".tmp"
_COPY_CHUNK = 1 << 20


def check_sha(sha: Any) -> str:
    """`sha` if it is a bundle id (64 lowercase hex characters), else BundleError."""
    if not isinstance(sha, str) or not SHA_RE.fullmatch(sha):
        raise BundleError(f"{sha!r} is not a bundle id (64 lowercase hex characters of "
                          f"a SHA-256)")
    return sha


@dataclass(frozen=True)
class BundleInfo:
    """One held bundle: id, tar size in bytes, and the manifest's name and
    version when its manifest is readable (None otherwise)."""

    sha: str
    size: int
    name: str | None
    version: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"sha256": self.sha, "size": self.size, "name": self.name,
                "version": self.version}


class BundleStore:
    """The bundles this peer holds, under `root`. See the module docstring."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._tmp = root / _TMP
        self._lock = threading.Lock()
        self._verified: dict[str, tuple[int, int, int]] = {}
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._tmp.mkdir(mode=0o700)
        self._remove_strays()

    # ------------------------------------------------------------ queries

    def has(self, sha: str) -> bool:
        return (self.root / f"{sha}.tar").is_file() and (self.root / sha).is_dir()

    def held(self) -> list[str]:
        """Ids of every held bundle, sorted."""
        return sorted(p.name[:-4] for p in self.root.glob("*.tar")
                      if SHA_RE.fullmatch(p.name[:-4]) and (self.root / p.name[:-4]).is_dir())

    def path(self, sha: str) -> Path:
        """The extracted bundle directory; BundleError if not held."""
        if not self.has(check_sha(sha)):
            raise BundleError(f"bundle {sha[:16]} is not held by this peer")
        return self.root / sha

    def list(self) -> list[BundleInfo]:
        infos = []
        for sha in self.held():
            try:
                size = (self.root / f"{sha}.tar").stat().st_size
            except OSError:
                continue  # removed meanwhile
            name, version = _manifest_name_version(self.root / sha / MANIFEST_FILE)
            if name is None:  # nanomesh's own release (`nanomesh upgrade` stores it)
                name, version = release_name_version(self.root / sha)
            infos.append(BundleInfo(sha, size, name, version))
        return infos

    def profile_section(self) -> builtins.list[str]:
        """Sorted id prefixes of held bundles, for this peer's gossiped profile."""
        return sorted({sha[:PROFILE_PREFIX_LEN] for sha in self.held()})

    # ------------------------------------------------------------ integrity

    def verify(self, sha: str) -> bool:
        """Whether the held tar still hashes to `sha`; a corrupt one is removed
        (and logged). A result is cached until the file's size, mtime or inode
        changes, so serving a bundle twice hashes it once."""
        try:
            with (self.root / f"{check_sha(sha)}.tar").open("rb") as f:
                return self._verify_open(sha, f)
        except FileNotFoundError:
            return False

    def check_all(self) -> builtins.list[str]:
        """Verify every held bundle; the ids removed as corrupt."""
        return [sha for sha in self.held() if not self.verify(sha)]

    def open_tar(self, sha: str) -> BinaryIO:
        """The verified tar, open for reading at offset 0 (the caller closes
        it). BundleError if not held or found corrupt (and then removed)."""
        check_sha(sha)
        try:
            f = (self.root / f"{sha}.tar").open("rb")
        except FileNotFoundError:
            raise BundleError(f"bundle {sha[:16]} is not held by this peer") from None
        try:
            if self.has(sha) and self._verify_open(sha, f):
                f.seek(0)
                return f
        except BaseException:
            f.close()
            raise
        f.close()
        raise BundleError(f"bundle {sha[:16]} is not held by this peer")

    def _verify_open(self, sha: str, f: BinaryIO) -> bool:
        st = os.fstat(f.fileno())
        key = (st.st_size, st.st_mtime_ns, st.st_ino)
        if self._verified.get(sha) == key:
            return True
        try:
            actual, _ = sha256_file(f, cap=max(MAX_BUNDLE_BYTES, st.st_size))
        except OSError as exc:
            log.warning("bundle %s: cannot read (%s); removing it", sha[:16], exc)
            actual = ""
        if actual == sha:
            self._verified[sha] = key
            return True
        log.warning("bundle %s is corrupt (its tar hashes to %s); removing it",
                    sha[:16], actual[:16] or "?")
        self.remove(sha)
        return False

    # ------------------------------------------------------------ changes

    def add(self, source: bytes | Path | IO[bytes], expected_sha: str) -> Path:
        """Store a bundle given as bytes, a file path or an open binary file,
        and return its extracted directory. The content must hash to
        `expected_sha` (checked before anything is visible) and pass the
        extraction checks, else BundleError and nothing changes. A path inside
        this store's staging directory is moved, not copied. Adding a held
        bundle is a no-op."""
        check_sha(expected_sha)
        if isinstance(source, bytes):
            actual = sha256_of(source)
            if actual != expected_sha:
                raise _mismatch(actual, expected_sha)
            if len(source) > MAX_BUNDLE_BYTES:
                raise BundleError(f"bundle is {len(source)} bytes, over MAX_BUNDLE_BYTES "
                                  f"({MAX_BUNDLE_BYTES})")
        if self.has(expected_sha):
            _discard_staged(source, self._tmp)
            return self.root / expected_sha
        staged = self._stage(source, expected_sha)
        try:
            return self._extract_and_commit(staged, expected_sha)
        finally:
            staged.unlink(missing_ok=True)

    def staging_path(self) -> Path:
        """A fresh path in the store's staging directory (not created), for a
        fetcher to download into and then pass to `add`."""
        return self._tmp / f"in-{uuid.uuid4().hex}.tar"

    def remove(self, sha: str) -> bool:
        """Drop a bundle; whether it was held. The tar goes first, so the
        bundle stops being 'held' before its directory is deleted."""
        check_sha(sha)
        with self._lock:
            self._verified.pop(sha, None)
            tar = self.root / f"{sha}.tar"
            existed = tar.exists()
            tar.unlink(missing_ok=True)
            self._rmtree(self.root / sha)
        return existed

    def gc(self, keep: set[str]) -> builtins.list[str]:
        """Remove every held bundle not in `keep`; the ids removed."""
        removed = [sha for sha in self.held() if sha not in keep]
        for sha in removed:
            self.remove(sha)
            log.info("bundle %s removed (no longer needed)", sha[:16])
        return removed

    # ------------------------------------------------------------ internals

    def _stage(self, source: bytes | Path | IO[bytes], sha: str) -> Path:
        """The bundle's bytes in a staging file, verified against `sha`."""
        if isinstance(source, Path) and source.parent == self._tmp:
            staged = source
            _fsync_file(staged)  # a fetcher's download: durable before it is renamed in
        else:
            staged = self.staging_path()
            try:
                _copy_into(source, staged)
            except BaseException:
                staged.unlink(missing_ok=True)
                raise
        try:
            with staged.open("rb") as f:
                actual, _ = sha256_file(f)
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        if actual != sha:
            staged.unlink(missing_ok=True)
            raise _mismatch(actual, sha)
        return staged

    def _extract_and_commit(self, staged: Path, sha: str) -> Path:
        workdir = self._tmp / f"x-{uuid.uuid4().hex}"
        workdir.mkdir(mode=0o700)
        try:
            extract_checked(staged, workdir)
            os.chmod(workdir, 0o755)
            with self._lock:
                if self.has(sha):  # a concurrent add won
                    return self.root / sha
                self._rmtree(self.root / sha)  # stray from a crash
                os.rename(workdir, self.root / sha)
                os.replace(staged, self.root / f"{sha}.tar")
                _fsync_dir(self.root)
            log.info("bundle %s stored", sha[:16])
            return self.root / sha
        finally:
            self._rmtree(workdir)

    def _rmtree(self, path: Path) -> None:
        if not path.exists() and not path.is_symlink():
            return
        # Rename first so a half-deleted tree never sits under a bundle's name.
        doomed = self._tmp / f"rm-{uuid.uuid4().hex}"
        try:
            os.rename(path, doomed)
        except OSError:
            doomed = path
        shutil.rmtree(doomed, ignore_errors=True)

    def _remove_strays(self) -> None:
        """Directories without their tar (a crash between the two renames, or
        a deleted tar) and tars without their directory."""
        for p in self.root.iterdir():
            if p.name == _TMP:
                continue
            if p.is_dir() and SHA_RE.fullmatch(p.name) and not (
                    self.root / f"{p.name}.tar").is_file():
                log.warning("bundle %s: removing a half-stored copy", p.name[:16])
                self._rmtree(p)
            elif p.name.endswith(".tar") and SHA_RE.fullmatch(p.name[:-4]) and not (
                    self.root / p.name[:-4]).is_dir():
                log.warning("bundle %s: its extracted copy is missing; removing it",
                            p.name[:16])
                p.unlink(missing_ok=True)


# ---------------------------------------------------------------- extraction


def extract_checked(tar_path: Path, dest: Path) -> None:
    """Extract a bundle tar into the empty directory `dest` after the checks
    in the module docstring; BundleError naming the first bad entry."""
    try:
        with tarfile.open(tar_path, mode="r:") as tar:
            members = check_members(tar)
            tar.extractall(dest, members=members, filter="data")
    except tarfile.FilterError as exc:
        raise BundleError(f"bundle entry refused: {exc}") from None
    except tarfile.TarError as exc:
        raise BundleError(f"bundle is not a valid tar: {exc}") from None
    except OSError as exc:
        raise BundleError(f"bundle cannot be extracted: {exc}") from None
    _check_links_resolve_inside(dest)


def check_members(tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """Every entry of `tar`, checked (see the module docstring)."""
    members: list[tarfile.TarInfo] = []
    names: set[str] = set()
    links: set[str] = set()
    total = 0
    for m in tar:
        if len(members) >= MAX_BUNDLE_ENTRIES:
            raise BundleError(f"bundle has more than {MAX_BUNDLE_ENTRIES} entries "
                              f"(MAX_BUNDLE_ENTRIES)")
        name = _entry_name(m)
        if name in names:
            raise BundleError(f"bundle entry {m.name!r} appears twice")
        if any(parent in links for parent in _parents(name)):
            raise BundleError(f"bundle entry {m.name!r} lies beneath a symlink")
        _check_type(m)
        total += m.size
        if total > MAX_BUNDLE_BYTES:
            raise BundleError(f"bundle content exceeds {MAX_BUNDLE_BYTES} bytes "
                              f"(MAX_BUNDLE_BYTES)")
        if m.issym():
            links.add(name)
        names.add(name)
        members.append(m)
    # A link declared *after* an entry beneath it is just as dangerous.
    for name in names:
        if any(parent in links for parent in _parents(name)):
            raise BundleError(f"bundle entry {name!r} lies beneath a symlink")
    return members


def _entry_name(m: tarfile.TarInfo) -> str:
    name = m.name[:-1] if m.isdir() and m.name.endswith("/") else m.name
    if not name or "\0" in name or name.startswith("/") or "\\" in name:
        raise BundleError(f"bundle entry {m.name!r} has an absolute or empty path")
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise BundleError(f"bundle entry {m.name!r} is not a canonical relative path "
                          f"(no '..', '.' or empty components)")
    return name


def _parents(name: str) -> list[str]:
    parts = name.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _check_type(m: tarfile.TarInfo) -> None:
    if m.issparse():
        raise BundleError(f"bundle entry {m.name!r} is a sparse file")
    if m.issym():
        problem = symlink_problem(m.name, m.linkname)
        if problem:
            raise BundleError(f"bundle entry {m.name!r}: {problem}")
    elif not (m.isreg() or m.isdir()):
        kind = "hard link" if m.islnk() else "device, FIFO or other special file"
        raise BundleError(f"bundle entry {m.name!r} is a {kind}; bundles hold regular "
                          f"files, directories and relative symlinks only")


def _check_links_resolve_inside(dest: Path) -> None:
    root = os.path.realpath(dest)
    for dirpath, dirnames, filenames in os.walk(dest):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            if os.path.islink(p):
                real = os.path.realpath(p)
                if real != root and not real.startswith(root + os.sep):
                    rel = os.path.relpath(p, dest)
                    raise BundleError(f"bundle entry {rel!r}: symlink chain resolves "
                                      f"outside the bundle")


# ---------------------------------------------------------------- helpers


def _mismatch(actual: str, expected: str) -> BundleError:
    return BundleError(f"bundle bytes hash to {actual[:16]}..., not the expected "
                       f"{expected[:16]}... (corrupted in transit, or the wrong id)")


def _copy_into(source: bytes | Path | IO[bytes], staged: Path) -> None:
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as out:
        if isinstance(source, bytes):
            out.write(source)
        elif isinstance(source, Path):
            try:
                with source.open("rb") as f:
                    _copy_capped(f, out)
            except OSError as exc:
                raise BundleError(f"{source}: cannot read: {exc.strerror}") from None
        else:
            _copy_capped(source, out)
        out.flush()
        os.fsync(out.fileno())


def _copy_capped(src: IO[bytes], out: BinaryIO) -> None:
    size = 0
    while chunk := src.read(_COPY_CHUNK):
        size += len(chunk)
        if size > MAX_BUNDLE_BYTES:
            raise BundleError(f"bundle exceeds {MAX_BUNDLE_BYTES} bytes (MAX_BUNDLE_BYTES)")
        out.write(chunk)


def _discard_staged(source: bytes | Path | IO[bytes], tmp: Path) -> None:
    if isinstance(source, Path) and source.parent == tmp:
        source.unlink(missing_ok=True)


def _fsync_file(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise BundleError(f"{path}: staged bundle vanished") from None
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _manifest_name_version(path: Path) -> tuple[str | None, str | None]:
    try:
        with path.open("rb") as f:
            raw = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError):
        return None, None
    name, version = raw.get("name"), raw.get("version")
    return (name if isinstance(name, str) else None,
            version if isinstance(version, str) else None)
