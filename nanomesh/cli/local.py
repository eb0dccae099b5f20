"""``nanomesh lab`` and ``nanomesh demo``: meshes of real peer processes on
this machine, for trying nanomesh out (`nanomesh.cli.lab`) and for watching
it survive the loss of its leader (`nanomesh.cli.demo`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from nanomesh.cli import demo, demo_meeting, demo_patient, experiment, lab, labfaults, scenario
from nanomesh.cli.common import print_table
from nanomesh.config import default_lab_dir
from nanomesh.errors import ConfigError
from nanomesh.gossip.config import PRESETS


def register_lab(subparsers: Any) -> None:
    """Add ``lab up|status|down|add|stop|start|restart|remove`` to the
    top-level ``subparsers``."""
    actions = subparsers.add_parser(
        "lab", help="a local mesh of peer processes on loopback addresses"
    ).add_subparsers(metavar="ACTION")
    lab_up = actions.add_parser("up", help="start N peers on 127.0.0.2.. joined into one mesh")
    lab_up.add_argument("-n", type=int, default=3, help="number of peers (default 3)")
    lab_up.add_argument("--dir", type=Path, help="lab directory (default $NANOMESH_LAB_DIR, "
                        "else ~/.local/state/nanomesh/lab)")
    lab_up.add_argument("--preset", default="local", choices=list(PRESETS),
                        help="gossip timing preset (default local)")
    lab_up.set_defaults(func=_lab_up)
    status = actions.add_parser("status", help="show the lab's peers")
    status.add_argument("--json", action="store_true", help="print JSON (one object a peer)")
    down = actions.add_parser("down", help="stop every lab peer (graceful leave)")
    add = actions.add_parser("add", help="start more peers, joined into the running lab")
    add.add_argument("-n", type=int, default=1, help="how many (default 1)")
    add.add_argument("--config", type=Path, metavar="FILE",
                     help="a peer config for the new peers (e.g. peers/pir-pi.toml: its "
                     "[[devices]] and labels; the lab sets names and addresses); kept for "
                     "`lab start`")
    one_peer = []
    for action, text in (
            ("stop", "stop one peer: a graceful leave, or a crash with --kill"),
            ("start", "start a stopped peer again on its own data and address"),
            ("restart", "stop one peer (graceful, or --kill) and start it again"),
            ("remove", "stop one peer and drop it from the lab (its data stays)")):
        cmd = actions.add_parser(action, help=text, description=text[0].upper() + text[1:] +
                                 ". Returns once the running peers see the change where "
                                 "it is a start.")
        cmd.add_argument("name", metavar="NAME", help="the peer (peer-1, peer-2, ...)")
        if action != "start":
            cmd.add_argument("--kill", action="store_true",
                             help="SIGKILL (a crash the others must detect) instead of a "
                             "graceful leave")
        one_peer.append(cmd)
    partition = actions.add_parser(
        "partition", help="cut the lab into sides that cannot reach each other (root)",
        description="Cut the lab's network: peers on different sides drop each other's "
        "packets (nftables on loopback; the CLI still reaches every peer). Sides are "
        "comma-separated names, separated by spaces or '|'; peers not named form one more "
        "side, so `lab partition peer-3` isolates peer-3. Replaces an earlier partition; "
        "`lab heal` removes it. Needs root.")
    partition.add_argument("sides", nargs="+", metavar="SIDE",
                           help="peer names, e.g. peer-1,peer-2 peer-3,peer-4")
    heal = actions.add_parser("heal", help="remove the lab's partition (loss stays)")
    loss = actions.add_parser(
        "loss", help="drop a share of the packets between lab peers (root)",
        description="Drop each packet between two lab peers with this probability "
        "(nftables on loopback), e.g. `lab loss 10%`; `lab loss 0` removes it. Needs root.")
    loss.add_argument("percent", metavar="PERCENT", help="e.g. 10% (or 0.1); 0 to remove")
    for cmd in (partition, heal, loss):
        cmd.set_defaults(func={partition: _lab_partition, heal: _lab_heal,
                               loss: _lab_loss}[cmd])
    for cmd in (status, down, add, partition, heal, loss, *one_peer):
        cmd.add_argument("--dir", type=Path, help="lab directory")
    status.set_defaults(func=_lab_status)
    down.set_defaults(func=_lab_down)
    add.set_defaults(func=_lab_add)
    for cmd, func in zip(one_peer, (_lab_stop, _lab_start, _lab_restart, _lab_remove),
                         strict=True):
        cmd.set_defaults(func=func)


def register_experiment(subparsers: Any) -> None:
    """Add ``experiment run FILE`` to the top-level ``subparsers``."""
    actions = subparsers.add_parser(
        "experiment", help="run a scenario on a fresh lab and record what happens"
    ).add_subparsers(metavar="ACTION")
    run = actions.add_parser(
        "run", help="run a scenario file (TOML)",
        description="Start a lab, deploy the scenario's services, then run its timeline "
        "(add, stop, kill, restart, remove peers; partition, heal, loss; deploy, undeploy) "
        "while calling a service by name at a fixed rate and sampling the mesh; write "
        "steps.csv, calls.csv, timeline.csv, summary.json and plots to OUT. The scenario "
        "format is in nanomesh/cli/scenario.py; examples in experiments/scenarios/. Uses "
        "the lab's addresses (127.0.0.2 ..): no other lab may run.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("file", type=Path, metavar="FILE")
    run.add_argument("--out", type=Path, help="result directory (default "
                     "./experiment-results/NAME-TIMESTAMP; the lab's logs go to OUT/lab)")
    run.set_defaults(func=_experiment_run)


def _experiment_run(args: argparse.Namespace) -> int:
    plan = scenario.load_scenario(args.file)
    out = args.out or experiment.default_out(plan)
    summary = experiment.run(plan, out)
    print(f"\n{plan.name}: {summary['calls']} calls, {summary['failed']} failed"
          + (f" (availability {summary['availability']:.2%}, longest outage "
             f"{summary['longest_outage_s']:.2f} s)" if summary["calls"] else "")
          + f"; {summary['leader_changes']} leader change(s); placement settled "
          + (f"{summary['placement_settled_after_last_step_s']:.1f} s after the last step"
             if summary["placement_settled_after_last_step_s"] is not None else "(not seen)")
          + f"; {summary['moves']} instance move(s), {summary['moves_necessary']} necessary"
          + f" (peer gone), {summary['moves_avoidable']} avoidable. Results in {out}")
    return 0


def register_demo(subparsers: Any) -> None:
    """Add ``demo failover`` to the top-level ``subparsers``."""
    demos = subparsers.add_parser("demo", help="guided demonstrations on a local mesh"
                                  ).add_subparsers(metavar="DEMO")
    failover = demos.add_parser(
        "failover", help="kill the Raft leader of a local mesh and watch it recover",
        description="Start a local mesh (like `nanomesh lab up`, on the same addresses "
        "127.0.0.2.. but in its own directory), deploy three small services, SIGKILL the "
        "peer that leads Raft and narrate, with the seconds since the kill: failure "
        "detected, new leader, the dead peer's instances rescheduled, mesh healthy again. "
        "Then check that writes work, and stop every peer (also on Ctrl-C). Refuses to run "
        "while a lab or another demo uses those addresses.")
    failover.add_argument("-n", type=int, default=5, metavar="N",
                          help="number of peers (default 5, minimum 3: the leader is a Raft "
                          "voter, and electing its successor needs a majority of the voters "
                          "to survive it: 2 of 3 do, while with 2 peers the survivor alone "
                          "is no majority of 2)")
    failover.add_argument("--dir", type=Path,
                          help="demo directory (default ~/.local/state/nanomesh/demo, never "
                          "the lab's); replaced at each run and removed at the end")
    failover.add_argument("--keep", action="store_true",
                          help="keep the demo directory (manifests, peer and instance logs) "
                          "afterwards; the peers are stopped regardless")
    failover.set_defaults(func=_demo_failover)
    patient = demos.add_parser(
        "patient", help="remote patient monitoring: the patient moves home -> ambulance -> "
        "ward and the services follow the devices",
        description="Start a mesh with simulated hardware: a hospital server (the display "
        "service dd) and the peer the patient's devices reach (home, then the ambulance, then "
        "the ward, added and removed live). Deploy services/patient (pom, bot, oc, dd), move "
        "the patient and narrate, with timestamps, each hop (the services following the "
        "devices), the alerts when SpO2 and temperature stay beyond their thresholds, and the "
        "oxygen valve. Needs a source checkout (services/patient).")
    _story_demo_options(patient, "demo-patient")
    patient.set_defaults(func=_demo_patient)
    meeting = demos.add_parser(
        "meeting-room", help="the smart meeting room: guests detected, scanned, "
        "authenticated, guided and presented; the MCS's peer killed mid-meeting",
        description="Start a mesh of 4 peers with simulated hardware (the corridor's "
        "entrance: PIR, BLE radio, LEDs; the room's door: PIR, radio, screen; two "
        "controllers). Deploy services/meeting-room (mcs, pd, bs, ae, ug, mrs), fill the AE, "
        "and narrate with timestamps the MCS's state machine for: no tag, an unknown tag, a "
        "guest guided to the room while the peer hosting the MCS is SIGKILLed (the MCS "
        "resumes elsewhere from its state blob), and PD2 without BS2. Needs a source "
        "checkout (services/meeting-room).")
    _story_demo_options(meeting, "demo-meeting-room")
    meeting.set_defaults(func=_demo_meeting)


# ------------------------------------------------------------------ lab


def _lab_dir(args: argparse.Namespace) -> Path:
    return Path(args.dir) if args.dir else default_lab_dir()


def _lab_up(args: argparse.Namespace) -> int:
    lab_dir = _lab_dir(args)
    peers = lab.up(args.n, lab_dir, preset=args.preset)
    print(f"mesh of {len(peers)} peers is up:")
    for p in peers:
        print(f"  {p.name}  gossip {p.ip}:{p.gossip_port}  api http://{p.api}  pid {p.pid}  "
              f"log {p.log}")
    print("\ntry:\n  nanomesh members\n  nanomesh profile --peer " + peers[-1].api +
          f"\n  curl http://{peers[0].api}/v1/health\n"
          "  nanomesh deploy services/echo      (the token is wired for the lab)\n"
          f"  nanomesh call echo whoami --peer {peers[-1].api}\n"
          "  nanomesh placement\n  nanomesh lab status\n  nanomesh lab down")
    return 0


def _lab_status(args: argparse.Namespace) -> int:
    rows = lab.status(_lab_dir(args))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0 if rows else 1
    if not rows:
        print(f"no lab in {_lab_dir(args)}")
        return 1
    table: list[tuple[str, ...]] = [("NAME", "PID", "PROCESS", "API", "MEMBERS")]
    for r in rows:
        seen = ", ".join(f"{n} {s}" for s, n in r["members"].items()) if r["members"] else (
            r.get("error", "-"))
        table.append((r["name"], str(r["pid"]), r["process"], r["api"], seen))
    print_table(table)
    faults = labfaults.load(_lab_dir(args))
    if faults.groups or faults.loss:
        print("\nfaults: " + "; ".join(
            ([f"partition {' | '.join(','.join(g) for g in faults.groups)}"]
             if faults.groups else []) + ([f"loss {faults.loss:.1%}"] if faults.loss else [])))
    return 0


def _lab_down(args: argparse.Namespace) -> int:
    stopped = lab.down(_lab_dir(args))
    print(f"stopped {stopped} peers")
    return 0


def _lab_ips(lab_dir: Path) -> dict[str, str]:
    return {p.name: p.ip for p in lab.load_state(lab_dir)}


def _lab_partition(args: argparse.Namespace) -> int:
    lab_dir = _lab_dir(args)
    ips = _lab_ips(lab_dir)
    faults = labfaults.load(lab_dir)
    faults.groups = labfaults.parse_groups(args.sides, list(ips))
    labfaults.apply(lab_dir, faults, ips)
    print("partitioned: " + " | ".join(",".join(g) for g in faults.groups))
    return 0


def _lab_heal(args: argparse.Namespace) -> int:
    lab_dir = _lab_dir(args)
    faults = labfaults.load(lab_dir)
    faults.groups = []
    labfaults.apply(lab_dir, faults, _lab_ips(lab_dir))
    print("healed: every peer reaches every peer" + (
        f" (loss {faults.loss:.0%} stays: `lab loss 0`)" if faults.loss else ""))
    return 0


def _lab_loss(args: argparse.Namespace) -> int:
    lab_dir = _lab_dir(args)
    faults = labfaults.load(lab_dir)
    faults.loss = labfaults.parse_loss(args.percent)
    labfaults.apply(lab_dir, faults, _lab_ips(lab_dir))
    print(f"loss between lab peers: {faults.loss:.1%}" if faults.loss else "no loss")
    return 0


def _lab_add(args: argparse.Namespace) -> int:
    for p in lab.add(args.n, _lab_dir(args), config=args.config):
        print(f"added {p.name}  gossip {p.ip}:{p.gossip_port}  api http://{p.api}  "
              f"pid {p.pid}  log {p.log}")
    return 0


def _lab_stop(args: argparse.Namespace) -> int:
    p = lab.stop(args.name, _lab_dir(args), kill=args.kill)
    print(f"{'killed' if args.kill else 'stopped'} {p.name} (pid {p.pid}); "
          f"`nanomesh lab start {p.name}` brings it back")
    return 0


def _lab_start(args: argparse.Namespace) -> int:
    p = lab.start(args.name, _lab_dir(args))
    print(f"started {p.name} (pid {p.pid}); every running peer sees it alive")
    return 0


def _lab_restart(args: argparse.Namespace) -> int:
    lab.stop(args.name, _lab_dir(args), kill=args.kill)
    p = lab.start(args.name, _lab_dir(args))
    print(f"restarted {p.name} (pid {p.pid}); every running peer sees it alive")
    return 0


def _lab_remove(args: argparse.Namespace) -> int:
    p = lab.remove(args.name, _lab_dir(args), kill=args.kill)
    print(f"removed {p.name} from the lab; its data stays in {Path(p.log).parent / p.name}")
    return 0


# ------------------------------------------------------------------ demo


def _demo_failover(args: argparse.Namespace) -> int:
    return demo.failover(args.n, args.dir, keep=args.keep)



def _story_demo_options(cmd: argparse.ArgumentParser, folder: str) -> None:
    """The options the demos on simulated hardware share."""
    cmd.add_argument("--base-ip", default="127.0.0.2", metavar="IP",
                     help="address of the first peer; the others follow (default "
                     "127.0.0.2, the lab's: the demo refuses to run beside a lab)")
    cmd.add_argument("--dir", type=Path,
                     help=f"demo directory (default ~/.local/state/nanomesh/{folder}); "
                     "replaced at each run, removed at the end unless a step failed")
    cmd.add_argument("--keep", action="store_true",
                     help="keep the demo directory (world file, peer and service logs)")


def _demo_patient(args: argparse.Namespace) -> int:
    _need_device_libraries("patient")
    return demo_patient.patient(args.dir, args.base_ip, keep=args.keep)


def _demo_meeting(args: argparse.Namespace) -> int:
    _need_device_libraries("meeting-room")
    return demo_meeting.meeting_room(args.dir, args.base_ip, keep=args.keep)


DEVICE_LIBRARIES = ("gpiozero", "bleak")
"""What the demos' services drive their (simulated) hardware with: the
``devices`` extra. Without them every device-bound service would crash-loop
a minute into the demo; say so before any peer starts."""


def _need_device_libraries(demo: str) -> None:
    import importlib.util

    missing = [m for m in DEVICE_LIBRARIES if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"`nanomesh demo {demo}` needs {', '.join(missing)} (the devices "
                          "extra): pip install -e '.[devices]'")
