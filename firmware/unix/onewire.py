# Fake 1-Wire bus (see machine.py).
class OneWire:
    def __init__(self, pin):
        self.pin = pin
