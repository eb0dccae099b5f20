# Mobile agents: a program of a few instructions that a peer hands this leaf
# (in the answer to a report), which the leaf checks, runs and reports on.
# An agent is data, never code: only the instructions below exist, each with
# bounded arguments, and the whole program is checked before its first step
# runs, so a leaf never executes anything it was not built to do. The same
# rules are the peer's (nanomesh/wire/leaf.py, AGENT_OPS).
#   ["set", R, 0|1]       drive actuator resource R (an "out" driver)
#   ["wait", MS]          pause MS milliseconds
#   ["blink", R, N, MS]   N times: R on for MS, off for MS
#   ["read", R]           append R's reading to the output
import time

OPS = {"set": 2, "wait": 1, "blink": 3, "read": 1}
MAX_PROGRAM = 16
MAX_STEP_MS = 10000  # a leaf reads no sensor while it runs an agent
MAX_BLINKS = 20


def _int(v, lo, hi):
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def check(prog, devices):
    """None if `prog` may run on a leaf with `devices` ({resource: driver}),
    else why not."""
    if not isinstance(prog, list) or not 0 < len(prog) <= MAX_PROGRAM:
        return "program of 1-%d instructions expected" % MAX_PROGRAM
    total = 0
    for op in prog:
        if not isinstance(op, list) or not op or OPS.get(op[0]) != len(op) - 1:
            return "unknown instruction"
        name = op[0]
        if name == "wait":
            if not _int(op[1], 0, MAX_STEP_MS):
                return "bad wait"
            total += op[1]
            continue
        drv = devices.get(op[1]) if isinstance(op[1], str) else None
        if drv is None:
            return "no resource %s" % op[1]
        if name in ("set", "blink") and not hasattr(drv, "write"):
            return "%s is not an actuator" % op[1]
        if name == "set" and op[2] not in (0, 1):
            return "bad set"
        if name == "blink":
            if not (_int(op[2], 1, MAX_BLINKS) and _int(op[3], 1, MAX_STEP_MS)):
                return "bad blink"
            total += 2 * op[2] * op[3]
    if total > MAX_STEP_MS:
        return "pauses too long"
    return None


def run(prog, devices):
    """Run a checked program; its output (the readings of "read")."""
    out = []
    for op in prog:
        name = op[0]
        if name == "set":
            devices[op[1]].write(op[2])
        elif name == "wait":
            time.sleep_ms(op[1])
        elif name == "blink":
            drv = devices[op[1]]
            for _ in range(op[2]):
                drv.write(1)
                time.sleep_ms(op[3])
                drv.write(0)
                time.sleep_ms(op[3])
        elif name == "read":
            out.append(devices[op[1]].read())
    return out
