# HMAC-SHA256 (RFC 2104) over hashlib.sha256: MicroPython has no hmac module.
# The peer checks the same tag with Python's hmac (nanomesh.wire.leaf).
import hashlib

TAG = 16  # bytes of the tag kept (HMAC-SHA256-128, RFC 2104 section 5; as in RFC 4868)
_BLOCK = 64  # SHA-256 block size


def _pads(key):
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    key = key + bytes(_BLOCK - len(key))
    return bytes(b ^ 0x36 for b in key), bytes(b ^ 0x5C for b in key)


class Mac:
    """Tags for one key; the padded keys are computed once (RAM: 128 bytes)."""

    def __init__(self, key):
        self._ipad, self._opad = _pads(key)

    def tag(self, data):
        inner = hashlib.sha256(self._ipad)
        inner.update(data)
        outer = hashlib.sha256(self._opad)
        outer.update(inner.digest())
        return outer.digest()[:TAG]

    def check(self, data, tag):
        # Compare in constant time: an early exit would leak how many bytes matched.
        good = self.tag(data)
        if len(tag) != len(good):
            return False
        diff = 0
        for a, b in zip(good, tag):
            diff |= a ^ b
        return diff == 0
