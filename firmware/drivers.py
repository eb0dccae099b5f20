# Device drivers over `machine`: one small class per kind of hardware, each
# with read() -> a number (or None if the device did not answer) and, for
# actuators, write(value). Built from a config entry by `make`.
#
# ESP32 and RP2040 W both have machine.Pin, machine.ADC (read_u16), machine.I2C
# and the onewire / ds18x20 modules; pin numbers are the chip's GPIO numbers.
import time

import machine


class DigitalIn:
    """A digital input (PIR motion sensor, button): 0 or 1."""

    def __init__(self, cfg):
        pull = {"up": machine.Pin.PULL_UP, "down": machine.Pin.PULL_DOWN}.get(cfg.get("pull"))
        self.pin = machine.Pin(cfg["pin"], machine.Pin.IN, pull)

    def read(self):
        return self.pin.value()


class DigitalOut:
    """A digital output (LED, relay): reports the level it drives."""

    def __init__(self, cfg):
        self.pin = machine.Pin(cfg["pin"], machine.Pin.OUT)
        self.pin.value(cfg.get("initial", 0))

    def read(self):
        return self.pin.value()

    def write(self, value):
        self.pin.value(1 if value else 0)


class Analog:
    """An ADC input: read_u16() (0..65535 on every port) * scale + offset."""

    def __init__(self, cfg):
        self.adc = machine.ADC(machine.Pin(cfg["pin"]))
        self.scale = cfg.get("scale", 1)
        self.offset = cfg.get("offset", 0)

    def read(self):
        return round(self.adc.read_u16() * self.scale + self.offset, 3)


class DS18X20:
    """A 1-Wire DS18B20 temperature sensor (the first one on the bus), in C."""

    CONVERSION_MS = 750  # 12-bit conversion time, from the DS18B20 datasheet

    def __init__(self, cfg):
        import ds18x20
        import onewire

        self.ds = ds18x20.DS18X20(onewire.OneWire(machine.Pin(cfg["pin"])))
        roms = self.ds.scan()
        self.rom = roms[0] if roms else None
        self.wait_ms = cfg.get("conversion_ms", self.CONVERSION_MS)

    def read(self):
        if self.rom is None:
            return None
        try:
            self.ds.convert_temp()
            time.sleep_ms(self.wait_ms)
            return round(self.ds.read_temp(self.rom), 2)
        except Exception:  # a CRC error or a sensor pulled off the bus: no reading
            return None


class I2CRegister:
    """A big-endian register of an I2C sensor: (raw * scale + offset).
    Enough for the many sensors that expose a reading as one register."""

    def __init__(self, cfg):
        self.bus = machine.I2C(cfg.get("bus", 0), scl=machine.Pin(cfg["scl"]),
                               sda=machine.Pin(cfg["sda"]))
        self.addr = cfg["addr"]
        self.reg = cfg.get("reg", 0)
        self.size = cfg.get("size", 2)
        self.scale = cfg.get("scale", 1)
        self.offset = cfg.get("offset", 0)

    def read(self):
        try:
            raw = self.bus.readfrom_mem(self.addr, self.reg, self.size)
        except OSError:  # no ACK from the device
            return None
        value = 0
        for b in raw:
            value = (value << 8) | b
        return round(value * self.scale + self.offset, 3)


DRIVERS = {"in": DigitalIn, "out": DigitalOut, "adc": Analog, "ds18x20": DS18X20,
           "i2c": I2CRegister}


def make(cfg):
    """The driver of one config entry; ValueError for an unknown driver."""
    cls = DRIVERS.get(cfg.get("driver"))
    if cls is None:
        raise ValueError("unknown driver %r (one of %s)" % (cfg.get("driver"),
                                                           ", ".join(DRIVERS)))
    return cls(cfg)
