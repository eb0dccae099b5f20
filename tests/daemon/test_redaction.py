"""What a reader without the management token sees (`nanomesh.security.auth`), and
the 401 texts (`nanomesh.daemon.api_auth`). Pure: no daemon."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from nanomesh.daemon.api_auth import refusal
from nanomesh.daemon.http import Request
from nanomesh.runtime.manifest import ManifestError, manifest_from_document, service_document
from nanomesh.security.auth import REDACTED, redact_registry_entry, redact_service

MANIFEST = {"name": "counter", "version": "1.0", "run": {
    "command": ["python3", "counter.py"], "env": {"API_KEY": "s3cret", "MODE": "fast"}},
    "state": "c2VjcmV0IHN0YXRl"}


def doc() -> dict[str, Any]:
    return service_document(MANIFEST)


def test_state_and_environment_values_are_withheld_and_named() -> None:
    full = doc()
    before = copy.deepcopy(full)
    shown = redact_service(full)
    assert "state" not in shown
    assert shown["run"]["env"] == {"API_KEY": REDACTED, "MODE": REDACTED}
    assert shown["run"]["command"] == full["run"]["command"]
    assert shown["redacted"] == ["state", "run.env"]
    assert "s3cret" not in repr(shown) and full["state"] not in repr(shown)
    assert full == before  # the replicated document is never touched


def test_a_document_without_secrets_is_shown_as_is() -> None:
    plain = service_document({"name": "echo", "run": {"command": ["echo"]}})
    assert redact_service(plain) == plain


def test_a_redacted_document_cannot_be_deployed_back() -> None:
    """Deploying what an outsider saw would replace the real environment
    with "(redacted)"; the marker field makes that a manifest error."""
    with pytest.raises(ManifestError, match="redacted"):
        service_document(manifest_from_document(redact_service(doc())))


def test_registry_entries_hide_their_service_environment() -> None:
    entry = {"name": "counter", "version": "1.0", "sha256": "a" * 64, "service": doc()}
    shown = redact_registry_entry(entry)
    assert shown["service"]["run"]["env"]["API_KEY"] == REDACTED
    assert entry["service"]["run"]["env"]["API_KEY"] == "s3cret"


def request(method: str, path: str) -> Request:
    return Request(method, path, "", {}, b"")


def test_a_read_refusal_says_it_is_a_read_and_names_the_token() -> None:
    text = refusal(request("GET", "/v1/instances/counter/0/logs"), "the log of counter/0")
    assert text.startswith("reading the log of counter/0 needs the mesh's management token")
    assert "changes the mesh" not in text and "--token-file" in text
    assert refusal(request("GET", "/v1/bundles")).startswith("reading /v1/bundles")


def test_a_write_refusal_says_it_changes_the_mesh() -> None:
    assert "changes the mesh" in refusal(request("POST", "/v1/services"))


class _Registry:
    def __init__(self, entries: dict[str, dict[str, Any]]) -> None:
        self.data = entries

    def entries(self) -> dict[str, dict[str, Any]]:
        return self.data

    async def put(self, key: str, entry: dict[str, Any] | None) -> None:
        raise AssertionError("a read writes nothing")

    def holders(self) -> dict[str, list[str]]:
        return {}


async def test_the_registry_listing_shows_environments_to_the_operator_only(
        tmp_path: Any) -> None:
    from nanomesh.bundles import BundleStore, registry_entry
    from nanomesh.daemon.api_bundles import registry_routes
    from nanomesh.daemon.http import HttpError

    def authorize_management(request: Request) -> None:
        if request.bearer_token() != "mgmt":
            raise HttpError(401, refusal(request))

    entry = registry_entry(doc(), "a" * 64, 10, "peer-a")
    routes = registry_routes(BundleStore(tmp_path), _Registry({"counter@1.0": entry}),
                             authorize_management, "peer-a")
    listing = routes[("GET", "/v1/registry")]
    _, anonymous = await listing(request("GET", "/v1/registry"))
    assert anonymous[0]["service"]["run"]["env"] == {"API_KEY": REDACTED, "MODE": REDACTED}
    operator = Request("GET", "/v1/registry", "", {"authorization": "Bearer mgmt"}, b"")
    _, full = await listing(operator)
    assert full[0]["service"]["run"]["env"]["API_KEY"] == "s3cret"
