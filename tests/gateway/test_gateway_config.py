"""``coap_port`` in the peer config: default, TOML key, 0 = no gateway, bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from nanomesh.config import DEFAULT_COAP_PORT, build_config
from nanomesh.errors import ConfigError


def config_with(tmp_path: Path, line: str) -> Path:
    path = tmp_path / "peer.toml"
    path.write_text(f'[peer]\nname = "a"\nbind = "127.0.50.9"\n{line}\n')
    return path


def test_coap_port_default_file_and_flag(tmp_path: Path) -> None:
    assert build_config(bind="127.0.50.9", name="a").coap_port == DEFAULT_COAP_PORT == 5683
    assert build_config(config_file=config_with(tmp_path, "coap_port = 5690")).coap_port == 5690
    assert build_config(config_file=config_with(tmp_path, "coap_port = 0")).coap_port == 0
    assert build_config(config_file=config_with(tmp_path, "coap_port = 5690"),
                        coap_port=0).coap_port == 0


@pytest.mark.parametrize(("line", "message"), [
    ('coap_port = "5683"', "peer.coap_port must be a port"),
    ("coap_port = 70000", "peer.coap_port must be a port"),
    ("coap_port = true", "peer.coap_port must be a port"),
    ("coap_port = 7946", "coap port 7946 is the gossip port"),
])
def test_bad_coap_port_is_refused(tmp_path: Path, line: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config(config_file=config_with(tmp_path, line))
