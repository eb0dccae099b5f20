"""The runtime: the only code that spawns nanoservice instances.

The daemon decides *what* should run here with the pure
:func:`nanomesh.reconcile.reconcile` and carries out its effects through a
driver (:func:`execute`). Drivers implement :class:`InstanceDriver`:

* :class:`ProcessDriver`: each instance a process group led by a small
  supervisor shim, so the whole tree is stopped on request and killed if the
  daemon dies, even by SIGKILL (:mod:`nanomesh.runtime.shim` explains the
  choice);
* a ContainerDriver (runc / podman, issue 4) will implement the same interface.

Typical wiring in the daemon's nursery::

    driver = ProcessDriver()
    await nursery.start(driver.run)      # cancelled at shutdown: stops everything
    reconciler = Reconciler(config.name, driver, data_dir / "logs")
    await nursery.start(reconciler.run)
    ...
    reconciler.set_desired(committed_plan.assignments, desired_services)  # on every commit
    ...
    seen = await driver.wait_changed(seen); gossip(driver.status())        # status out

Modules: :mod:`.spec` (the ``run`` section), :mod:`.driver` (the interface),
:mod:`.process` (the process driver), :mod:`.shim` (the supervisor),
:mod:`.logs` (log files), :mod:`.reconciler` (the loop around
:func:`nanomesh.reconcile.reconcile`).
"""

from nanomesh.runtime.driver import DriverError, InstanceDriver, execute
from nanomesh.runtime.logs import ROTATE_BYTES, log_path
from nanomesh.runtime.process import (
    STOP_TIMEOUT,
    ProcessDriver,
    describe_exit,
    open_process_driver,
)
from nanomesh.runtime.reconciler import Reconciler
from nanomesh.runtime.spec import RESERVED_ENV, RunSpec, RunSpecError, run_spec_from

__all__ = [
    "RESERVED_ENV",
    "ROTATE_BYTES",
    "STOP_TIMEOUT",
    "DriverError",
    "InstanceDriver",
    "ProcessDriver",
    "Reconciler",
    "RunSpec",
    "RunSpecError",
    "describe_exit",
    "execute",
    "log_path",
    "open_process_driver",
    "run_spec_from",
]
