"""Who is calling the HTTP API and what they may do: the daemon's one place
for checking credentials (the rules and the redaction are in
`nanomesh.security.auth`).

Callers, by the bearer token they present:

- the **operator**: the management token (checked against the SHA-256 that
  the founder committed to Raft, so every peer can check it); may do
  anything and read everything;
- an **instance**: its own ``NANOMESH_INSTANCE_TOKEN`` (known only to the
  peer that runs it); may read and save its own state blob;
- another **peer**: a token that signs the very request with a key derived
  from the cluster key (`nanomesh.security.auth.internal_token`; any installed key's
  counts, each token once), for bundle transfers, Raft role calls and key
  rotation (`require_member`);
- **anyone**: open reads, with secrets redacted (`nanomesh.security.auth`);
  ``GET /v1/metrics`` too, unless the peer's config says otherwise
  (`Access.authorize_metrics`).

Every refusal is an HttpError 401 whose text says which credential the call
needs and how to pass it (a read says "reading ...", a write "this call
changes the mesh"); `nanomesh.daemon.http` adds ``WWW-Authenticate: Bearer
realm="nanomesh"`` to every 401. 503 while the mesh has no token committed
yet (no leader has ever been elected), since nobody can be checked then.

`Access` holds every decision; the composition root
(`nanomesh.daemon.assemble`) builds one from the keyring, the internal-call
nonce cache and the source of the committed token digest (this peer's
consensus node), and hands it to each route group. Bundle uploads are
admitted here too (`Access.may_upload`), before a byte of the body is read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from nanomesh.consensus.role_manager import Replica
from nanomesh.daemon.http import HttpError, Request, bearer_token
from nanomesh.daemon.views import NodeSource
from nanomesh.security.auth import (
    TOKEN_META_KEY,
    InternalCalls,
    read_refusal,
    secret_matches,
    token_matches,
    write_refusal,
)
from nanomesh.wire import Keyring


def running_node(node: Replica | None) -> Replica:
    """``node`` if it runs, else 503."""
    if node is None or not node.running:
        raise HttpError(503, "this peer's consensus node is not running yet")
    return node


class Access:
    """Who is calling and what they may do (see the module docstring)."""

    def __init__(self, keyring: Keyring, internal_calls: InternalCalls, node: NodeSource,
                 instance_token: Callable[[str], str | None], *,
                 metrics_need_token: bool = False) -> None:
        self._keyring = keyring
        self._metrics_need_token = metrics_need_token
        """`nanomesh.config.PeerConfig.metrics_need_token`."""
        self._internal_calls = internal_calls
        self._node = node
        """Where the committed token digest lives (its replicated meta)."""
        self._instance_token = instance_token
        """The token of an instance this peer runs (None: not ours)."""

    def running_node(self) -> Replica:
        """This peer's consensus node, or 503."""
        return running_node(self._node())

    def is_member(self, request: Request) -> bool:
        """Whether ``request`` comes from another peer of this mesh: its token
        signs this very request (`nanomesh.security.auth.internal_token`)."""
        return self._internal_calls.check(request.bearer_token(), self._keyring,
                                          request.method, request.path, request.body)

    def require_member(self, request: Request) -> None:
        """401 unless ``request`` comes from another peer of this mesh."""
        if not self.is_member(request):
            raise HttpError(401, "internal calls need a secret derived from the mesh's "
                            "cluster key; they are made by peers, not by people")

    def require_management_token(self, request: Request, what: str | None = None
                                 ) -> Replica:
        """The consensus node, if ``request`` carries the management token; else
        401 saying so: for a GET, that reading ``what`` (default: the path)
        needs the token; for anything else, that the call changes the mesh."""
        n = self.running_node()
        if not has_management_token(n, request):
            raise HttpError(401, refusal(request, what))
        return n

    def require_member_or_operator(self, request: Request) -> None:
        """Another peer (internal secret) or the operator (management token):
        who may move bundles, since a bundle is code that peers will run."""
        if not self.is_member(request):
            self.require_management_token(request)

    def authorize_metrics(self, request: Request) -> None:
        """May `request` read ``GET /v1/metrics``? Like Consul's
        ``/v1/agent/metrics``, which needs a token with ``agent:read`` once ACLs
        are on: nanomesh has one token and no read-only one, and its rule for
        reads is "open unless they may hold secrets" (`nanomesh.security.auth`).
        The metrics hold none (counters, states, names already open in
        ``/v1/health`` and ``/v1/members``), while a Prometheus server given
        the management token could deploy code on every device. So they are
        open by default, and a peer configured with ``metrics_need_token``
        answers 401 without the management token (503 before one is
        committed, as every checked read)."""
        if self._metrics_need_token:
            self.require_management_token(request, "the metrics")

    def reader_sees_secrets(self, request: Request) -> bool:
        """Whether a read may show secrets (state blobs, environments): only to
        the operator. Never raises: without a running node or a committed token
        nobody can be checked, and the reader sees the redacted view."""
        n = self._node()
        if n is None or not n.running:
            return False
        digest = n.state.meta.get(TOKEN_META_KEY)
        return isinstance(digest, str) and token_matches(request.bearer_token(), digest)

    def may_upload(self, headers: Mapping[str, str]) -> bool:
        """Whether a bundle upload may send its body (judged on the head
        alone): only the operator uploads bundles (peers fetch them with GET).
        503 while no token is committed (a mesh electing its first leader),
        as for every other call that needs the token: the caller retries."""
        node = self._node()  # running or not: its last committed digest
        digest = node.state.meta.get(TOKEN_META_KEY) if node is not None else None
        if not isinstance(digest, str):
            raise HttpError(503, "the mesh has no management token committed yet "
                            "(is a Raft leader elected?)")
        return token_matches(bearer_token(headers), digest)

    def authorize_instance(self, request: Request, iid: str) -> Replica:
        """The consensus node, if the caller is instance ``iid`` itself (its own
        token) or the operator (the management token); else 401."""
        node = self.running_node()
        own = self._instance_token(iid)
        if own is not None and secret_matches(request.bearer_token() or "", own):
            return node
        if has_management_token(node, request):
            return node
        verb = "read" if request.method == "GET" else "save"
        raise HttpError(401, f"only instance {iid} itself (NANOMESH_INSTANCE_TOKEN) or the "
                        f"operator (the management token: --token, $NANOMESH_TOKEN or "
                        f"--token-file) may {verb} its state")


def has_management_token(node: Replica, request: Request) -> bool:
    """Whether ``request`` carries the mesh's management token (503 if the mesh
    has none committed yet)."""
    digest = node.state.meta.get(TOKEN_META_KEY)
    if not isinstance(digest, str):
        raise HttpError(503, "the mesh has no management token committed yet "
                        "(is a Raft leader elected?)")
    return token_matches(request.bearer_token(), digest)


def refusal(request: Request, what: str | None = None) -> str:
    """The 401 text for ``request`` (see `Access.require_management_token`)."""
    if request.method in ("GET", "HEAD"):
        return read_refusal(what or request.path)
    return write_refusal()
