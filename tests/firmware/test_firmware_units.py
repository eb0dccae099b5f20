"""The firmware's modules under the real MicroPython interpreter (unix port):
its HMAC against Python's hmac, its CoAP codec against garbage and aiocoap,
its client's retransmission back-off (RFC 7252 §4.2) and separate responses
(§5.2.2) against a scripted UDP peer, and the counter's reservation."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import random
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import aiocoap
import pytest

from nanomesh.testing.leaf import firmware_dir, micropython

FW = firmware_dir()


def run_mpy(script: str, *args: str, timeout: float = 30) -> str:
    """Run `script` under micropython with the firmware importable; its stdout."""
    result = subprocess.run([micropython(), "-c", script, *args], capture_output=True,
                            text=True, timeout=timeout,
                            env={"MICROPYPATH": f"{FW / 'unix'}:{FW}", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_the_firmware_hmac_is_python_hmac(tmp_path: Path) -> None:
    cases = [(b"k" * 16, b""), (bytes(range(32)), b"leaf/register\n{}"),
             (b"x" * 64, b"a" * 1000), (b"long" * 40, b"key longer than a block")]
    script = ("import sys, json; from mac import Mac\n"
              "for k, m in json.load(open(sys.argv[1])):\n"
              "    t = Mac(bytes.fromhex(k)).tag(bytes.fromhex(m))\n"
              "    print(t.hex(), Mac(bytes.fromhex(k)).check(bytes.fromhex(m), t),"
              " Mac(bytes.fromhex(k)).check(bytes.fromhex(m), bytes(16)))\n")
    # Through a file: this unix port dies ("uncaught NLR") on an argument
    # over a few hundred bytes.
    (tmp_path / "cases.json").write_text(json.dumps([[k.hex(), m.hex()] for k, m in cases]))
    out = run_mpy(script, str(tmp_path / "cases.json")).split("\n")
    for (key, msg), line in zip(cases, out, strict=False):
        want = hmac.new(key, msg, hashlib.sha256).digest()[:16].hex()
        assert line == f"{want} True False"


def test_coap_parse_agrees_with_aiocoap_on_garbage_and_never_raises(tmp_path: Path) -> None:
    """Random and mutated datagrams: the firmware's parser returns None or a
    message, never raises, and what it accepts aiocoap decodes too (with
    the same type, code, message id, token and payload)."""
    rng = random.Random(7)
    print("seed 7")
    # CON POST /leaf/x/report, token "abcd", an option 300 (extended delta), payload "pay"
    valid = bytes.fromhex("4402000761626364b46c6561660178067265706f7274e200147a7aff706179")
    datagrams = [rng.randbytes(rng.randrange(0, 40)) for _ in range(600)]
    for _ in range(600):
        mutated = bytearray(valid)
        for _ in range(rng.randrange(1, 4)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        datagrams.append(bytes(mutated[:rng.randrange(1, len(mutated) + 1)]))
    datagrams.append(valid)
    script = ("import sys, coap\n"
              "for line in open(sys.argv[1]):\n"
              "    m = coap.parse(bytes.fromhex(line.strip()))\n"
              "    print('-' if m is None else '%d %d %d %s %s' % (m[0], m[1], m[2],"
              " m[3].hex(), m[4].hex()))\n")
    path = tmp_path / "garbage.txt"
    path.write_text("\n".join(d.hex() for d in datagrams) + "\n")
    out = run_mpy(script, str(path)).splitlines()
    assert len(out) == len(datagrams)
    accepted = 0
    for data, line in zip(datagrams, out, strict=True):
        if line == "-":
            continue
        accepted += 1
        try:
            msg = aiocoap.Message.decode(data)  # raises if aiocoap disagrees
        except UnicodeDecodeError:
            continue  # aiocoap decodes Uri-Path as UTF-8; the firmware skips options
        assert line == (f"{msg.mtype.value} {int(msg.code)} {msg.mid} {msg.token.hex()} "
                        f"{bytes(msg.payload).hex()}")
    assert accepted > 50 and out[-1] != "-"


# ------------------------------------------------------------ the client's exchanges


class ScriptedPeer:
    """A UDP peer on loopback that answers each datagram with `respond`
    (datagram, index) -> datagrams to send back, recording arrival times."""

    def __init__(self, respond: Callable[[bytes, int], list[bytes]]) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.respond = respond
        self.got: list[tuple[float, bytes]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                data, src = self.sock.recvfrom(2048)
            except TimeoutError:
                if self._stop:
                    break  # only once nothing is left to read: `got` is complete
                continue
            self.got.append((time.monotonic(), data))
            for out in self.respond(data, len(self.got) - 1):
                self.sock.sendto(out, src)

    def close(self) -> None:
        self._stop = True
        self._thread.join()
        self.sock.close()


def exchange(peer: ScriptedPeer, ack_timeout: float = 0.1, retransmit: int = 3
             ) -> dict[str, object]:
    script = ("import sys, json, socket, coap\n"
              "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
              f"c = coap.Client(s, {ack_timeout!r}, {retransmit}, 1.0)\n"
              "addr = socket.getaddrinfo('127.0.0.1', int(sys.argv[1]))[0][-1]\n"
              "r = c.request(addr, coap.POST, 'leaf/x/report', b'hi')\n"
              "print(json.dumps({'answer': None if r is None else [r[0], r[1].decode()],"
              " 'sent': c.sent, 'ignored': c.ignored}))\n")
    return json.loads(run_mpy(script, str(peer.port)))  # type: ignore[no-any-return]


def header(data: bytes) -> tuple[int, int, int, bytes]:
    first, code, mid = struct.unpack_from("!BBH", data)
    return (first >> 4) & 3, code, mid, data[4:4 + (first & 15)]


def ack(data: bytes, code: int = 0x44, payload: bytes = b"") -> bytes:
    _t, _c, mid, token = header(data)
    tok = token if code else b""
    return (struct.pack("!BBH", 0x60 | len(tok), code, mid) + tok
            + (b"\xff" + payload if payload else b""))


def test_a_lost_request_is_retransmitted_with_doubling_timeouts() -> None:
    """RFC 7252 §4.2: the same message (same id) again after ACK_TIMEOUT
    (times 1..1.5), then twice as long each time."""
    peer = ScriptedPeer(lambda d, i: [ack(d, payload=b"done")] if i == 3 else [])
    try:
        result = exchange(peer)
    finally:
        peer.close()
    assert result["answer"] == [0x44, "done"] and result["sent"] == 4
    times = [t for t, _ in peer.got]
    assert len({d for _, d in peer.got}) == 1  # retransmissions are the same bytes
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert 0.09 <= gaps[0] <= 0.3
    for short, long_ in itertools.pairwise(gaps):
        assert 1.6 < long_ / short < 2.5, gaps


def test_a_silent_peer_is_given_up_after_max_retransmit() -> None:
    peer = ScriptedPeer(lambda d, i: [])
    try:
        started = time.monotonic()
        result = exchange(peer, ack_timeout=0.05, retransmit=2)
        spent = time.monotonic() - started
    finally:
        peer.close()
    assert result["answer"] is None and result["sent"] == 3 and len(peer.got) == 3
    assert spent >= 0.05 * (1 + 2 + 4)


def test_garbage_and_strangers_are_ignored_until_the_real_answer() -> None:
    def respond(d: bytes, i: int) -> list[bytes]:
        _t, _c, mid, token = header(d)
        wrong_mid = struct.pack("!BBH", 0x64, 0x44, (mid + 1) & 0xFFFF) + token
        wrong_token = struct.pack("!BBH", 0x64, 0x44, mid) + b"nope"
        return [b"", b"\xff\x00", b"\x40", wrong_mid, wrong_token, ack(d, payload=b"ok")]

    peer = ScriptedPeer(respond)
    try:
        result = exchange(peer)
    finally:
        peer.close()
    assert result["answer"] == [0x44, "ok"] and result["ignored"] == 5


def test_an_empty_ack_then_a_separate_response_which_the_leaf_acknowledges() -> None:
    def respond(d: bytes, i: int) -> list[bytes]:
        if i > 0:
            return []  # the leaf's ACK of the separate response
        _t, _c, _mid, token = header(d)
        separate = struct.pack("!BBH", 0x40 | len(token), 0x44, 999) + token + b"\xfflater"
        return [ack(d, code=0), separate]

    peer = ScriptedPeer(respond)
    try:
        result = exchange(peer)
        deadline = time.monotonic() + 2
        while len(peer.got) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        peer.close()
    assert result["answer"] == [0x44, "later"]
    assert header(peer.got[1][1])[:3] == (2, 0, 999)  # an empty ACK of message 999


def test_a_reset_ends_the_exchange() -> None:
    peer = ScriptedPeer(lambda d, i: [struct.pack("!BBH", 0x70, 0, header(d)[2])])
    try:
        result = exchange(peer)
    finally:
        peer.close()
    assert result["answer"] is None and result["sent"] == 1


@pytest.mark.parametrize("step", [1, 4])
def test_the_counter_reserves_ahead_and_never_repeats_after_a_reboot(tmp_path: Path,
                                                                      step: int) -> None:
    path = tmp_path / "counter"
    script = ("import sys, leaf\n"
              "c = leaf.Counter(sys.argv[1], int(sys.argv[2]))\n"
              "print(' '.join(str(c.take()) for _ in range(int(sys.argv[3]))))\n")
    first = [int(x) for x in run_mpy(script, str(path), str(step), "6").split()]
    second = [int(x) for x in run_mpy(script, str(path), str(step), "3").split()]
    assert first == list(range(1, 7))
    assert min(second) > max(first) and second == sorted(second)
    assert int(path.read_text()) > max(second)  # reserved before use


AGENT_CHECKS = """
import agent
class Out:
    def __init__(s): s.v = 0; s.log = []
    def write(s, v): s.v = v; s.log.append(v)
    def read(s): return s.v
class In:
    def read(s): return 7
d = {"led": Out(), "pir": In()}
good = [["set", "led", 1], ["wait", 10], ["blink", "led", 2, 5], ["read", "pir"]]
print(agent.check(good, d))
print(agent.run(good, d), d["led"].log)
for bad in [[], [["exec", "x"]], [["set", "pir", 1]], [["set", "led", 2]], [["wait", 20000]],
            [["blink", "led", 21, 1]], [["read", "nope"]], "x", [["read", [1]]],
            [["wait", True]], [["blink", "led", 20, 300]], [["set", "led"]], [None]] + [
            [["wait", 1]] * 17]:
    print(agent.check(bad, d))
"""


def test_the_agent_interpreter_runs_checked_programs_only(tmp_path: Path) -> None:
    """Mobile agents are data: every instruction, argument and the total
    pause is checked before anything runs (firmware/agent.py)."""
    (tmp_path / "agent_checks.py").write_text(AGENT_CHECKS)
    script = f"exec(open({str(tmp_path / 'agent_checks.py')!r}).read())"
    lines = run_mpy(script).splitlines()
    assert lines[0] == "None"
    assert lines[1] == "[7] [1, 1, 0, 1, 0]"
    assert all(line != "None" for line in lines[2:]) and len(lines) == 16, lines
    assert "pir is not an actuator" in lines and "pauses too long" in lines


def tagged_ack(d: bytes, code: int, key: bytes, *, bad: bool = False) -> bytes:
    """A piggy-backed answer `code` to the leaf's request `d`, tagged as a
    peer holding `key` tags it (nanomesh.wire.leaf.seal_answer); `bad`
    spoils the tag."""
    from nanomesh.wire.leaf import seal_answer, seal_welcome
    tkl = d[0] & 15  # the token may hold 0xff: look for the payload marker after it
    options, _, payload = d[4 + tkl:].partition(b"\xff")
    if b"hello" in options:  # a welcome, as a peer holding `key` makes it
        welcome = seal_welcome(key, bytes.fromhex(json.loads(payload)["nl"]), bytes(8))
        return ack(d, code=0x45, payload=welcome)
    path = ("leaf", "register") if b"register" in options else ("leaf", "bed-1", "report")
    n = json.loads(payload[16:])["n"]
    sealed = seal_answer(key, path, n, code, b"")
    return ack(d, code=code, payload=bytes([sealed[0] ^ 1]) + sealed[1:] if bad else sealed)


LEAF_FLUSH = """
import json, sys, leaf
cfg = json.load(open(sys.argv[1]))
l = leaf.Leaf(cfg)
l.sample()
l.flush()
print(json.dumps({"sent": l.client.sent, "buffered": len(l.buffer),
                  "registered": l.registered, "delivered": l.delivered}))
"""


@pytest.mark.parametrize(("answers", "want"), [
    # A peer that takes no leaves (4.04 to the registration): tried once, not forever.
    # (Each registration is a hello and a register: two messages.)
    ({"register": 0x84}, {"sent": 2, "buffered": 1, "registered": False, "delivered": 0}),
    # A peer that forgets the leaf after each registration: one re-registration.
    ({"register": 0x41, "report": 0x84},
     {"sent": 6, "buffered": 1, "registered": False, "delivered": 0}),
    ({"register": 0x41, "report": 0x44},
     {"sent": 3, "buffered": 0, "registered": True, "delivered": 1}),
])
def test_one_flush_is_bounded_whatever_the_peer_answers(
        tmp_path: Path, answers: dict[str, int], want: dict[str, object]) -> None:
    def respond(d: bytes, i: int) -> list[bytes]:
        kind = "register" if b"register" in d else "report"
        code = 0 if b"hello" in d else answers[kind]  # a hello: always welcomed
        return [tagged_ack(d, code, bytes.fromhex("ab" * 16))]

    peer = ScriptedPeer(respond)
    assert run_flush(tmp_path, peer, bytes.fromhex("ab" * 16), 0.2, 1) == want


def run_flush(tmp_path: Path, peer: ScriptedPeer, key: bytes, ack_timeout: float = 0.1,
              max_retransmit: int = 2) -> dict[str, object]:
    """One sample and flush of a leaf whose only peer is `peer`."""
    cfg = {"leaf": "bed-1", "key": key.hex(), "peers": [f"127.0.0.1:{peer.port}"],
           "devices": [{"r": "motion", "type": "pir", "driver": "in", "pin": 5}],
           "counter_file": str(tmp_path / "counter"), "bind": "127.0.0.1",
           "coap": {"ack_timeout": ack_timeout, "max_retransmit": max_retransmit}}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    (tmp_path / "flush.py").write_text(LEAF_FLUSH)
    try:
        out = run_mpy(f"import sys; sys.argv[1:] = [{str(tmp_path / 'cfg.json')!r}]; "
                      f"exec(open({str(tmp_path / 'flush.py')!r}).read())", timeout=20)
    finally:
        peer.close()
    return json.loads(out.splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.parametrize("forgery", ["untagged", "wrong key", "spoiled tag", "wrong code"])
def test_a_forged_answer_does_not_make_the_leaf_drop_its_reading(
        tmp_path: Path, forgery: str) -> None:
    """Issue 11: a peer welcomes the leaf, but every answer to its
    registration is forged (an attacker racing the peer): an ACK 2.01, or a
    4.04 / 4.01 that would cost a registration or drop the reading. The
    leaf ignores them and retransmits as if nothing came: nothing taken,
    the reading still buffered."""
    key = bytes.fromhex("ab" * 16)

    def respond(d: bytes, i: int) -> list[bytes]:
        if b"hello" in d:
            return [tagged_ack(d, 0, key)]
        match forgery:
            case "untagged":
                return [ack(d, code=0x41), ack(d, code=0x84, payload=b"not registered")]
            case "wrong key":
                return [tagged_ack(d, 0x41, bytes(16))]
            case "spoiled tag":
                return [tagged_ack(d, 0x41, key, bad=True)]
        # A genuine tag for another code: a 4.01 turned into a 2.01.
        good = tagged_ack(d, 0x81, key)
        return [good[:1] + bytes([0x41]) + good[2:]]

    peer = ScriptedPeer(respond)
    # A hello, then the registration sent max_retransmit + 1 times; then
    # the (only) peer is given up for this flush: the reading waits.
    result = run_flush(tmp_path, peer, key)
    assert result | {"sent": 0} == {"sent": 0, "buffered": 1, "registered": False,
                                    "delivered": 0}
    registers = [d for _, d in peer.got if b"register" in d]
    assert len(registers) == 3 and len(set(registers)) == 1  # the same message, again


@pytest.mark.parametrize("forgery", ["untagged", "wrong key", "spoiled tag"])
def test_a_leaf_tells_nothing_to_a_peer_that_cannot_prove_its_key(
        tmp_path: Path, forgery: str) -> None:
    """Issue 11, discovery: whoever answers the leaf's hello without its key
    (here at once, with a forged welcome) never learns its name or devices:
    the leaf sends hellos only, whose id changes every time."""
    key = bytes.fromhex("ab" * 16)

    def respond(d: bytes, i: int) -> list[bytes]:
        if forgery == "untagged":
            return [ack(d, code=0x45, payload=b'{"np": "0000000000000000"}')]
        welcome = tagged_ack(d, 0, bytes(16) if forgery == "wrong key" else key)
        return [welcome[:-20] + bytes([welcome[-20] ^ 1]) + welcome[-19:]
                if forgery == "spoiled tag" else welcome]

    peer = ScriptedPeer(respond)
    result = run_flush(tmp_path, peer, key)
    assert result | {"sent": 0} == {"sent": 0, "buffered": 1, "registered": False,
                                    "delivered": 0}
    sent = [d for _, d in peer.got]
    assert all(b"hello" in d and b"bed-1" not in d and b"motion" not in d for d in sent)
    assert len(sent) == 3 and len(set(sent)) == 1  # one hello, retransmitted
