"""The web dashboard in a real browser (issue 13): headless Chromium, driven
by selenium, against a real three-peer mesh.

The page loads from a peer's API port and shows the members with their
profile facts, the leader and a deployed service's instances; its live
stream is on. A peer hosting an instance is SIGKILLed: the page shows it
suspect or dead and the instance moved to another peer, and the events list
says so, without a reload. Without the token the write buttons are off;
with the token typed in, "idle" goes through the API. A peer label holding
markup is shown as text (no element is made of it). A screenshot of the
final page is saved under the test's tmp directory. With every stream slot
of the peer taken, a new page falls back to polling and still shows the events.

Skipped when chromium or chromedriver is missing (Debian: ``apt install
chromium chromium-driver``), except where tools are required
(``NANOMESH_REQUIRE_NETNS=1``, as .ci/run sets as root, where
.ci/apt-packages.txt installs them): there their absence is a failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from mesh_harness import Cluster, Peer
from test_control_plane import deploy, read_token_when_ready, wait_agreed, wait_service

from nanomesh.daemon.http_limits import ServerLimits

pytestmark = pytest.mark.integration

PAGE_TIMEOUT = 30.0
"""Bound of one wait on the page: generous, never a speed claim."""
HOSTILE_LABEL = '<img src=x id=pwned onerror="document.title=1">'
INSTANCE_SCRIPT = "import time\nwhile True:\n    time.sleep(0.5)\n"


def find_browser() -> tuple[str, str]:
    """(chromium, chromedriver) paths, or skip (fail where tools are required)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        driver = None
    if browser and driver:
        return browser, driver
    reason = ("headless Chromium is not available (Debian: apt install chromium "
              "chromium-driver; pip install selenium)")
    if os.environ.get("NANOMESH_REQUIRE_NETNS") == "1":
        pytest.fail(f"NANOMESH_REQUIRE_NETNS=1 (CI) but {reason}")
    pytest.skip(reason)


@pytest.fixture
def browser() -> Iterator[Any]:
    chromium, chromedriver = find_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1100", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_page(driver: Any, predicate: Callable[[], Any], what: str,
              timeout: float = PAGE_TIMEOUT) -> Any:
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    def check(_: Any) -> Any:
        try:
            return predicate()
        except WebDriverException:
            return None  # a row re-rendered under us: look again
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2).until(check)
    except Exception as exc:
        raise AssertionError(f"the page did not show {what} within {timeout:g} s; it shows:\n"
                             f"{driver.find_element('tag name', 'body').text}") from exc


def member_states(driver: Any) -> dict[str, str]:
    rows = driver.find_elements("css selector", "#members tbody tr")
    return {r.get_attribute("data-member"): r.get_attribute("data-state") for r in rows}


def instance_hosts(driver: Any, service: str) -> dict[str, tuple[str, str]]:
    """instance id -> (peer, state) as the page shows them."""
    lines = driver.find_elements("css selector",
                                 f'#services tr[data-service="{service}"] .instance')
    return {x.get_attribute("data-instance"): (x.get_attribute("data-peer"),
                                                x.get_attribute("data-state")) for x in lines}


def start_mesh(cluster: Cluster, tmp_path: Path) -> list[Peer]:
    """Three peers; the founder carries a label with markup in it."""
    config = tmp_path / "hostile.toml"
    config.write_text(f"[peer]\nlabels = {{ room = '{HOSTILE_LABEL}' }}\n")
    seed = cluster.add("peer-1", extra_args=["--config", str(config)])
    cluster.wait_api([seed])
    others = [cluster.add(f"peer-{i}", join=[seed.gossip]) for i in (2, 3)]
    peers = [seed, *others]
    cluster.wait_converged(peers)
    return peers


def test_the_dashboard_shows_a_peer_dying_and_its_instance_moving(
        cluster: Cluster, browser: Any, tmp_path: Path) -> None:
    peers = start_mesh(cluster, tmp_path)
    token = read_token_when_ready(cluster, peers[0])
    lead = wait_agreed(cluster, peers, min_voters=1)
    marker = f"dashboard-{os.getpid()}-{tmp_path.name}"
    deploy(cluster, peers[0], {
        "name": "mover", "version": "1.0.0", "kind": "process", "replicas": 2,
        "run": {"command": [sys.executable, "-c", INSTANCE_SCRIPT, marker]},
        "requires": {"cpu": 0.05, "memory_mb": 8}, "placement": {"spread": True}}, token)
    hosts = wait_service(cluster, peers[0], "mover", 2, marker, peers)
    leader = next(p for p in peers if f"{p.ip}:7948" == lead["leader"])
    # Watch from a peer that survives; kill one that hosts an instance and
    # does not lead (the move then needs no election first).
    victim_name = next(h for h, _ in sorted(hosts.values()) if h != leader.name)
    victim = next(p for p in peers if p.name == victim_name)
    observer = leader

    browser.get(f"http://{observer.api}/ui/")
    wait_page(browser, lambda: set(member_states(browser).values()) == {"alive"}
              and len(member_states(browser)) == 3, "three alive members")
    wait_page(browser, lambda: browser.find_element("id", "live").text == "live",
              "its event stream live")
    def leader_shown() -> bool:
        now = observer.get("/v1/status")["leader"]
        name = next((p.name for p in peers if f"{p.ip}:7948" == now), None)
        return name is not None and browser.find_element("id", "leader").text == name
    wait_page(browser, leader_shown, "the leader the peer reports")
    shown = wait_page(browser, lambda: len(instance_hosts(browser, "mover")) == 2
                      and instance_hosts(browser, "mover"), "mover's two instances")
    assert {peer for peer, _ in shown.values()} == {h for h, _ in hosts.values()}
    members_text = browser.find_element("id", "members").text
    assert HOSTILE_LABEL in members_text  # shown as text ...
    assert browser.find_elements("id", "pwned") == []  # ... and never made an element
    assert "2x" in members_text or "1x" in members_text  # profile facts: cpu cores
    buttons = browser.find_elements("css selector", '#services tr[data-service="mover"] button')
    assert buttons and all(not b.is_enabled() for b in buttons)  # read-only without token

    moved_iid = next(i for i, (h, _) in hosts.items() if h == victim.name)
    victim.kill()
    wait_page(browser, lambda: member_states(browser).get(victim.name) in ("suspect", "dead"),
              f"{victim.name} suspect or dead")
    wait_page(browser, lambda: instance_hosts(browser, "mover").get(moved_iid, ("", ""))[0]
              not in ("", victim.name), f"{moved_iid} moved off {victim.name}", timeout=45)
    wait_page(browser, lambda: "placement.moved" in browser.find_element("id", "events").text,
              "a placement.moved event")
    events = browser.find_element("id", "events").text
    assert f"{moved_iid}: moved {victim.name} -> " in events
    assert any(f"{kind} {victim.name}:" in events for kind in ("member.suspect", "member.dead"))

    # With the token typed in, a write goes through the API.
    browser.find_element("id", "token").send_keys(token)
    browser.find_element("id", "token-save").click()
    wait_page(browser, lambda: browser.find_element("id", "access").text.startswith("token set"),
              "the token accepted")

    def click_idle() -> bool:
        """The table is re-rendered as the mesh changes: a button found may be
        replaced before the click lands (stale); then look it up again."""
        button = next((b for b in browser.find_elements(
            "css selector", '#services tr[data-service="mover"] button')
            if b.text == "idle" and b.is_enabled()), None)
        if button is None:
            return False
        button.click()
        return True
    wait_page(browser, click_idle, "an enabled idle button, clicked")
    wait_page(browser, lambda: browser.find_element(
        "css selector", '#services tr[data-service="mover"] td:nth-child(3)').text == "idle",
        "mover's mode idle")
    screenshot = tmp_path / "dashboard.png"
    browser.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 10_000
    print(f"dashboard screenshot: {screenshot}")

    # When the peer refuses more streams, a new page polls the events instead.
    with hold_streams(observer, ServerLimits().max_streams):
        browser.switch_to.new_window("tab")
        browser.get(f"http://{observer.api}/ui/")
        wait_page(browser, lambda: browser.find_element("id", "live").text == "polling",
                  "the polling fallback")
        wait_page(browser, lambda: "placement.moved" in browser.find_element("id",
                                                                             "events").text,
                  "the events, polled")


@contextlib.contextmanager
def hold_streams(peer: Peer, n: int) -> Iterator[None]:
    """Open event streams to `peer` until it refuses one (at most `n`)."""
    held: list[socket.socket] = []
    try:
        for _ in range(n):
            sock = socket.create_connection((peer.ip, 7947), timeout=5)
            held.append(sock)
            sock.sendall(b"GET /v1/events?follow=1 HTTP/1.0\r\n\r\n")
            if not sock.recv(4096).startswith(b"HTTP/1.1 200"):
                break  # the page's own stream took the last slot
        yield
    finally:
        for sock in held:
            sock.close()
