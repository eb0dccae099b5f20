# A minimal CoAP client (RFC 7252) for leaf nodes: confirmable requests with
# the retransmission back-off of section 4.2, message ids and tokens, piggy-
# backed and separate responses. One exchange at a time (a leaf has little RAM
# and nothing else to do while it waits), so NSTART = 1 as the RFC asks.
#
# Garbage is never an exception: `parse` returns None for anything that is not
# a well-formed CoAP message, and `Client.request` ignores datagrams that do
# not belong to its exchange (counted in `ignored`), and answers that its
# `check` refuses (a forged answer: the leaf retransmits as if none came).
import random
import socket
import struct
import time

CON, NON, ACK, RST = 0, 1, 2, 3
GET, POST = 1, 2
URI_PATH, CONTENT_FORMAT, URI_QUERY = 11, 12, 15

# Transmission parameters, RFC 7252 section 4.8 defaults. A config may
# shorten them (tests do), never needed on a real LAN.
ACK_TIMEOUT = 2.0        # s before the first retransmission (times a random 1..ACK_RANDOM_FACTOR)
ACK_RANDOM_FACTOR = 1.5  # spreads retransmissions of many leaves rebooting together
MAX_RETRANSMIT = 4       # retransmissions before the peer counts as gone: 2+4+8+16+32 = 62 s max
RESPONSE_TIMEOUT = 10.0  # s to wait for a separate response after an empty ACK
MAX_DATAGRAM = 1152      # bytes read per datagram (RFC 7252 4.6's limit); larger ones are cut


def encode(mtype, code, mid, token, options, payload):
    """Bytes of one message; `options` is a list of (number, bytes), sorted."""
    out = bytearray(struct.pack("!BBH", 0x40 | (mtype << 4) | len(token), code, mid))
    out += token
    last = 0
    for number, value in options:
        delta, length = number - last, len(value)
        last = number
        out += _nibbles(delta, length)
        out += value
    if payload:
        out.append(0xFF)
        out += payload
    return bytes(out)


def _ext(n):
    # Option delta/length nibble and its extended bytes (RFC 7252 section 3.1).
    if n < 13:
        return n, b""
    if n < 269:
        return 13, bytes((n - 13,))
    return 14, struct.pack("!H", n - 269)


def _nibbles(delta, length):
    d, dx = _ext(delta)
    l, lx = _ext(length)
    return bytes(((d << 4) | l,)) + dx + lx


def parse(data):
    """(type, code, mid, token, payload) of a datagram, or None if it is not
    a well-formed CoAP 1 message. Options are checked and skipped."""
    n = len(data)
    if n < 4:
        return None
    first, code, mid = struct.unpack_from("!BBH", data, 0)
    tkl = first & 0x0F
    if first >> 6 != 1 or tkl > 8 or n < 4 + tkl:
        return None
    token = bytes(data[4:4 + tkl])
    i = 4 + tkl
    while i < n:
        byte = data[i]
        if byte == 0xFF:
            if i + 1 == n:
                return None  # a payload marker with no payload is a format error (3.1)
            return (first >> 4) & 3, code, mid, token, bytes(data[i + 1:])
        i += 1
        delta, i = _read_ext(byte >> 4, data, i)
        length, i = _read_ext(byte & 0x0F, data, i)
        if delta < 0 or length < 0 or i + length > n:
            return None
        i += length
    return (first >> 4) & 3, code, mid, token, b""


def _read_ext(nib, data, i):
    if nib < 13:
        return nib, i
    if nib == 13 and i < len(data):
        return data[i] + 13, i + 1
    if nib == 14 and i + 1 < len(data):
        return ((data[i] << 8) | data[i + 1]) + 269, i + 2
    return -1, i  # 15 is reserved, or the message ends inside the option


def path_options(path):
    return [(URI_PATH, seg.encode()) for seg in path.strip("/").split("/")]


class Client:
    """Requests to one peer after another over one UDP socket."""

    def __init__(self, sock, ack_timeout=ACK_TIMEOUT, max_retransmit=MAX_RETRANSMIT,
                 response_timeout=RESPONSE_TIMEOUT):
        self.sock = sock
        self.ack_timeout = ack_timeout
        self.max_retransmit = max_retransmit
        self.response_timeout = response_timeout
        self.mid = random.getrandbits(16)  # random start (4.4): not reused after a reboot
        self.sent = 0       # datagrams sent (retransmissions included)
        self.received = 0   # datagrams received
        self.ignored = 0    # datagrams that were garbage or not for this exchange

    def request(self, addr, code, path, payload, content_format=None, check=None):
        """Send a CON request to `addr` and return (code, payload) of its
        response, or None when the peer never answered (all retransmissions
        spent) or reset the exchange. `check(code, payload)`, if given,
        returns the payload to keep or None for an answer to ignore."""
        self.mid = (self.mid + 1) & 0xFFFF
        mid = self.mid
        token = struct.pack("!I", random.getrandbits(32))
        options = path_options(path)
        if content_format is not None:
            options.append((CONTENT_FORMAT, bytes((content_format,))))
        message = encode(CON, code, mid, token, options, payload)
        timeout = self.ack_timeout * (1 + random.getrandbits(8) / 255 * (ACK_RANDOM_FACTOR - 1))
        for _ in range(self.max_retransmit + 1):
            self.sock.sendto(message, addr)
            self.sent += 1
            answer = self._wait(addr, mid, token, timeout, check)
            if answer is not None:
                return answer if answer != "reset" else None
            timeout *= 2  # exponential back-off (4.2)
        return None

    def _wait(self, addr, mid, token, timeout, check):
        # The answer to (mid, token) within `timeout` s: (code, payload),
        # "reset", or None. After an empty ACK, waits for the separate response.
        deadline = time.ticks_add(time.ticks_ms(), int(timeout * 1000))
        acked = False
        while True:
            left = time.ticks_diff(deadline, time.ticks_ms())
            if left <= 0:
                return "reset" if acked else None  # acked but no response: give up
            self.sock.settimeout(left / 1000)
            try:
                data, src = self.sock.recvfrom(MAX_DATAGRAM)
            except OSError:
                continue  # timed out; the loop checks the deadline
            self.received += 1
            msg = parse(data)
            if msg is None:
                self.ignored += 1
                continue
            mtype, code, rmid, rtoken, payload = msg
            if mtype in (ACK, RST) and rmid == mid:
                if mtype == RST:
                    return "reset"
                if code == 0:  # empty ACK: the response comes separately (5.2.2)
                    acked = True
                    deadline = time.ticks_add(time.ticks_ms(), int(self.response_timeout * 1000))
                    continue
                if rtoken == token:
                    payload = payload if check is None else check(code, payload)
                    if payload is not None:
                        return code, payload
            elif mtype in (CON, NON) and rtoken == token and code >= 64:
                payload = payload if check is None else check(code, payload)
                if payload is None:
                    self.ignored += 1  # forged: no ACK, the real answer may still come
                    continue
                if mtype == CON:
                    self.sock.sendto(encode(ACK, 0, rmid, b"", [], b""), src)
                    self.sent += 1
                return code, payload
            elif mtype == CON:
                # Not ours (a stale notification, a stranger): reject it (4.2).
                self.sock.sendto(encode(RST, 0, rmid, b"", [], b""), src)
                self.sent += 1
            self.ignored += 1


ALL_COAP_NODES = "224.0.1.187"  # RFC 7252 section 12.8, IPv4 "All CoAP Nodes"
LEAF_RT = "nanomesh.leaf"        # resource type of the peers' leaf endpoint


def discover(sock, wait, group=ALL_COAP_NODES, port=5683):
    """Peers that answer a multicast GET /.well-known/core?rt=nanomesh.leaf
    within `wait` s, as "host:port" strings, in the order they answered.
    Non-confirmable, as multicast requests must be (section 8.1)."""
    token = struct.pack("!I", random.getrandbits(32))
    options = [(URI_PATH, b".well-known"), (URI_PATH, b"core"),
               (URI_QUERY, ("rt=" + LEAF_RT).encode())]
    sock.sendto(encode(NON, GET, random.getrandbits(16), token, options, b""),
                socket.getaddrinfo(group, port)[0][-1])
    found = []
    deadline = time.ticks_add(time.ticks_ms(), int(wait * 1000))
    while True:
        left = time.ticks_diff(deadline, time.ticks_ms())
        if left <= 0:
            return found
        sock.settimeout(left / 1000)
        try:
            data, _src = sock.recvfrom(MAX_DATAGRAM)
        except OSError:
            continue
        msg = parse(data)
        if msg is None or msg[3] != token or msg[1] != 0x45:  # 2.05 to our request only
            continue
        for peer in links(msg[4]):
            if peer not in found:
                found.append(peer)


def links(payload):
    """"host:port" of each <coap://host:port/leaf> link with rt=nanomesh.leaf."""
    out = []
    try:
        text = payload.decode()
    except UnicodeError:
        return out
    for link in text.split(","):
        if 'rt="' + LEAF_RT + '"' not in link or not link.startswith("<coap://"):
            continue
        end = link.find("/", 8)
        hostport = link[8:end] if end > 8 else ""
        if ":" in hostport and hostport.rpartition(":")[2].isdigit() and len(hostport) < 64:
            out.append(hostport)
    return out


def code_text(code):
    return "%d.%02d" % (code >> 5, code & 31)
