"""Startup time of the CLI (issue "One engine, one contract", defect 10): ``retr --help`` and ``retr info`` should
answer in well under a second, without importing torch or Faiss.

    python -m bench.startup [--runs 7] [--db D.retr] [--out bench/results/startup.json]

Times, as subprocesses, ``retr --help`` and ``retr info --db D`` (D: a tiny database indexed here first from 6
generated images with ``--backbone alexnet --weights none``, unless ``--db`` names one), and as the baseline measured
in the same run the bare interpreter (``python -c pass``): ``--runs`` runs each, interleaved (a load that drifts
during the run then favours no command), wall time median and min, the children's CPU seconds, and the share of the
machine's CPU that other processes took meanwhile. Then ``python -X importtime`` of ``retr --help``: the 10 largest
cumulative import times, and whether torch / Faiss were imported at all.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import common

HEAVY = ("torch", "torchvision", "faiss", "sklearn", "skimage", "matplotlib")


def retr_command() -> list[str]:
    """The ``retr`` console script of this interpreter's environment, run by this interpreter (what a user types);
    without one, the same entry point through ``-c``."""
    script = Path(sys.executable).parent / "retr"
    if not script.is_file():
        found = shutil.which("retr")
        script = Path(found) if found else None
    if script is not None:
        return [sys.executable, str(script)]
    return [sys.executable, "-c", "import sys; from retr.cli.main import main; sys.exit(main())"]


def make_db(retr: list[str], tmp: Path, n: int = 6) -> Path:
    """A tiny database: ``n`` generated 96 x 128 JPEGs indexed with alexnet and random weights (no download)."""
    import numpy as np
    from PIL import Image

    folder, db = tmp / "photos", tmp / "startup.retr"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(folder / f"img{i}.jpg", quality=90)
    argv = retr + ["index", str(folder), "--db", str(db), "--backbone", "alexnet", "--weights", "none"]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"could not build the database ({' '.join(argv[1:])}):\n{done.stderr.strip()}")
    return db


def timed(argv: list[str]) -> dict:
    """One run of ``argv``: wall seconds, the child's CPU seconds, the share of the machine's CPU others took."""
    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    m0, t0 = common.machine_cpu_s(), time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    m1, c1 = common.machine_cpu_s(), resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed (exit {done.returncode}):\n{done.stderr.strip()[-2000:]}")
    cpu = (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)
    others = None
    if m0 and m1 and m1[1] > m0[1]:
        others = max(0.0, (m1[0] - m0[0] - cpu) / (m1[1] - m0[1]))
    return {"wall_s": wall, "cpu_s": cpu, "others_cpu_share": others}


def summary(runs: list[dict]) -> dict:
    walls = [r["wall_s"] for r in runs]
    shares = [r["others_cpu_share"] for r in runs if r["others_cpu_share"] is not None]
    return {"median_s": statistics.median(walls), "min_s": min(walls), "max_s": max(walls),
            "cpu_s_median": statistics.median(r["cpu_s"] for r in runs),
            "others_cpu_share_max": max(shares) if shares else None, "runs_s": walls}


_IMPORTTIME = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def import_profile(argv: list[str], top: int = 10) -> dict:
    """``python -X importtime`` of ``argv`` (a Python command line): the ``top`` largest cumulative import times
    (ms, with their nesting depth: 0 is imported by the program itself) and which heavy packages were imported."""
    done = subprocess.run([argv[0], "-X", "importtime"] + argv[1:], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    rows = []
    for line in done.stderr.splitlines():
        m = _IMPORTTIME.match(line)
        if m:
            rows.append({"module": m[4], "cumulative_ms": int(m[2]) / 1000, "self_ms": int(m[1]) / 1000,
                         "depth": len(m[3]) // 2})
    imported = {r["module"].split(".")[0] for r in rows}
    return {
        "modules": len(rows),
        "total_ms": sum(r["self_ms"] for r in rows),
        "heavy_imported": [p for p in HEAVY if p in imported],
        "top_cumulative": sorted(rows, key=lambda r: -r["cumulative_ms"])[:top],
    }


def machine() -> dict:
    def version(name: str) -> str | None:
        from importlib import metadata

        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {"cpu": common.cpu_model(), "cores": len(os.sched_getaffinity(0)), "python": platform.python_version(),
            "torch": version("torch"), "faiss": version("faiss-gpu") or version("faiss-cpu"),
            "click": version("click"), "load_avg_start": os.getloadavg()}


def run(args: argparse.Namespace) -> dict:
    retr = retr_command()
    m = machine()
    with tempfile.TemporaryDirectory(prefix="retr-startup-") as tmp:
        db = args.db or make_db(retr, Path(tmp))
        commands = {
            "python -c pass (baseline)": [sys.executable, "-c", "pass"],
            "retr --help": retr + ["--help"],
            "retr info --db D": retr + ["info", "--db", str(db)],
        }
        names = list(commands)
        for argv in commands.values():  # warm the page cache (and pyc files) once, untimed
            timed(argv)
        runs: dict[str, list[dict]] = {k: [] for k in names}
        for r in range(args.runs):
            for k in names[r % len(names):] + names[: r % len(names)]:
                runs[k].append(timed(commands[k]))
        profile = import_profile(retr + ["--help"])
    m["load_avg_end"] = os.getloadavg()
    results = {k: summary(v) for k, v in runs.items()}
    base = results[names[0]]["median_s"]
    for k in names[1:]:
        results[k]["x_baseline_median"] = results[k]["median_s"] / base
    out = {"command": common.command("startup", args.argv), "machine": m, "retr": " ".join(retr),
           "db": "a tiny database built here (6 generated images, alexnet, --weights none)" if args.db is None
           else str(args.db), "runs": args.runs, "results": results, "importtime_retr_help": profile}
    print(table(out))
    return out


def table(out: dict) -> str:
    lines = [f"{'command':28} {'median s':>9} {'min s':>7} {'max s':>7} {'cpu s':>7} {'others':>7}"]
    for k, r in out["results"].items():
        others = "" if r["others_cpu_share_max"] is None else f"{r['others_cpu_share_max']:7.0%}"
        lines.append(f"{k:28} {r['median_s']:9.3f} {r['min_s']:7.3f} {r['max_s']:7.3f} {r['cpu_s_median']:7.3f} "
                     f"{others}")
    p = out["importtime_retr_help"]
    lines.append(f"python -X importtime retr --help: {p['modules']} modules, {p['total_ms']:.0f} ms; heavy packages "
                 f"imported: {', '.join(p['heavy_imported']) or 'none'}")
    for r in p["top_cumulative"]:
        lines.append(f"  {r['cumulative_ms']:9.1f} ms cumulative {r['self_ms']:8.1f} ms self  "
                     f"{'  ' * r['depth']}{r['module']}")
    lines.append("others = the largest share of the machine's CPU other processes took during one run")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=7, help="timed runs of each command")
    ap.add_argument("--db", type=Path, default=None, help="an existing database for `retr info` (default: build one)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/startup.json"), help="results as JSON")
    return common.main(ap, run, argv)


if __name__ == "__main__":
    main()
