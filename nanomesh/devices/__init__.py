"""Device drivers for nanoservices: GPIO (gpiozero), BLE (bleak), 1-Wire.

Each family has a real backend and a simulated one that runs the same driver
code (`backend` chooses and logs which); the simulated world (`world`, pure;
`simworld`, its shell) scripts what the simulated hardware reads. `berrymed`
decodes the pulse oximeter's packets, `w1` the DS18B20's file; `alert_core`
decides when vital signs call for an alert and `outbox` keeps alerts on disk
until they are delivered. A library for services: it sits beside ``sdk`` and
imports nothing above it.
"""
