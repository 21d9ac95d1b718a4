"""One served database: the committed state it answers from, and the move to the next one.

    db = Database("photos.retr", name="photos")   # opens the store once, loads the newest complete state
    with db.use() as snap:                         # the same Snapshot for the whole request
        results = snap.search(x, Query(k=10)).result()   # [{rank, score, path, id}], paths from that state
    db.poll()                                      # (a thread calls it) move to a newer complete state, if any

A `Snapshot` pins one LMDB read transaction on a thread of its own for as long as it serves: its engine (index,
codec, spec) was opened inside that transaction, and that thread runs its searches and looks up every path or file
record it answers, so an answer never mixes two committed states. While `retr index` writes, the database passes
through states in which some files have no code yet (a provisional codec being refitted, a batch of descriptors
waiting for the fit); only a complete state (every file has a code) is taken, and it replaces the previous one
atomically, once built, for requests that start after; requests under way finish on the one they began with, which
is closed after them.

py-lmdb opens a database once per process, so every snapshot reads through the one `Store` of its `Database`.
A pinned transaction keeps LMDB from reusing pages freed after it: the database file grows while `retr index`
writes, by at most what the writer replaces before the server moves on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np

from ..retrieval.engine import Engine, info
from ..retrieval.errors import DatabaseError, RetrError
from ..retrieval.store import Store
from .batcher import Batcher, Failure, Ticket

log = logging.getLogger("retr.serve")


class NotReady(RetrError):
    """The database has no complete committed state to answer from yet."""


class Snapshot:
    """One complete committed state of a database: ``engine`` (index, codec, spec), ``generation``, ``count``,
    ``info`` (`engine.info` as a dict) and ``root``, all read in one read transaction held by a thread of its own,
    which also runs every search of this state (concurrent ones batched: one Faiss call per k, nprobe and symmetric)
    and every path or file record look-up. Open with `open_snapshot`."""

    def __init__(self, store: Store, path: Path, max_batch: int, max_wait_s: float):
        self._stack = contextlib.ExitStack()
        self._store = store
        self._batcher = Batcher(self._run, max_batch, max_wait_s, f"snapshot-{path.name}",
                                init=lambda: self._stack.enter_context(store.snapshot()), finish=self._stack.close)
        self.engine: Engine | None = None
        self.generation = -1
        self.info: dict = {}
        self.count = 0
        self.root = ""
        self._refs = 0
        self._retired = False

    # -- work on the snapshot's thread -----------------------------------------------------------------------------
    def _run(self, jobs: list) -> list:
        out: list = [None] * len(jobs)
        groups: dict = {}
        for j, job in enumerate(jobs):
            if job[0] == "search":
                groups.setdefault(job[2], []).append(j)
            else:
                try:
                    out[j] = job[1]()
                except Exception as e:  # noqa: BLE001 - that job's own failure
                    out[j] = Failure(e)
        for q, idx in groups.items():
            D, I = self.engine.search_vectors(np.stack([jobs[j][1] for j in idx]), q.k, q.symmetric, q.nprobe)
            for j, d, ii in zip(idx, D, I):
                keep = ii >= 0
                ids = [int(i) for i in ii[keep]]
                paths = self._store.paths(ids)
                out[j] = [{"rank": r + 1, "score": round(float(sc), 6), "path": p, "id": i}
                          for r, (sc, p, i) in enumerate(zip(d[keep], paths, ids))]
        return out

    def call(self, fn: Callable[[], Any]) -> Future:
        """``fn()`` run inside this snapshot's transaction, on its thread."""
        return self._batcher.submit(("call", fn))

    def announce(self) -> Ticket:
        """A search is on its way (its image is being described): a batch being formed waits for it, briefly."""
        return self._batcher.announce()

    def search(self, x: np.ndarray, q, ticket: Ticket | None = None) -> Future:
        """Descriptor ``x (d,) float32`` -> the ranked results ``[{rank, score, path, id}]`` of this state, paths
        relative to the root. ``q``: a hashable query with ``k``, ``nprobe``, ``symmetric``."""
        return self._batcher.submit(("search", np.asarray(x, np.float32), q), ticket)

    def file(self, i: int) -> Future:
        """The absolute path of indexed id ``i`` in this state (None without such id). The path comes from the
        store, never from a client."""
        def get():
            rec = self._store.record(i) if 0 <= i < 1 << 63 else None
            return None if rec is None else os.path.join(self.root, rec.path)
        return self.call(get)

    @property
    def batches(self) -> tuple[int, int]:
        """(Faiss calls and look-ups made, jobs done) so far."""
        return self._batcher.batches, self._batcher.items

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()  # the store is shared: left open
        self._batcher.close()  # ends the transaction on its thread


def open_snapshot(store: Store, path: Path, device: str, max_batch: int = 16,
                  max_wait_s: float = 0.002) -> Snapshot | None:
    """The database's current committed state as a `Snapshot`, or None when that state is incomplete (files
    without codes: `retr index` is between a batch and the codec's fit, or coding)."""
    snap = Snapshot(store, path, max_batch, max_wait_s)

    def build() -> bool:
        files, codes = store.count("files"), store.count("codes")
        if codes == 0 or codes != files:
            return False
        snap.engine = Engine(path, device=device, store=store)  # opened inside the transaction: built from it
        snap.generation = store.generation()
        snap.info = info(path, store=store).to_dict()
        snap.count = int(snap.info["count"])
        snap.root = snap.engine.root
        return True

    try:
        complete = snap.call(build).result()
    except BaseException:
        snap.close()
        raise
    if not complete:
        snap.close()
        return None
    return snap


class Database:
    """A database served under ``name``: its one `Store`, its current `Snapshot`, the encoder of its images (loaded
    once, on first use or by ``load_encoder``). ``poll`` moves to a newer complete state; `Watcher` calls it."""

    def __init__(self, path: str | os.PathLike, name: str | None = None, device: str = "auto",
                 max_batch: int = 16, max_wait_s: float = 0.002):
        self.path = Path(path)
        self.name = name or self.path.name.removesuffix(".retr")
        self.device = device
        self._batching = (max_batch, max_wait_s)
        self.store = Store(self.path)
        self._lock = threading.Lock()
        self._reload_lock = threading.Lock()
        self._encoder_lock = threading.Lock()
        self._snap: Snapshot | None = None
        self._encoder = None
        self.reloads = 0
        try:
            self._snap = open_snapshot(self.store, self.path, device, *self._batching)
        except BaseException:
            self.store.close()
            raise
        if self._snap is None:
            log.warning("%s: indexing under way (files without codes); answering once a complete state is "
                        "committed", self.path)

    # -- the current state -----------------------------------------------------------------------------------------
    @property
    def generation(self) -> int | None:
        snap = self._snap
        return None if snap is None else snap.generation

    @contextlib.contextmanager
    def use(self) -> Iterator[Snapshot]:
        """The current snapshot, kept for the whole block even if a newer one replaces it meanwhile."""
        with self._lock:
            snap = self._snap
            if snap is None:
                raise NotReady(f"database '{self.name}' is being indexed and has no complete state yet; try again "
                               "shortly")
            snap._refs += 1
        try:
            yield snap
        finally:
            with self._lock:
                snap._refs -= 1
                done = snap._retired and snap._refs == 0
            if done:
                snap.close()

    def poll(self) -> bool:
        """Move to the store's newest committed state if it is newer and complete; True if it moved. Never raises
        for a state it cannot use (it keeps serving the current one and tries again at the next poll)."""
        with self._reload_lock:
            try:
                gen = self.store.generation()
            except Exception as e:  # noqa: BLE001 - a failing poll must not stop the watcher
                log.warning("%s: cannot read the generation (%s)", self.path, e)
                return False
            if gen == self.generation:
                return False
            try:
                snap = open_snapshot(self.store, self.path, self.device, *self._batching)
            except RetrError as e:
                log.warning("%s: generation %d not served (%s)", self.path, gen, e)
                return False
            if snap is None:
                return False
            with self._lock:
                old, self._snap = self._snap, snap
                close_old = old is not None and old._refs == 0
                if old is not None:
                    old._retired = True
            if close_old:
                old.close()
            self.reloads += 1
            log.info("%s: now serving generation %d (%d images)", self.path, snap.generation, snap.count)
            return True

    # -- the encoder -----------------------------------------------------------------------------------------------
    def encoder(self, snap: Snapshot):
        """The loaded network for ``snap``'s encoder configuration (the same object while the database keeps its
        encoder, which a database holding images always does)."""
        with self._encoder_lock:
            enc = self._encoder
            if enc is None or enc.config != snap.engine.encoder_config:
                enc = self._encoder = snap.engine.encoder
        return enc

    def load_encoder(self) -> None:
        with self.use() as snap:
            self.encoder(snap)

    def close(self) -> None:
        with self._lock:
            snap, self._snap = self._snap, None
        if snap is not None:
            snap.close()
        self.store.close()


class Watcher:
    """A thread that polls each database every ``interval_s`` seconds and moves it to its newest complete state."""

    def __init__(self, databases: list[Database], interval_s: float = 1.0):
        self.databases = databases
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="retr-serve-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            for db in self.databases:
                try:
                    db.poll()
                except Exception:  # noqa: BLE001 - logged; the server keeps the state it has
                    log.exception("%s: reload failed", db.path)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def check_names(databases: list[Database]) -> None:
    names = [d.name for d in databases]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DatabaseError(f"two databases are named '{dup[0]}' (the folder name without .retr): rename one")
