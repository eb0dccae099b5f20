# The leaf: reads its devices every period and reports them to a peer over
# CoAP, authenticated with its key; registers first, fails over to the next
# configured peer when its peer stops answering, and keeps a bounded buffer of
# readings not yet delivered.
#
# Every request is a CoAP CON POST whose payload is TAG (16 bytes) + BODY
# (JSON). TAG = HMAC-SHA256(key, PATH + "\n" + BODY)[:16], PATH being the
# Uri-Path joined with "/" (e.g. "leaf/bed-1/report"), so a tag is bound to its
# resource. BODY carries "n", a counter that only grows: a peer accepts a
# message only if its n is above the last it accepted from this leaf (replay
# protection). The counter survives a reboot by reservation: the leaf writes
# "next + COUNTER_STEP" to flash before using counters up to it (as OSCORE
# does, RFC 8613 appendix B.1.1), so flash is written once per COUNTER_STEP
# messages and a reboot skips at most COUNTER_STEP counters.
#   hello     leaf/hello           {"id": hex(HMAC(key, "hello\n" + NL)[:8]), "nl": hex(NL)}
#   register  leaf/register        {"leaf": L, "n": N, "np": NP, "period": S, "dev": [...]}
#   report    leaf/<L>/report      {"n": N, "age": MS, "v": {R: value, ...}}
# Answers: 2.01 / 2.04 accepted; 4.04 not registered at this peer (register
# again); another 4.xx refused (dropped: sending it again would not help);
# 5.xx or no answer: the peer is in trouble, try the next one.
# Every answer counts only if tagged by the peer with our key, bound to the
# message's path, counter and the answer's code: payload = TAG + BODY,
# TAG = HMAC(key, "answer\n" + PATH + "\n" + n + "\n" + code + "\n" + BODY)[:16].
# Anything else (a forged ACK, 4.04, 4.01) is ignored: the CoAP client keeps
# retransmitting as if nothing came, and the reading stays in the buffer.
# Before registering, a hello (not tagged, naming nobody: the id changes with
# the random NL and only a key holder can tell whose it is) asks the peer to
# prove it holds our key: its 2.05 carries TAG + {"np": NP}, TAG over
# "welcome\n" + NL + "\n" + body. Only then does the leaf say its name and
# devices, with NP, which makes the registration fresh (no peer takes a
# recorded one). An untagged 4.04 to a hello is believed: forging it costs a
# failover, never a reading.
import json
import os
import socket
import sys
import time

import agent
import coap
import drivers
import mac
from mac import Mac

COUNTER_STEP = 64   # counters reserved per flash write (wear vs. counters lost at reboot)
BUFFER = 16         # readings kept while no peer answers; the oldest is dropped beyond
PERIOD = 10.0       # s between readings

OK, GONE, UNREGISTERED, REFUSED = 0, 1, 2, 3
_UNIX = sys.platform == "linux"


def log(*words):
    print("leaf:", *words)


def resolve(peer):
    host, _, port = peer.rpartition(":")
    return socket.getaddrinfo(host, int(port))[0][-1]


class Counter:
    """The message counter, reserved in blocks in a file (see above)."""

    def __init__(self, path, step=COUNTER_STEP):
        self.path = path
        self.step = step
        try:
            with open(path) as f:
                self.next = int(f.read())
        except (OSError, ValueError):
            self.next = 1
        self.limit = self.next
        self._reserve()

    def _reserve(self):
        self.limit = self.next + self.step
        with open(self.path, "w") as f:
            f.write(str(self.limit))

    def take(self):
        if self.next >= self.limit:
            self._reserve()
        n = self.next
        self.next += 1
        return n


class Leaf:
    def __init__(self, cfg, sock=None):
        self.name = cfg["leaf"]
        self.mac = Mac(bytes.fromhex(cfg["key"]))
        self.configured = list(cfg.get("peers", ()))
        self.discovery = cfg.get("discover")  # None, or seconds to wait for answers
        if not self.configured and not self.discovery:
            raise ValueError("config: no peers and no discovery")
        self.period = cfg.get("period", PERIOD)
        self.capacity = cfg.get("buffer", BUFFER)
        self.devices = [(d["r"], d["type"], drivers.make(d)) for d in cfg["devices"]]
        self.counter = Counter(cfg.get("counter_file", "counter"),
                               cfg.get("counter_step", COUNTER_STEP))
        if sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(socket.getaddrinfo(cfg.get("bind", "0.0.0.0"), cfg.get("port", 0))[0][-1])
        c = cfg.get("coap", {})
        self.client = coap.Client(sock, c.get("ack_timeout", coap.ACK_TIMEOUT),
                                  c.get("max_retransmit", coap.MAX_RETRANSMIT),
                                  c.get("response_timeout", coap.RESPONSE_TIMEOUT))
        self.sock = sock
        if self.discovery and cfg.get("bind", "0.0.0.0") != "0.0.0.0" and _UNIX:
            # The unix port (tests) sends multicast out of the bound address's
            # interface (IP_MULTICAST_IF = 32 on Linux); a board has one netif.
            sock.setsockopt(0, 32, socket.inet_pton(socket.AF_INET, cfg["bind"]))
        self.peers = []
        self.current = 0
        self.addr = None
        self.registered = False
        self.buffer = []    # [(ticks_ms when read, {resource: value})], oldest first
        self.dropped = 0    # readings dropped because the buffer was full
        self.refused = 0    # messages a peer refused (4.xx but 4.04)
        self.delivered = 0  # reports a peer accepted
        self.stranded = False  # no peer took anything in the last flush: discover again

    # ------------------------------------------------------------ messages

    def _send(self, path, body):
        n = body["n"]
        body = json.dumps(body).encode()
        payload = self.mac.tag(path.encode() + b"\n" + body) + body

        def check(code, answer):  # the answer's body if the peer holds our key
            head = ("answer\n%s\n%d\n%d\n" % (path, n, code)).encode()
            rest = answer[mac.TAG:]
            return rest if self.mac.check(head + rest, answer[:mac.TAG]) else None

        answer = self.client.request(self.addr, coap.POST, path, payload, check=check)
        if answer is None:
            return GONE
        code = answer[0]
        if code >> 5 == 2:
            if answer[1]:
                self.run_agent(n, answer[1])
            return OK
        if code == 0x84:  # 4.04
            return UNREGISTERED
        if code >> 5 == 4:
            log("refused", self.peers[self.current], coap.code_text(code), answer[1][:60])
            return REFUSED
        return GONE  # 5.xx: the peer cannot serve us now

    def hello(self):
        """The peer's nonce if it proved it holds our key, else GONE (no
        answer) or REFUSED (4.04: it does not know us)."""
        nl = os.urandom(8)

        def check(code, answer):
            if code == 0x84:
                return b""
            rest = answer[mac.TAG:]
            sealed = b"welcome\n" + nl + b"\n" + rest
            return rest if code == 0x45 and self.mac.check(sealed, answer[:mac.TAG]) else None

        body = json.dumps({"id": self.mac.tag(b"hello\n" + nl)[:8].hex(), "nl": nl.hex()})
        answer = self.client.request(self.addr, coap.POST, "leaf/hello", body.encode(),
                                     check=check)
        if answer is None:
            return GONE
        if answer[0] == 0x45:
            try:
                return json.loads(answer[1])["np"]
            except (ValueError, KeyError, TypeError):
                pass
        return REFUSED

    def register(self):
        np = self.hello()
        if not isinstance(np, str):
            return np
        dev = [{"r": r, "type": t} for r, t, _ in self.devices]
        result = self._send("leaf/register", {"leaf": self.name, "n": self.counter.take(),
                                              "np": np, "period": self.period, "dev": dev})
        if result == OK:
            self.registered = True
            log("registered", self.peers[self.current])
        return result

    def report(self, reading):
        read_at, values = reading
        age = time.ticks_diff(time.ticks_ms(), read_at)
        return self._send("leaf/%s/report" % self.name,
                          {"n": self.counter.take(), "age": age, "v": values})

    def run_agent(self, n, body):
        """Check and run the agent a peer handed us with its answer to our
        message `n` (the answer's tag checked already: only a peer with our
        key sends one), then post the step's result (which may bring the next)."""
        try:
            msg = json.loads(body)
            ident, prog = msg["agent"], msg["prog"]
        except (ValueError, KeyError, TypeError):
            log("agent refused", "malformed")
            return
        if not isinstance(ident, str) or len(ident) > 16:
            return
        devices = dict((r, drv) for r, _, drv in self.devices)
        why = agent.check(prog, devices)
        out = []
        if why is None:
            try:
                out = agent.run(prog, devices)
            except Exception as exc:  # a driver failed: report it, keep the leaf alive
                why = "failed: %s" % exc
        log("agent", ident, "ok" if why is None else why)
        result = {"n": self.counter.take(), "agent": ident, "ok": why is None,
                  "out": out[:16], "err": (why or "")[:80]}
        self._send("leaf/%s/agent" % self.name, result)

    # ------------------------------------------------------------ behaviour

    def find_peers(self):
        """Peers that answer a multicast discovery first, then the configured
        ones (a leaf may move between rooms; its config lists fallbacks)."""
        found = coap.discover(self.sock, self.discovery) if self.discovery else []
        self.client.sent += 1 if self.discovery else 0
        peers = found + [p for p in self.configured if p not in found]
        if peers != self.peers:
            log("peers", ",".join(peers) or "none")
        self.peers = peers
        self.current = 0
        self.addr = resolve(peers[0]) if peers else None
        self.registered = False

    def next_peer(self):
        self.current = (self.current + 1) % len(self.peers)
        self.addr = resolve(self.peers[self.current])
        self.registered = False
        log("failover", self.peers[self.current])

    def sample(self):
        values = {}
        for r, _, drv in self.devices:
            values[r] = drv.read()
        if len(self.buffer) >= self.capacity:
            self.buffer.pop(0)
            self.dropped += 1
        self.buffer.append((time.ticks_ms(), values))

    def flush(self):
        """Deliver buffered readings, oldest first. Each peer gets one chance
        per call, so a leaf whose peers are all gone sleeps until the next
        period instead of spinning."""
        if not self.peers or (self.discovery and self.stranded):
            self.find_peers()
        chances = len(self.peers)
        forgotten = False
        self.stranded = bool(self.buffer)
        while self.buffer and chances > 0:
            if not self.registered:
                if self.register() == OK:
                    self.stranded = False
                else:  # gone, refusing us, or taking no leaves: the next peer
                    chances -= 1
                    self.next_peer()
                continue
            result = self.report(self.buffer[0])
            if result == OK:
                self.buffer.pop(0)
                self.delivered += 1
                self.stranded = False
            elif result == REFUSED:
                self.buffer.pop(0)
                self.refused += 1
            elif result == UNREGISTERED:
                # The peer forgot us (it restarted, or marked us gone):
                # register again at once, but only once per flush, so a
                # peer that keeps forgetting does not make a loop.
                self.registered = False
                if forgotten:
                    chances -= 1
                forgotten = True
            else:
                chances -= 1
                self.next_peer()

    def stats(self):
        c = self.client
        return "delivered=%d buffered=%d dropped=%d refused=%d sent=%d received=%d ignored=%d" % (
            self.delivered, len(self.buffer), self.dropped, self.refused, c.sent, c.received,
            c.ignored)

    def run(self, rounds=-1):
        """One reading per period, forever (or `rounds` periods)."""
        while rounds != 0:
            started = time.ticks_ms()
            self.sample()
            self.flush()
            log("stats", self.stats())
            rounds -= 1
            spent = time.ticks_diff(time.ticks_ms(), started)
            time.sleep_ms(max(0, int(self.period * 1000) - spent))
