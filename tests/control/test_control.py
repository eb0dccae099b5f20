"""The leader's placement decision from committed state and the gossip view."""

from nanomesh.gossip.members import Member
from nanomesh.placement import PlacementConfig
from nanomesh.placement.decide import decide, unknown_hosts, worth_committing
from nanomesh.runtime.manifest import service_document
from nanomesh.wire import MemberState


def member(name: str, state: MemberState = MemberState.ALIVE, devices: tuple[str, ...] = ()
           ) -> Member:
    profile = {"cpu": {"cores": 4}, "memory": {"total_mb": 4096, "available_mb": 4000},
               "storage": {"free_mb": 10000}, "power": {"source": "ac"},
               "network": {"wifi": True, "ethernet": True, "bluetooth": False},
               "devices": [{"type": d} for d in devices], "labels": {},
               "load": {"cpu_percent": 5.0, "memory_percent": 10.0}}
    return Member(name, ("10.0.0.1", 7946), 0, state, 0.0, 1, profile, 1)


def services(*docs: dict) -> dict:
    return {d["name"]: service_document(d) for d in docs}


SVC = {"name": "a", "run": {"command": ["true"]}, "replicas": 2}
POM = {"name": "spo2", "run": {"command": ["true"]},
       "requires": {"capabilities": ["pulse-oximeter"]}}


def test_places_every_replica_and_reports_unplaceable_with_reasons() -> None:
    d = decide(services(SVC, POM), {}, [member("p1"), member("p2")], PlacementConfig())
    assert sorted(d.plan.assignments) == ["a/0", "a/1"]
    assert set(d.plan.assignments.values()) == {"p1", "p2"}
    assert set(d.plan.unplaceable["spo2"]) == {"p1", "p2"}
    assert "pulse-oximeter" in d.plan.unplaceable["spo2"]["p1"]


def test_dead_peer_instances_move_suspect_peer_instances_stay() -> None:
    cfg = PlacementConfig()
    first = decide(services(SVC), {}, [member("p1"), member("p2"), member("p3")], cfg).plan
    victim = first.assignments["a/0"]
    others = [member(n) for n in ("p1", "p2", "p3") if n != victim]
    suspect = decide(services(SVC), first.to_dict(),
                     [*others, member(victim, MemberState.SUSPECT)], cfg).plan
    assert suspect.assignments == first.assignments
    assert not worth_committing(first.to_dict(), suspect)
    dead = decide(services(SVC), first.to_dict(),
                  [*others, member(victim, MemberState.DEAD)], cfg).plan
    assert dead.assignments["a/0"] != victim
    assert dead.assignments["a/1"] == first.assignments["a/1"], "only what must move"
    assert worth_committing(first.to_dict(), dead)


def test_same_view_same_plan_so_a_new_leader_changes_nothing() -> None:
    view = [member("p1"), member("p2"), member("p3", devices=("pulse-oximeter",))]
    a = decide(services(SVC, POM), {}, view, PlacementConfig()).plan
    b = decide(services(SVC, POM), {}, list(reversed(view)), PlacementConfig()).plan
    assert a.assignments == b.assignments
    assert not worth_committing(a.to_dict(), decide(services(SVC, POM), a.to_dict(), view,
                                                    PlacementConfig()).plan)


def test_unreadable_service_document_is_reported_not_placed() -> None:
    d = decide({"bad": {"spec": {"name": "bad", "replicas": -1}}}, {}, [member("p1")],
               PlacementConfig())
    assert "bad" in d.invalid and not d.plan.assignments


def test_hosts_of_the_committed_plan_unknown_to_the_view_are_reported() -> None:
    """A new leader must not plan before gossip shows the peers that run the
    committed plan: it would move their healthy instances away."""
    committed = {"assignments": {"a/0": "p1", "a/1": "p2", "b/0": "p3"}}
    no_profile = member("p2")
    no_profile.profile = None
    assert unknown_hosts(committed, [member("p1"), no_profile]) == {"p2", "p3"}
    assert unknown_hosts(committed, [member(n) for n in ("p1", "p2", "p3")]) == set()
    assert unknown_hosts({}, []) == set()
    dead = member("p3", MemberState.DEAD)
    assert unknown_hosts(committed, [member("p1"), member("p2"), dead]) == set(), \
        "a dead peer is known: its instances move at once"
