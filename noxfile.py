"""Developer sessions: `nox` runs lint, typecheck and tests; `nox -s bench`
runs the quick versions of the experiments (see experiments/README.md)."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

LINT_PATHS = ["nanomesh", "tests", "experiments", "noxfile.py"]


@nox.session
def tests(session: nox.Session) -> None:
    """Unit, property, simulator and integration tests (netns tests need root)."""
    session.install("-e", ".[test]")
    session.run("pytest", "-q", "-rs", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.5")
    session.run("ruff", "check", *LINT_PATHS)


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    session.run("mypy", "nanomesh")


@nox.session
def bench(session: nox.Session) -> None:
    """Quick runs of every benchmark; pass --full for the numbers in README."""
    session.install("-e", ".", "matplotlib")
    full = "--full" in session.posargs
    mode = [] if full else ["--quick"]
    session.run("python", "experiments/discovery_bench.py")
    session.run("python", "experiments/convergence.py", *mode)
    session.run("python", "experiments/failure_detection.py", *mode)
    session.run("python", "experiments/idle_footprint.py", *mode)
    session.run("python", "experiments/footprint_vs_n.py", *mode)  # issue 9; nft needs root
    session.run("python", "experiments/peer_memory.py", *mode)  # issue 9: memory, CPU by role
    session.run("python", "experiments/false_positives.py", *mode)
    session.run("python", "experiments/placement_bench.py", *mode)
    session.run("python", "experiments/raft_failover.py", *mode)
    session.run("python", "experiments/control_failover.py", *mode)
    session.run("python", "experiments/reschedule.py", *mode)
    # issue 4: the nanoservice runtime
    runs = ["--runs", "30" if full else "5"]
    session.run("python", "experiments/start_latency.py", *runs)
    session.run("python", "experiments/container_start.py", *runs)  # needs root and runc
    session.run("python", "experiments/bundle_transfer.py", *mode)
    session.run("python", "experiments/rpc_bench.py", "--calls", "5000" if full else "500")
    session.run("python", "experiments/gateway_bench.py", *mode)
    session.run("python", "experiments/name_latency.py", *mode)
    session.run("python", "experiments/call_failover.py", *mode)
    session.run("python", "experiments/release_bundle.py", *mode)  # issue 15; needs an index
    # issue 10: deploy/initiate and steps L1-L5 against the research (runc part needs root)
    session.run("python", "experiments/research_figures.py", *mode)
    session.run("python", "experiments/meeting_room.py", "--trials",  # issue 10
                "20" if full else "3", *([] if full else ["--name", "meeting_room_quick"]))
    session.run("python", "experiments/plot.py")
    session.run("python", "experiments/report.py")  # experiments/REPORT.md from the results
