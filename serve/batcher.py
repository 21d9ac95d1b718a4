"""A micro-batcher: work items submitted from many requests at once are run together, one call per batch.

    b = Batcher(fn, max_batch=16, max_wait_s=0.002)   # fn(list of items) -> list of results, same order
    fut = b.submit(item)                               # a concurrent.futures.Future; await asyncio.wrap_future(fut)
    b.close()

One worker thread takes the first item waiting, then up to ``max_batch - 1`` more that arrive within ``max_wait_s``
of it, and calls ``fn`` once on them. Under load the batches fill while the previous call runs, so the wait adds
latency only when the server is nearly idle. ``fn`` raising fails every item of its batch with that exception.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

_STOP = object()


class Batcher:
    def __init__(self, fn: Callable[[list], list], max_batch: int = 16, max_wait_s: float = 0.002,
                 name: str = "batcher", init: Callable[[], Any] | None = None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be 1 or more, got {max_batch}")
        self.fn = fn
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.batches = 0  # calls of fn so far
        self.items = 0  # items done so far
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._run, args=(init,), name=name, daemon=True)
        self._thread.start()

    def submit(self, item) -> Future:
        fut: Future = Future()
        if self._closed:
            fut.set_exception(RuntimeError("the batcher is closed"))
            return fut
        self._q.put((item, fut))
        return fut

    def close(self, timeout: float | None = 5.0) -> None:
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
                nxt = self._q.get_nowait()  # whatever is already waiting, without delay
            except queue.Empty:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    nxt = self._q.get(timeout=left)
                except queue.Empty:
                    break
            if nxt is _STOP:
                return batch, True
            batch.append(nxt)
        return batch, False

    def _run(self, init: Callable[[], Any] | None) -> None:
        if init is not None:
            init()
        stop = False
        while not stop:
            batch, stop = self._take()
            live = [(item, fut) for item, fut in batch if fut.set_running_or_notify_cancel()]
            if not live:
                continue
            try:
                results = self.fn([item for item, _ in live])
                if len(results) != len(live):
                    raise RuntimeError(f"batch function returned {len(results)} results for {len(live)} items")
            except BaseException as e:  # noqa: BLE001 - handed to every waiting request
                for _, fut in live:
                    fut.set_exception(e)
            else:
                for (_, fut), r in zip(live, results):
                    fut.set_result(r)
            self.batches += 1
            self.items += len(live)
        while True:  # anything submitted after close
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                item[1].set_exception(RuntimeError("the batcher is closed"))
