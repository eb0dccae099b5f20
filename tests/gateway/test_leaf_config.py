"""``peer.leaf_keys``: the leaves' key file in the peer config, read before
the daemon starts anything (`nanomesh.daemon.assemble.leaf_endpoint`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nanomesh.config import build_config
from nanomesh.daemon.assemble import leaf_endpoint
from nanomesh.errors import ConfigError


def config(tmp_path: Path, peer: str) -> Path:
    path = tmp_path / "peer.toml"
    path.write_text(f"[peer]\n{peer}\n")
    return path


def test_a_peer_with_a_key_file_takes_those_leaves(tmp_path: Path) -> None:
    keys = tmp_path / "leaf.keys"
    keys.write_text("bed-1 " + "ab" * 16 + "\n")
    cfg = build_config(config_file=config(tmp_path, f'leaf_keys = "{keys}"'),
                       data_dir=tmp_path)
    assert cfg.leaf_keys == keys
    endpoint = leaf_endpoint(cfg)
    assert endpoint is not None and endpoint.keys == {"bed-1": b"\xab" * 16}


def test_no_key_file_no_leaves(tmp_path: Path) -> None:
    assert leaf_endpoint(build_config(data_dir=tmp_path)) is None


@pytest.mark.parametrize(("peer", "words"), [
    ('leaf_keys = "/nonexistent/leaf.keys"', "cannot read the leaf key file"),
    ("leaf_keys = 3", "peer.leaf_keys must be the path"),
    ('leaf_keys = "KEYS"\ncoap_port = 0', "needs the CoAP gateway"),
])
def test_bad_leaf_key_settings_are_one_clear_error(tmp_path: Path, peer: str,
                                                    words: str) -> None:
    (tmp_path / "KEYS").write_text("")
    peer = peer.replace("KEYS", str(tmp_path / "KEYS"))
    with pytest.raises(ConfigError, match=words):
        leaf_endpoint(build_config(config_file=config(tmp_path, peer), data_dir=tmp_path))
