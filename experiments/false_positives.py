"""Does packet loss alone make the mesh declare live peers dead?

Builds a `nanomesh.testing.netns.NetnsLab` of N network namespaces on one
bridge (needs root, iproute2 and nftables), starts one real peer daemon per
namespace (gossip preset ``lan``, cluster key from ``python -m nanomesh
keygen``), waits until every peer sees every peer alive, then drops 10 % of
the IP packets arriving at every host (``set_loss_all(0.10)``: nftables
``numgen random`` on each host's eth0, so UDP and TCP both lose packets) for D
seconds, and removes the loss again. With ``--udp-only`` only UDP datagrams
are lost (TCP gets through, as it does on a lossy link that TCP retransmits
over, or through a firewall that filters UDP): the case the failure
detector's TCP ping fallback (``gossip.tcp_ping``) is for. ``--no-tcp-ping``
turns that fallback off in every peer (a ``[gossip] tcp_ping = false`` config
file), for comparison.

Every peer stays alive the whole time, so any ``member X failed`` log line is
a false positive (target: none). The script counts, from the peers' own logs
(stamps in local wall time, ms) and inside the lossy window: failures,
suspicions (``member X suspected``), suspicions refuted
(``member X refuted its suspicion``) and self-refutations (``we were suspected
or declared dead ...; refuted``). Lines in the 10 s after the loss ends are
counted separately (a suspicion raised under loss may still expire then), and
the /v1/health counters (probes, probe failures, suspicions, refutations,
deaths declared) are diffed over the same period.

CSV: one row per peer. Summary JSON: the totals and whether the mesh was
whole again after the loss.

    .venv/bin/python experiments/false_positives.py           # full: N=20, 300 s
    .venv/bin/python experiments/false_positives.py --quick   # 30 s
    .venv/bin/python experiments/false_positives.py --duration 90 --udp-only \
        --no-tcp-ping --name false_positives_udp_no_tcp_ping
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import _meshlib as ml

from nanomesh.testing import netns_cluster
from nanomesh.testing.netns import NetnsLab, Protocol, netns_available

QUERY = r"""
import json, sys, urllib.request
out = {}
for api in sys.argv[2:]:
    try:
        with urllib.request.urlopen(f"http://{api}{sys.argv[1]}", timeout=2.0) as r:
            out[api] = json.loads(r.read())
    except Exception as exc:
        out[api] = {"__error__": str(exc)}
print(json.dumps(out))
"""
GRACE_S = 10.0


def parse_args() -> argparse.Namespace:
    p = ml.experiment_parser(__doc__, 20, "peers, one per namespace")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds of packet loss (default 300; 30 with --quick)")
    p.add_argument("--quick", action="store_true", help="short run: 30 s of loss")
    p.add_argument("--loss", type=float, default=0.10,
                   help="fraction of inbound packets dropped at every host (default 0.10)")
    p.add_argument("--udp-only", action="store_true",
                   help="drop only UDP datagrams (default: every IP packet, TCP too)")
    p.add_argument("--no-tcp-ping", action="store_true",
                   help="turn off the TCP ping fallback of the failure detector in every peer")
    ml.add_run_options(p, name="false_positives")
    p.add_argument("--keep-logs", type=Path, default=None,
                   help="copy the peers' logs to this directory at the end")
    args = p.parse_args()
    if args.duration is None:
        args.duration = 30.0 if args.quick else 300.0
    return args


class LabMesh(netns_cluster.NetnsCluster):
    """The shared network-namespace cluster (`nanomesh.testing.cluster`), one
    peer per host named host-00.., whose views are read in one batch from
    inside host 0 (`query`: one short-lived process, rather than an API agent
    idling in every host while the loss is measured)."""

    def __init__(self, lab: NetnsLab, root: Path, key: Path, preset: str,
                 config: Path | None = None) -> None:
        super().__init__(root, lab, key_file=key, cwd=ml.REPO_ROOT)
        self.preset = preset
        self.extra = ["--config", str(config)] if config is not None else []
        self.names = [f"host-{i:02d}" for i in range(lab.n)]
        self.apis = [f"{lab.address(i)}:{ml.API_PORT}" for i in range(lab.n)]

    @property
    def logs(self) -> list[Path]:
        return [p.log_path for p in self.peers]

    def start_all(self, timeout: float) -> float:
        """The seed (host 0) and its API first, then all others at once; the
        seconds until every peer sees every peer alive."""
        t0 = time.monotonic()
        seed = self.add_host(0, name=self.names[0], preset=self.preset, log_level="INFO",
                             extra_args=self.extra, start=False)
        seed.start()
        self.wait(lambda: "__error__" not in self.query("/v1/health")[seed.api], 20,
                  what="the seed's API", interval=0.2, describe=lambda: "")
        for i in range(1, self.lab.n):
            self.add_host(i, name=self.names[i], preset=self.preset, log_level="INFO",
                          extra_args=self.extra, join=[seed.gossip])
        self.wait_whole(timeout - (time.monotonic() - t0))
        return time.monotonic() - t0

    def query(self, path: str) -> dict[str, Any]:
        """GET `path` on every peer's API, from inside host 0 (the root
        namespace has no route into the lab)."""
        out = self.lab.run(0, [ml.PY, "-c", QUERY, path, *self.apis], timeout=60)
        result: dict[str, Any] = json.loads(out.stdout)
        return result

    def converged(self) -> bool:
        want = set(self.names)
        views = self.query("/v1/members")
        for v in views.values():
            if not isinstance(v, list):
                return False
            if {m["name"] for m in v if m["state"] == "alive"} != want or len(v) != len(want):
                return False
        return True

    def wait_whole(self, timeout: float) -> float:
        """Until every peer sees every peer alive (`WaitTimeout`, a
        TimeoutError, after `timeout` s); returns the seconds it took."""
        t0 = time.monotonic()
        self.wait(self.converged, timeout, what="every peer to see every peer alive",
                  interval=0.5, describe=lambda: "")
        return time.monotonic() - t0


def classify(lines: list[ml.LogLine], t0: float, t1: float, t2: float) -> dict[str, Counter[str]]:
    """Count event kinds in the windows [t0, t1) 'loss' and [t1, t2) 'grace'."""
    out: dict[str, Counter[str]] = {"loss": Counter(), "grace": Counter()}
    for ln in lines:
        # stamps are floored to the ms: allow 1 ms at the left edge
        window = "loss" if t0 - 0.001 <= ln.ts < t1 else "grace" if t1 <= ln.ts < t2 else None
        if window is None:
            continue
        c = out[window]
        if ml.FAILED_RE.match(ln.msg):
            c["failed"] += 1
        elif ml.SUSPECTED_RE.match(ln.msg):
            c["suspected"] += 1
        elif ml.RECOVERED_RE.match(ln.msg):
            c["suspicion_refuted"] += 1
        elif ml.REFUTED_RE.match(ln.msg):
            c["self_refuted"] += 1
        elif (m := ml.JOINED_RE.match(ln.msg)) is not None:
            c["rejoined" if m.group(2) == "rejoined" else "joined"] += 1
        elif "left" in ln.msg and ln.msg.startswith("member "):
            c["left"] += 1
        elif ln.msg.startswith("dropping "):
            c["drop_warnings"] += 1
    return out


COUNTERS = ("probes", "probe_failures", "indirect_probes", "suspicions", "refutations",
            "deaths_declared", "stream_failures", "profiles_pulled", "tcp_pings",
            "tcp_ping_acks")


def main() -> int:
    args = parse_args()
    ok, why = netns_available()
    if not ok:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    ml.install_sigterm_handler()
    csv_path, json_path = ml.results_paths(args.name)
    info = ml.machine_info()
    load = ml.wait_for_quiet(args.max_load, timeout=900)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="nm-fp-") as tmp:
        root = Path(tmp)
        key = ml.keygen(root / "cluster.key")
        config = None
        if args.no_tcp_ping:
            config = root / "no-tcp-ping.toml"
            config.write_text("[gossip]\ntcp_ping = false\n")
        protocol: Protocol | None = "udp" if args.udp_only else None
        lost = "inbound UDP datagrams" if args.udp_only else "inbound packets"
        lab = NetnsLab(args.peers)
        mesh: LabMesh | None = None
        try:
            mesh = LabMesh(lab, root, key, args.preset, config)
            conv = mesh.start_all(80)
            print(f"{args.peers} peers in {lab} converged in {conv:.1f}s; settling 5s",
                  flush=True)
            time.sleep(5)
            before = mesh.query("/v1/health")
            tails = [ml.LogTail(p) for p in mesh.logs]
            for t in tails:
                t.skip_to_end()  # the progress lines count the lossy window only
            t0 = time.time()
            lab.set_loss_all(args.loss, protocol)
            print(f"{args.loss:.0%} of {lost} lost on every host for {args.duration:.0f}s "
                  f"(TCP ping fallback {'off' if args.no_tcp_ping else 'on'})", flush=True)
            end = time.monotonic() + args.duration - (time.time() - t0)
            seen: Counter[str] = Counter()
            next_report = time.monotonic() + 30
            while time.monotonic() < end:
                time.sleep(min(1.0, max(0.0, end - time.monotonic())))
                mesh.check_processes()
                for t in tails:
                    for ln in t.read():
                        if ml.FAILED_RE.match(ln.msg):
                            seen["failed"] += 1
                        elif ml.SUSPECTED_RE.match(ln.msg):
                            seen["suspected"] += 1
                        elif ml.REFUTED_RE.match(ln.msg):
                            seen["self_refuted"] += 1
                if time.monotonic() >= next_report:
                    next_report += 30
                    print(f"  {time.time() - t0:5.0f}s: so far {seen['suspected']} suspicions, "
                          f"{seen['self_refuted']} refutations, {seen['failed']} failures",
                          flush=True)
            t1 = time.time()
            lab.set_loss_all(0.0)
            t1_done = time.time()
            try:
                heal_s: float | None = mesh.wait_whole(60)
            except TimeoutError:
                heal_s = None
            left = GRACE_S - (time.time() - t1)
            if left > 0:
                time.sleep(left)
            t2 = t1 + GRACE_S
            after = mesh.query("/v1/health")
            mesh.check_processes()
        finally:
            if mesh is not None:
                mesh.close()
            lab.close()
            if args.keep_logs is not None:
                import shutil
                args.keep_logs.mkdir(parents=True, exist_ok=True)
                for p in root.glob("*.log"):
                    shutil.copy(p, args.keep_logs / p.name)
        lines_by_peer = [ml.read_log(p) for p in mesh.logs]
    wall = time.monotonic() - started
    assert mesh is not None
    leftovers = [p.pid for p in mesh.peers if p.running]

    rows = []
    totals = {"loss": Counter(), "grace": Counter()}
    counter_delta: Counter[str] = Counter()
    bytes_out = 0
    for i, name in enumerate(mesh.names):
        c = classify(lines_by_peer[i], t0, t1, t2)
        for w in totals:
            totals[w].update(c[w])
        b, a = before[mesh.apis[i]], after[mesh.apis[i]]
        deltas = {k: a["counters"][k] - b["counters"][k] for k in COUNTERS} \
            if "counters" in a and "counters" in b else {}
        counter_delta.update(deltas)
        bo = a.get("bytes_out", 0) - b.get("bytes_out", 0)
        bytes_out += bo
        rows.append([name, c["loss"]["failed"], c["loss"]["suspected"],
                     c["loss"]["suspicion_refuted"], c["loss"]["self_refuted"],
                     c["grace"]["failed"], *(deltas.get(k, "") for k in COUNTERS),
                     a.get("awareness", ""), bo])
    header = ["peer", "failed", "suspected", "suspicion_refuted", "self_refuted",
              "failed_after_loss", *(f"counter_{k}" for k in COUNTERS),
              "awareness_at_end", "bytes_out"]
    ml.write_csv(csv_path, header, rows)
    loss_c, grace_c = totals["loss"], totals["grace"]
    summary = {
        "experiment": "false_positives",
        "peers": args.peers,
        "loss": args.loss,
        "loss_protocol": protocol or "all",
        "tcp_ping": not args.no_tcp_ping,
        "duration_s": args.duration,
        "lossy_window_s": round(t1 - t0, 1),
        "preset": args.preset,
        "quick": args.quick,
        "false_positives": loss_c["failed"],
        "false_positives_after_loss": grace_c["failed"],
        "suspicions": loss_c["suspected"],
        "suspicions_refuted": loss_c["suspicion_refuted"],
        "self_refutations": loss_c["self_refuted"],
        "rejoins": loss_c["rejoined"],
        "log_counts_during_loss": dict(loss_c),
        "log_counts_in_grace": dict(grace_c),
        "grace_s": GRACE_S,
        "health_counter_deltas": dict(counter_delta),
        "health_counter_window": "from 5 s after convergence (just before the loss) to "
                                 "the end of the grace period, so slightly wider than the "
                                 "log windows",
        "probe_failure_rate": round(counter_delta["probe_failures"]
                                    / max(1, counter_delta["probes"]), 4),
        "bytes_out_per_peer_per_s": round(bytes_out / args.peers / (t2 - t0), 1),
        "mesh_whole_after_loss_s": None if heal_s is None else round(heal_s, 2),
        "loss_removal_took_s": round(t1_done - t1, 3),
        "meets_target": loss_c["failed"] == 0 and grace_c["failed"] == 0,
        "processes_left_after_close": leftovers,
        "wall_s": round(wall, 1),
        "loadavg_when_started": round(load, 2),
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "machine": info,
        "csv": str(csv_path.relative_to(ml.REPO_ROOT)),
    }
    ml.write_json(json_path, summary)
    healed = f"after {heal_s:.1f}s" if heal_s is not None else "NOT within 60s"
    print()
    print(f"False positives, {args.peers} peers in network namespaces, preset {args.preset}, "
          f"TCP ping fallback {'off' if args.no_tcp_ping else 'on'}, "
          f"{args.loss:.0%} of {lost} lost on every host for {t1 - t0:.0f}s: "
          f"{summary['false_positives']} live peers declared dead during the loss and "
          f"{summary['false_positives_after_loss']} in the {GRACE_S:.0f}s after (target 0); "
          f"{summary['suspicions']} suspicions were logged, {summary['suspicions_refuted']} "
          f"suspicions seen refuted and {summary['self_refutations']} self-refutations; "
          f"health counters: {counter_delta['probes']} probes, "
          f"{counter_delta['probe_failures']} failed "
          f"({summary['probe_failure_rate']:.2%}), {counter_delta['suspicions']} suspicions, "
          f"{counter_delta['refutations']} refutations, "
          f"{counter_delta['tcp_pings']} TCP pings ({counter_delta['tcp_ping_acks']} "
          f"answered probes UDP did not), "
          f"{counter_delta['deaths_declared']} deaths declared. Mesh whole again "
          f"{healed}. "
          f"Run took {wall:.0f}s. Wrote {csv_path} and {json_path}.")
    if leftovers:
        print(f"WARNING: processes still running after lab.close(): {leftovers}")
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
    return 0


if __name__ == "__main__":
    sys.exit(main())
