# A fake `machine` for running the firmware under MicroPython's unix port.
# Inputs come from files in $FAKE_HW (written by the test): "pin<N>" for a
# digital input, "adc<N>" for an ADC, "i2c-<addr>-<reg>" (hex bytes) for an
# I2C register. Outputs are written to "pin<N>" so the test can see them.
import os

_DIR = os.getenv("FAKE_HW") or "."


def _read(name, default):
    try:
        with open(_DIR + "/" + name) as f:
            return f.read().strip()
    except OSError:
        return default


def _write(name, text):
    with open(_DIR + "/" + name, "w") as f:
        f.write(text)


class Pin:
    IN, OUT, PULL_UP, PULL_DOWN = 0, 1, 2, 3

    def __init__(self, pin, mode=IN, pull=None):
        self.id = pin
        self.mode = mode

    def value(self, v=None):
        if v is None:
            return int(_read(f"pin{self.id}", "0"))
        _write(f"pin{self.id}", str(int(v)))
        return None


class ADC:
    def __init__(self, pin):
        self.pin = pin

    def read_u16(self):
        return int(_read(f"adc{self.pin.id}", "0"))


class I2C:
    def __init__(self, bus, scl=None, sda=None):
        self.bus = bus

    def readfrom_mem(self, addr, reg, n):
        text = _read(f"i2c-{addr:x}-{reg:x}", "")
        if not text:
            raise OSError(19)  # ENODEV: the device did not acknowledge
        return bytes.fromhex(text)[:n]
