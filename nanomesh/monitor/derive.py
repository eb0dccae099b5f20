"""Which facts are worth an event, from what the daemon already knows.

The daemon learns each kind of change in its own place; these functions
turn it into `Fact` values, and nothing else:

- membership: a gossip notification (`membership_fact`), as the SWIM core
  emits it;
- the control plane: two successive Raft belief sections of this peer
  (the whole of what a voter gossips as ``profile["raft"]``; `raft_facts`):
  who leads, in which term, the voters, our role;
- placement: two successive committed plans, with the services desired and
  the members' states at the time (`plan_facts`), so that every move says
  why;
- this peer's instances: two successive snapshots of the driver's statuses
  (`instance_facts`).

Comparing snapshots rather than hooking every transition keeps the shell
thin: a watcher may skip intermediate states (the driver changed twice
before it woke), and the comparison still names what matters: a run that
ended, a run that began (``started``, or ``restarted`` after an earlier
one), a host that changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from typing import Any

from nanomesh.gossip.effects import (
    MemberFailed,
    MemberJoined,
    MemberLeft,
    MemberReaped,
    MemberRecovered,
    MemberSuspected,
    Notification,
    Refuted,
)
from nanomesh.ids import service_of
from nanomesh.monitor.eventlog import Fact
from nanomesh.runtime.reconcile_core import InstanceStatus

# --------------------------------------------------------------------------- membership


def membership_fact(note: Notification, me: str) -> Fact | None:
    """The event of a gossip notification (None: not worth one; a profile
    update happens every few seconds and is not an event)."""
    match note:
        case MemberJoined():
            verb = "rejoined" if note.rejoined else "joined"
            return Fact("member.joined", note.name, f"{verb} at {note.addr[0]}:{note.addr[1]}",
                        {"address": f"{note.addr[0]}:{note.addr[1]}",
                         "rejoined": note.rejoined})
        case MemberSuspected():
            return Fact("member.suspect", note.name, f"suspected by {note.by}", {"by": note.by})
        case MemberRecovered():
            return Fact("member.alive", note.name, "refuted its suspicion: alive")
        case MemberFailed():
            return Fact("member.dead", note.name, f"declared dead by {note.by}", {"by": note.by})
        case MemberLeft():
            return Fact("member.left", note.name, "left the mesh")
        case MemberReaped():
            return Fact("member.reaped", note.name, "forgotten (dead or gone for long)")
        case Refuted():
            return Fact("member.refuted", me, f"was suspected by {note.accuser}; refuted with "
                        f"incarnation {note.incarnation}",
                        {"by": note.accuser, "incarnation": note.incarnation})
    return None


# --------------------------------------------------------------------------- control plane


def raft_facts(before: Mapping[str, Any], after: Mapping[str, Any], me: str,
               names: Mapping[str, str]) -> list[Fact]:
    """Events between two Raft belief sections of this peer
    (`nanomesh.consensus.role_manager.RaftRoleManager.belief_section`:
    ``role``, ``leader`` and ``voters`` as Raft addresses, ``term``).
    `names` maps Raft addresses to member names (an unknown one is shown
    as the address)."""
    def name(addr: Any) -> str:
        return names.get(addr, str(addr)) if addr is not None else "-"

    # A node stopped for a role change (learner -> voter) knows no leader for
    # a moment, which is not news; only the role is.
    after = raft_basis(before, after)

    facts: list[Fact] = []
    role, old_role = after.get("role", "none"), before.get("role", "none")
    if role != old_role:  # an empty `before` is a peer that has no role yet
        facts.append(Fact("raft.role", me, f"raft role {old_role} -> {role}",
                          {"from": old_role, "to": role}))
    leader, old_leader = after.get("leader"), before.get("leader")
    term, old_term = after.get("term", 0), before.get("term", 0)
    if leader is not None and (leader != old_leader or term != old_term):
        facts.append(Fact("leader.elected", name(leader),
                          f"leads term {term} (seen by {me})", {"term": term}))
    elif leader is None and old_leader is not None:
        facts.append(Fact("leader.lost", name(old_leader),
                          f"no longer heard as leader by {me} (term {term})", {"term": term}))
    elif term != old_term:
        facts.append(Fact("raft.term", me, f"term {old_term} -> {term}, no leader yet",
                          {"term": term}))
    voters = sorted(name(v) for v in after.get("voters") or [])
    old_voters = sorted(name(v) for v in before.get("voters") or [])
    if voters != old_voters and voters:
        added = sorted(set(voters) - set(old_voters))
        removed = sorted(set(old_voters) - set(voters))
        change = ", ".join([*(f"+{v}" for v in added), *(f"-{v}" for v in removed)])
        facts.append(Fact("raft.voters", me, f"voters now {', '.join(voters)} ({change})",
                          {"voters": voters, "added": added, "removed": removed}))
    return facts


def running(section: Mapping[str, Any]) -> bool:
    """Whether a Raft section comes from a running node (term 0: none runs)."""
    term = section.get("term", 0)
    return isinstance(term, int) and term > 0


def raft_basis(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """What the next `raft_facts` compares with: `after`, keeping what
    `before` knew of the leader, the term and the voters while no node runs."""
    if running(after):
        return dict(after)
    return {**after, "leader": before.get("leader"), "term": before.get("term", 0),
            "voters": before.get("voters", [])}


# --------------------------------------------------------------------------- placement


def plan_facts(before: Mapping[str, Any], after: Mapping[str, Any],
               services: Mapping[str, Any], member_states: Mapping[str, str]) -> list[Fact]:
    """Events between two committed plans (`nanomesh.placement.plan.Plan`
    dicts), each instance placed, moved or removed with the reason:

    - placed: ``service deployed`` (the old plan had none of its
      instances), ``was unplaced``, or ``scaled up``;
    - moved: the old host's state when it is not alive (``peer-b is dead``),
      else ``rebalanced`` when the plan made voluntary moves, else ``peer-b
      no longer fits``;
    - removed: ``service undeployed``, ``no peer can take it`` (with the
      reasons the plan gives), or ``scaled down``.

    `services`: the desired services now (a deploy or an undeploy is
    committed before the plan that follows it); `member_states`: name ->
    state label of every member known now."""
    old = _assignments(before)
    new = _assignments(after)
    stats = after.get("stats") if isinstance(after.get("stats"), dict) else {}
    rebalanced = isinstance(stats, dict) and bool(stats.get("rebalanced"))
    unplaced_before = set(_strings(before.get("unplaced")))
    unplaced_now = set(_strings(after.get("unplaced")))
    unplaceable = after.get("unplaceable") if isinstance(after.get("unplaceable"), dict) else {}
    planned_before = {service_of(iid) for iid in (*old, *unplaced_before)}
    facts: list[Fact] = []
    for iid in sorted(set(old) | set(new)):
        host, was = new.get(iid), old.get(iid)
        if host == was:
            continue
        service = service_of(iid)
        if was is None and host is not None:
            reason = ("service deployed" if service not in planned_before
                      else "was unplaced" if iid in unplaced_before else "scaled up")
            facts.append(Fact("placement.placed", iid, f"placed on {host}: {reason}",
                              {"peer": host, "reason": reason}))
        elif was is not None and host is not None:
            state = member_states.get(was, "gone")
            reason = (f"{was} is {state}" if state != "alive"
                      else "rebalanced" if rebalanced else f"{was} no longer fits")
            facts.append(Fact("placement.moved", iid, f"moved {was} -> {host}: {reason}",
                              {"from": was, "peer": host, "reason": reason}))
        elif was is not None:
            if service not in services:
                reason = "service undeployed"
            elif iid in unplaced_now:
                why = unplaceable.get(service) if isinstance(unplaceable, dict) else None
                reason = "no peer can take it" + (
                    f" ({_first_reasons(why)})" if isinstance(why, dict) and why else "")
            else:
                reason = "scaled down"
            fact_type = "placement.unplaced" if iid in unplaced_now else "placement.removed"
            facts.append(Fact(fact_type, iid, f"removed from {was}: {reason}",
                              {"from": was, "reason": reason}))
    return facts


def _assignments(plan: Mapping[str, Any]) -> dict[str, str]:
    found = plan.get("assignments")
    if not isinstance(found, dict):
        return {}
    return {k: v for k, v in found.items() if isinstance(k, str) and isinstance(v, str)}


def _strings(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list | tuple) else []


def _first_reasons(why: Mapping[str, Any], limit: int = 2) -> str:
    """A couple of the plan's per-peer reasons, for one line."""
    items = [f"{peer}: {reason}" for peer, reason in sorted(why.items())][:limit]
    more = len(why) - len(items)
    return "; ".join(items) + (f"; {more} more" if more > 0 else "")


# --------------------------------------------------------------------------- instances


def instance_facts(before: Mapping[str, InstanceStatus], after: Mapping[str, InstanceStatus],
                   ran: AbstractSet[str] = frozenset()) -> list[Fact]:
    """Events between two snapshots of this peer's instance statuses
    (`nanomesh.runtime.ProcessDriver.status`). A status describes one run:
    ``started_at`` is set once it runs and kept when it ends; a new start
    begins a fresh status without it. So a run that ended unseen (the
    watcher skipped the snapshot) is still found. `ran`: the instances that
    ran here before (`runs_seen`), whose next run is a restart."""
    facts: list[Fact] = []
    for iid in sorted(after):
        new, old = after[iid], before.get(iid)
        if (old is not None and old.state in ("running", "stopping")
                and old.started_at is not None and new.started_at != old.started_at):
            facts.append(_ended(iid, old, missed=True))  # its end was not seen
        same_run = old is not None and old.started_at == new.started_at
        if new.state in ("exited", "failed") and (
                old is None or not same_run or old.state not in ("exited", "failed")):
            facts.append(_ended(iid, new))
        elif new.state == "running" and (old is None or not same_run or old.state != "running"):
            again = iid in ran or (old is not None and old.started_at is not None)
            facts.append(Fact(
                "instance.restarted" if again else "instance.started", iid,
                ("restarted" if again else "started")
                + (f" (quick restart {new.restarts})" if new.restarts else "")
                + (f", pid {new.pid}" if new.pid is not None else ""),
                {"pid": new.pid, "restarts": new.restarts}))
        elif new.state == "idle" and (old is None or old.state != "idle"):
            facts.append(Fact("instance.idle", iid, "idle (placed, not running)"))
    return facts


def runs_seen(ran: AbstractSet[str], after: Mapping[str, InstanceStatus]) -> frozenset[str]:
    """The instances of `after` that have run here (`instance_facts`'s
    `ran`): those that ran before and are still known, and those that run or
    ran now. Forgotten instances drop out, so the set stays bounded."""
    return frozenset(iid for iid, s in after.items() if iid in ran or s.started_at is not None)


def _ended(iid: str, status: InstanceStatus, *, missed: bool = False) -> Fact:
    code = None if missed else status.exit_code
    how = ("ended (not seen how)" if missed
           else f"exited with code {code}" if code is not None and code >= 0
           else f"killed by signal {-code}" if code is not None
           else status.state)
    text = f"{how}: {status.message}" if status.message and not missed else how
    return Fact("instance.exited", iid, text,
                {"code": code, "state": "exited" if missed else status.state,
                 "message": "" if missed else status.message})
