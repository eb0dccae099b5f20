"""/proc/cpuinfo parsing against real x86 and Raspberry Pi 4 captures."""

from __future__ import annotations

from pathlib import Path

import pytest
from discovery_helpers import FIXTURES, TreeWriter

from nanomesh.discovery.cpu import count_processors, parse_cpuinfo, read_max_khz

RPI4 = (FIXTURES / "cpuinfo_rpi4_aarch64.txt").read_text()
XEON = (FIXTURES / "cpuinfo_x86_xeon.txt").read_text()

# 32-bit Raspberry Pi OS on a Pi 4: has "model name" *and* Hardware *and* Model.
RPI4_ARMV7 = """processor\t: 0
model name\t: ARMv7 Processor rev 3 (v7l)
BogoMIPS\t: 108.00
CPU architecture: 7

Hardware\t: BCM2711
Revision\t: c03111
Model\t\t: Raspberry Pi 4 Model B Rev 1.1
"""


def test_raspberry_pi_4_64bit_capture() -> None:
    cpu = parse_cpuinfo(RPI4, arch="aarch64")
    assert cpu == {
        "cores": 4,
        "mhz": None,
        "bogomips": 108.0,
        "arch": "aarch64",
        "model": "Raspberry Pi 4 Model B Rev 1.1",
    }


def test_raspberry_pi_clock_comes_from_cpufreq_when_cpuinfo_has_none() -> None:
    cpu = parse_cpuinfo(RPI4, arch="aarch64", max_khz=1_500_000)
    assert cpu["mhz"] == 1500.0


def test_x86_capture() -> None:
    cpu = parse_cpuinfo(XEON, arch="x86_64")
    assert cpu == {
        "cores": 2,
        "mhz": 2600.0,
        "bogomips": 5200.0,
        "arch": "x86_64",
        "model": "Intel(R) Xeon(R) Processor",
    }


def test_x86_cpu_mhz_wins_over_cpufreq() -> None:
    assert parse_cpuinfo(XEON, arch="x86_64", max_khz=3_900_000)["mhz"] == 2600.0


def test_psutil_core_count_wins_over_processor_blocks() -> None:
    assert parse_cpuinfo(RPI4, arch="aarch64", cores=3)["cores"] == 3


def test_board_model_wins_over_cpu_model_name_and_soc() -> None:
    assert parse_cpuinfo(RPI4_ARMV7, arch="armv7l")["model"] == "Raspberry Pi 4 Model B Rev 1.1"


@pytest.mark.parametrize(
    ("text", "model"),
    [
        ("processor\t: 0\nmodel\t\t: 167\nHardware\t: Allwinner sun8i Family\n",
         "Allwinner sun8i Family"),
        ("processor\t: 0\nmodel\t\t: 167\nmodel name\t: AMD Ryzen 7\nHardware\t: X\n",
         "AMD Ryzen 7"),
        ("processor\t: 0\nmodel\t\t: 167\n", None),
        ("processor\t: 0\nModel\t\t: \nHardware\t: BCM2835\n", "BCM2835"),
    ],
)
def test_model_fallbacks_and_numeric_model_key_ignored(text: str, model: str | None) -> None:
    assert parse_cpuinfo(text, arch="x")["model"] == model


def test_malformed_numbers_become_none() -> None:
    cpu = parse_cpuinfo("processor\t: 0\ncpu MHz\t\t: fast\nbogomips\t: ?\n", arch="x86_64")
    assert (cpu["mhz"], cpu["bogomips"]) == (None, None)


def test_empty_cpuinfo_still_has_one_core() -> None:
    assert parse_cpuinfo("", arch="riscv64") == {
        "cores": 1, "mhz": None, "bogomips": None, "arch": "riscv64", "model": None,
    }


def test_count_processors() -> None:
    assert (count_processors(RPI4), count_processors(XEON), count_processors("")) == (4, 2, 0)


def test_read_max_khz(tree: TreeWriter, tmp_path: Path) -> None:
    root = tree({"devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq": "1800000\n"})
    assert read_max_khz(root) == 1_800_000
    assert read_max_khz(tmp_path / "missing") is None
