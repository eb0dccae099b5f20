"""The `nanomesh` command line (`main`).

- `main`: the top-level parser and the dispatch, with the exit codes;
- `common`: what the commands share: the peer API to ask, the management
  token, tables;
- one module per command group, each with a ``register(subparsers)``:
  `peer` (``peer run``, ``peer recover``), `mesh` (``members``, ``profile``,
  ``services``, ``placement``, ``status``), `runtime` (``deploy``,
  ``undeploy``, ``activate``, ``idle``, ``logs``, ``resolve``, ``call``),
  `registry`, `keys` (and ``keygen``), `local` (``lab``, ``demo``),
  `release` (``release build``, ``version``);
- `lab` and `demo`: the local mesh of peer processes and the failover demo
  behind `local`'s commands; `release_bundle`: the release bundle behind
  ``release build``.

Imports go one way: `main` -> command modules -> `common` -> `lab`. Modules
outside the package that are slow to load (the daemon, trio, ZeroMQ, the
consensus package, the manifest loader) are imported inside the commands
that use them, so that ``nanomesh --help`` starts fast.
"""

from nanomesh.cli.main import main

__all__ = ["main"]
