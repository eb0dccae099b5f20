"""CPU capability: ``/proc/cpuinfo`` parsing.

``/proc/cpuinfo`` differs per architecture, and the parser has to cope with
both families this project runs on:

* x86 prints one block per logical CPU with ``model name``, ``cpu MHz`` (the
  current clock) and ``bogomips`` (lowercase);
* ARM (Raspberry Pi) prints ``BogoMIPS`` per CPU, no clock at all, and a
  trailing machine block with ``Hardware`` (the SoC; older kernels say
  "BCM2835" on every Pi, newer ones omit the line) and ``Model`` (the board,
  e.g. "Raspberry Pi 4 Model B Rev 1.1").

Keys are matched case-sensitively on purpose: x86 also has a lowercase
``model`` key holding a number, which must not be mistaken for the board
``Model``. When cpuinfo has no clock (ARM), the maximum frequency from
``/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq`` is used instead: a
placement decision wants the capability, and a Pi's current clock mostly
reflects its governor.
"""

from __future__ import annotations

from pathlib import Path

from nanomesh.discovery.profile import CpuProfile
from nanomesh.discovery.sysfs import read_text

#: Where the board/CPU name is looked up, best first: the board ``Model`` line
#: (ARM boards), the CPU ``model name`` (x86, 32-bit ARM), the SoC ``Hardware``.
_MODEL_KEYS = ("Model", "model name", "Hardware")
_BOGOMIPS_KEYS = ("bogomips", "BogoMIPS")


def parse_cpuinfo_fields(text: str) -> dict[str, str]:
    """Return the first value of every ``key : value`` line in ``text``.

    The first occurrence wins because per-CPU blocks repeat the same keys and
    CPU 0 is as good as any on the machines we target.
    """
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip()
        if sep and key and key not in fields:
            fields[key] = value.strip()
    return fields


def count_processors(text: str) -> int:
    """Number of ``processor`` blocks: the logical CPUs the kernel lists."""
    return sum(1 for line in text.splitlines() if line.partition(":")[0].strip() == "processor")


def _float_or_none(value: str | None) -> float | None:
    """Parse ``value`` as a float; ``None`` when absent or malformed."""
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _first(fields: dict[str, str], keys: tuple[str, ...]) -> str | None:
    """The value of the first of ``keys`` present and non-empty in ``fields``."""
    for key in keys:
        if fields.get(key):
            return fields[key]
    return None


def parse_cpuinfo(text: str, *, arch: str, cores: int | None = None,
                  max_khz: int | None = None) -> CpuProfile:
    """Build the ``cpu`` section from ``/proc/cpuinfo`` text.

    ``arch`` comes from ``uname`` (cpuinfo has no portable arch name).
    ``cores`` is the logical CPU count from psutil when known, else the
    number of ``processor`` blocks (at least 1: a machine that runs this code
    has a CPU). ``max_khz`` is the sysfs ``cpuinfo_max_freq`` fallback for
    ``mhz`` when cpuinfo has no ``cpu MHz`` line.
    """
    fields = parse_cpuinfo_fields(text)
    mhz = _float_or_none(fields.get("cpu MHz"))
    if mhz is None and max_khz is not None:
        mhz = max_khz / 1000.0
    return {
        "cores": cores if cores is not None else max(1, count_processors(text)),
        "mhz": mhz,
        "bogomips": _float_or_none(_first(fields, _BOGOMIPS_KEYS)),
        "arch": arch,
        "model": _first(fields, _MODEL_KEYS),
    }


def read_max_khz(sys_root: Path) -> int | None:
    """CPU 0's maximum clock in kHz from cpufreq, ``None`` without cpufreq."""
    text = read_text(sys_root / "devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    if text is None or not text.isdigit():
        return None
    return int(text)
