"""GPIO devices through gpiozero: a PIR input, LEDs, the oxygen relay.

Both backends run gpiozero's own device classes (``MotionSensor``, ``LED``,
``OutputDevice``); only the pin factory differs:

- real (``rpi-gpio`` / ``lgpio`` / ...): gpiozero's default factory, which
  loads lgpio or RPi.GPIO on a Raspberry Pi;
- simulated (``gpiozero-mock``): gpiozero's ``MockFactory``, whose input pins
  the world simulator drives (`Gpio.drive`) and whose output pins it reads
  back (`Gpio.level`), so the service's code path is the one that runs on a Pi.

gpiozero is imported when a `Gpio` is made, not with this module: a peer that
only reports backends never loads it. Pins are BCM numbers, as in
``[[devices]] pin``.
"""

from __future__ import annotations

import logging
from typing import Any

from nanomesh.devices.backend import GPIO, Backend, select

log = logging.getLogger("nanomesh.devices")

PIR_QUEUE_LEN = 1
"""Samples gpiozero averages before a PIR's state changes. Its default (1)
reacts at the next sample: the PIR module already holds its output high for
its own hold time (2-3 s on the HC-SR501), so no smoothing is needed here."""
PIR_SAMPLE_RATE = 20.0
"""Samples per second gpiozero takes of the PIR pin (50 ms resolution)."""

_FACTORY_NAMES = {"RPiGPIOFactory": "rpi-gpio", "LGPIOFactory": "lgpio",
                  "PiGPIOFactory": "pigpio", "NativeFactory": "gpiozero-native",
                  "MockFactory": "gpiozero-mock"}


class Gpio:
    """The pin factory of one process, and the devices made from it."""

    def __init__(self, backend: Backend | None = None) -> None:
        self.backend = backend or select(GPIO)
        self._factory: Any = None
        if self.backend.simulated:
            from gpiozero.pins.mock import MockFactory
            self._factory = MockFactory()
        self.name = self.backend.name

    def _made(self, device: Any) -> Any:
        """Refine the real backend's name from the factory gpiozero loaded."""
        if not self.backend.simulated and self._factory is None:
            self._factory = device.pin_factory
            self.name = _FACTORY_NAMES.get(type(self._factory).__name__,
                                           type(self._factory).__name__.lower())
            log.info("gpio devices: pin factory %s", self.name)
        return device

    def motion_sensor(self, pin: int) -> Any:
        """A PIR on BCM ``pin`` (``gpiozero.MotionSensor``)."""
        from gpiozero import MotionSensor
        return self._made(MotionSensor(pin, queue_len=PIR_QUEUE_LEN,
                                       sample_rate=PIR_SAMPLE_RATE, pin_factory=self._factory))

    def led(self, pin: int) -> Any:
        """An LED on BCM ``pin`` (``gpiozero.LED``), off."""
        from gpiozero import LED
        return self._made(LED(pin, pin_factory=self._factory))

    def relay(self, pin: int, active_high: bool = True) -> Any:
        """A relay (the oxygen valve) on BCM ``pin``, released at start
        (``gpiozero.OutputDevice(initial_value=False)``): a restart of the
        service never opens the valve by itself."""
        from gpiozero import OutputDevice
        return self._made(OutputDevice(pin, active_high=active_high, initial_value=False,
                                       pin_factory=self._factory))

    # -------------------------------------------------- the simulator's side

    def drive(self, pin: int, high: bool) -> None:
        """Set a simulated input pin (the world's PIR). Only with the mock."""
        pin_obj = self._mock_pin(pin)
        if high:
            pin_obj.drive_high()
        else:
            pin_obj.drive_low()

    def level(self, pin: int) -> bool:
        """A simulated pin's electrical level (an output's, as a meter would read)."""
        return bool(self._mock_pin(pin).state)

    def _mock_pin(self, pin: int) -> Any:
        if not self.backend.simulated:
            raise RuntimeError("only simulated pins can be driven or read back")
        return self._factory.pin(pin)

    def close(self) -> None:
        if self._factory is not None:
            self._factory.close()
