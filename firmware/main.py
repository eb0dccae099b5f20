# Entry point on the board (MicroPython runs main.py after boot.py): read
# config.json, join Wi-Fi if configured, then report forever. Under the unix
# port (tests) there is no `network` module and the host is already online.
import json

import leaf


def connect_wifi(wifi):
    import time

    import network

    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    if not wlan.isconnected():
        wlan.connect(wifi["ssid"], wifi["password"])
        for _ in range(200):  # 20 s, then carry on: the leaf buffers until a peer answers
            if wlan.isconnected():
                break
            time.sleep_ms(100)
    leaf.log("wifi", wlan.ifconfig()[0] if wlan.isconnected() else "not connected")


def main(path="config.json"):
    with open(path) as f:
        cfg = json.load(f)
    if cfg.get("wifi"):
        connect_wifi(cfg["wifi"])
    leaf.Leaf(cfg).run()


if __name__ == "__main__":
    import sys

    main(sys.argv[1] if len(sys.argv) > 1 else "config.json")
