"""A micro-batcher: work items submitted from many requests at once are run together, one call per batch.

    b = Batcher(fn, max_batch=16, max_wait_s=0.002)   # fn(list of items) -> list of results, same order
    ticket = b.announce()                              # optional: an item is on its way (being decoded, say)
    fut = b.submit(item, ticket)                       # a concurrent.futures.Future; await asyncio.wrap_future(fut)
    b.close()

One worker thread takes the first item waiting and every item already queued behind it (up to ``max_batch``); then,
while items that were announced have not arrived yet, it waits for them, at most ``max_wait_s`` after the first.
An idle server therefore never waits, and under load the batches fill while the previous call runs. ``fn`` may
return `Failure(exception)` for an item to fail that item alone; ``fn`` raising fails every item of its batch.
``init`` and ``finish`` run on the worker thread, first and last (a read transaction tied to that thread).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

_STOP = object()


@dataclass(frozen=True)
class Failure:
    """What ``fn`` returns for an item that failed on its own."""

    error: BaseException


class Ticket:
    """An announced item (`Batcher.announce`); ``cancel()`` it when the item will not come after all."""

    def __init__(self, batcher: Batcher):
        self._batcher = batcher
        self._open = True

    def cancel(self) -> None:
        if self._open:
            self._open = False
            self._batcher._arrived()


class Batcher:
    def __init__(self, fn: Callable[[list], list], max_batch: int = 16, max_wait_s: float = 0.002,
                 name: str = "batcher", init: Callable[[], Any] | None = None,
                 finish: Callable[[], Any] | None = None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be 1 or more, got {max_batch}")
        self.fn = fn
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.batches = 0  # calls of fn so far
        self.items = 0  # items done so far
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._coming = 0  # announced, not submitted yet
        self._closed = False
        self._started = threading.Event()
        self._init_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(init, finish), name=name, daemon=True)
        self._thread.start()
        self._started.wait()
        if self._init_error is not None:
            self._thread.join()
            raise self._init_error

    def announce(self) -> Ticket:
        with self._lock:
            self._coming += 1
        return Ticket(self)

    def _arrived(self) -> None:
        with self._lock:
            self._coming -= 1

    def submit(self, item, ticket: Ticket | None = None) -> Future:
        fut: Future = Future()
        if self._closed:
            if ticket is not None:
                ticket.cancel()
            fut.set_exception(RuntimeError("the batcher is closed"))
            return fut
        self._q.put((item, fut))
        if ticket is not None:
            ticket.cancel()  # arrived: after the put, so the worker never sees it neither announced nor queued
        return fut

    def close(self, timeout: float | None = 30.0) -> None:
        if not self._closed:
            self._closed = True
            self._q.put(_STOP)
            self._thread.join(timeout)

    def _take(self) -> tuple[list, bool]:
        """The next batch: (items with their futures, whether to stop after it)."""
        first = self._q.get()
        if first is _STOP:
            return [], True
        batch = [first]
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch:
            try:
                nxt = self._q.get_nowait()  # whatever is already queued, without delay
            except queue.Empty:
                left = deadline - time.monotonic()
                if left <= 0 or self._coming <= 0:
                    break
                try:
                    nxt = self._q.get(timeout=min(left, 0.0005))  # re-check the announced count often
                except queue.Empty:
                    continue
            if nxt is _STOP:
                return batch, True
            batch.append(nxt)
        return batch, False

    def _run(self, init: Callable[[], Any] | None, finish: Callable[[], Any] | None) -> None:
        try:
            if init is not None:
                init()
        except BaseException as e:  # noqa: BLE001 - raised by the constructor
            self._init_error = e
            self._started.set()
            return
        self._started.set()
        try:
            stop = False
            while not stop:
                batch, stop = self._take()
                live = [(item, fut) for item, fut in batch if fut.set_running_or_notify_cancel()]
                if live:
                    self._call(live)
        finally:
            while True:  # anything submitted after close
                try:
                    item = self._q.get_nowait()
                except queue.Empty:
                    break
                if item is not _STOP:
                    item[1].set_exception(RuntimeError("the batcher is closed"))
            if finish is not None:
                finish()

    def _call(self, live: list) -> None:
        self.batches += 1  # counted before any answer goes out, so a caller that got one sees its batch counted
        self.items += len(live)
        try:
            results = self.fn([item for item, _ in live])
            if len(results) != len(live):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(live)} items")
        except BaseException as e:  # noqa: BLE001 - handed to every waiting request
            for _, fut in live:
                fut.set_exception(e)
        else:
            for (_, fut), r in zip(live, results):
                if isinstance(r, Failure):
                    fut.set_exception(r.error)
                else:
                    fut.set_result(r)
