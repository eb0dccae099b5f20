"""The leaves of one peer: who registered, what they last reported, who went
silent. Pure: messages (already authenticated, `nanomesh.wire.leaf`) and
``now`` in, outcomes out; the gateway's shell (`nanomesh.gateway.leaf`)
does the I/O and republishes the profile when `LeafRegistry.devices` changes.

Replay protection: a leaf's message counter must be above the last one
accepted from it, on this peer, and a registration counts only with a nonce
this peer issued to the leaf in its welcome (`LeafEndpoint`, ``/leaf/hello``,
`nanomesh.wire.leaf.HELLO_TTL`), once. So the counter a registration sets
is the leaf's current one: a recorded registration is refused by every peer
(one that never heard the leaf, or restarted and forgot it) and old reports
are refused where the leaf is registered and unknown (4.04) elsewhere.
Nothing is shared between peers or written to disk for it. Counters are kept
after a leaf goes gone (a recorded message cannot bring it back).

A leaf is *gone* when it has not been heard for `LeafConfig.missed_periods`
of its own periods (at least `LeafConfig.min_silence`): its devices leave
the profile, so placement no longer binds services to this peer for them;
its last values stay readable, marked gone. A leaf that registers again (at
this peer or after failing over back) is up again.

Mobile agents (the research's user guidance): a program from a small
checked instruction set (`nanomesh.wire.leaf.AGENT_OPS`) and a path of this
peer's leaves. A leaf only talks when it reports, so the peer hands an agent
to its current leaf in the answer to that leaf's next report, tagged with the
leaf's key and bound to the report's counter (`nanomesh.wire.leaf.seal_answer`,
as every answer to an authentic leaf message is);
the leaf runs the step and posts its result, and the agent moves to the next
leaf. A next leaf that is gone, or a step whose result does not come within
its pauses + `AGENT_STEP_GRACE` + a period, is skipped (``on_dead = "skip"``,
a reroute) or ends the agent as failed (``"fail"``); the agent's service
follows it at ``/leaf/agents/<id>``. Agents travel among one peer's leaves
only.
"""

from __future__ import annotations

import enum
import hmac
import json
import secrets
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from nanomesh.errors import RemoteProtocolError
from nanomesh.gateway.forward import (
    BAD_REQUEST,
    CHANGED,
    CONTENT,
    CREATED,
    JSON,
    LEAF_PREFIX,
    METHOD_NOT_ALLOWED,
    NOT_FOUND,
    SERVICE_UNAVAILABLE,
    UNAUTHORIZED,
    GatewayRequest,
    GatewayResponse,
    error_response,
)
from nanomesh.wire.leaf import (
    HELLO_TTL,
    NONCE_SIZE,
    AgentResult,
    AgentSpec,
    LeafDevice,
    LeafValue,
    Register,
    Report,
    agent_body,
    check_tag,
    decode_agent,
    decode_agent_result,
    decode_hello,
    decode_register,
    decode_report,
    hello_leaf,
    is_name,
    open_body,
    seal_answer,
    seal_welcome,
    step_ms,
)


@dataclass(frozen=True)
class LeafConfig:
    missed_periods: float = 3.0
    """Periods of silence after which a leaf is gone: one lost report (and
    its retransmissions) is not enough; three in a row is a leaf that is
    off, out of range or reporting to another peer."""
    min_silence: float = 5.0
    """Seconds of silence that never make a leaf gone, however short its
    period: a leaf failing over spends ACK_TIMEOUT * (2^(MAX_RETRANSMIT+1)-1)
    on its dead peer before it tries the next."""


DEFAULT_LEAVES = LeafConfig()


class Outcome(enum.Enum):
    ACCEPTED = "accepted"
    REPLAYED = "replayed"
    """The counter is not above the last accepted: refused (4.01)."""
    UNKNOWN = "unknown"
    """A report from a leaf not registered here: it must register (4.04)."""
    UNDECLARED = "undeclared"
    """A report naming a resource the leaf did not register (4.00)."""


@dataclass
class Reading:
    value: LeafValue
    read_at: float
    """When the leaf read it, on the caller's clock (receipt minus its age)."""
    counter: int


@dataclass
class LeafState:
    name: str
    devices: tuple[LeafDevice, ...]
    period: float
    last_heard: float
    up: bool = True
    readings: dict[str, Reading] = field(default_factory=dict)
    busy_until: float = 0.0
    """The end of the pauses of the agent it runs: a leaf reads and reports
    nothing meanwhile, so its silence counts from then."""

    def silent_for(self, now: float) -> float:
        return now - max(self.last_heard, self.busy_until)


class AgentPhase(enum.Enum):
    QUEUED = "queued"
    """Waiting for its current leaf's next report (the answer carries it)."""
    RUNNING = "running"
    """Handed to its current leaf; its result is awaited."""
    DONE = "done"
    FAILED = "failed"


@dataclass
class Agent:
    """A mobile agent's journey (`nanomesh.wire.leaf.AgentSpec`), leaf to leaf."""

    id: str
    spec: AgentSpec
    submitted: float
    phase: AgentPhase = AgentPhase.QUEUED
    at: int = 0
    """Index in ``spec.path`` of the leaf it is at (or waits for)."""
    visited: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    output: dict[str, list[LeafValue]] = field(default_factory=dict)
    error: str = ""

    @property
    def leaf(self) -> str | None:
        return self.spec.path[self.at] if self.at < len(self.spec.path) else None

    def describe(self) -> dict[str, Any]:
        return {"phase": self.phase.value, "at": self.leaf, "path": list(self.spec.path),
                "visited": self.visited, "skipped": self.skipped, "output": self.output,
                "error": self.error}


AGENTS = "agents"
"""``/leaf/agents``: mobile agents (no leaf has this name, `nanomesh.wire.leaf.RESERVED_NAMES`)."""
MAX_AGENTS = 32
"""Agents travelling at once per peer; a submission beyond is refused (5.03)."""
KEEP_FINISHED = 64
"""Finished agents whose outcome stays readable (the oldest is forgotten)."""
AGENT_STEP_GRACE = 5.0
"""Seconds past the program's own pauses that a leaf may take to post its
step's result before the agent counts its leaf as dead."""


class LeafRegistry:
    def __init__(self, config: LeafConfig = DEFAULT_LEAVES) -> None:
        self.config = config
        self.leaves: dict[str, LeafState] = {}
        self.agents: dict[str, Agent] = {}
        self._agent_ids = 0
        self._deadlines: dict[str, float] = {}
        """Agent id -> when its running step is given up."""
        self._counters: dict[str, int] = {}
        """The last accepted counter of every leaf ever heard (see the docstring)."""

    def _fresh(self, leaf: str, counter: int) -> bool:
        if counter <= self._counters.get(leaf, -1):
            return False
        self._counters[leaf] = counter
        return True

    def register(self, msg: Register, now: float) -> Outcome:
        if not self._fresh(msg.leaf, msg.counter):
            return Outcome.REPLAYED
        old = self.leaves.get(msg.leaf)
        readings = {r: v for r, v in old.readings.items()
                    if any(d.resource == r for d in msg.devices)} if old else {}
        self.leaves[msg.leaf] = LeafState(msg.leaf, msg.devices, msg.period, now,
                                          readings=readings)
        return Outcome.ACCEPTED

    def report(self, msg: Report, now: float) -> Outcome:
        state = self.leaves.get(msg.leaf)
        if state is None or not state.up:
            # Gone: it may have registered elsewhere with other devices;
            # it registers again to be counted here.
            return Outcome.UNKNOWN
        declared = {d.resource for d in state.devices}
        if not set(msg.values) <= declared:
            return Outcome.UNDECLARED
        if not self._fresh(msg.leaf, msg.counter):
            return Outcome.REPLAYED
        state.last_heard = now
        read_at = now - msg.age_ms / 1000
        for resource, value in msg.values.items():
            old = state.readings.get(resource)
            if old is None or old.read_at <= read_at:  # a late buffered reading is not news
                state.readings[resource] = Reading(value, read_at, msg.counter)
        return Outcome.ACCEPTED

    def expire(self, now: float) -> list[str]:
        """Mark leaves silent too long as gone; returns their names. Agents
        at a gone leaf, or whose step there took too long, move on."""
        gone = []
        for state in self.leaves.values():
            limit = max(self.config.min_silence, self.config.missed_periods * state.period)
            if state.up and state.silent_for(now) > limit:
                state.up = False
                gone.append(state.name)
        for agent in list(self.agents.values()):
            late = now > self._deadlines.get(agent.id, now)
            if agent.phase in (AgentPhase.QUEUED, AgentPhase.RUNNING) and (
                    late or not self._up(agent.leaf)):
                self._dead_leaf(agent, "no result in time" if late else "gone")
        return gone

    def next_expiry(self) -> float | None:
        """The earliest time `expire` may find a leaf gone or an agent's
        step late (None: no leaf up)."""
        times = [max(s.last_heard, s.busy_until) + max(self.config.min_silence,
                                                       self.config.missed_periods * s.period)
                 for s in self.leaves.values() if s.up]
        times += self._deadlines.values()
        return min(times) if times else None

    # ------------------------------------------------------------ agents

    def _up(self, leaf: str | None) -> bool:
        state = self.leaves.get(leaf) if leaf is not None else None
        return state is not None and state.up

    def submit(self, spec: AgentSpec, now: float) -> Agent | None:
        """Start an agent at the first leaf of its path (None: too many agents)."""
        if sum(a.phase in (AgentPhase.QUEUED, AgentPhase.RUNNING)
               for a in self.agents.values()) >= MAX_AGENTS:
            return None
        self._agent_ids += 1
        agent = Agent(f"{self._agent_ids:x}", spec, now)
        self.agents[agent.id] = agent
        self._settle(agent)
        finished = [a.id for a in self.agents.values()
                    if a.phase in (AgentPhase.DONE, AgentPhase.FAILED)]
        for old in finished[:max(0, len(finished) - KEEP_FINISHED)]:
            del self.agents[old]
        return agent

    def _settle(self, agent: Agent) -> None:
        """Move `agent` past dead leaves (``skip``) or fail it (``fail``);
        done past the end of its path."""
        while agent.leaf is not None and not self._up(agent.leaf):
            if agent.spec.on_dead == "fail":
                agent.phase = AgentPhase.FAILED
                agent.error = f"leaf {agent.leaf} is not up here"
                return
            agent.skipped.append(agent.leaf)
            agent.at += 1
        if agent.leaf is None:
            agent.phase = AgentPhase.DONE
        else:
            agent.phase = AgentPhase.QUEUED

    def _dead_leaf(self, agent: Agent, why: str) -> None:
        self._deadlines.pop(agent.id, None)
        if agent.spec.on_dead == "fail":
            agent.phase = AgentPhase.FAILED
            agent.error = f"leaf {agent.leaf}: {why}"
            return
        agent.skipped.append(str(agent.leaf))
        agent.at += 1
        self._settle(agent)

    def agent_for(self, leaf: str, now: float) -> Agent | None:
        """The agent to hand `leaf` with the answer to its report now, if
        any (it is then running there until `agent_result` or its deadline)."""
        for agent in self.agents.values():
            if agent.phase is AgentPhase.QUEUED and agent.leaf == leaf:
                agent.phase = AgentPhase.RUNNING
                pauses = step_ms(agent.spec.program) / 1000
                self.leaves[leaf].busy_until = now + pauses
                self._deadlines[agent.id] = now + pauses + AGENT_STEP_GRACE \
                    + self.leaves[leaf].period
                return agent
        return None

    def agent_result(self, result: AgentResult, now: float) -> Outcome:
        agent = self.agents.get(result.agent)
        if agent is None or agent.phase is not AgentPhase.RUNNING or agent.leaf != result.leaf:
            return Outcome.UNKNOWN
        if not self._fresh(result.leaf, result.counter):
            return Outcome.REPLAYED
        self._deadlines.pop(agent.id, None)
        if self.leaves.get(result.leaf) is not None:
            self.leaves[result.leaf].last_heard = now
        if not result.ok:
            agent.phase = AgentPhase.FAILED
            agent.error = f"leaf {result.leaf}: {result.error}"[:120]
            return Outcome.ACCEPTED
        agent.visited.append(result.leaf)
        if result.output:
            agent.output[result.leaf] = list(result.output)
        agent.at += 1
        self._settle(agent)
        return Outcome.ACCEPTED

    def devices(self) -> list[dict[str, str]]:
        """The devices of leaves that are up, as capability-profile entries
        (`nanomesh.discovery.devices` shape, ``source = "leaf"``)."""
        return [{"type": d.type, "source": "leaf", "driver": "leaf", "leaf": s.name,
                 "resource": d.resource}
                for s in sorted(self.leaves.values(), key=lambda s: s.name) if s.up
                for d in s.devices]

    def summary(self) -> dict[str, str]:
        """Leaf name -> ``"up"`` or ``"gone"``, for the profile."""
        return {name: "up" if s.up else "gone" for name, s in sorted(self.leaves.items())}


# ------------------------------------------------------------ requests


MAX_PENDING = 4
"""Welcome nonces a peer keeps per leaf (see `LeafEndpoint._pending`)."""
HELLO_RATE = 20.0
"""Hellos a peer answers per second, sustained. A hello names no leaf, so
the peer tries one HMAC per leaf key it holds to find the sender: without a
cap a stranger's flood of hellos costs the peer that many HMACs each. A leaf
says hello only before it registers (at boot, after failing over), so 20 a
second leaves room for a whole ward of leaves booting at once."""
HELLO_BURST = 40.0
"""Hellos answered at once after a quiet spell (the bucket's depth): a
power cut that reboots every leaf of a room at the same instant."""


@dataclass
class HelloBudget:
    """A token bucket for hellos (`HELLO_RATE`, `HELLO_BURST`). Beyond it a
    hello gets 5.03 before any HMAC is computed; its leaf treats the peer as
    unavailable and tries the next one, as it does for a peer that is down.
    One bucket for every sender: a CoAP datagram's source address is easy
    to forge, so a per-source budget would not hold against a flood."""

    rate: float = HELLO_RATE
    burst: float = HELLO_BURST
    tokens: float = HELLO_BURST
    last: float | None = None

    def allow(self, now: float) -> bool:
        """Whether a hello arriving at `now` may be answered (spends a token)."""
        if self.last is not None:
            self.tokens = min(self.burst, self.tokens + max(0.0, now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class LeafEndpoint:
    """Answers the gateway's ``/leaf/...`` requests (`handle`): leaves
    register and report; anyone reads the latest values (plain CoAP, as for
    public services; a reading is as public as the leaf's radio)."""

    def __init__(self, keys: Mapping[str, bytes], config: LeafConfig = DEFAULT_LEAVES,
                 nonce: Callable[[], bytes] | None = None) -> None:
        self.keys = dict(keys)
        self._nonce = nonce or (lambda: secrets.token_bytes(NONCE_SIZE))
        """Where welcome nonces come from (tests pass a predictable one)."""
        self._pending: dict[bytes, list[tuple[bytes, float]]] = {}
        """Leaf key -> the nonces issued in welcomes under it, with when: at
        most `MAX_PENDING` each (a stranger replaying a leaf's hellos cannot
        grow it). By key, not name: the hello names no leaf, and leaves that
        share a key (labs, tests) are one identity to it anyway."""
        self.registry = LeafRegistry(config)
        self.hellos = HelloBudget()
        self.refused: Counter[str] = Counter()
        """Leaf messages refused, by reason (``auth``, ``malformed``, ``replayed``,
        ``busy``: a hello beyond `HelloBudget`, ...)."""

    def handle(self, request: GatewayRequest, now: float, *, member: bool = False
               ) -> GatewayResponse:
        """The answer to `request` (its path starts with `LEAF_PREFIX`) from
        a `member` of the mesh (the gateway link) or anyone (plain CoAP)."""
        path = request.path
        if len(path) >= 2 and path[1] == AGENTS:
            return self._agents(request, now, member)
        if request.method == "POST":
            if path == (LEAF_PREFIX, "hello"):
                return self._hello(request, now)
            if path == (LEAF_PREFIX, "register"):
                return self._post(request, now, None)
            if len(path) == 3 and path[2] in ("report", "agent") and is_name(path[1]):
                return self._post(request, now, path[1])
            return error_response(METHOD_NOT_ALLOWED, "leaves POST to /leaf/hello, "
                                  "/leaf/register and /leaf/<leaf>/report; the rest is GET")
        if request.method != "GET":
            return error_response(METHOD_NOT_ALLOWED, "leaf resources are GET only")
        match path[1:]:
            case ():
                return _json({name: _describe(s, now)
                              for name, s in sorted(self.registry.leaves.items())})
            case (leaf,) if leaf in self.registry.leaves:
                return _json(_describe(self.registry.leaves[leaf], now, values=True))
            case (leaf, resource) if leaf in self.registry.leaves:
                return self._value(self.registry.leaves[leaf], resource)
        return error_response(NOT_FOUND, f"no leaf resource {request.path_text()}; "
                              "leaves are listed at /leaf")

    def _post(self, request: GatewayRequest, now: float, leaf: str | None) -> GatewayResponse:
        """The answer to a leaf's message, tagged (`seal_answer`) when the
        message was authentic: the leaf ignores untagged answers, so a
        message that fails its tag (a stranger's, or for a leaf without a
        key here) gets an untagged error and its leaf tries the next peer.
        Tagging those would hand an attacker a tagged refusal for a counter
        of its choice."""
        try:
            _tag, body = open_body(request.payload)
            name = body.get("leaf") if leaf is None else leaf
            key = self.keys.get(name) if isinstance(name, str) else None
            if key is None:
                raise RemoteProtocolError("auth", "no key for this leaf on this peer")
            check_tag(key, request.path, request.payload)
        except RemoteProtocolError as exc:
            self.refused[exc.reason] += 1
            code = UNAUTHORIZED if exc.reason == "auth" else BAD_REQUEST
            return error_response(code, str(exc))
        answer = self._authentic(request, body, now, leaf, key)
        counter = body.get("n")
        if not isinstance(counter, int) or isinstance(counter, bool):
            return answer  # no counter to bind an answer to: the leaf's bug, not news
        return GatewayResponse(answer.code, seal_answer(key, request.path, counter, answer.code,
                                                        answer.payload), answer.content_format)

    def _hello(self, request: GatewayRequest, now: float) -> GatewayResponse:
        """A welcome with a fresh nonce to a leaf whose key is here; 4.04 (not
        tagged: we have no key to tag it with) to any other."""
        try:
            hello = decode_hello(request.payload)
        except RemoteProtocolError as exc:
            self.refused[exc.reason] += 1
            return error_response(BAD_REQUEST, str(exc))
        if not self.hellos.allow(now):
            self.refused["busy"] += 1
            return error_response(SERVICE_UNAVAILABLE, "too many hellos; try another peer "
                                  "or again later")
        leaf = hello_leaf(self.keys, hello)
        if leaf is None:
            self.refused["unknown"] += 1
            return error_response(NOT_FOUND, "no leaf with this id here")
        key, nonce = self.keys[leaf], self._nonce()
        live = [(n, t) for n, t in self._pending.get(key, []) if now - t < HELLO_TTL]
        self._pending[key] = [*live[-(MAX_PENDING - 1):], (nonce, now)]
        return GatewayResponse(CONTENT, seal_welcome(key, hello.leaf_nonce, nonce), JSON)

    def _take_nonce(self, key: bytes, nonce: bytes, now: float) -> bool:
        """Whether `nonce` was issued under `key` in the last HELLO_TTL s;
        it is used up if it matches."""
        pending = self._pending.get(key, [])
        for i, (issued, when) in enumerate(pending):
            if hmac.compare_digest(issued, nonce):
                del pending[i]
                return now - when < HELLO_TTL
        return False

    def _authentic(self, request: GatewayRequest, body: dict[str, Any], now: float,
                   leaf: str | None, key: bytes) -> GatewayResponse:
        try:
            if leaf is None:
                register = decode_register(body)
                if not self._take_nonce(key, register.peer_nonce, now):
                    self.refused["stale"] += 1
                    return error_response(UNAUTHORIZED, "no fresh nonce of this peer: "
                                          "POST /leaf/hello first (a replay?)")
                outcome = self.registry.register(register, now)
            elif request.path[2] == "report":
                report = decode_report(leaf, body)
                outcome = self.registry.report(report, now)
            else:
                outcome = self.registry.agent_result(decode_agent_result(leaf, body), now)
        except RemoteProtocolError as exc:
            self.refused[exc.reason] += 1
            return error_response(BAD_REQUEST, str(exc))
        if outcome is not Outcome.ACCEPTED:
            self.refused[outcome.value] += 1
        match outcome:
            case Outcome.ACCEPTED if leaf is None:
                return GatewayResponse(CREATED)
            case Outcome.ACCEPTED if leaf is not None:
                # The answer carries the next agent for this leaf, if any.
                agent = self.registry.agent_for(leaf, now)
                if agent is None:
                    return GatewayResponse(CHANGED)
                return GatewayResponse(CHANGED, agent_body(agent.id, agent.spec.program))
            case Outcome.REPLAYED:
                return error_response(UNAUTHORIZED, "counter not above the last accepted "
                                      "(a replay?)")
            case Outcome.UNKNOWN:
                return error_response(NOT_FOUND, "not registered here: POST /leaf/register")
            case Outcome.UNDECLARED:
                return error_response(BAD_REQUEST, "a value of a resource not registered")
        raise AssertionError(outcome)  # pragma: no cover

    def _agents(self, request: GatewayRequest, now: float, member: bool) -> GatewayResponse:
        """``POST /leaf/agents`` starts an agent (members only: it drives
        actuators); ``GET /leaf/agents[/<id>]`` says where agents are."""
        path = request.path
        if request.method == "POST" and len(path) == 2:
            if not member:
                return error_response(UNAUTHORIZED, "agents are started by mesh members "
                                      "(through the gateway link, with the cluster key)")
            try:
                spec = decode_agent(json.loads(request.payload.decode("utf-8")))
            except RemoteProtocolError as exc:
                self.refused[exc.reason] += 1
                return error_response(BAD_REQUEST, str(exc))
            except (UnicodeDecodeError, ValueError, RecursionError):
                self.refused["malformed"] += 1
                return error_response(BAD_REQUEST, "an agent is a JSON object")
            agent = self.registry.submit(spec, now)
            if agent is None:
                return error_response(SERVICE_UNAVAILABLE, "too many agents travelling")
            return GatewayResponse(CREATED, json.dumps({"id": agent.id, **agent.describe()},
                                                       sort_keys=True).encode(), JSON)
        if request.method != "GET":
            return error_response(METHOD_NOT_ALLOWED, "POST /leaf/agents starts an agent; "
                                  "GET /leaf/agents/<id> follows it")
        if len(path) == 2:
            return _json({a.id: a.describe() for a in self.registry.agents.values()})
        agent = self.registry.agents.get(path[2]) if len(path) == 3 else None
        if agent is None:
            return error_response(NOT_FOUND, f"no agent {request.path_text()}")
        return _json(agent.describe())

    def _value(self, state: LeafState, resource: str) -> GatewayResponse:
        reading = state.readings.get(resource)
        if reading is None:
            declared = any(d.resource == resource for d in state.devices)
            return error_response(SERVICE_UNAVAILABLE if declared else NOT_FOUND,
                                  f"no reading of {resource} yet" if declared
                                  else f"{state.name} has no resource {resource}")
        # No age in here: the answer changes only with a new reading, so an
        # observer (polling, `nanomesh.gateway.observe`) is notified per report.
        return _json({"value": reading.value, "n": reading.counter,
                      "state": "up" if state.up else "gone"})


def _describe(state: LeafState, now: float, values: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"state": "up" if state.up else "gone", "period": state.period,
                           "silent_s": round(state.silent_for(now), 1),
                           "devices": {d.resource: d.type for d in state.devices}}
    if values:
        out["values"] = {r: {"value": v.value, "age_s": round(now - v.read_at, 1)}
                         for r, v in state.readings.items()}
    return out


def _json(data: object) -> GatewayResponse:
    return GatewayResponse(CONTENT, json.dumps(data, sort_keys=True).encode(), JSON)
