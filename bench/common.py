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
    t = machine_cpu_times()
    return None if t is None else t[:2]


def machine_cpu_times() -> tuple[float, float, float] | None:
    """`machine_cpu_s` and the steal seconds it counts as busy: (busy, total, steal)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    hz = os.sysconf("SC_CLK_TCK")
    busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
    return busy / hz, (busy + v[3] + v[4]) / hz, v[7] / hz


def process_cpu_s() -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system, all threads) of every process, kernel threads included, by pid: (name, seconds),
    from /proc/PID/stat (empty where there is none)."""
    hz, out = os.sysconf("SC_CLK_TCK"), {}
    try:
        entries = [e.name for e in os.scandir("/proc") if e.name.isdigit()]
    except OSError:
        return out
    for pid in entries:
        try:
            with open(f"/proc/{pid}/stat") as f:
                text = f.read()
        except OSError:  # gone meanwhile
            continue
        name, rest = text[text.find("(") + 1 : text.rfind(")")], text[text.rfind(")") + 2 :].split()
        out[int(pid)] = (name, (int(rest[11]) + int(rest[12])) / hz)  # fields 14 and 15: utime, stime
    return out


def busiest_others(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]],
                   top: int = 3) -> list[dict]:
    """The `top` other processes by CPU seconds between two `process_cpu_s` snapshots (this process left out):
    [{"name", "pid", "cpu_s"}], busiest first, only those that ran."""
    me = os.getpid()
    used = [(a[1] - before.get(pid, (a[0], 0.0))[1], pid, a[0]) for pid, a in after.items() if pid != me]
    return [{"name": name, "pid": pid, "cpu_s": round(s, 3)} for s, pid, name in sorted(used, reverse=True)[:top]
            if s > 0]


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
