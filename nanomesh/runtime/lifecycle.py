"""The lifecycle of a nanoservice instance, as a transition table.

::

    (pending) ──▶ fetching ──▶ starting ──▶ running ──▶ stopping ──▶ exited
        │            │  │         │            │            │    └──▶ failed
        │            │  └──▶ idle ◀────────────┼────────────┘
        │            └──▶ failed                └──▶ exited / failed (ended by itself)
        └──▶ starting / idle / failed

* ``pending``: assigned by the committed plan, not yet reported by its peer.
  No runtime record exists (the table's ``None`` row); ``nanomesh placement``
  shows it until the hosting peer gossips a state.
* ``fetching``: the peer is downloading the service's bundle from a peer that
  has it (sha256-verified) before the first start.
* ``starting`` → ``running``: the process or container exists; *health* is a
  separate axis reported beside the state (``starting`` until the first check
  passes, then ``healthy`` / ``unhealthy``; ``none`` without a check).
* ``idle``: placed and prepared (bundle fetched), deliberately not running;
  ``nanomesh activate`` starts it, ``nanomesh idle`` returns it here (the
  research deployed nanoservices idle and activated them on demand).
* ``stopping``: SIGTERM sent, waiting for the end (SIGKILL after the timeout).
* ``exited`` / ``failed``: a run ended (cleanly / not: a crash, a kill, a
  failed fetch, a failed health check). The restart policy and the back-off
  decide whether and when the next run starts (:mod:`nanomesh.runtime.reconcile_core`).

Every state change of a runtime record goes through :func:`check_transition`,
so an impossible change is a loud bug, not a silently wrong status.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, get_args

# One class for every transition table (instances here, Raft roles in
# nanomesh.consensus.role_core); re-exported so callers keep importing it here.
from nanomesh.errors import IllegalTransition as IllegalTransition

State = Literal["fetching", "starting", "running", "idle", "stopping", "exited", "failed"]
STATES: tuple[State, ...] = get_args(State)
PENDING = "pending"
"""The name shown for an assigned instance with no runtime record yet."""

ACTIVE: frozenset[State] = frozenset({"starting", "running", "stopping"})
"""States in which the instance has (or is about to have) a live process."""
ENDED: frozenset[State] = frozenset({"exited", "failed"})
"""Terminal states of one run; the next run starts over at ``"starting"``."""
RESTING: frozenset[State] = ENDED | {"idle"}
"""No process and nothing in flight: the record may be dropped when the
instance is no longer wanted on this peer."""

TRANSITIONS: Mapping[State | None, frozenset[State]] = {
    None: frozenset({"fetching", "starting", "idle", "failed"}),
    "fetching": frozenset({"starting", "idle", "exited", "failed"}),
    "starting": frozenset({"running", "stopping", "exited", "failed"}),
    "running": frozenset({"stopping", "exited", "failed"}),
    "stopping": frozenset({"exited", "failed", "idle"}),
    "idle": frozenset({"fetching", "starting", "idle", "failed"}),
    "exited": frozenset({"fetching", "starting", "idle", "failed"}),
    "failed": frozenset({"fetching", "starting", "idle", "failed"}),
}
"""The legal state changes (``None``: no record, i.e. pending). ``failed →
failed`` and ``idle → idle`` record a repeated outcome (a second failed fetch,
a spec change while idle) as a fresh record."""


def check_transition(old: State | None, new: State, iid: str = "?") -> None:
    """Raise :class:`IllegalTransition` unless ``old -> new`` is in the table."""
    if new not in TRANSITIONS[old]:
        raise IllegalTransition(f"instance {iid}: illegal transition {old or PENDING} -> {new}")
