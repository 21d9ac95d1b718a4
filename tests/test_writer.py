"""The indexing writer thread: codec + commit overlap the forward pass, in order, errors raised on the reading side."""

import threading
import time

import pytest

from retr.retrieval.engine import _Writer


def test_items_are_written_in_order_on_another_thread():
    seen, threads = [], set()

    def write(x):
        threads.add(threading.current_thread().name)
        seen.append(x)

    with _Writer(write, depth=2) as w:
        for i in range(50):
            w.put(i)
        w.drain()
    assert seen == list(range(50))
    assert threads == {"retr-writer"}


def test_a_full_queue_makes_the_reader_wait_and_counts_it():
    def write(x):
        time.sleep(0.02)

    with _Writer(write, depth=1) as w:
        t = time.perf_counter()
        for i in range(5):
            w.put(i)
        w.drain()
        elapsed = time.perf_counter() - t
    # five writes of 20 ms, at most one queued: the reader waited for most of them
    assert elapsed >= 0.1 - 1e-3
    assert 0.05 <= w.waited <= elapsed + 1e-3


def test_the_first_error_stops_writing_and_is_raised_to_the_reader():
    seen = []

    def write(x):
        if x == 3:
            raise ValueError("disk full")
        seen.append(x)

    with pytest.raises(ValueError, match="disk full"):
        with _Writer(write, depth=2) as w:
            for i in range(20):
                w.put(i)
                time.sleep(0.002)
            w.drain()
    assert seen == [0, 1, 2]


def test_leaving_early_stops_the_thread():
    release = threading.Event()
    seen = []

    def write(x):
        release.wait(5)
        seen.append(x)

    with pytest.raises(KeyboardInterrupt):
        with _Writer(write, depth=2) as w:
            for i in range(3):
                w.put(i)
            release.set()
            raise KeyboardInterrupt
    assert not w._thread.is_alive()
    assert seen[:1] == [0] and len(seen) <= 3
