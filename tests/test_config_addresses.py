"""Where a peer's API is: what it advertises in its profile, else the default
port on its gossip IP (one rule for the daemon and the CLI)."""

from nanomesh.config import api_address, member_api


def test_api_address_prefers_the_advertised_one() -> None:
    assert api_address({"peer": {"api": "10.0.0.5:9000"}}, "10.0.0.5") == "10.0.0.5:9000"
    assert api_address({"peer": {"api": ""}}, "10.0.0.5") == "10.0.0.5:7947"
    assert api_address(None, "fe80::1") == "[fe80::1]:7947"


def test_member_api_reads_a_members_listing_entry() -> None:
    member = {"name": "a", "address": "127.0.0.3:7946", "profile": None}
    assert member_api(member) == "127.0.0.3:7947"
    assert member_api({**member, "profile": {"peer": {"api": "127.0.0.3:8000"}}}) \
        == "127.0.0.3:8000"
    assert member_api({**member, "profile": "garbage"}) == "127.0.0.3:7947"
