"""What the release bundle costs: build time, size, which platforms it serves,
and how long an offline install and a re-run take on this machine (issue 15).

Builds the full bundle (``nanomesh release build``, every platform of
``PLATFORMS``, needs a package index), then installs it into a fake root
(``peers/install.sh --root``) with every index pointed at a dead address, and
runs the same command again (an upgrade to the same bundle: its venv is
reused). Each step's wall time and the CPU time of its child processes are
printed and written to ``experiments/results/release_bundle.summary.json``.
Not a test: it needs the index and takes a minute or more.

    .venv/bin/python experiments/release_bundle.py [--quick] [--platform NAME ...] [--json PATH]

``--quick`` builds for this machine only (``--platform native``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from nanomesh.cli.release_bundle import DEFAULT_PLATFORMS, build_bundle  # noqa: E402

RESULTS = REPO_ROOT / "experiments" / "results" / "release_bundle.summary.json"
DEAD_INDEX = "http://127.0.0.1:9/"


def timed(step: Callable[[], Any]) -> tuple[Any, dict[str, float]]:
    """Run ``step``; its result, wall seconds and its children's CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    result = step()
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return result, {"wall_s": round(wall, 1), "child_cpu_s": round(cpu, 1)}


def install(root: Path, bundle: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PIP_FIND_LINKS", "PYTHONPATH")}
    env.update(PIP_INDEX_URL=DEAD_INDEX, PIP_EXTRA_INDEX_URL=DEAD_INDEX)
    subprocess.run([str(REPO_ROOT / "peers" / "install.sh"), "--root", str(root), "--bundle",
                    str(bundle), "--bind", "192.0.2.10"],
                   check=True, capture_output=True, text=True, env=env)


def wheel_counts(bundle: Path) -> dict[str, Any]:
    with tarfile.open(bundle) as tar:
        names = [m.name.rsplit("/", 1)[-1] for m in tar.getmembers() if m.name.endswith(".whl")]
        manifest = json.loads(tar.extractfile(  # type: ignore[union-attr]
            f"{bundle.name.removesuffix('-bundle.tar')}/manifest.json").read())
    return {"wheels": len(names), "pure": sum(n.endswith("-none-any.whl") for n in names),
            "platforms": {k: v["missing"] for k, v in manifest["platforms"].items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--platform", action="append", help="default: all")
    parser.add_argument("--quick", action="store_true", help="this machine only (native)")
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="release-bench-") as tmp:
        out, root = Path(tmp) / "dist", Path(tmp) / "root"
        root.mkdir()
        bundle, build = timed(lambda: build_bundle(
            REPO_ROOT, out, ["native"] if args.quick else args.platform or DEFAULT_PLATFORMS,
            log=lambda _: None))
        _, first = timed(lambda: install(root, bundle))
        _, again = timed(lambda: install(root, bundle))
        summary = {"bundle": bundle.name, "size_kib": bundle.stat().st_size // 1024,
                   **wheel_counts(bundle), "build": build, "install_offline": first,
                   "rerun_same_bundle": again, "load_average_1m": os.getloadavg()[0]}
    print(json.dumps(summary, indent=2))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
