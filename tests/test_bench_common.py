"""bench.common's load accounting: which other processes used the CPU between two snapshots."""

import os

from bench import common


def test_busiest_others_ranks_cpu_deltas_and_leaves_this_process_out():
    me = os.getpid()
    P = common.Proc
    before = {me: P("python", 1, 1.0), 10: P("kdamond.0", 2, 2.0), 11: P("sshd", 1, 5.0), 12: P("idle", 1, 3.0)}
    after = {me: P("python", 1, 9.0), 10: P("kdamond.0", 2, 2.25), 11: P("sshd", 1, 5.5), 12: P("idle", 1, 3.0),
             13: P("new", 11, 0.125)}
    assert common.busiest_others(before, after) == [
        {"name": "sshd", "pid": 11, "cpu_s": 0.5},
        {"name": "kdamond.0", "pid": 10, "cpu_s": 0.25},
        {"name": "new", "pid": 13, "cpu_s": 0.125},  # born meanwhile: all its time counts
    ]
    assert common.busiest_others(before, after, top=1) == [{"name": "sshd", "pid": 11, "cpu_s": 0.5}]


def test_processes_reads_this_process_and_its_parent():
    if not os.path.exists(f"/proc/{os.getpid()}/stat"):
        return  # no procfs: nothing to read
    me = common.processes()[os.getpid()]
    assert me.name and me.ppid == os.getppid() and me.cpu_s >= 0
