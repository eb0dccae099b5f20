"""CPU utilisation over a window that is long enough to mean something.

Why not ``psutil.cpu_percent(interval=None)`` directly (measured with psutil
7.2.2 on the project machine):

* psutil keeps its "previous call" baseline *per thread*, set at import time
  for the importing thread. The first call on the main thread reports usage
  since ``import psutil`` (it returned 100.0 right after start-up), and the
  first call on any other thread (e.g. a ``trio.to_thread`` worker) returns
  0.0, so samples taken from different threads measure different windows;
* over a window of a few milliseconds the kernel's tick counters (100 Hz)
  only say 0, 50 or 100 %, which would trip the 10-point gossip threshold of
  :class:`~nanomesh.discovery.publish.PublishPolicy`'s CPU buckets on noise alone.

:class:`CpuSampler` keeps one process-wide baseline (lock-protected) and only
moves it forward once ``min_window`` seconds have passed; a call inside the
window returns the last value. The first call ever returns ``0.0`` (no window
yet) - a freshly started peer advertises an idle CPU until its first refresh,
which is harmless because placement waits for the cluster to settle anyway.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

import psutil

#: Counters that are not busy time: ``idle``, and ``iowait`` (Linux does not
#: count waiting for I/O as idle, but the CPU is free to run other work).
_IDLE_FIELDS = ("idle", "iowait")
#: Linux already counts guest time inside ``user``/``nice``; leaving them in
#: the total would count it twice (psutil and htop subtract them too).
_DOUBLE_COUNTED = ("guest", "guest_nice")


def busy_percent(before: Mapping[str, float], after: Mapping[str, float]) -> float:
    """Percent of CPU time spent busy between two ``cpu_times()`` readings.

    Averaged over all CPUs (0-100). ``0.0`` when no time passed.
    """
    delta = {k: max(0.0, after[k] - before[k]) for k in after if k in before}
    total = sum(v for k, v in delta.items() if k not in _DOUBLE_COUNTED)
    if total <= 0:
        return 0.0
    idle = sum(delta.get(k, 0.0) for k in _IDLE_FIELDS)
    return round(min(100.0, max(0.0, 100.0 * (total - idle) / total)), 1)


def _psutil_times() -> dict[str, float]:
    """System-wide CPU times from psutil as a plain dict."""
    return dict(psutil.cpu_times()._asdict())


class CpuSampler:
    """Process-wide CPU percent with a minimum measuring window."""

    def __init__(self, min_window: float = 0.5,
                 clock: Callable[[], float] = time.monotonic,
                 read_times: Callable[[], Mapping[str, float]] = _psutil_times) -> None:
        """``min_window`` (seconds): shortest window a new value is computed over.

        0.5 s is 50 kernel ticks per CPU at 100 Hz, so one value has a
        resolution of 2 points or better - fine against a 10-point threshold -
        while daemons sampling every few seconds always get a fresh value.
        """
        self._min_window = min_window
        self._clock = clock
        self._read_times = read_times
        self._lock = threading.Lock()
        self._baseline: tuple[float, Mapping[str, float]] | None = None
        self._value = 0.0

    def sample(self) -> float:
        """CPU percent over the last completed window (``0.0`` on the first call)."""
        with self._lock:
            now = self._clock()
            if self._baseline is None:
                self._baseline = (now, self._read_times())
            elif now - self._baseline[0] >= self._min_window:
                times = self._read_times()
                self._value = busy_percent(self._baseline[1], times)
                self._baseline = (now, times)
            return self._value
