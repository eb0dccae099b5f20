"""Plot the experiments' results as PNG files in experiments/results/.

- ``failure_detection_cdf.png``: empirical CDF of the time until every survivor
  declared a SIGKILLed peer dead (solid) and until the first one did (dashed),
  one curve per ``failure_detection*.csv`` found (e.g. lan and memberlist-lan);
- ``convergence_vs_n.png``: simulated time until 50 / 99 / 99.99 / 100 % of the
  peers hold a changed profile, against mesh size (median over seeds, bars from
  the fastest to the slowest seed), from ``convergence.csv``.

Needs matplotlib; without it the script says plots were skipped and exits 0.

    .venv/bin/python experiments/plot.py [--results DIR]
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def num(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def plot_detection(plt: object, results: Path) -> Path | None:
    files = sorted(results.glob("failure_detection*.csv"))
    if not files:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))  # type: ignore[attr-defined]
    for i, path in enumerate(files):
        rows = read_csv(path)
        label = path.stem.removeprefix("failure_detection").lstrip("_") or "lan"
        color = f"C{i}"
        for col, style, what in (("all_detect_s", "-", "all survivors"),
                                 ("first_detect_s", "--", "first survivor")):
            vals = sorted(v for r in rows if not math.isnan(v := num(r[col])))
            if not vals:
                continue
            ys = [(k + 1) / len(vals) for k in range(len(vals))]
            ax.step(vals, ys, style, where="post", color=color,
                    label=f"{label}: {what} (n={len(vals)})")
    ax.axvline(1.5, color="grey", lw=0.8, ls=":")
    ax.axvline(3.0, color="grey", lw=0.8, ls="-.")
    ax.text(1.5, 0.02, " median target", color="grey", fontsize=8)
    ax.text(3.0, 0.10, " p99 target", color="grey", fontsize=8)
    ax.set_xlabel("seconds from SIGKILL to 'member failed' in the peers' logs")
    ax.set_ylabel("fraction of trials")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Failure detection, 20 real peers on loopback")
    out = results / "failure_detection_cdf.png"
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)  # type: ignore[attr-defined]
    return out


def plot_convergence(plt: object, results: Path) -> Path | None:
    path = results / "convergence.csv"
    if not path.exists():
        return None
    rows = read_csv(path)
    sizes = sorted({int(r["n"]) for r in rows})
    fig, ax = plt.subplots(figsize=(7, 4.5))  # type: ignore[attr-defined]
    for i, (col, label) in enumerate((("t50_s", "50 %"), ("t99_s", "99 %"),
                                      ("t9999_s", "99.99 %"), ("t100_s", "100 %"))):
        xs, med, lo, hi = [], [], [], []
        for n in sizes:
            vals = [v for r in rows if int(r["n"]) == n and not math.isnan(v := num(r[col]))]
            if not vals:
                continue
            m = statistics.median(vals)
            xs.append(n * (1 + 0.04 * (i - 1.5)))  # small offset so bars do not overlap
            med.append(m)
            lo.append(m - min(vals))
            hi.append(max(vals) - m)
        ax.errorbar(xs, med, yerr=[lo, hi], marker="o", capsize=3, label=f"{label} of peers")
    ax.axhline(2.0, color="grey", lw=0.8, ls=":")
    ax.text(sizes[-1], 2.03, "target: 99.99 % within 2 s at 1000 peers", color="grey",
            fontsize=8, va="bottom", ha="right")
    ax.set_xscale("log")
    ax.set_xlabel("peers in the mesh (simulated)")
    ax.set_ylabel("simulated seconds after the profile change")
    ax.set_ylim(0, 2.3)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="center right")
    ax.set_title("Profile convergence vs mesh size (lan preset; median, min-max of seeds)")
    out = results / "convergence_vs_n.png"
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)  # type: ignore[attr-defined]
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, default=RESULTS,
                   help="folder with the CSV files, where the PNGs go too")
    args = p.parse_args()
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: plots skipped "
              "(pip install matplotlib to get them)")
        return 0
    made = [out for fn in (plot_detection, plot_convergence)
            if (out := fn(plt, args.results)) is not None]
    if not made:
        print(f"no result CSVs in {args.results}: nothing to plot")
    for out in made:
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
