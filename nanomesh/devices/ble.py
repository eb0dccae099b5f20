"""Bluetooth LE through bleak: the pulse oximeter's notifications, and
scanning for beacon tags.

bleak is asyncio; services here are trio. Each BLE session runs in its own
thread with its own asyncio loop (`_in_asyncio_thread`), handing data to trio
through a memory channel, so no trio-asyncio bridge is shared with the SDK's
CoAP endpoints. Both backends run bleak's own ``BleakClient`` and
``BleakScanner``; the simulated one passes ``backend=`` a fake class
(`sim_client_backend`, `sim_scanner_backend`) that bleak drives exactly like
BlueZ's, fed from the simulated world:

- the fake oximeter connects only when the world has it switched on, offers
  the BM1000's GATT service and notifies a packet (`berrymed.encode_packet`)
  every `SIM_NOTIFY_PERIOD`, so the real decoder runs on real bytes;
- the fake scanner reports, while it scans, an iBeacon advertisement for each
  tag the world puts near this radio.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import trio

from nanomesh.devices import berrymed
from nanomesh.devices.backend import BLE, Backend, select
from nanomesh.devices.simworld import SimWorld

log = logging.getLogger("nanomesh.devices")

SIM_NOTIFY_PERIOD = 0.5
"""Seconds between two simulated oximeter notifications (the BM1000 sends
about 60 packets a second; a service only needs the latest, and fewer keep
the simulation cheap)."""
SIM_ADVERTISE_PERIOD = 0.5
"""Seconds between two simulated advertisements of a tag (beacons advertise
every 100 ms-1 s)."""
RECONNECT_DELAY = 1.0
"""Seconds before connecting to the oximeter again after a failure or a
disconnect (it is out of range, switched off, or held by another host)."""
CONNECT_TIMEOUT = 10.0
"""Seconds bleak may take to connect (BlueZ needs a scan first: a few s)."""

APPLE = 0x004C
"""Bluetooth SIG company id of Apple, whose manufacturer data carries iBeacons."""


# ------------------------------------------------------------------ iBeacon (pure)


def ibeacon_data(tag_uuid: str, major: int = 0, minor: int = 0, tx_power: int = -59) -> bytes:
    """An iBeacon's manufacturer data (after the company id)."""
    return (bytes([0x02, 0x15]) + uuid.UUID(tag_uuid).bytes + major.to_bytes(2, "big")
            + minor.to_bytes(2, "big") + (tx_power & 0xFF).to_bytes(1, "big"))


def ibeacon_uuid(manufacturer_data: dict[int, bytes]) -> str | None:
    """The proximity UUID of an iBeacon advertisement, None for anything else."""
    data = manufacturer_data.get(APPLE)
    if data is None or len(data) != 23 or data[:2] != b"\x02\x15":
        return None
    return str(uuid.UUID(bytes=bytes(data[2:18])))


# ------------------------------------------------------------------ fake backends


def sim_client_backend(sim: SimWorld) -> type[Any]:
    """A bleak client backend class whose peripheral is the world's oximeter."""
    from bleak.backends.characteristic import BleakGATTCharacteristic
    from bleak.backends.client import BaseBleakClient
    from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
    from bleak.exc import BleakDeviceNotFoundError

    class SimOximeterClient(BaseBleakClient):
        def __init__(self, address_or_ble_device: Any, **kwargs: Any) -> None:
            super().__init__(address_or_ble_device, disconnected_callback=kwargs.get(
                "disconnected_callback"), timeout=kwargs.get("timeout", CONNECT_TIMEOUT))
            self._connected = False
            self._task: asyncio.Task[None] | None = None

        @property
        def mtu_size(self) -> int:
            return 23

        @property
        def name(self) -> str:
            return "BerryMed (simulated)"

        async def connect(self, pair: bool, **kwargs: Any) -> None:
            if self.address.upper() not in sim.now().oximeters:
                raise BleakDeviceNotFoundError(self.address, "simulated oximeter is off")
            services = BleakGATTServiceCollection()
            service = BleakGATTService(None, 10, berrymed.SERVICE_UUID)
            services.add_service(service)
            services.add_characteristic(BleakGATTCharacteristic(
                None, 11, berrymed.NOTIFY_UUID, ["notify"], lambda: 20, service))
            self.services = services
            self._connected = True

        async def disconnect(self) -> None:
            self._connected = False
            if self._task is not None:
                self._task.cancel()

        async def pair(self, *args: Any, **kwargs: Any) -> None:
            return None

        async def unpair(self) -> None:
            return None

        @property
        def is_connected(self) -> bool:
            return self._connected

        async def read_gatt_char(self, characteristic: Any, **kwargs: Any) -> bytearray:
            raise NotImplementedError("the BM1000 only notifies")

        async def read_gatt_descriptor(self, descriptor: Any, **kwargs: Any) -> bytearray:
            raise NotImplementedError("the BM1000 only notifies")

        async def write_gatt_char(self, characteristic: Any, data: Any,
                                  response: bool) -> None:
            return None

        async def write_gatt_descriptor(self, desc: Any, data: Any) -> None:
            return None

        async def start_notify(self, characteristic: Any, callback: Callable[[bytearray], None],
                               **kwargs: Any) -> None:
            self._task = asyncio.get_running_loop().create_task(self._notify(callback))

        async def stop_notify(self, characteristic: Any) -> None:
            if self._task is not None:
                self._task.cancel()

        async def _notify(self, callback: Callable[[bytearray], None]) -> None:
            while self._connected:
                vitals = sim.now().oximeters.get(self.address.upper())
                if vitals is None:  # switched off or out of range: the link drops
                    self._connected = False
                    if self._disconnected_callback is not None:
                        self._disconnected_callback()
                    return
                callback(bytearray(berrymed.encode_packet(
                    vitals.spo2, vitals.pulse, finger=vitals.finger)))
                await asyncio.sleep(SIM_NOTIFY_PERIOD)

    return SimOximeterClient


def sim_scanner_backend(sim: SimWorld, radio: str) -> type[Any]:
    """A bleak scanner backend class that hears the world's tags near ``radio``."""
    from bleak.backends.device import BLEDevice
    from bleak.backends.scanner import AdvertisementData, BaseBleakScanner

    class SimScanner(BaseBleakScanner):
        def __init__(self, detection_callback: Any, service_uuids: Any, *args: Any,
                     **kwargs: Any) -> None:
            super().__init__(detection_callback, service_uuids)
            self._task: asyncio.Task[None] | None = None

        async def start(self) -> None:
            self.seen_devices = {}
            self._task = asyncio.get_running_loop().create_task(self._advertise())

        async def stop(self) -> None:
            if self._task is not None:
                self._task.cancel()

        async def _advertise(self) -> None:
            while True:
                for tag in sorted(sim.now().tags_near.get(radio, ())):
                    address = "SIM:" + tag[:8].upper()
                    adv = AdvertisementData(
                        local_name=None, manufacturer_data={APPLE: ibeacon_data(tag)},
                        service_data={}, service_uuids=[], tx_power=-59, rssi=-60,
                        platform_data=())
                    device = self.create_or_update_device(address, address, None, None, adv)
                    self.call_detection_callbacks(device, adv)
                await asyncio.sleep(SIM_ADVERTISE_PERIOD)

    _ = BLEDevice  # the fake builds devices through create_or_update_device
    return SimScanner


# ------------------------------------------------------------------ trio side


async def _in_asyncio_thread(main: Callable[[threading.Event], Coroutine[Any, Any, None]]
                             ) -> None:
    """Run ``main(stop)`` on an asyncio loop in a worker thread; a trio
    cancellation sets ``stop`` and waits for the coroutine to see it."""
    stop = threading.Event()

    def run() -> None:
        # A plain selector loop in an empty context: trio-asyncio (the SDK's
        # CoAP endpoints) installs a global policy whose loops run trio, from
        # which the callbacks could not hand data to our trio run.
        with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
            contextvars.Context().run(runner.run, main(stop))

    async def stop_when_cancelled() -> None:
        try:
            await trio.sleep_forever()
        finally:
            stop.set()  # the coroutine sees it within 0.1 s and returns

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop_when_cancelled)
        try:
            await trio.to_thread.run_sync(run, abandon_on_cancel=False)
        finally:
            nursery.cancel_scope.cancel()


async def _until(stop: threading.Event, also: Callable[[], bool] = lambda: False) -> None:
    while not stop.is_set() and not also():
        await asyncio.sleep(0.1)


class PulseOximeter:
    """A BM1000 at ``address``; `run` hands over what it measures."""

    def __init__(self, address: str, backend: Backend | None = None,
                 sim: SimWorld | None = None) -> None:
        self.address = address
        self.backend = backend or select(BLE)
        if self.backend.simulated and sim is None:
            raise ValueError("a simulated oximeter needs the simulated world")
        self._client_backend = sim_client_backend(sim) if sim is not None and \
            self.backend.simulated else None
        self.stream = berrymed.PacketStream()
        self.connected = False

    async def run(self, on_reading: Callable[[berrymed.OximeterReading], None]) -> None:
        """Connect (again after every failure, `RECONNECT_DELAY` apart) and
        call ``on_reading`` with each decoded reading, until cancelled."""
        send, receive = trio.open_memory_channel[bytes](64)
        token = trio.lowlevel.current_trio_token()

        def on_data(_: Any, data: bytearray) -> None:
            # trio behind (or gone): a later packet says the same
            with contextlib.suppress(trio.WouldBlock, trio.RunFinishedError):
                trio.from_thread.run_sync(send.send_nowait, bytes(data), trio_token=token)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._sessions, on_data)
            async for data in receive:
                for reading in self.stream.feed(data):
                    on_reading(reading)

    async def _sessions(self, on_data: Callable[[Any, bytearray], None]) -> None:
        from bleak import BleakClient
        from bleak.exc import BleakError

        async def session(stop: threading.Event) -> None:
            kwargs: dict[str, Any] = {"timeout": CONNECT_TIMEOUT}
            if self._client_backend is not None:
                kwargs["backend"] = self._client_backend
            async with BleakClient(self.address, **kwargs) as client:
                await client.start_notify(berrymed.NOTIFY_UUID, on_data)
                self.connected = True
                log.info("oximeter %s connected (%s)", self.address, self.backend.name)
                await _until(stop, lambda: not client.is_connected)

        while True:
            try:
                await _in_asyncio_thread(session)
                log.info("oximeter %s disconnected", self.address)
            except* (BleakError, TimeoutError, OSError) as group:
                log.info("oximeter %s: %s; retrying in %.0f s", self.address,
                         group.exceptions[0], RECONNECT_DELAY)
            self.connected = False
            await trio.sleep(RECONNECT_DELAY)


async def scan_tags(seconds: float, *, backend: Backend | None = None,
                    sim: SimWorld | None = None, radio: str = "") -> dict[str, int]:
    """Scan for ``seconds``; the iBeacon UUIDs heard, with their best RSSI.
    ``radio``: this scanner's id in the simulated world."""
    from bleak import BleakScanner

    backend = backend or select(BLE)
    heard: dict[str, int] = {}

    def seen(device: Any, adv: Any) -> None:
        tag = ibeacon_uuid(adv.manufacturer_data)
        if tag is not None:
            heard[tag] = max(adv.rssi, heard.get(tag, -200))

    async def scan(stop: threading.Event) -> None:
        kwargs: dict[str, Any] = {}
        if backend.simulated:
            if sim is None:
                raise ValueError("a simulated scan needs the simulated world")
            kwargs["backend"] = sim_scanner_backend(sim, radio)
        async with BleakScanner(seen, **kwargs):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_until(stop), seconds)

    await _in_asyncio_thread(scan)
    return heard
