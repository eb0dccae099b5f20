"""Errors raised by discovery.

Only configuration mistakes raise: a probe that cannot read a file degrades to
``None`` / a default instead, because a peer with an odd kernel must still join
the mesh with whatever it could learn about itself.
"""

from __future__ import annotations


class DiscoveryConfigError(ValueError):
    """A device or label entry in the peer config is invalid.

    ``index`` is the position of the offending entry in ``devices`` (``None``
    for labels) and ``field`` the key that is wrong, so the message can point
    the operator at the exact line of the TOML file.
    """

    def __init__(self, index: int | None, field: str, problem: str) -> None:
        self.index = index
        self.field = field
        self.problem = problem
        where = f"devices[{index}].{field}" if index is not None else field
        super().__init__(f"{where}: {problem}")
