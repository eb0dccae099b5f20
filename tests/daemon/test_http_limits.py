"""The API server's admission decisions (`nanomesh.daemon.http_limits`), pure:
connection ids and client addresses in, decisions out."""

from __future__ import annotations

import pytest

from nanomesh.daemon.http_limits import Admitted, ConnectionTable, Refused, ServerLimits


def table(**limits: int) -> ConnectionTable:
    return ConnectionTable(ServerLimits(**limits))  # type: ignore[arg-type]


def test_a_client_over_its_limit_is_refused_429_and_others_are_not() -> None:
    t = table(max_per_client=2, max_open=10)
    assert t.open(1, "10.0.0.1") == Admitted() and t.open(2, "10.0.0.1") == Admitted()
    refused = t.open(3, "10.0.0.1")
    assert isinstance(refused, Refused) and refused.status == 429
    assert "10.0.0.1" in refused.reason
    assert t.open(4, "10.0.0.2") == Admitted()
    assert len(t) == 3 and t.from_client("10.0.0.1") == 2


def test_closing_frees_the_clients_place() -> None:
    t = table(max_per_client=1, max_open=10)
    t.open(1, "a")
    t.close(1)
    t.close(1)  # idempotent
    assert t.open(2, "a") == Admitted() and t.from_client("a") == 1


def test_when_full_the_oldest_pending_connection_is_evicted() -> None:
    """A new client is never locked out by connections that sent no head."""
    t = table(max_per_client=4, max_open=4)
    for conn, client in ((1, "a"), (2, "b"), (3, "c"), (4, "d")):
        t.open(conn, client)
    t.head_complete(1)  # active: never evicted
    assert t.open(5, "e") == Admitted(evict=2)
    assert not t.is_open(2) and t.is_open(1) and len(t) == 4
    assert t.from_client("b") == 0
    t.close(2)  # the evicted connection's own close later changes nothing
    assert len(t) == 4 and t.from_client("e") == 1


def test_when_full_of_active_requests_a_newcomer_gets_503() -> None:
    t = table(max_per_client=2, max_open=2)
    for conn in (1, 2):
        t.open(conn, "a")
        t.head_complete(conn)
    refused = t.open(3, "b")
    assert isinstance(refused, Refused) and refused.status == 503
    assert len(t) == 2 and t.from_client("b") == 0


def test_the_per_client_check_comes_before_eviction() -> None:
    """A client at its own limit cannot evict anybody."""
    t = table(max_per_client=2, max_open=2)
    t.open(1, "a")
    t.open(2, "a")
    refused = t.open(3, "a")
    assert isinstance(refused, Refused) and refused.status == 429
    assert t.is_open(1) and t.is_open(2)


@pytest.mark.parametrize("bad", [{"head_timeout": 0}, {"max_open": 0},
                                 {"max_per_client": 5, "max_open": 4},
                                 {"reserved_requests": 0}])
def test_impossible_limits_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ServerLimits(**bad)  # type: ignore[arg-type]
