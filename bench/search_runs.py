"""Engine against raw Faiss over several bench.search runs: the spread and median of `engine_vs_raw` (against
IndexRefineFlat, equal recall), per index kind, from the runs' JSONs.

    python -m bench.search_runs bench/results/search.json bench/results/search-passive.json \\
        bench/results/search-2threads.json bench/results/search-runs/*.json bench/results/search-lists.json

A single run's IVF ratios move by tens of points from group to group on a small VM; the median over runs is the
figure to read (README.md, Performance).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

TARGET = 95.0  # percent of raw Faiss: issue 15's target


def summarize(paths: list[Path]) -> dict:
    """{kind: {measure: {"n", "min", "median", "max", "at_target"}}} over every `engine_vs_raw` entry against
    the refine baseline in the JSONs at `paths`; kind is the engine row's name up to " + re-rank" / " nprobe"
    ("fastscan Q-2 h=4", "ivf-fastscan nlist=4000", ...); measures: serving_pct, batch_pct."""
    values: dict[str, dict[str, list[float]]] = {}
    for path in paths:
        for o in json.loads(Path(path).read_text())["engine_vs_raw"]:
            if o["raw_is"] != "refine":
                continue
            kind = o["engine"].split(" nprobe=")[0].split(" + re-rank")[0]
            for measure in ("serving_pct", "batch_pct"):
                values.setdefault(kind, {}).setdefault(measure, []).append(o[measure])
    return {kind: {m: {"n": len(v), "min": min(v), "median": float(np.median(v)), "max": max(v),
                       "at_target": sum(x >= TARGET for x in v)} for m, v in ms.items()}
            for kind, ms in values.items()}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="bench.search JSONs")
    args = ap.parse_args(argv)
    try:
        summary = summarize(args.runs)
    except (OSError, ValueError, KeyError, TypeError) as e:  # not a file, not JSON, not bench.search's JSON
        ap.error(f"cannot read the runs: {type(e).__name__}: {e}")
    for kind, ms in summary.items():
        for m, s in ms.items():
            print(f"{kind:40} {m:12} {s['n']:3} groups: {s['min']:.1f}-{s['max']:.1f} %, median {s['median']:.1f} %, "
                  f">= {TARGET:g} % in {s['at_target']}")
    return summary


if __name__ == "__main__":
    main()
