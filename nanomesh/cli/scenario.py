"""Experiment scenarios: a timeline of changes to a live lab, read from TOML.

A scenario says how to start (peers, preset), what to deploy, what load to
run (calls by name at a rate), and what happens when::

    name = "leader-kills"
    peers = 5                  # lab peers at t = 0 (127.0.0.2 ..)
    preset = "local"           # gossip timing preset
    duration = 60              # seconds of timeline after the start
    sample_every = 0.5         # seconds between two samples of the mesh's state
    seed = 1                   # for "random" peers

    [[deploy]]                 # before t = 0, waited for like `nanomesh deploy`
    path = "services/echo"     # relative to the scenario file, else to the cwd

    [load]
    service = "echo"
    path = "whoami"            # call path (GET)
    rate = 20                  # calls per second
    timeout = 1.0              # seconds per attempt (the client retries twice)
    start = 0                  # seconds: the first call (after a deploy step, say)

    [[at]]
    t = 10
    do = "kill"                # add | stop | kill | start | restart | remove |
    peer = "leader"            # partition | heal | loss | deploy | undeploy
    [[at]]
    t = 20
    do = "add"
    n = 2
    config = "../../peers/pir-pi.toml"   # optional: the new peers' devices, labels

A scenario with ``world = "FILE"`` (a simulated world, `nanomesh.devices.world`)
runs its lab with simulated devices reading that world, its clock starting
when the lab starts (``NANOMESH_DEVICES=sim``, ``NANOMESH_WORLD``,
``NANOMESH_WORLD_START``).

``peer`` is a lab peer's name, ``"leader"`` (the Raft leader when the step
runs), ``"random"`` (a running peer, from ``seed``) or ``"stopped"`` (the
first lab peer that is not running: ``start`` brings back one that a step
stopped or killed). Parsing is pure and
checks everything before a lab starts: a bad scenario is a `ScenarioError`
naming the step and the field; `nanomesh.cli.experiment` runs it.
"""

from __future__ import annotations

import itertools
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nanomesh.errors import NanomeshError

ACTIONS = ("add", "stop", "kill", "start", "restart", "remove", "partition", "heal", "loss",
           "deploy", "undeploy")
PEER_ACTIONS = ("stop", "kill", "start", "restart", "remove")
MAX_PEERS = 250
"""The lab's address range (127.0.0.2 onwards) holds this many peers."""


class ScenarioError(NanomeshError):
    pass


@dataclass(frozen=True)
class Step:
    t: float
    do: str
    peer: str | None = None
    n: int = 1
    sides: tuple[str, ...] = ()
    loss: str = ""
    path: str = ""
    """``deploy``: the service folder (resolved); ``undeploy``: the service name."""
    kill: bool = False
    """``restart``/``remove`` with a crash (SIGKILL) instead of a graceful stop."""
    config: str = ""
    """``add``: the new peers' config file (resolved), "" for none."""

    def describe(self) -> str:
        added = f"add {self.n}" + (f" ({Path(self.config).name})" if self.config else "")
        what = {"add": added, "partition": f"partition {' | '.join(self.sides)}",
                "loss": f"loss {self.loss}", "deploy": f"deploy {self.path}",
                "undeploy": f"undeploy {self.path}"}.get(self.do, self.do)
        if self.peer:
            what += f" {self.peer}" + (" (kill)" if self.kill else "")
        return what


@dataclass(frozen=True)
class Load:
    service: str
    path: str = "health"
    rate: float = 10.0
    timeout: float = 1.0
    start: float = 0.0
    """Seconds after t = 0 of the first call."""


@dataclass(frozen=True)
class Scenario:
    name: str
    peers: int
    duration: float
    preset: str = "local"
    sample_every: float = 0.5
    seed: int = 1
    deploy: tuple[str, ...] = ()
    load: Load | None = None
    steps: tuple[Step, ...] = field(default_factory=tuple)
    world: str = ""
    """A simulated world file (resolved) the lab's devices read, "" for none."""


def load_scenario(path: Path) -> Scenario:
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ScenarioError(f"cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from None
    return parse_scenario(raw, base=path.parent, default_name=path.stem)


def parse_scenario(raw: dict[str, Any], *, base: Path, default_name: str) -> Scenario:
    """The scenario in `raw` (a TOML document), every field checked."""
    _only(raw, {"name", "peers", "preset", "duration", "sample_every", "seed", "deploy", "load",
                "at", "world"}, "the scenario")
    peers = _int(raw, "peers", "the scenario", low=1, high=MAX_PEERS)
    duration = _number(raw, "duration", "the scenario", low=1.0)
    deploys = raw.get("deploy", [])
    if not isinstance(deploys, list):
        raise ScenarioError("deploy: use [[deploy]] tables (path = ...)")
    steps = tuple(sorted((_step(s, i, base, duration) for i, s in
                          enumerate(_tables(raw.get("at", []), "at"))), key=lambda s: s.t))
    return Scenario(
        name=_text(raw, "name", "the scenario", default=default_name),
        peers=peers, duration=duration,
        preset=_text(raw, "preset", "the scenario", default="local"),
        sample_every=_number(raw, "sample_every", "the scenario", low=0.05, default=0.5),
        seed=_int(raw, "seed", "the scenario", low=0, default=1),
        deploy=tuple(_service_path(d, f"deploy #{i + 1}", base)
                     for i, d in enumerate(_tables(deploys, "deploy"))),
        load=_load(raw["load"]) if "load" in raw else None,
        steps=steps,
        world=_existing_file(raw, "world", "the scenario", base) if "world" in raw else "")


def _load(raw: Any) -> Load:
    if not isinstance(raw, dict):
        raise ScenarioError("load: must be a table ([load])")
    _only(raw, {"service", "path", "rate", "timeout", "start"}, "load")
    return Load(service=_text(raw, "service", "load"),
                path=_text(raw, "path", "load", default="health"),
                rate=_number(raw, "rate", "load", low=0.1, high=1000.0, default=10.0),
                timeout=_number(raw, "timeout", "load", low=0.05, default=1.0),
                start=_number(raw, "start", "load", low=0.0, default=0.0))


def _step(raw: dict[str, Any], index: int, base: Path, duration: float) -> Step:
    where = f"step #{index + 1} ([[at]])"
    do = _text(raw, "do", where)
    if do not in ACTIONS:
        raise ScenarioError(f"{where}: do = {do!r}: one of {', '.join(ACTIONS)}")
    where = f"step #{index + 1} ({do})"
    allowed = {"t", "do"} | {
        "add": {"n", "config"}, "partition": {"sides"}, "loss": {"percent"}, "deploy": {"path"},
        "undeploy": {"service"}, "restart": {"peer", "kill"}, "remove": {"peer", "kill"},
    }.get(do, {"peer"} if do in PEER_ACTIONS else set())
    _only(raw, allowed, where)
    t = _number(raw, "t", where, low=0.0)
    if t > duration:
        raise ScenarioError(f"{where}: t = {t:g} is after the end (duration {duration:g})")
    step = Step(t=t, do=do)
    if do in PEER_ACTIONS:
        return Step(t=t, do=do, peer=_text(raw, "peer", where),
                    kill=bool(raw.get("kill", False)))
    if do == "add":
        return Step(t=t, do=do, n=_int(raw, "n", where, low=1, high=MAX_PEERS, default=1),
                    config=_existing_file(raw, "config", where, base) if "config" in raw else "")
    if do == "partition":
        sides = raw.get("sides")
        if not isinstance(sides, list) or not sides or not all(isinstance(s, str)
                                                               for s in sides):
            raise ScenarioError(f'{where}: sides = ["peer-1,peer-2", ...] (at least one side)')
        return Step(t=t, do=do, sides=tuple(sides))
    if do == "loss":
        return Step(t=t, do=do, loss=_text(raw, "percent", where))
    if do == "deploy":
        return Step(t=t, do=do, path=_service_path(raw, where, base))
    if do == "undeploy":
        return Step(t=t, do=do, path=_text(raw, "service", where))
    return step  # heal


def _existing_file(raw: dict[str, Any], key: str, where: str, base: Path) -> str:
    """`key`'s path, relative to the scenario file, as an absolute path;
    refused now if no such file exists (not minutes into the run)."""
    text = _text(raw, key, where)
    path = (base / text) if not Path(text).is_absolute() else Path(text)
    if not path.is_file():
        raise ScenarioError(f"{where}: {key} = {text!r}: no such file ({path})")
    return str(path.resolve())


def _service_path(raw: Any, where: str, base: Path) -> str:
    if not isinstance(raw, dict):
        raise ScenarioError(f"{where}: must be a table with path = ...")
    text = _text(raw, "path", where)
    candidate = (base / text) if not Path(text).is_absolute() else Path(text)
    return str(candidate if candidate.exists() else Path(text))


# ------------------------------------------------------------------ field checks


def _tables(value: Any, name: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ScenarioError(f"{name}: use [[{name}]] tables")
    return value


def _only(raw: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ScenarioError(f"{where}: unknown field(s) {', '.join(unknown)} (allowed: "
                            f"{', '.join(sorted(allowed))})")


_MISSING: Any = object()


def _text(raw: dict[str, Any], key: str, where: str, default: str = _MISSING) -> str:
    value = raw.get(key, default)
    if value is _MISSING:
        raise ScenarioError(f"{where}: {key} is missing")
    if not isinstance(value, str) or not value:
        raise ScenarioError(f"{where}: {key} must be a non-empty string")
    return value


def _number(raw: dict[str, Any], key: str, where: str, *, low: float, high: float = 1e9,
            default: float = _MISSING) -> float:
    value = raw.get(key, default)
    if value is _MISSING:
        raise ScenarioError(f"{where}: {key} is missing")
    if isinstance(value, bool) or not isinstance(value, int | float) or not \
            low <= value <= high:
        raise ScenarioError(f"{where}: {key} must be a number from {low:g} to {high:g}")
    return float(value)


def _int(raw: dict[str, Any], key: str, where: str, *, low: int, high: int = 10**9,
         default: int = _MISSING) -> int:
    value = raw.get(key, default)
    if value is _MISSING:
        raise ScenarioError(f"{where}: {key} is missing")
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ScenarioError(f"{where}: {key} must be a whole number from {low} to {high}")
    return value


# ------------------------------------------------------------------ results (pure)


@dataclass(frozen=True)
class Call:
    """One call of the load: when it started (s after t = 0), how long it took."""

    t: float
    latency: float
    ok: bool
    error: str = ""
    """``ExceptionName: message`` of a failed call."""
    via: str = ""
    """The peer API the call was made through."""


@dataclass(frozen=True)
class Sample:
    """The mesh as one running peer reported it at `t`."""

    t: float
    asked: str
    leader: str | None
    term: int
    alive: int
    placement: tuple[tuple[str, str], ...]
    """(instance, peer) pairs of the committed plan, sorted."""
    alive_peers: frozenset[str] = frozenset()
    """Names of the members the asked peer saw alive."""


@dataclass(frozen=True)
class Moves:
    """Instances that changed peer between two samples, and how many of
    those moves were necessary: an instance must move when the peer it was on
    is no longer alive; moving one off a live peer (rebalancing onto a new
    peer, a reshuffle) is a move the plan could have avoided. Instances that
    appear (scale-up, a deploy) or vanish (undeploy) are not moves."""

    t: float
    moved: int
    necessary: int

    @property
    def avoidable(self) -> int:
        return self.moved - self.necessary


def longest_outage(calls: list[Call]) -> float:
    """The longest stretch in which every call failed: from the start of the
    first failed call after a success (or the first call) to the start of
    the next successful one (or the end of the last call)."""
    longest, since = 0.0, None
    ordered = sorted(calls, key=lambda c: c.t)
    for c in ordered:
        if not c.ok and since is None:
            since = c.t
        elif c.ok and since is not None:
            longest, since = max(longest, c.t - since), None
    if since is not None and ordered:
        last = ordered[-1]
        longest = max(longest, last.t + last.latency - since)
    return longest


def placement_settled(samples: list[Sample], after: float) -> float | None:
    """Seconds from `after` until the sampled placement last changed (0 if it
    did not change after it); None without samples after it."""
    later = [s for s in samples if s.t >= after]
    if not later:
        return None
    before = [s for s in samples if s.t < after]
    previous = before[-1].placement if before else later[0].placement
    settled = after
    for s in later:
        if s.placement != previous:
            settled, previous = s.t, s.placement
    return settled - after


def moves(samples: list[Sample]) -> list[Moves]:
    """One `Moves` per sampled placement change. Sampling sees the plan every
    `sample_every` s, so an instance moved away and back between two samples
    is not counted: the counts are a lower bound on what the leader did. A
    move off a peer that left and came back between two samples counts as
    avoidable (the sample saw it alive on both sides)."""
    out = []
    for before, after in itertools.pairwise(samples):
        if before.placement == after.placement:
            continue
        old, new = dict(before.placement), dict(after.placement)
        moved = [iid for iid, peer in new.items() if iid in old and old[iid] != peer]
        necessary = sum(1 for iid in moved if old[iid] not in after.alive_peers)
        out.append(Moves(t=after.t, moved=len(moved), necessary=necessary))
    return out


def summarise(scenario: Scenario, calls: list[Call], samples: list[Sample]
              ) -> dict[str, Any]:
    """The run's headline numbers (see `nanomesh.cli.experiment`)."""
    failed = [c for c in calls if not c.ok]
    errors: dict[str, int] = {}
    for c in failed:
        kind = c.error.partition(":")[0]
        errors[kind] = errors.get(kind, 0) + 1
    leaders = [s.leader for s in samples if s.leader]
    changes = sum(1 for a, b in itertools.pairwise(leaders) if a != b)
    last_change = max((s.t for s in scenario.steps), default=0.0)
    latencies = sorted(c.latency for c in calls if c.ok)
    changes_of_plan = moves(samples)
    return {
        "calls": len(calls), "failed": len(failed), "errors": errors,
        "availability": (1 - len(failed) / len(calls)) if calls else None,
        "latency_median_s": latencies[len(latencies) // 2] if latencies else None,
        "latency_p99_s": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
        if latencies else None,
        "longest_outage_s": longest_outage(calls),
        "leader_changes": changes,
        "placement_settled_after_last_step_s": placement_settled(samples, last_change),
        "moves": sum(m.moved for m in changes_of_plan),
        "moves_necessary": sum(m.necessary for m in changes_of_plan),
        "moves_avoidable": sum(m.avoidable for m in changes_of_plan),
        "steps": [{"t": s.t, "do": s.describe()} for s in scenario.steps],
    }
