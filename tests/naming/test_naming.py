"""Name resolution (``nanomesh.naming``): which gossiped endpoints resolve,
in which order, and that garbage in a peer's profile never raises."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from nanomesh.naming import Endpoint, known_services, member_endpoints, resolve
from nanomesh.wire import Address, MemberState


@dataclass
class FakeMember:
    name: str
    state: MemberState
    addr: Address
    profile: dict[str, Any] | None


def inst(state: str = "running", health: str | None = "healthy", proto: str = "coap",
         port: int = 5701, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"state": state, "restarts": 0,
                           "endpoints": {"api": {"protocol": proto, "port": port}}, **extra}
    if health is not None:
        doc["health"] = health
    return doc


def member(name: str, ip: str, instances: Any, state: MemberState = MemberState.ALIVE
           ) -> FakeMember:
    return FakeMember(name, state, (ip, 7946), {"cpu": 4, "instances": instances})


def keys(eps: list[Endpoint]) -> list[tuple[str, str]]:
    return [(e.peer, e.instance) for e in eps]


A, B, C = "10.9.0.1", "10.9.0.2", "10.9.0.3"


@pytest.mark.parametrize(("members", "kwargs", "expected"), [
    pytest.param([member("a", A, {"hello/0": inst()})], {}, [("a", "hello/0")],
                 id="one running healthy instance"),
    pytest.param([member("a", A, {"other/0": inst()})], {}, [], id="other service"),
    *[pytest.param([member("a", A, {"hello/0": inst(state=s)})], {}, [], id=f"{s} not running")
      for s in ("pending", "starting", "idle", "stopping", "exited", "failed")],
    *[pytest.param([member("a", A, {"hello/0": inst()}, state=s)], {}, [],
                   id=f"member {s.label}") for s in (MemberState.DEAD, MemberState.LEFT)],
    pytest.param([member("a", A, {"hello/0": inst()}, state=MemberState.SUSPECT)], {},
                 [("a", "hello/0")], id="suspect member still resolves"),
    pytest.param([member("a", A, {"hello/0": inst(health="unhealthy")})], {}, [],
                 id="unhealthy excluded"),
    pytest.param([member("a", A, {"hello/0": inst(health="unhealthy")}),
                  member("b", B, {"hello/1": inst(health="starting")})],
                 {"include_unhealthy": True}, [("b", "hello/1"), ("a", "hello/0")],
                 id="unhealthy included last when asked"),
    pytest.param([member("a", A, {"hello/0": inst(health="starting")}),
                  member("b", B, {"hello/1": inst(health="none")}),
                  member("c", C, {"hello/2": inst(health="healthy")})], {},
                 [("b", "hello/1"), ("c", "hello/2"), ("a", "hello/0")],
                 id="healthy and none before starting, then by peer name"),
    pytest.param([member("a", A, {"hello/0": inst()}), member("b", B, {"hello/1": inst()}),
                  member("c", C, {"hello/2": inst()})], {"me": "c"},
                 [("c", "hello/2"), ("a", "hello/0"), ("b", "hello/1")],
                 id="local peer first"),
    pytest.param([member("a", A, {"hello/0": inst()}),
                  member("c", C, {"hello/2": inst(health="starting")})], {"me": "c"},
                 [("a", "hello/0"), ("c", "hello/2")],
                 id="health outranks locality"),
    pytest.param([member("a", A, {"hello/0": inst(proto="zmq")}),
                  member("b", B, {"hello/1": inst(proto="coap")})], {"protocol": "coap"},
                 [("b", "hello/1")], id="protocol filter"),
    pytest.param([member("a", A, {"hello/0": inst(health=None)})], {}, [("a", "hello/0")],
                 id="no health key (older peer) counts as none"),
    pytest.param([member("a", A, {"hello/0": {"state": "running", "restarts": 0}})], {}, [],
                 id="no endpoints (older peer)"),
])
def test_resolve_table(members: list[FakeMember], kwargs: dict[str, Any],
                       expected: list[tuple[str, str]]) -> None:
    assert keys(resolve(members, "hello", **kwargs)) == expected


def test_resolved_endpoint_fields_and_address() -> None:
    m = member("a", A, {"hello/0": inst(port=5701)})
    [ep] = resolve([m], "hello")
    assert ep == Endpoint("hello", "hello/0", "a", A, "api", "coap", 5701, "healthy", "running")
    assert ep.address == "10.9.0.1:5701"
    v6 = FakeMember("v6", MemberState.ALIVE, ("fd00::1", 7946), {"instances": {"hello/0": inst()}})
    assert resolve([v6], "hello")[0].address == "[fd00::1]:5701"


def test_instance_with_several_endpoints_gives_one_endpoint_each() -> None:
    status = inst()
    status["endpoints"]["events"] = {"protocol": "zmq", "port": 5702}
    eps = resolve([member("a", A, {"hello/0": status})], "hello")
    assert [(e.name, e.protocol, e.port) for e in eps] == [("api", "coap", 5701),
                                                           ("events", "zmq", 5702)]


def test_malformed_entries_are_skipped_and_good_ones_kept() -> None:
    instances: dict[Any, Any] = {
        "hello/0": inst(),
        "hello/1": "running",                                   # not a dict
        "hello/2": inst(health="great"),                        # unknown health
        "hello/3": inst(state="zombie"),                        # unknown state
        "hello/4": {**inst(), "endpoints": [5701]},             # endpoints not a dict
        "hello/5": inst(proto="gopher"),                        # unknown protocol
        "hello/6": inst(port=0),                                # bad port
        "hello/7": {**inst(), "endpoints": {"api": {"protocol": "coap", "port": True}}},
        "hello/8": {**inst(), "endpoints": {"": {"protocol": "coap", "port": 1}}},
        "nohash": inst(),                                       # no SERVICE/INDEX
        7: inst(),                                              # key not a string
    }
    m = member("a", A, instances)
    assert keys(resolve([m], "hello")) == [("a", "hello/0")]
    assert keys(resolve([FakeMember("b", MemberState.ALIVE, (B, 1), None)], "hello")) == []
    assert keys(resolve([FakeMember("b", MemberState.ALIVE, (B, 1), {"instances": [1]})],
                        "hello")) == []


def test_order_is_stable_for_equal_rank() -> None:
    ms = [member("b", B, {"hello/1": inst(), "hello/0": inst()}),
          member("a", A, {"hello/3": inst(), "hello/2": inst()})]
    first = resolve(ms, "hello")
    assert keys(first) == [("a", "hello/2"), ("a", "hello/3"), ("b", "hello/0"),
                           ("b", "hello/1")]
    assert resolve(list(reversed(ms)), "hello") == first


def test_known_services_counts_any_state_on_live_members_only() -> None:
    ms = [member("a", A, {"hello/0": inst(state="starting"), "bad": inst()}),
          member("b", B, {"gone/0": inst()}, state=MemberState.DEAD),
          member("c", C, {"world/0": inst(health="unhealthy")})]
    assert known_services(ms) == {"hello", "world"}


def test_endpoint_dict_round_trip() -> None:
    ep = Endpoint("hello", "hello/0", "a", A, "api", "http", 8080, "none", "running")
    doc = ep.to_dict()
    assert doc["address"] == "10.9.0.1:8080"
    assert Endpoint.from_dict(doc) == ep


@pytest.mark.parametrize(("change", "field"), [
    ({"port": "8080"}, "endpoint.port"), ({"port": 70000}, "endpoint.port"),
    ({"port": True}, "endpoint.port"), ({"service": ""}, "endpoint.service"),
    ({"peer": None}, "endpoint.peer"), ({"protocol": "gopher"}, "endpoint.protocol"),
    ({"health": "fine"}, "endpoint.health"),
])
def test_endpoint_from_dict_names_the_bad_field(change: dict[str, Any], field: str) -> None:
    doc = {**Endpoint("hello", "hello/0", "a", A, "api", "coap", 1, "none", "running").to_dict(),
           **change}
    with pytest.raises(ValueError, match=field):
        Endpoint.from_dict(doc)
    with pytest.raises(ValueError, match="must be an object"):
        Endpoint.from_dict(["hello"])


# Anything msgpack can carry may arrive in a profile from a buggy or hostile peer.
scalar = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
          | st.binary(max_size=4))
json_like = st.recursive(
    scalar, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(scalar, inner, max_size=4),
    max_leaves=20)
endpoint_like = st.fixed_dictionaries({
    "protocol": st.sampled_from(["coap", "zmq", "http"]), "port": st.integers(1, 65535)})
instance_ok = st.fixed_dictionaries({
    "state": st.just("running"), "health": st.sampled_from(["healthy", "none", "starting"]),
    "endpoints": st.dictionaries(st.sampled_from(["api", "events"]), endpoint_like,
                                 min_size=1, max_size=2)})


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[dict[str, Any]]) -> Any:
    """A well-formed dict with some of its (nested) values replaced by garbage."""
    doc = draw(base)
    for key in draw(st.lists(st.sampled_from(sorted(doc)), max_size=2)):
        doc[key] = draw(json_like)
    return doc


instance_like = instance_ok | mutated(instance_ok) | st.builds(
    lambda ok, name, ep: {**ok, "endpoints": {name: ep}}, instance_ok,
    st.sampled_from(["api", ""]) | scalar, mutated(endpoint_like) | json_like) | json_like
instance_key = st.sampled_from(["hello/0", "hello/1"]) | st.sampled_from(
    ["x/0", "hello", "/0", 7, None, b"a/1"])


def half(ok: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`ok` or garbage, evenly (``ok | json_like`` would give `ok` one share among
    json_like's many flattened branches, and well-formed input would be rare)."""
    return st.booleans().flatmap(lambda good: ok if good else json_like)


profile_like = half(st.fixed_dictionaries({
    "instances": half(st.dictionaries(instance_key, instance_like, min_size=1, max_size=6))}))


@settings(max_examples=300, deadline=None)
@given(profiles=st.lists(profile_like, min_size=1, max_size=4),
       states=st.lists(st.sampled_from([MemberState.ALIVE, *MemberState]), min_size=4,
                       max_size=4),
       protocol=st.none() | st.sampled_from(["coap", "zmq", "http"]),
       include_unhealthy=st.booleans())
def test_garbage_profiles_never_raise(profiles: list[Any], states: list[MemberState],
                                      protocol: str | None, include_unhealthy: bool) -> None:
    ms = [FakeMember(f"p{i}", states[i], (f"10.9.1.{i}", 7946), p)
          for i, p in enumerate(profiles)]
    eps = resolve(ms, "hello", protocol=protocol, me="p1", include_unhealthy=include_unhealthy)
    known_services(ms)
    for m in ms:
        member_endpoints(m)
    for ep in eps:
        assert ep.service == "hello" and ep.state == "running"
        assert protocol is None or ep.protocol == protocol
        assert include_unhealthy or ep.health != "unhealthy"
        assert Endpoint.from_dict(ep.to_dict()) == ep
    event(f"{min(len(eps), 2)} endpoints resolved")


def test_ready_on_asks_the_named_live_peer_about_the_instance() -> None:
    from nanomesh.naming import ready_on
    members = [member("a", "10.0.0.1", {"svc/0": inst(), "svc/1": inst(health="starting")}),
               member("b", "10.0.0.2", {"svc/2": inst(health=None), "svc/3": inst("stopping")}),
               member("c", "10.0.0.3", {"svc/4": inst()}, MemberState.DEAD),
               member("d", "10.0.0.4", "garbage")]
    assert ready_on(members, "a", "svc/0")
    assert not ready_on(members, "a", "svc/1")      # checks not passed yet
    assert ready_on(members, "b", "svc/2")          # an old peer without health: none
    assert not ready_on(members, "b", "svc/3")      # not running
    assert not ready_on(members, "b", "svc/0")      # another peer's instance
    assert not ready_on(members, "c", "svc/4")      # a dead peer
    assert not ready_on(members, "d", "svc/0")      # malformed gossip
    assert not ready_on(members, "e", "svc/0")      # unknown peer
