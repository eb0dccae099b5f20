"""``nanomesh peer``: run the peer daemon (``peer run``) and rebuild the
control plane from a stopped peer (``peer recover``)."""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path
from typing import Any

from nanomesh.cli.logformat import LOG_FORMATS, log_handler
from nanomesh.errors import ConfigError
from nanomesh.gossip.config import PRESETS

# The daemon, trio and the consensus package are imported inside the
# commands: they take a good part of a second to load, which `nanomesh
# --help` and every other command should not pay.


def register(subparsers: Any) -> None:
    """Add ``peer run`` and ``peer recover`` to the top-level ``subparsers``."""
    peer = subparsers.add_parser("peer", help="run the peer daemon").add_subparsers(
        metavar="ACTION")
    run = peer.add_parser("run", help="run a peer in the foreground (logs to stderr)",
                          description="Run a peer in the foreground. Logs go to stderr; "
                          "SIGINT/SIGTERM leave the mesh gracefully and exit.")
    run.add_argument("--name", help="peer name, unique in the mesh (default: host name)")
    run.add_argument("--bind", metavar="IP[:PORT]",
                     help="gossip address, UDP and TCP (default 127.0.0.1:7946)")
    run.add_argument("--join", metavar="IP[:PORT]", action="append",
                     help="seed peer to join through; repeatable. Retried until one answers")
    run.add_argument("--data-dir", type=Path, metavar="DIR",
                     help="state directory (default /var/lib/nanomesh/NAME as root, "
                     "else ~/.local/share/nanomesh/NAME)")
    run.add_argument("--config", type=Path, metavar="FILE",
                     help="peer config TOML (see peers/*.toml); flags override it")
    run.add_argument("--key-file", type=Path, metavar="FILE",
                     help="cluster keyring: base64 keys, one per line, primary first "
                     "(nanomesh keygen). Required to --join; the first peer without one "
                     "generates DATA_DIR/cluster.key, to copy to the other devices")
    run.add_argument("--api-port", type=int, metavar="PORT", help="HTTP API port (default 7947)")
    run.add_argument("--coap-port", type=int, metavar="PORT",
                     help="CoAP gateway port, UDP (default 5683; 0: no gateway)")
    run.add_argument("--container-engine", choices=["auto", "runc", "podman", "docker"],
                     help="engine for container services (default auto: runc for a rootfs, "
                     "podman then docker for an image, whichever really works here)")
    run.add_argument("--install-root", type=Path, metavar="DIR",
                     help="the install root `nanomesh upgrade` may install new versions "
                     "into and switch (install.sh: /opt/nanomesh); default: none, upgrades "
                     "through the mesh are refused")
    run.add_argument("--gossip-preset", choices=list(PRESETS),
                     help="timing preset (default lan; see nanomesh/gossip/config.py)")
    run.add_argument("--no-ui", dest="ui", action="store_false", default=None,
                     help="do not serve the web dashboard at http://IP:API_PORT/ui/ "
                     "(default: served; read-only without the management token)")
    run.add_argument("--log-level", default=os.environ.get("NANOMESH_LOG_LEVEL", "INFO"),
                     choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    run.add_argument("--log-format", choices=LOG_FORMATS,
                     default=os.environ.get("NANOMESH_LOG_FORMAT", "text"),
                     help="text (default, $NANOMESH_LOG_FORMAT) or json: one object per "
                     "line with ts, level, logger, msg, peer and any extra fields")
    run.set_defaults(func=_peer_run)
    recover = peer.add_parser(
        "recover", help="rebuild the control plane from this stopped peer when a majority "
        "of the Raft voters is lost for good",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Operator recovery, like Consul's peers.json or etcd's "
        "--force-new-cluster. Run it on a STOPPED peer that was a voter: without --yes it "
        "only reports what that peer's journal holds (run it on every survivor and pick the "
        "highest commit index); with --yes it asks the peer to become, at its next start, "
        "the only voter of a new control plane that keeps its committed state (services, "
        "their saved state, plan, registry, management token). The other peers rejoin and "
        "are promoted again by themselves.",
        epilog="steps: systemctl stop nanomesh; nanomesh peer recover --data-dir DIR; "
        "nanomesh peer recover --data-dir DIR --yes; systemctl start nanomesh")
    recover.add_argument("--data-dir", type=Path, metavar="DIR", required=True,
                         help="the stopped peer's data directory (as given to `peer run`)")
    recover.add_argument("--yes", action="store_true",
                         help="really request the recovery (default: only report)")
    recover.set_defaults(func=_peer_recover)


def _peer_run(args: argparse.Namespace) -> int:
    import trio

    from nanomesh.config import build_config
    from nanomesh.consensus.recovery import hold_lock
    from nanomesh.daemon.assemble import PeerAssembly
    from nanomesh.daemon.profile import ProfileSource
    from nanomesh.security.keys import resolve_keyring

    config = build_config(config_file=args.config, name=args.name, bind=args.bind,
                          join=args.join, data_dir=args.data_dir, key_file=args.key_file,
                          api_port=args.api_port, gossip_preset=args.gossip_preset,
                          coap_port=args.coap_port, container_engine=args.container_engine,
                          ui=args.ui, install_root=args.install_root)
    logging.basicConfig(level=args.log_level,
                        handlers=[log_handler(args.log_format, config.name)])
    # One daemon per data directory: say so in one line, before anything
    # starts (the role manager takes the same lock for good later).
    with hold_lock(config.data_dir / "consensus"):
        pass
    keyring, key_path = resolve_keyring(config)
    daemon = PeerAssembly(config, keyring, ProfileSource(config), key_path=key_path)
    try:
        trio.run(daemon.run)
    except OSError as exc:
        raise ConfigError(f"cannot start peer on {config.bind[0]}: {exc.strerror or exc}"
                          ) from None
    # RESTART_EXIT after an upgrade or a rollback: the supervisor starts us again.
    return daemon.exit_code


def _peer_recover(args: argparse.Namespace) -> int:
    from nanomesh.consensus import recovery
    from nanomesh.security.auth import TOKEN_META_KEY

    consensus_dir = Path(args.data_dir) / "consensus"
    with recovery.hold_lock(consensus_dir):  # refuses while the peer runs
        found = recovery.inspect(consensus_dir)
    st, status = found.state, found.status
    print(f"peer data   {args.data_dir}\nrole        {found.role} (generation "
          f"{found.generation})\nterm        {status.term}\ncommit      "
          f"{status.commit_index}\nrevision    {st.revision}\nplan epoch  "
          f"{st.plan_epoch}\nservices    {', '.join(sorted(st.services)) or '(none)'}\n"
          f"registry    {len(st.registry)} entries\ntoken hash  "
          f"{'yes' if TOKEN_META_KEY in st.meta else 'no'}\n")
    print(recovery.WARNING)
    if not args.yes:
        print("\nnothing changed; re-run with --yes to request the recovery")
        return 0
    recovery.request(consensus_dir, found.generation, time.time())
    print(f"\nrecovery requested ({consensus_dir / recovery.RECOVER_FILE}): start the "
          "peer; it becomes the only voter and the others follow it")
    return 0
