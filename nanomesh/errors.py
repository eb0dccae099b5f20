"""The exceptions nanomesh raises on purpose.

Errors are split at the boundary the way h11 splits them: a
`RemoteProtocolError` means a peer (or something pretending to be one) sent
bytes we refuse; it is dropped and counted, never propagated into the core. A
`ConfigError` means the local operator asked for something impossible and is
reported before anything starts.
"""

from __future__ import annotations


class NanomeshError(Exception):
    """Base class of every error nanomesh raises deliberately."""


class RemoteProtocolError(NanomeshError):
    """Bytes from the network were malformed, oversized, unauthenticated or of an
    unsupported protocol version. The `reason` is a short stable token used as a
    counter name (``"decrypt"``, ``"version"``, ``"oversized"``, ``"malformed"``)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class ConfigError(NanomeshError):
    """A configuration value or combination is invalid; the message names it."""


class IllegalTransition(NanomeshError, ValueError):
    """A state change that its transition table forbids: an instance's
    lifecycle state (`nanomesh.runtime.lifecycle`) or this peer's Raft role
    (`nanomesh.consensus.role_core`). Always a bug; the state is unchanged."""
