"""Experiment scenarios (`nanomesh.cli.scenario`): parsing refuses what it
cannot run, naming the step and field; the results' arithmetic."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nanomesh.cli.scenario import (
    Call,
    Sample,
    ScenarioError,
    Step,
    load_scenario,
    longest_outage,
    moves,
    parse_scenario,
    placement_settled,
    summarise,
)

REPO = Path(__file__).resolve().parents[1]


def parse(raw: dict[str, Any]) -> Any:
    return parse_scenario({"peers": 3, "duration": 30, **raw}, base=REPO, default_name="x")


def test_a_full_scenario() -> None:
    s = parse({"name": "kills", "seed": 7, "deploy": [{"path": "services/echo"}],
               "load": {"service": "echo", "path": "whoami", "rate": 20},
               "at": [{"t": 20, "do": "add", "n": 2},
                      {"t": 10, "do": "restart", "peer": "leader", "kill": True},
                      {"t": 15, "do": "partition", "sides": ["peer-1"]},
                      {"t": 25, "do": "loss", "percent": "10%"}]})
    assert (s.name, s.peers, s.seed, s.preset) == ("kills", 3, 7, "local")
    assert s.deploy == (str(REPO / "services/echo"),)
    assert s.load is not None and (s.load.rate, s.load.timeout) == (20.0, 1.0)
    assert [st.t for st in s.steps] == [10, 15, 20, 25]          # sorted by time
    assert s.steps[0] == Step(t=10, do="restart", peer="leader", kill=True)
    assert s.steps[2].describe() == "add 2"


@pytest.mark.parametrize(("raw", "error"), [
    ({"peers": 0}, "peers must be a whole number from 1 to 250"),
    ({"duration": "long"}, "duration must be a number"),
    ({"speed": 3}, "unknown field.*speed"),
    ({"at": [{"t": 1, "do": "explode"}]}, r"step #1 \(\[\[at\]\]\): do = 'explode'"),
    ({"at": [{"t": 40, "do": "heal"}]}, "after the end"),
    ({"at": [{"t": 1, "do": "kill"}]}, r"step #1 \(kill\): peer is missing"),
    ({"at": [{"t": 1, "do": "add", "peer": "peer-1"}]}, "unknown field.*peer"),
    ({"at": [{"t": 1, "do": "partition", "sides": []}]}, "sides ="),
    ({"load": {"service": "echo", "rate": 0}}, "rate must be a number"),
    ({"at": {"t": 1}}, r"use \[\[at\]\] tables"),
])
def test_what_cannot_run_is_refused_by_name(raw: dict[str, Any], error: str) -> None:
    with pytest.raises(ScenarioError, match=error):
        parse(raw)


def test_a_file_that_is_not_toml_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("peers = [")
    with pytest.raises(ScenarioError, match="not valid TOML"):
        load_scenario(bad)


def test_the_shipped_scenarios_parse() -> None:
    files = sorted((REPO / "experiments" / "scenarios").glob("*.toml"))
    assert files
    for f in files:
        assert load_scenario(f).steps, f


def calls(pattern: str, period: float = 0.1) -> list[Call]:
    """'..xx.' -> calls every `period` s, '.' ok, 'x' failed."""
    return [Call(t=i * period, latency=0.01, ok=c == ".") for i, c in enumerate(pattern)]


@pytest.mark.parametrize(("pattern", "outage"), [
    ("....", 0.0), ("..xxx..", 0.3), ("x.xx.", 0.2), ("..xx", 0.11), ("", 0.0)])
def test_longest_outage(pattern: str, outage: float) -> None:
    assert longest_outage(calls(pattern)) == pytest.approx(outage)


def sample(t: float, placement: dict[str, str], leader: str = "a") -> Sample:
    return Sample(t=t, asked="p", leader=leader, term=1, alive=3,
                  placement=tuple(sorted(placement.items())))


def test_placement_settles_when_it_last_changed_after_the_step() -> None:
    samples = [sample(0, {"s/0": "a"}), sample(5, {"s/0": "a"}), sample(6, {"s/0": "b"}),
               sample(7, {"s/0": "c"}), sample(8, {"s/0": "c"})]
    assert placement_settled(samples, after=5.5) == pytest.approx(1.5)
    assert placement_settled(samples, after=7.5) == 0.0
    assert placement_settled(samples, after=9) is None


def test_summary() -> None:
    s = parse({"at": [{"t": 1, "do": "heal"}]})
    out = summarise(s, calls("..x."), [sample(0, {}, "a"), sample(1, {}, "b"),
                                       sample(2, {}, "b")])
    assert (out["calls"], out["failed"], out["availability"]) == (4, 1, 0.75)
    assert out["leader_changes"] == 1
    assert out["steps"] == [{"t": 1.0, "do": "heal"}]


def test_moves_count_what_had_to_move_and_what_could_have_stayed() -> None:
    def at(t: float, placement: dict[str, str], alive: str) -> Sample:
        return Sample(t=t, asked="p", leader="a", term=1, alive=len(alive),
                      placement=tuple(sorted(placement.items())),
                      alive_peers=frozenset(alive))

    samples = [
        at(0, {"s/0": "a", "s/1": "b"}, "abc"),
        at(1, {"s/0": "a", "s/1": "b"}, "abc"),            # nothing changed
        at(2, {"s/0": "c", "s/1": "b"}, "bc"),             # a died: s/0 had to move
        at(3, {"s/0": "c", "s/1": "d", "s/2": "b"}, "bcd"),  # d joined: s/1 moved anyway
        at(4, {"s/0": "c"}, "bcd"),                        # scaled down: not a move
    ]
    changes = moves(samples)
    assert [(m.t, m.moved, m.necessary, m.avoidable) for m in changes] == [
        (2, 1, 1, 0), (3, 1, 0, 1), (4, 0, 0, 0)]
    summary = summarise(parse({}), [], samples)
    assert (summary["moves"], summary["moves_necessary"], summary["moves_avoidable"]) == (2, 1, 1)


def test_an_add_with_a_config_and_a_world_are_checked_and_resolved(tmp_path: Path) -> None:
    (tmp_path / "dev.toml").write_text("[peer]\n")
    (tmp_path / "world.toml").write_text("")
    s = parse_scenario({"peers": 1, "duration": 10, "world": "world.toml",
                        "at": [{"t": 1, "do": "add", "config": "dev.toml"}]},
                       base=tmp_path, default_name="x")
    assert s.world == str(tmp_path / "world.toml")
    assert s.steps[0].config == str(tmp_path / "dev.toml")
    assert s.steps[0].describe() == "add 1 (dev.toml)"
    with pytest.raises(ScenarioError, match=r"step #1 \(add\): config = 'nope.toml': no such"):
        parse_scenario({"peers": 1, "duration": 10,
                        "at": [{"t": 1, "do": "add", "config": "nope.toml"}]},
                       base=tmp_path, default_name="x")
    with pytest.raises(ScenarioError, match="the scenario: world"):
        parse_scenario({"peers": 1, "duration": 10, "world": "gone.toml"}, base=tmp_path,
                       default_name="x")
