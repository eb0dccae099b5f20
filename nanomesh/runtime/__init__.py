"""The runtime: the only code that spawns nanoservice instances.

The daemon decides *what* should run here with the pure
:func:`nanomesh.runtime.reconcile_core.reconcile` and carries out its effects through the
driver (:func:`execute`, looped by :class:`Reconciler`). The driver,
:class:`ProcessDriver`, runs every instance as a process tree led by a small
supervisor shim (killed as a whole, even if the daemon dies by SIGKILL), in a
cgroup of its own with the spec's limits where the machine has cgroups, with
ports, environment, logs and health checks; launchers
(:mod:`nanomesh.runtime.launch`) say what to execute for each kind:
``process`` on the host, ``container`` through runc / podman / docker.

Typical wiring in the daemon's nursery::

    driver = ProcessDriver(peer=config.name,
                           launchers={"process": HostLauncher(), "container": container})
    await nursery.start(driver.run)      # cancelled at shutdown: stops everything
    reconciler = Reconciler(config.name, driver, data_dir / "logs", fetch=bundles.fetch,
                            host_ip=gossip_ip, peer_api="ip:port",
                            state_root=data_dir / "instances")
    await nursery.start(reconciler.run)
    ...
    reconciler.set_desired(committed_plan.assignments, desired_services)  # on every commit
    ...
    seen = await driver.wait_changed(seen); gossip(driver.status())        # status out

Modules: :mod:`.spec` (the service's runtime sections), :mod:`.driver` (the
interface, :func:`execute`), :mod:`.process` (the driver), :mod:`.shim` (the
supervisor), :mod:`.launch` (launchers), :mod:`.cgroups` (limits and the tree
kill), :mod:`.ports` (ports and the environment contract), :mod:`.health`
(health checks), :mod:`.logs` (log files), :mod:`.reconciler` (the loop
around :func:`nanomesh.runtime.reconcile_core.reconcile`).
"""

from nanomesh.runtime.driver import DriverError, Fetch, InstanceDriver, StartContext, execute
from nanomesh.runtime.instance_spec import (
    ENV_CONTRACT,
    RESERVED_ENV,
    InstanceSpec,
    RunSpec,
    RunSpecError,
    instance_spec_from,
    run_spec_from,
)
from nanomesh.runtime.launch import HostLauncher, Launch, LaunchContext, Launcher, LaunchError
from nanomesh.runtime.logs import ROTATE_BYTES, ROTATE_KEEP, log_path, read_log_tail
from nanomesh.runtime.process import (
    STOP_TIMEOUT,
    ProcessDriver,
    describe_exit,
    open_process_driver,
)
from nanomesh.runtime.reconcile_shell import Reconciler

__all__ = [
    "ENV_CONTRACT",
    "RESERVED_ENV",
    "ROTATE_BYTES",
    "ROTATE_KEEP",
    "STOP_TIMEOUT",
    "DriverError",
    "Fetch",
    "HostLauncher",
    "InstanceDriver",
    "InstanceSpec",
    "Launch",
    "LaunchContext",
    "LaunchError",
    "Launcher",
    "ProcessDriver",
    "Reconciler",
    "RunSpec",
    "RunSpecError",
    "StartContext",
    "describe_exit",
    "execute",
    "instance_spec_from",
    "log_path",
    "open_process_driver",
    "read_log_tail",
    "run_spec_from",
]
