"""What every benchmark shares: the machine's description and load, and the run-and-write-JSON entry point."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), or what the platform module knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_cpu_s() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat (None where there is none).
    Busy counts user, nice, system, irq, softirq and steal (time the hypervisor gave to other machines)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    hz = os.sysconf("SC_CLK_TCK")
    busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
    return busy / hz, (busy + v[3] + v[4]) / hz


def command(module: str, argv: list[str] | None) -> str:
    """The command line that reproduces a run: ``python -m bench.<module>`` and its arguments."""
    return " ".join([f"python -m bench.{module}"] + (sys.argv[1:] if argv is None else argv))


def main(ap: argparse.ArgumentParser, run: Callable[[argparse.Namespace], dict], argv: list[str] | None) -> dict:
    """Parse ``argv`` (None: the process's), run, write the result to ``--out`` as JSON (unless it is empty) and
    return it. ``args.argv`` is the argv given, for `command`."""
    args = ap.parse_args(argv)
    args.argv = argv
    result = run(args)
    out: Path | None = args.out
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
        print(f"wrote {out}")
    return result
