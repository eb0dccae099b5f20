# Fake DS18B20 driver: the temperature is read from $FAKE_HW/ds18x20-<pin>.
import machine


class DS18X20:
    def __init__(self, bus):
        self.pin = bus.pin.id

    def scan(self):
        return [b"\x28fakerom"]

    def convert_temp(self):
        pass

    def read_temp(self, rom):
        return float(machine._read(f"ds18x20-{self.pin}", "0"))
