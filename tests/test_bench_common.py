"""bench.common's load accounting: which other processes used the CPU between two snapshots."""

import os

from bench import common


def test_busiest_others_ranks_cpu_deltas_and_leaves_this_process_out():
    me = os.getpid()
    before = {me: ("python", 1.0), 10: ("kdamond.0", 2.0), 11: ("sshd", 5.0), 12: ("idle", 3.0)}
    after = {me: ("python", 9.0), 10: ("kdamond.0", 2.25), 11: ("sshd", 5.5), 12: ("idle", 3.0), 13: ("new", 0.125)}
    assert common.busiest_others(before, after) == [
        {"name": "sshd", "pid": 11, "cpu_s": 0.5},
        {"name": "kdamond.0", "pid": 10, "cpu_s": 0.25},
        {"name": "new", "pid": 13, "cpu_s": 0.125},  # born meanwhile: all its time counts
    ]
    assert common.busiest_others(before, after, top=1) == [{"name": "sshd", "pid": 11, "cpu_s": 0.5}]


def test_process_cpu_s_reads_this_process():
    if not os.path.exists(f"/proc/{os.getpid()}/stat"):
        return  # no procfs: nothing to read
    name, seconds = common.process_cpu_s()[os.getpid()]
    assert name and seconds >= 0
