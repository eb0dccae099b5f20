"""Helpers for the nanoservice acceptance tests (issue 4) on real peer daemons.

- `cli`: one ``python -m nanomesh ...`` subprocess (no ``NANOMESH_*`` from
  the test's environment), with the peer and token options filled in;
- `copy_service`: a temporary copy of a service folder with lines of its
  manifest replaced (a changed name, replicas, a bad field);
- `coap_request`: one CoAP request with aiocoap (as a constrained device
  would send it), from a trio test through trio-asyncio;
- `owned_processes` / `service_processes`: live processes a cluster caused
  (found by its root directory in their command line or working directory,
  and by ``NANOMESH_SERVICE`` in their environment), for orphan checks;
- `instances` / `wait_instances`: a peer's ``/v1/placement`` for one service.

Waits are bounded (`mesh_harness.wait_until`); nothing here asserts speed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiocoap
import psutil
import trio
import trio_asyncio
from mesh_harness import PY, Cluster, Peer

from nanomesh.config import DEFAULT_COAP_PORT

REPO = Path(__file__).resolve().parents[2]
SERVICES = REPO / "services"
CLI_TIMEOUT = 120.0
"""Bound of one CLI run: a deploy uploads a bundle and waits for a commit."""


# --------------------------------------------------------------------------- CLI


def cli(*args: str, peer: Peer | None = None, token: str | None = None,
        timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run ``nanomesh ARGS [--peer API] [--token TOKEN]`` to completion."""
    argv = [PY, "-m", "nanomesh", *args]
    if peer is not None:
        argv += ["--peer", peer.api]
    if token is not None:
        argv += ["--token", token]
    # No lab token or peer from the environment, but the session's cluster key
    # (conftest: the key every test mesh holds unless a test names another).
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("NANOMESH_") or k == "NANOMESH_KEY_FILE"}
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env,
                          stdin=subprocess.DEVNULL, check=False, cwd=REPO)


def cli_ok(*args: str, peer: Peer | None = None, token: str | None = None,
           timeout: float = CLI_TIMEOUT) -> str:
    """`cli`, asserting exit status 0; its stdout."""
    result = cli(*args, peer=peer, token=token, timeout=timeout)
    assert result.returncode == 0, (args, result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    return result.stdout


def cli_retry(cluster: Cluster, *args: str, peer: Peer, token: str | None = None,
              timeout: float = 45.0) -> str:
    """`cli_ok` for a write, repeated while the mesh answers 503/504 (no
    leader yet, an election: transient; deploys and mode changes are
    idempotent). Any other failure fails at once."""
    def attempt() -> str | None:
        result = cli(*args, peer=peer, token=token)
        if result.returncode == 0:
            return result.stdout or "(no output)"
        if re.search(r"\b50[34]\b", result.stderr):
            return None
        raise AssertionError((args, result.returncode, result.stdout, result.stderr))
    return cluster.wait(attempt, timeout, what=f"`nanomesh {' '.join(args)}` to succeed")


# --------------------------------------------------------------------------- service folders


def copy_service(name: str, dest: Path, replace: dict[str, str] | None = None,
                 append: str = "") -> Path:
    """Copy ``services/NAME`` to ``dest`` (without a built rootfs) and, in its
    nanoservice.toml, replace each whole line matching a regex key of
    ``replace`` with its value (each key must match), then append ``append``."""
    shutil.copytree(SERVICES / name, dest, ignore=shutil.ignore_patterns("rootfs", "__pycache__"))
    manifest = dest / "nanoservice.toml"
    text = manifest.read_text()
    for pattern, line in (replace or {}).items():
        text, count = re.subn(rf"(?m)^{pattern}$", line, text)
        assert count, f"no line of {manifest} matches {pattern!r}"
    manifest.write_text(text + append)
    return dest


# --------------------------------------------------------------------------- CoAP


@dataclass(frozen=True)
class CoapReply:
    code: str
    """aiocoap's code text, e.g. ``2.05 Content``."""
    payload: bytes

    @property
    def ok(self) -> bool:
        return self.code.startswith("2.")


async def coap_request(ip: str, path: str, *, method: str = "GET", payload: bytes = b"",
                       timeout: float = 10.0, port: int = DEFAULT_COAP_PORT) -> CoapReply:
    """One CoAP request to ``coap://IP:PORT/PATH`` with a fresh aiocoap client
    context. Raises trio.TooSlowError after ``timeout`` s, or aiocoap's
    error if the request fails in transport."""
    async with trio_asyncio.open_loop():
        ctx = await trio_asyncio.aio_as_trio(aiocoap.Context.create_client_context)(
            transports=["udp6"])

        async def send() -> Any:
            message = aiocoap.Message(code=getattr(aiocoap, method), payload=payload,
                                      uri=f"coap://{ip}:{port}/{path.lstrip('/')}")
            return await ctx.request(message).response

        try:
            with trio.fail_after(timeout):
                reply = await trio_asyncio.aio_as_trio(send)()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await trio_asyncio.aio_as_trio(ctx.shutdown)()
    return CoapReply(str(reply.code), bytes(reply.payload))


# --------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class Proc:
    pid: int
    service: str | None
    """NANOMESH_SERVICE from its environment (instances only)."""
    instance: str | None
    shim: bool
    cmdline: str


def owned_processes(root: Path, exclude: Sequence[int] = ()) -> list[Proc]:
    """Live processes (not zombies) whose command line mentions ``root`` or
    whose working directory is inside it, except ``exclude`` (the peer
    daemons) and this process: the shims, instances and containers of a
    cluster that keeps its data under ``root``."""
    text = str(root)
    found = []
    for p in psutil.process_iter(["pid", "cmdline", "cwd", "status"]):
        info = p.info
        if info["pid"] in exclude or info["pid"] == os.getpid():
            continue
        if info["status"] in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            continue
        cmdline = " ".join(info["cmdline"] or [])
        cwd = info["cwd"] or ""
        if text not in cmdline and not cwd.startswith(text):
            continue
        try:
            env = p.environ()
        except (psutil.Error, OSError):
            env = {}
        found.append(Proc(info["pid"], env.get("NANOMESH_SERVICE"),
                          env.get("NANOMESH_INSTANCE"), "shim.py" in cmdline, cmdline))
    return found


def service_processes(cluster: Cluster, service: str) -> list[Proc]:
    """Instance processes (not shims) of ``service`` that ``cluster`` caused."""
    daemons = [p.pid for p in cluster.peers if p.pid is not None]
    return [p for p in owned_processes(cluster.root, daemons)
            if p.service == service and not p.shim]


def supervising_peer(cluster: Cluster, pid: int) -> str | None:
    """Name of the peer daemon above ``pid`` (instance -> shim -> daemon, or
    deeper for containers), if one of ``cluster``'s."""
    by_pid = {p.pid: p.name for p in cluster.peers if p.running}
    try:
        for parent in psutil.Process(pid).parents():
            if parent.pid in by_pid:
                return by_pid[parent.pid]
    except psutil.Error:
        return None
    return None


# --------------------------------------------------------------------------- placement


def instances(peer: Peer, service: str) -> list[dict[str, Any]]:
    """``peer``'s placement entries of ``service`` (instance, peer, state, health)."""
    return [i for i in peer.get("/v1/placement")["instances"] if i["service"] == service]


def wait_instances(cluster: Cluster, observers: Sequence[Peer], service: str, count: int, *,
                   state: str = "running", health: str | None = "healthy",
                   timeout: float = 45.0,
                   also: Callable[[list[dict[str, Any]]], bool] = lambda _: True
                   ) -> dict[str, str]:
    """Wait until every observer's placement shows exactly ``count`` instances
    of ``service``, all in ``state`` (and ``health``), on distinct peers, the
    same on every observer (and ``also(entries)`` holds); instance -> peer."""
    def check() -> dict[str, str] | None:
        views = []
        for o in observers:
            entries = instances(o, service)
            if (len(entries) != count or any(e["state"] != state for e in entries)
                    or (health is not None and any(e["health"] != health for e in entries))
                    or len({e["peer"] for e in entries}) != count or not also(entries)):
                return None
            views.append({e["instance"]: e["peer"] for e in entries})
        return views[0] if all(v == views[0] for v in views) else None
    return cluster.wait(check, timeout, what=f"{count} instances of {service} {state}"
                        f"{'/' + health if health else ''} on distinct peers, as "
                        f"{[o.name for o in observers]} all see it",
                        describe=lambda: "\n".join(f"  {o.name}: {instances(o, service)}"
                                                   for o in observers))
