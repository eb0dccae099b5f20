"""Operator recovery when a majority of the voters is lost for good.

Raft cannot elect a leader without a majority of its configuration, and no
automatic rule can tell a voter that is gone for good from one that is
rebooting: deciding that is the operator's job, as with Consul's
``peers.json`` and etcd's ``--force-new-cluster``. The procedure, on ONE
surviving voter (the most up-to-date one: compare ``nanomesh peer recover``'s
report on each survivor, highest commit index wins):

1. stop the peer (``systemctl stop nanomesh``; SIGTERM);
2. ``nanomesh peer recover --data-dir DIR --yes`` writes a request
   (``consensus/recover.json``) next to the peer's Raft data; it refuses
   while the peer runs (the role manager holds ``consensus/lock``);
3. start the peer. Before anything else, its role manager
   (`nanomesh.consensus.role_manager`) reads the committed state of its last
   journal (`read_state`, on a scratch copy: the old journal is kept for
   the operator), bootstraps a new one-voter cluster in a new generation
   directory, writes that state back (token hash, registry, services with
   their saved state and mode, the plan), and only then deletes the
   request. A crash midway leaves the request: the next start redoes it from
   the same old journal.

The other peers then hear no leader, reconnect to the voter that gossip now
reports, and are promoted again as usual. Why offline, on a stopped peer,
rather than an API call: like etcd and Consul, the journal must not change
under the recovery; authority comes from access to the peer's disk (root),
not from a network credential; and a peer whose daemon cannot start at all
can still be recovered.

What it costs (printed as a warning): writes that only the lost voters had
(committed after this survivor last heard the leader) are lost; the plan
epoch and revision restart from the recovered state; and a lost voter that
comes back with its old data forms no quorum of its own only if at most a
minority of the old voters return: wipe their data directories (they rejoin
as learners).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nanomesh.consensus._pysyncobj import RaftNode
from nanomesh.consensus.config import RaftTiming
from nanomesh.consensus.state import DesiredState
from nanomesh.consensus.status import RaftStatus
from nanomesh.errors import NanomeshError
from nanomesh.wire import Keyring

RECOVER_FILE = "recover.json"
"""The recovery request, in the role manager's directory."""
LOCK_FILE = "lock"
"""Held (flock) by a running role manager: recovery refuses while it is."""
READ_TIMEOUT = 30.0
"""Seconds to replay a journal (thousands of entries take well under one)."""
_JOURNAL_FILES = ("journal", "journal.meta", "dump")


class RecoveryError(NanomeshError):
    """The recovery cannot be prepared or applied (the message says why)."""


@dataclass(frozen=True)
class RecoveryRequest:
    """Written by the operator's command, applied at the next start."""

    generation: int
    """The generation whose journal holds the state to keep."""
    requested_at: float

    @classmethod
    def load(cls, consensus_dir: Path) -> RecoveryRequest | None:
        """The pending request, or None. RecoveryError for a damaged one (the
        daemon must not silently start without the recovery it was asked for)."""
        path = consensus_dir / RECOVER_FILE
        try:
            doc = json.loads(path.read_text())
            gen, at = doc["generation"], doc["requested_at"]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RecoveryError(f"{path} is damaged ({exc}): run `nanomesh peer recover` "
                                "again, or delete it to start without recovering") from None
        if not (isinstance(gen, int) and gen >= 1 and isinstance(at, int | float)):
            raise RecoveryError(f"{path} is damaged: bad generation or time")
        return cls(gen, float(at))

    def store(self, consensus_dir: Path) -> None:
        tmp = consensus_dir / (RECOVER_FILE + ".tmp")
        tmp.write_text(json.dumps({"generation": self.generation,
                                   "requested_at": self.requested_at}) + "\n")
        os.replace(tmp, consensus_dir / RECOVER_FILE)

    @staticmethod
    def done(consensus_dir: Path) -> None:
        (consensus_dir / RECOVER_FILE).unlink(missing_ok=True)


@dataclass(frozen=True)
class Survivor:
    """What one peer's last journal holds (`inspect`)."""

    generation: int
    role: str
    state: DesiredState
    status: RaftStatus


# --------------------------------------------------------------------------- the lock


def acquire_lock(consensus_dir: Path) -> int:
    """Take the data directory's lock (held by a running role manager); the
    file descriptor to close to release it. RecoveryError if another
    process (a running daemon) holds it."""
    consensus_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(consensus_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise RecoveryError(f"a peer is running on {consensus_dir.parent}: stop it "
                            "first (systemctl stop nanomesh, or SIGTERM)") from None
    return fd


@contextlib.contextmanager
def hold_lock(consensus_dir: Path) -> Iterator[None]:
    """`acquire_lock` for the duration of the block."""
    fd = acquire_lock(consensus_dir)
    try:
        yield
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- reading a journal


class JournalReader:
    """Replays one generation's journal (and full dump) into a `DesiredState`,
    on a scratch copy, with a read-only pysyncobj node that knows no peer and
    a random key (so it can talk to nobody, even through the peers the
    journal's membership changes name). Construct it on the main thread (see
    `nanomesh.consensus._pysyncobj`), then `poll()` until it returns."""

    def __init__(self, generation_dir: Path) -> None:
        if not (generation_dir / "journal").is_file():
            raise RecoveryError(f"no Raft journal in {generation_dir}")
        self._scratch = Path(tempfile.mkdtemp(prefix="nanomesh-recover-"))
        for name in _JOURNAL_FILES:
            if (generation_dir / name).is_file():
                shutil.copy2(generation_dir / name, self._scratch / name)
        self._state: DesiredState | None = None
        self._status: RaftStatus | None = None
        dump = self._scratch / "dump"
        self._node = RaftNode(
            self_address=None, peers=[], timing=RaftTiming.lan(),
            journal_file=str(self._scratch / "journal"),
            dump_file=str(dump) if dump.exists() else None,
            keyring=Keyring([os.urandom(32)]),  # a throwaway key: it connects to no one
            on_applied=self._applied, on_status=self._status_seen, on_leadership=lambda _: None)
        self._state = self._node.initial_state
        self._deadline = time.monotonic() + READ_TIMEOUT

    def _applied(self, state: DesiredState) -> None:
        self._state = state

    def _status_seen(self, status: RaftStatus) -> None:
        self._status = status

    def poll(self) -> tuple[DesiredState, RaftStatus] | None:
        """The committed state and the node's status once every committed
        entry is applied; None before. RecoveryError after READ_TIMEOUT."""
        status = self._status
        if status is not None and status.last_applied >= status.commit_index:
            assert self._state is not None
            return self._state, status
        if time.monotonic() > self._deadline:
            raise RecoveryError("the journal could not be replayed within "
                                f"{READ_TIMEOUT:.0f} s")
        return None

    def close(self) -> None:
        self._node.destroy()
        deadline = time.monotonic() + 5.0
        while self._node.alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        shutil.rmtree(self._scratch, ignore_errors=True)


def read_state(generation_dir: Path) -> tuple[DesiredState, RaftStatus]:
    """The committed state of `generation_dir`'s journal (blocking; main thread)."""
    reader = JournalReader(generation_dir)
    try:
        while (result := reader.poll()) is None:
            time.sleep(0.01)
        return result
    finally:
        reader.close()


def inspect(consensus_dir: Path) -> Survivor:
    """What this (stopped) peer would recover from: its stored role's
    generation and that journal's committed state."""
    try:
        doc: Any = json.loads((consensus_dir / "role.json").read_text())
        role, generation = str(doc["role"]), doc["generation"]
    except (OSError, ValueError, KeyError, TypeError):
        raise RecoveryError(f"{consensus_dir} holds no Raft role (role.json): is this a "
                            "peer's data directory?") from None
    if not isinstance(generation, int) or generation < 1:
        raise RecoveryError(f"{consensus_dir}: this peer never ran a Raft voter; recover "
                            "a peer that was a voter")
    state, status = read_state(consensus_dir / f"raft-{generation}")
    return Survivor(generation, role, state, status)


WARNING = """\
WARNING: this makes this peer the ONLY voter of a new control plane, built
from its own journal. Do it only when a majority of the voters is lost for
good (run it on the most up-to-date survivor: the highest commit index).
- Writes that only the lost voters had are lost for good.
- Do not start the lost voters again with their old data directories: wipe
  them (their peers rejoin as learners and are promoted again). A majority
  of the old voters coming back together would otherwise elect a leader of
  the old control plane.
- The other peers follow the new voter by themselves; the plan epoch and
  revision restart from the recovered state."""


def request(consensus_dir: Path, generation: int, now: float) -> None:
    """Write the recovery request (the peer must be stopped: `hold_lock`)."""
    with hold_lock(consensus_dir):
        RecoveryRequest(generation, now).store(consensus_dir)
