"""Counting what a plan changed relative to the previous one."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from nanomesh.placement.plan import Plan, PlanStats


def compare(previous: Plan | None, assignments: Mapping[str, str], unplaced: Collection[str],
            desired: Collection[str], voluntary: Collection[str],
            rebalance_pending: bool = False) -> PlanStats:
    """:class:`PlanStats` of ``assignments`` against ``previous``.

    An instance that changed peer counts as ``rebalanced`` when it is in
    ``voluntary`` and as ``moved`` (forced) otherwise.
    """
    before: Mapping[str, str] = previous.assignments if previous is not None else {}
    kept = new = moved = rebalanced = lost = 0
    for iid in desired:
        old, now = before.get(iid), assignments.get(iid)
        if old is None:
            new += now is not None
        elif now is None:
            lost += 1
        elif old == now:
            kept += 1
        elif iid in voluntary:
            rebalanced += 1
        else:
            moved += 1
    desired_set = desired if isinstance(desired, set | frozenset) else set(desired)
    removed = sum(1 for iid in before if iid not in desired_set)
    return PlanStats(placed=len(assignments), unplaced=len(unplaced), kept=kept, new=new,
                     moved=moved, rebalanced=rebalanced, lost=lost, removed=removed,
                     rebalance_pending=rebalance_pending)
