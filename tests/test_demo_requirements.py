"""The demos on simulated hardware say up front when the device libraries
(the ``devices`` extra) are missing, instead of crash-looping services."""

from __future__ import annotations

import importlib.util

import pytest

from nanomesh.cli import local
from nanomesh.errors import ConfigError


def test_a_missing_device_library_is_named_with_the_install_command(
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "bleak" else real(name, *a))
    with pytest.raises(ConfigError, match=r"demo patient` needs bleak .*\.\[devices\]"):
        local._need_device_libraries("patient")


def test_with_the_libraries_installed_nothing_is_said() -> None:
    local._need_device_libraries("meeting-room")  # the test extra installs them
