"""One consensus node as a subprocess, driven over stdin/stdout: for tests and
experiments that need real processes (SIGKILL, restarts from the journal).

Child: ``python -m nanomesh.consensus.harness --address IP:PORT --peers A,B
--data-dir DIR`` (``--address ''`` for a read-only replica). It prints
``{"event": "started"}`` once its port listens, then answers one JSON request
per stdin line, ``{"id": 1, "op": "put_service", "args": {...}}``, with
``{"id": 1, "ok": true, "result": ...}`` or ``{"id": 1, "ok": false,
"error": "NoLeaderError", "message": "..."}``; requests run concurrently.
It stops cleanly when stdin closes. Logs go to stderr.

Parent: `NodeProcess` (one child) and `RaftCluster` (several, on loopback
addresses handed out by the caller), trio-based; everything they start is
killed when they close, pass or fail.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import math
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO, TypeVar

import trio

from nanomesh.consensus.config import DEFAULT_RAFT_PORT, ConsensusConfig, RaftTiming
from nanomesh.consensus.node import ConsensusNode
from nanomesh.wire import Keyring, generate_key

T = TypeVar("T")

START_TIMEOUT = 10.0
"""Seconds a child may take to import, bind and report started."""

# --------------------------------------------------------------------------- child


def _status_json(node: ConsensusNode) -> dict[str, Any]:
    s = node.status
    out = asdict(s)
    out["role"] = s.role.value
    out["voters"] = sorted(s.voters)
    out["connected"] = None if s.connected is None else sorted(s.connected)
    out["revision"] = node.state.revision
    out["leadership_history"] = list(node.leadership_history)
    return out


async def _handle(node: ConsensusNode, op: str, a: dict[str, Any]) -> Any:
    timeout = a.get("timeout")
    match op:
        case "status":
            return _status_json(node)
        case "state":
            return node.state.to_doc()
        case "put_service":
            return asdict(await node.put_service(a["name"], a["spec"], timeout=timeout))
        case "delete_service":
            return asdict(await node.delete_service(a["name"], timeout=timeout))
        case "set_plan":
            return asdict(await node.set_plan(a["plan"], a["expected_epoch"], timeout=timeout))
        case "add_voter":
            return await node.add_voter(a["address"], timeout=timeout)
        case "remove_voter":
            return await node.remove_voter(a["address"], timeout=timeout)
        case "transfer_leadership":
            return await node.transfer_leadership(a.get("to"), timeout=timeout)
        case "wait_revision":
            state = await node.wait_state(lambda s: s.revision >= a["revision"],
                                          timeout=a.get("timeout", math.inf))
            return state.to_doc()
        case _:
            raise ValueError(f"unknown op {op!r}")


async def _serve(node: ConsensusNode, out: trio.abc.SendStream, line: bytes,
                 lock: trio.Lock) -> None:
    request = json.loads(line)
    try:
        reply = {"id": request["id"], "ok": True,
                 "result": await _handle(node, request["op"], request.get("args", {}))}
    except Exception as exc:
        reply = {"id": request["id"], "ok": False, "error": type(exc).__name__,
                 "message": str(exc)}
    async with lock:
        await out.send_all(json.dumps(reply).encode() + b"\n")


async def _child(config: ConsensusConfig) -> None:
    node = ConsensusNode(config)
    stdin = trio.lowlevel.FdStream(os.dup(0))
    stdout = trio.lowlevel.FdStream(os.dup(1))
    lock = trio.Lock()
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        await stdout.send_all(b'{"event": "started"}\n')
        buf = b""
        while chunk := await stdin.receive_some():
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if line.strip():
                    nursery.start_soon(_serve, node, stdout, line, lock)
        nursery.cancel_scope.cancel()  # stdin closed: stop cleanly


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--address", required=True, help="IP:PORT, or '' for a read-only replica")
    p.add_argument("--peers", default="", help="comma-separated voter addresses")
    p.add_argument("--data-dir", type=Path)
    p.add_argument("--timing", default="{}", help="JSON object of RaftTiming fields")
    p.add_argument("--key", required=True, help="base64 cluster key")
    p.add_argument("--join", action="store_true", help="joining an existing cluster")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    address = None
    if args.address:
        host, _, port = args.address.rpartition(":")
        address = (host, int(port))
    config = ConsensusConfig(
        address=address, peers=tuple(x for x in args.peers.split(",") if x),
        data_dir=args.data_dir, keyring=Keyring([base64.b64decode(args.key)]),
        join=args.join,
        timing=RaftTiming(**json.loads(args.timing)))
    trio.run(_child, config)


# --------------------------------------------------------------------------- parent


class HarnessError(Exception):
    """A request failed in the child: `error` is the exception's class name."""

    def __init__(self, error: str, message: str) -> None:
        super().__init__(f"{error}: {message}")
        self.error = error
        self.message = message


class ProcessDied(Exception):
    """The child exited (or was killed) with requests outstanding."""


class NodeProcess:
    """One child process. `address` is ``ip:port`` (None for a learner)."""

    def __init__(self, address: str | None, peers: Sequence[str], data_dir: Path,
                 log_path: Path, *, timing: dict[str, Any] | None = None,
                 key: str, join: bool = False) -> None:
        self.address = address
        self.join = join
        self.peers = list(peers)
        self.data_dir = data_dir
        self.log_path = log_path
        self.timing = timing or {}
        self.key = key
        self.process: trio.Process | None = None
        self._next_id = 0
        self._pending: dict[int, trio.MemorySendChannel[dict[str, Any]]] = {}
        self._started = trio.Event()
        self._exited = trio.Event()
        self._send_lock = trio.Lock()  # concurrent calls: one line at a time on stdin

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", "nanomesh.consensus.harness",
                "--address", self.address or "", "--peers", ",".join(self.peers),
                "--data-dir", str(self.data_dir), "--timing", json.dumps(self.timing),
                "--key", self.key]
        if self.join:
            argv.append("--join")
        return argv

    async def start(self, nursery: trio.Nursery) -> None:
        """Start the child and wait until it reports started."""
        self._started, self._exited = trio.Event(), trio.Event()
        log: TextIO
        with open(self.log_path, "a") as log:
            self.process = await trio.lowlevel.open_process(
                self.argv(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)
        nursery.start_soon(self._read_replies, self.process)
        with trio.fail_after(START_TIMEOUT):
            await self._started.wait()

    async def _read_replies(self, process: trio.Process) -> None:
        assert process.stdout is not None
        buf = b""
        try:
            while chunk := await process.stdout.receive_some():
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    msg = json.loads(line)
                    if msg.get("event") == "started":
                        self._started.set()
                    elif (chan := self._pending.pop(msg.get("id", -1), None)) is not None:
                        chan.send_nowait(msg)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass
        finally:
            for chan in self._pending.values():
                chan.close()
            self._pending.clear()
            self._exited.set()

    async def call(self, op: str, **args: Any) -> Any:
        """Run `op` in the child; HarnessError if it raised, ProcessDied if
        the child went away first."""
        if not self.alive or self.process is None or self.process.stdin is None:
            raise ProcessDied(f"{self.address}: not running")
        self._next_id += 1
        rid = self._next_id
        send, receive = trio.open_memory_channel[dict[str, Any]](1)
        self._pending[rid] = send
        line = json.dumps({"id": rid, "op": op, "args": args}).encode() + b"\n"
        try:
            async with self._send_lock:
                await self.process.stdin.send_all(line)
            reply = await receive.receive()
        except (trio.EndOfChannel, trio.BrokenResourceError, trio.ClosedResourceError):
            raise ProcessDied(f"{self.address}: exited during {op}") from None
        finally:
            self._pending.pop(rid, None)
        if not reply["ok"]:
            raise HarnessError(reply["error"], reply["message"])
        return reply["result"]

    async def status(self) -> dict[str, Any] | None:
        """The child's status, or None if it is not running."""
        try:
            result: dict[str, Any] = await self.call("status")
            return result
        except ProcessDied:
            return None

    def kill(self) -> None:
        """SIGKILL (no goodbye, journal as the kernel has it)."""
        if self.alive and self.process is not None:
            self.process.kill()

    async def stop(self, grace: float = 3.0) -> None:
        """Close stdin (clean stop); SIGKILL after `grace` s; reap."""
        if self.process is None:
            return
        if self.alive and self.process.stdin is not None:
            with trio.move_on_after(grace):
                await self.process.stdin.aclose()
                await self.process.wait()
        self.kill()
        with trio.CancelScope(shield=True):
            await self.process.wait()
            await self._exited.wait()


class RaftCluster:
    """Child processes on the loopback addresses in `ips` (one node each, on
    the Raft port), data and logs under `workdir`. Use `open_cluster`."""

    def __init__(self, nursery: trio.Nursery, workdir: Path, *,
                 timing: dict[str, Any] | None = None, key: str | None = None) -> None:
        self.nursery = nursery
        self.workdir = workdir
        self.timing = timing or {}
        self.key = key or generate_key()
        self.nodes: dict[str, NodeProcess] = {}
        self._learners = 0

    def _make(self, address: str | None, peers: Sequence[str], name: str,
              join: bool = False) -> NodeProcess:
        return NodeProcess(address, peers, self.workdir / name / "raft",
                           self.workdir / f"{name}.log", timing=self.timing,
                           key=self.key, join=join)

    async def start_voter(self, ip: str, peers: Sequence[str], *,
                          join: bool = False) -> NodeProcess:
        """Start (or restart, reusing its data) the voter at `ip`; `join`: it
        is about to be added to a running cluster."""
        address = f"{ip}:{DEFAULT_RAFT_PORT}"
        node = self.nodes.get(address)
        if node is None or node.peers != list(peers) or node.join != join:
            node = self._make(address, peers, ip, join)
            self.nodes[address] = node
        node.data_dir.parent.mkdir(parents=True, exist_ok=True)
        await node.start(self.nursery)
        return node

    async def restart(self, address: str) -> NodeProcess:
        node = self.nodes[address]
        await node.start(self.nursery)
        return node

    async def start_voters(self, ips: Sequence[str]) -> list[NodeProcess]:
        """Start a static cluster of voters at `ips` (each knows all others)."""
        addrs = [f"{ip}:{DEFAULT_RAFT_PORT}" for ip in ips]
        async with trio.open_nursery() as n:
            for ip, addr in zip(ips, addrs, strict=True):
                n.start_soon(self.start_voter, ip, [a for a in addrs if a != addr])
        return [self.nodes[a] for a in addrs]

    async def start_learner(self, peers: Sequence[str]) -> NodeProcess:
        self._learners += 1
        node = self._make(None, peers, f"learner{self._learners}")
        node.data_dir.parent.mkdir(parents=True, exist_ok=True)
        await node.start(self.nursery)
        self.nodes[f"learner{self._learners}"] = node
        return node

    def alive(self) -> list[NodeProcess]:
        return [n for n in self.nodes.values() if n.alive]

    async def statuses(self, nodes: Sequence[NodeProcess] | None = None
                       ) -> dict[str, dict[str, Any]]:
        """Status of every running node (by address or learner name), in parallel."""
        out: dict[str, dict[str, Any]] = {}
        targets = {k: n for k, n in self.nodes.items()
                   if n.alive and (nodes is None or n in nodes)}

        async def one(key: str, node: NodeProcess) -> None:
            if (s := await node.status()) is not None:
                out[key] = s
        async with trio.open_nursery() as n:
            for key, node in targets.items():
                n.start_soon(one, key, node)
        return out

    async def wait_leader(self, nodes: Sequence[NodeProcess] | None = None, *,
                          timeout: float = 10.0) -> str:
        """Wait until every node in `nodes` (default: all running) names the
        same leader, which itself reports leading; return its address."""
        async def agreed() -> str | None:
            st = await self.statuses(nodes)
            leaders = {s["leader"] for s in st.values()}
            if len(leaders) != 1 or None in leaders:
                return None
            leader = leaders.pop()
            if leader not in st or st[leader]["role"] != "leader":
                return None
            return str(leader)
        return await wait_until(agreed, timeout, what="one agreed leader")

    async def close(self) -> None:
        with trio.CancelScope(shield=True):
            for node in self.nodes.values():
                node.kill()
            for node in self.nodes.values():
                await node.stop(grace=0)


@asynccontextmanager
async def open_cluster(workdir: Path, *, timing: dict[str, Any] | None = None,
                       key: str | None = None) -> AsyncIterator[RaftCluster]:
    """A `RaftCluster` whose processes are all killed when the block exits."""
    async with trio.open_nursery() as nursery:
        cluster = RaftCluster(nursery, workdir, timing=timing, key=key)
        try:
            yield cluster
        finally:
            await cluster.close()


async def wait_until(predicate: Callable[[], Awaitable[T | None]], timeout: float, *,
                     interval: float = 0.02, what: str = "condition") -> T:
    """Await `predicate` every `interval` s until it returns something other
    than None/False (returned); AssertionError after `timeout` s."""
    last: T | None = None
    with trio.move_on_after(timeout):
        while True:
            last = await predicate()
            if last is not None and last is not False:
                return last
            await trio.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


if __name__ == "__main__":
    main()
