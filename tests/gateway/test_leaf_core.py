"""The leaf registry and the gateway's /leaf endpoint (`nanomesh.gateway.leaf_core`),
driven with messages and a fake ``now``."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pytest

from nanomesh.gateway.forward import (
    BAD_REQUEST,
    CHANGED,
    CONTENT,
    CREATED,
    METHOD_NOT_ALLOWED,
    NOT_FOUND,
    SERVICE_UNAVAILABLE,
    UNAUTHORIZED,
    GatewayRequest,
    GatewayResponse,
    LeafRoute,
    route,
)
from nanomesh.gateway.leaf_core import LeafConfig, LeafEndpoint, LeafRegistry, Outcome
from nanomesh.wire.leaf import LeafDevice, Register, Report, seal

KEY = bytes(range(16, 48))
DEVICES = (LeafDevice("temp", "body-temperature"), LeafDevice("pir", "pir"))


def register(n: int = 1, period: float = 1.0, leaf: str = "bed-1") -> Register:
    return Register(leaf, n, period, DEVICES)


def report(n: int, values: dict[str, Any], age_ms: int = 0, leaf: str = "bed-1") -> Report:
    return Report(leaf, n, age_ms, values)


def test_a_registered_leaf_reports_and_its_devices_join_the_profile() -> None:
    reg = LeafRegistry()
    assert reg.devices() == []
    assert reg.register(register(), now=0) is Outcome.ACCEPTED
    assert reg.report(report(2, {"temp": 36.6}), now=1) is Outcome.ACCEPTED
    assert reg.leaves["bed-1"].readings["temp"].value == 36.6
    assert reg.devices() == [
        {"type": "body-temperature", "source": "leaf", "driver": "leaf", "leaf": "bed-1",
         "resource": "temp"},
        {"type": "pir", "source": "leaf", "driver": "leaf", "leaf": "bed-1", "resource": "pir"}]
    assert reg.summary() == {"bed-1": "up"}


def test_a_counter_not_above_the_last_is_a_replay() -> None:
    reg = LeafRegistry()
    reg.register(register(n=5), now=0)
    assert reg.report(report(5, {"temp": 1}), now=1) is Outcome.REPLAYED
    assert reg.report(report(6, {"temp": 1}), now=1) is Outcome.ACCEPTED
    assert reg.report(report(6, {"temp": 2}), now=1) is Outcome.REPLAYED
    assert reg.register(register(n=3), now=2) is Outcome.REPLAYED
    assert reg.leaves["bed-1"].readings["temp"].value == 1


def test_reports_need_a_registration_and_declared_resources() -> None:
    reg = LeafRegistry()
    assert reg.report(report(1, {"temp": 1}), now=0) is Outcome.UNKNOWN
    reg.register(register(n=2), now=0)
    assert reg.report(report(3, {"spo2": 97}), now=0) is Outcome.UNDECLARED


def test_a_silent_leaf_goes_gone_after_missed_periods_and_comes_back_by_registering() -> None:
    reg = LeafRegistry(LeafConfig(missed_periods=3, min_silence=5))
    reg.register(register(period=2.0), now=0)
    assert reg.next_expiry() == 6.0
    assert reg.expire(now=6.0) == []
    assert reg.expire(now=6.1) == ["bed-1"]
    assert reg.devices() == [] and reg.summary() == {"bed-1": "gone"}
    assert reg.next_expiry() is None
    assert reg.report(report(9, {"temp": 1}), now=7) is Outcome.UNKNOWN
    assert reg.register(register(n=10, period=2.0), now=7) is Outcome.ACCEPTED
    assert len(reg.devices()) == 2


def test_min_silence_bounds_a_fast_leaf() -> None:
    reg = LeafRegistry(LeafConfig(missed_periods=3, min_silence=5))
    reg.register(register(period=0.1), now=0)
    assert reg.expire(now=4.9) == [] and reg.expire(now=5.1) == ["bed-1"]


def test_a_late_buffered_reading_does_not_replace_a_newer_one() -> None:
    reg = LeafRegistry()
    reg.register(register(), now=0)
    reg.report(report(2, {"temp": 37.0}), now=10)
    reg.report(report(3, {"temp": 36.0}, age_ms=5000), now=11)  # read at 6
    assert reg.leaves["bed-1"].readings["temp"].value == 37.0


# ------------------------------------------------------------ the endpoint


def post(path: str, body: dict[str, Any], key: bytes = KEY) -> GatewayRequest:
    segments = tuple(path.split("/"))
    return GatewayRequest("POST", segments, payload=seal(key, segments, body))


def get(path: str) -> GatewayRequest:
    return GatewayRequest("GET", tuple(path.split("/")))


def body_of(response: GatewayResponse) -> Any:
    assert response.code == CONTENT, response
    return json.loads(response.payload)


def welcome(ep: LeafEndpoint, now: float = 0, key: bytes = KEY,
            nl: bytes = b"\x01" * 8) -> str:
    """A hello to `ep` as a leaf holding `key` sends it; the nonce of the
    welcome, whose tag is checked here with hmac (the peer holds the key)."""
    ident = hmac.new(key, b"hello\n" + nl, hashlib.sha256).digest()[:8]
    answer = ep.handle(GatewayRequest("POST", ("leaf", "hello"), payload=json.dumps(
        {"id": ident.hex(), "nl": nl.hex()}).encode()), now)
    assert answer.code == CONTENT, answer
    rest = answer.payload[16:]
    want = hmac.new(key, b"welcome\n" + nl + b"\n" + rest, hashlib.sha256).digest()[:16]
    assert answer.payload[:16] == want
    return str(json.loads(rest)["np"])


def registered(ep: LeafEndpoint, body: dict[str, Any], now: float = 0,
               key: bytes = KEY) -> GatewayRequest:
    """The registration `body` (with the nonce of a fresh welcome from `ep`)."""
    return post("leaf/register", {**body, "np": welcome(ep, now, key)}, key)


REG_BODY = {"leaf": "bed-1", "n": 1, "period": 1,
            "dev": [{"r": "temp", "type": "body-temperature"}]}


def test_the_endpoint_registers_takes_reports_and_serves_values() -> None:
    ep = LeafEndpoint({"bed-1": KEY})
    assert route(get("leaf/bed-1/temp")) == LeafRoute()
    assert ep.handle(registered(ep, REG_BODY, 0), now=0).code == CREATED
    assert ep.handle(get("leaf/bed-1/temp"), now=0).code == SERVICE_UNAVAILABLE
    assert ep.handle(post("leaf/bed-1/report", {"n": 2, "v": {"temp": 36.6}}), now=1
                     ).code == CHANGED
    assert body_of(ep.handle(get("leaf/bed-1/temp"), now=2)) == {
        "value": 36.6, "n": 2, "state": "up"}
    listing = body_of(ep.handle(get("leaf"), now=2))
    assert listing["bed-1"]["devices"] == {"temp": "body-temperature"}
    detail = body_of(ep.handle(get("leaf/bed-1"), now=2))
    assert detail["values"]["temp"] == {"value": 36.6, "age_s": 1.0}
    assert ep.handle(get("leaf/bed-1/nosuch"), now=2).code == NOT_FOUND
    assert ep.handle(get("leaf/bed-2/temp"), now=2).code == NOT_FOUND


@pytest.mark.parametrize(("request_", "code", "reason"), [
    (post("leaf/register", REG_BODY, key=bytes(32)), UNAUTHORIZED, "auth"),
    (post("leaf/register", {**REG_BODY, "leaf": "bed-9"}), UNAUTHORIZED, "auth"),
    (post("leaf/register", {**REG_BODY, "period": -1}), BAD_REQUEST, "malformed"),
    (GatewayRequest("POST", ("leaf", "register"), payload=b"\x00" * 40), BAD_REQUEST,
     "malformed"),
    (post("leaf/bed-1/report", {"n": 1, "v": {}}), NOT_FOUND, "unknown"),
])
def test_the_endpoint_refuses_and_counts(request_: GatewayRequest, code: int,
                                         reason: str) -> None:
    ep = LeafEndpoint({"bed-1": KEY})
    answer = ep.handle(request_, now=0)
    assert answer.code == code and ep.refused == {reason: 1}
    assert ep.registry.leaves == {}


def test_a_replayed_report_is_refused() -> None:
    ep = LeafEndpoint({"bed-1": KEY})
    ep.handle(registered(ep, REG_BODY, 0), now=0)
    message = post("leaf/bed-1/report", {"n": 2, "v": {"temp": 1}})
    assert ep.handle(message, now=1).code == CHANGED
    assert ep.handle(message, now=2).code == UNAUTHORIZED
    assert ep.refused == {"replayed": 1}


def test_a_report_sealed_for_another_leaf_is_refused() -> None:
    keys = {"bed-1": KEY, "bed-2": bytes(32)}
    ep = LeafEndpoint(keys)
    ep.handle(registered(ep, REG_BODY, 0), now=0)
    forged = GatewayRequest("POST", ("leaf", "bed-1", "report"), payload=seal(
        keys["bed-2"], ("leaf", "bed-2", "report"), {"n": 5, "v": {"temp": 1}}))
    assert ep.handle(forged, now=1).code == UNAUTHORIZED


def answer_is_tagged(answer: GatewayResponse, path: str, n: int) -> bool:
    """Whether `answer` carries the tag of an answer to message `n` at
    `path` under KEY (computed here with hmac, not the code under test)."""
    from nanomesh.wire.leaf import TAG_SIZE
    head = f"answer\n{path}\n{n}\n{answer.code}\n".encode()
    want = hmac.new(KEY, head + answer.payload[TAG_SIZE:], hashlib.sha256).digest()
    return answer.payload[:TAG_SIZE] == want[:TAG_SIZE]


def test_answers_to_authentic_messages_are_tagged_others_are_not() -> None:
    """Issue 11: a leaf takes an answer only with the peer's tag bound to
    its message's path, counter and the answer's code; a peer tags no
    answer to a message whose own tag fails (that would hand a stranger a
    tagged refusal for a counter of its choice)."""
    ep = LeafEndpoint({"bed-1": KEY})
    early = ep.handle(post("leaf/bed-1/report", {"n": 1, "v": {"temp": 1}}), now=0)
    assert early.code == NOT_FOUND and answer_is_tagged(early, "leaf/bed-1/report", 1)
    created = ep.handle(registered(ep, {**REG_BODY, "n": 2}, 0), now=0)
    assert created.code == CREATED and answer_is_tagged(created, "leaf/register", 2)
    assert not answer_is_tagged(created, "leaf/register", 3)  # bound to the counter
    changed = ep.handle(post("leaf/bed-1/report", {"n": 3, "v": {"temp": 1}}), now=1)
    assert changed.code == CHANGED and answer_is_tagged(changed, "leaf/bed-1/report", 3)
    assert not answer_is_tagged(GatewayResponse(NOT_FOUND, changed.payload),
                                "leaf/bed-1/report", 3)  # bound to the code
    replayed = ep.handle(post("leaf/bed-1/report", {"n": 3, "v": {"temp": 1}}), now=2)
    assert replayed.code == UNAUTHORIZED and answer_is_tagged(replayed, "leaf/bed-1/report", 3)
    stranger = ep.handle(post("leaf/bed-1/report", {"n": 9, "v": {"temp": 1}},
                              key=bytes(32)), now=2)
    assert stranger.code == UNAUTHORIZED and stranger.payload.startswith(b"auth: bad tag")


def test_other_methods_are_refused() -> None:
    ep = LeafEndpoint({"bed-1": KEY})
    assert ep.handle(GatewayRequest("PUT", ("leaf", "bed-1")), now=0).code == METHOD_NOT_ALLOWED
    assert ep.handle(GatewayRequest("POST", ("leaf", "x")), now=0).code == METHOD_NOT_ALLOWED


async def test_the_gateway_republishes_on_registration_and_expiry(autojump_clock: Any) -> None:
    """Through `Gateway`: a registration that adds devices calls
    `leaves_changed` once, a report does not, and `expire_leaves` marks the
    silent leaf gone at missed_periods * period and calls it again."""
    import trio

    from nanomesh.gateway import Gateway

    changes: list[float] = []
    ep = LeafEndpoint({"bed-1": KEY}, LeafConfig(missed_periods=3, min_silence=1))
    gateway = Gateway(lambda _s: [], {}, leaves=ep,
                      leaves_changed=lambda: changes.append(trio.current_time()))
    started = trio.current_time()
    assert (await gateway.handle(registered(ep, REG_BODY))).code == CREATED
    assert (await gateway.handle(post("leaf/bed-1/report", {"n": 2, "v": {"temp": 1}}))
            ).code == CHANGED
    assert len(changes) == 1
    async with trio.open_nursery() as nursery:
        nursery.start_soon(gateway.expire_leaves)
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    assert len(changes) == 2 and 3.0 < changes[1] - started < 3.1
    assert ep.registry.summary() == {"bed-1": "gone"}


async def test_a_gateway_without_leaves_says_so() -> None:
    from nanomesh.gateway import Gateway

    answer = await Gateway(lambda _s: [], {}).handle(get("leaf/bed-1/temp"))
    assert answer.code == NOT_FOUND and b"takes no leaves" in answer.payload


async def test_a_leaf_value_is_observable_and_notified_per_report(autojump_clock: Any) -> None:
    """GET with Observe goes through `Gateway.watch` (polling): a new report
    is a notification, an unchanged value none (the answer has no age)."""
    import trio

    from nanomesh.gateway import Gateway
    from nanomesh.gateway.observe import ObserveConfig

    ep = LeafEndpoint({"bed-1": KEY})
    gateway = Gateway(lambda _s: [], {}, leaves=ep,
                      observe=ObserveConfig(period=1.0, max_age=600))
    await gateway.handle(registered(ep, REG_BODY))
    await gateway.handle(post("leaf/bed-1/report", {"n": 2, "v": {"temp": 36.6}}))
    request = get("leaf/bed-1/temp")
    first = await gateway.handle(request)
    seen: list[Any] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(gateway.watch, request, first,
                           lambda r, _last: seen.append(json.loads(r.payload)["value"]))
        await trio.sleep(5.5)
        await gateway.handle(post("leaf/bed-1/report", {"n": 3, "v": {"temp": 37.1}}))
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    assert seen == [36.6, 37.1]


# ------------------------------------------------------------ mobile agents

LED_BODY = {"leaf": "led-1", "n": 1, "period": 1, "dev": [{"r": "led", "type": "led-strip"}]}
PROGRAM = [["set", "led", 1], ["wait", 2500], ["set", "led", 0]]


def agent_endpoint(*leaves: str) -> LeafEndpoint:
    ep = LeafEndpoint({leaf: KEY for leaf in leaves})
    for leaf in leaves:
        assert ep.handle(registered(ep, {**LED_BODY, "leaf": leaf}, 0), now=0).code == CREATED
    return ep


def submit(ep: LeafEndpoint, path: list[str], on_dead: str = "skip", now: float = 0) -> str:
    answer = ep.handle(GatewayRequest("POST", ("leaf", "agents"), payload=json.dumps(
        {"path": path, "prog": PROGRAM, "on_dead": on_dead}).encode()), now, member=True)
    assert answer.code == CREATED, answer
    return str(json.loads(answer.payload)["id"])


def report_and_take_agent(ep: LeafEndpoint, leaf: str, n: int, now: float) -> dict[str, Any]:
    """A report from `leaf`; the agent its answer carries (checked with the leaf's key)."""
    answer = ep.handle(post(f"leaf/{leaf}/report", {"n": n, "v": {"led": 0}}), now)
    assert answer.code == CHANGED and answer.payload, answer
    from nanomesh.wire.leaf import TAG_SIZE
    body = answer.payload[TAG_SIZE:]
    want = hmac.new(KEY, f"answer\nleaf/{leaf}/report\n{n}\n{CHANGED}\n".encode() + body,
                    hashlib.sha256).digest()[:TAG_SIZE]
    assert answer.payload[:TAG_SIZE] == want  # bound to this leaf's key and this report
    return dict(json.loads(body))


def status(ep: LeafEndpoint, agent: str) -> dict[str, Any]:
    return dict(body_of(ep.handle(get(f"leaf/agents/{agent}"), now=0)))


def test_an_agent_migrates_leaf_to_leaf_in_the_answers_to_reports() -> None:
    ep = agent_endpoint("led-1", "led-2")
    agent = submit(ep, ["led-1", "led-2"])
    assert status(ep, agent)["phase"] == "queued" and status(ep, agent)["at"] == "led-1"
    carried = report_and_take_agent(ep, "led-1", 2, now=1)
    assert carried == {"agent": agent, "prog": PROGRAM}
    assert status(ep, agent)["phase"] == "running"
    done = post("leaf/led-1/agent", {"n": 3, "agent": agent, "ok": True, "out": []})
    assert ep.handle(done, now=4).code == CHANGED
    assert status(ep, agent)["at"] == "led-2"
    report_and_take_agent(ep, "led-2", 2, now=5)
    ep.handle(post("leaf/led-2/agent", {"n": 3, "agent": agent, "ok": True, "out": [1]}), 8)
    assert status(ep, agent) | {"path": None} == {
        "phase": "done", "at": None, "visited": ["led-1", "led-2"], "skipped": [],
        "output": {"led-2": [1]}, "error": "", "path": None}


def test_an_agent_skips_a_dead_leaf_or_fails_there() -> None:
    ep = agent_endpoint("led-1", "led-3")
    skip = submit(ep, ["led-1", "led-2", "led-3"])
    fail = submit(ep, ["led-2", "led-3"], on_dead="fail")
    assert status(ep, fail)["phase"] == "failed" and "led-2" in status(ep, fail)["error"]
    report_and_take_agent(ep, "led-1", 2, now=1)
    ep.handle(post("leaf/led-1/agent", {"n": 3, "agent": skip, "ok": True}), now=2)
    assert status(ep, skip)["at"] == "led-3" and status(ep, skip)["skipped"] == ["led-2"]


def test_an_agent_at_a_leaf_that_goes_silent_moves_on() -> None:
    ep = agent_endpoint("led-1", "led-2")
    agent = submit(ep, ["led-1", "led-2"])
    report_and_take_agent(ep, "led-1", 2, now=1)
    ep.handle(post("leaf/led-2/report", {"n": 5, "v": {}}), now=9)  # led-2 stays heard
    # led-1 never posts its result: 2.5 s of program + grace + a period.
    deadline = ep.registry.next_expiry()
    assert deadline is not None and deadline <= 1 + 2.5 + 5 + 1
    ep.registry.expire(now=9.6)
    assert status(ep, agent)["skipped"] == ["led-1"] and status(ep, agent)["at"] == "led-2"


def test_a_failed_step_fails_the_agent() -> None:
    ep = agent_endpoint("led-1", "led-2")
    agent = submit(ep, ["led-1", "led-2"])
    report_and_take_agent(ep, "led-1", 2, now=1)
    ep.handle(post("leaf/led-1/agent", {"n": 3, "agent": agent, "ok": False,
                                        "err": "no resource led"}), now=2)
    assert status(ep, agent)["phase"] == "failed"
    assert status(ep, agent)["error"] == "leaf led-1: no resource led"


@pytest.mark.parametrize("body", [
    {"path": ["led-1"], "prog": [["exec", "rm -rf /"]]},
    {"path": ["led-1"], "prog": [["wait", 10_001]]},
    {"path": ["led-1"], "prog": [["blink", "led", 20, 300]]},
    {"path": ["led-1"], "prog": [["set", "led", 2]]},
    {"path": ["led-1"], "prog": [["set", "led", True]]},
    {"path": [], "prog": [["wait", 1]]},
    {"path": ["led-1"], "prog": [["wait", 1]] * 17},
    {"path": ["led-1"], "prog": [["wait", 1]], "on_dead": "retry"},
    {"path": ["led-1"], "prog": [["wait", 1]], "code": "print(1)"},
    "not an object",
])
def test_agents_outside_the_instruction_set_are_refused(body: object) -> None:
    ep = agent_endpoint("led-1")
    answer = ep.handle(GatewayRequest("POST", ("leaf", "agents"),
                                      payload=json.dumps(body).encode()), 0, member=True)
    assert answer.code == BAD_REQUEST, answer
    assert ep.registry.agents == {}


def test_only_members_start_agents() -> None:
    ep = agent_endpoint("led-1")
    answer = ep.handle(GatewayRequest("POST", ("leaf", "agents"), payload=json.dumps(
        {"path": ["led-1"], "prog": PROGRAM}).encode()), 0)
    assert answer.code == UNAUTHORIZED and ep.registry.agents == {}
    assert ep.handle(GatewayRequest("POST", ("leaf", "agents"), payload=b"\xff"), 0,
                     member=True).code == BAD_REQUEST


def test_a_leaf_running_a_long_agent_is_not_gone_meanwhile() -> None:
    """A leaf reports nothing while it runs an agent's pauses (10 s here):
    its silence counts from their end, not from its last report."""
    ep = agent_endpoint("led-1")
    answer = ep.handle(GatewayRequest("POST", ("leaf", "agents"), payload=json.dumps(
        {"path": ["led-1"], "prog": [["wait", 10_000]]}).encode()), 0, member=True)
    agent = str(json.loads(answer.payload)["id"])
    report_and_take_agent(ep, "led-1", 2, now=1)
    assert ep.registry.expire(now=14.0) == []  # 1 + 10 s of pauses + 5 s min silence
    ep.handle(post("leaf/led-1/agent", {"n": 3, "agent": agent, "ok": True}), now=11.5)
    assert status(ep, agent)["phase"] == "done"
    assert ep.registry.expire(now=16.6) == ["led-1"]


def test_a_recorded_registration_is_refused_everywhere() -> None:
    """Issue 11, replay: a registration counts only with a nonce the peer
    issued in a welcome within HELLO_TTL, once. A recorded one is refused by
    the peer it went to, by a peer that never heard the leaf, and by the
    first one after a restart (a fresh endpoint); and old reports then find
    the leaf unknown instead of delivering an old reading."""
    first = LeafEndpoint({"bed-1": KEY})
    recorded = registered(first, REG_BODY)
    assert first.handle(recorded, now=0).code == CREATED
    old_report = post("leaf/bed-1/report", {"n": 2, "v": {"temp": 30.0}})
    assert first.handle(old_report, now=1).code == CHANGED
    for peer in (first, LeafEndpoint({"bed-1": KEY}), LeafEndpoint({"bed-1": KEY})):
        assert peer.handle(recorded, now=2).code == UNAUTHORIZED
    other = LeafEndpoint({"bed-1": KEY})
    other.handle(recorded, now=2)
    assert other.handle(old_report, now=2).code == NOT_FOUND
    assert other.refused == {"stale": 1, "unknown": 1}


def test_a_welcome_nonce_is_good_once_and_for_hello_ttl() -> None:
    from nanomesh.wire.leaf import HELLO_TTL
    ep = LeafEndpoint({"bed-1": KEY})
    late = registered(ep, REG_BODY, now=0)
    assert ep.handle(late, now=HELLO_TTL + 1).code == UNAUTHORIZED
    # Hellos replayed by a stranger keep a few nonces only; the newest works.
    for i in range(10):
        welcome(ep, now=50 + i)
    assert len(ep._pending[KEY]) == 4
    fresh = registered(ep, {**REG_BODY, "n": 5}, now=60)
    assert ep.handle(fresh, now=60).code == CREATED


def test_a_hello_with_another_key_gets_an_untagged_not_found() -> None:
    ep = LeafEndpoint({"bed-1": KEY})
    nl = bytes(8)
    ident = hmac.new(bytes(32), b"hello\n" + nl, hashlib.sha256).digest()[:8]
    answer = ep.handle(GatewayRequest("POST", ("leaf", "hello"), payload=json.dumps(
        {"id": ident.hex(), "nl": nl.hex()}).encode()), now=0)
    assert answer.code == NOT_FOUND and ep.refused == {"unknown": 1}
    garbage = ep.handle(GatewayRequest("POST", ("leaf", "hello"), payload=b"\xff{"), now=0)
    assert garbage.code == BAD_REQUEST


def test_a_flood_of_hellos_is_cut_off_before_any_hmac_and_leaves_get_back_in() -> None:
    """A hello costs one HMAC per leaf key the peer holds, so a stranger's
    flood is answered 5.03 beyond the budget (HELLO_BURST at once, HELLO_RATE
    a second), without trying the keys; a leaf's hello is welcome again once
    the flood stops."""
    from nanomesh.gateway.leaf_core import HELLO_BURST, HELLO_RATE

    ep = LeafEndpoint({"bed-1": KEY})
    nl = bytes(8)
    stranger = GatewayRequest("POST", ("leaf", "hello"), payload=json.dumps(
        {"id": bytes(8).hex(), "nl": nl.hex()}).encode())
    codes = [ep.handle(stranger, now=0).code for _ in range(int(HELLO_BURST) + 10)]
    assert codes.count(NOT_FOUND) == HELLO_BURST
    assert codes[int(HELLO_BURST):] == [SERVICE_UNAVAILABLE] * 10
    assert ep.refused == {"unknown": HELLO_BURST, "busy": 10}
    # One second later the bucket holds HELLO_RATE hellos again: the leaf
    # gets in, and the rest of that second's budget goes to the stranger.
    late = registered(ep, REG_BODY, now=1.0)
    assert ep.handle(late, now=1.0).code == CREATED
    codes = [ep.handle(stranger, now=1.0).code for _ in range(int(HELLO_RATE))]
    assert codes == [NOT_FOUND] * (int(HELLO_RATE) - 1) + [SERVICE_UNAVAILABLE]
