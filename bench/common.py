"""What every benchmark shares: the machine's description and load, and the run-and-write-JSON entry point."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple


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


class Proc(NamedTuple):
    """A process as /proc/PID/stat shows it: its name, its parent's pid, its CPU seconds (user + system, all
    threads)."""

    name: str
    ppid: int
    cpu_s: float


def processes() -> dict[int, Proc]:
    """Every process, kernel threads included, by pid (empty where there is no /proc)."""
    hz, out = os.sysconf("SC_CLK_TCK"), {}
    try:
        pids = [e.name for e in os.scandir("/proc") if e.name.isdigit()]
    except OSError:
        return out
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                text = f.read()
        except OSError:  # ended meanwhile
            continue
        # "pid (comm) state ppid ... utime stime ...": utime and stime are fields 14 and 15 (proc(5))
        v = text[text.rindex(")") + 2 :].split()
        out[int(pid)] = Proc(text[text.index("(") + 1 : text.rindex(")")], int(v[1]), (int(v[11]) + int(v[12])) / hz)
    return out


def busiest_others(before: dict[int, Proc], after: dict[int, Proc], top: int = 3) -> list[dict]:
    """The `top` other processes by CPU seconds between two `processes` snapshots (this process left out):
    [{"name", "pid", "cpu_s"}], busiest first, only those that ran."""
    me = os.getpid()
    used = [(p.cpu_s - (before[pid].cpu_s if pid in before else 0.0), pid, p.name)
            for pid, p in after.items() if pid != me]
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
