"""What the server does, apart from HTTP: the databases it serves, their batchers, and each kind of query.

    svc = Service(["photos.retr"], ServeOptions(device="cpu"))
    await svc.search_image("photos", data, "q.jpg", Query(k=10))   # an uploaded image
    await svc.search_id("photos", 17, Query(k=10))                 # an indexed image, described again
    await svc.search_vector("photos", [0.1, ...], Query(k=10))     # a descriptor of the database's encoder
    svc.close()

An image query is decoded and preprocessed on a small thread pool (as `retr query` decodes a file: same pixel limit,
same JPEG draft size), described by the network through a `Batcher` (concurrent queries share a forward pass),
searched on the thread of the database's current `Snapshot` (concurrent searches with the same k / nprobe share one
Faiss call; all searches of a state run on that one thread, so nprobe, which Faiss keeps in the index, is never
changed under another search) and answered with paths relative to the database's root, all from that snapshot.
A request announces itself to both batchers when it starts, so a batch being formed waits (at most ``max_wait_ms``)
only for requests already on their way: an idle server adds no wait.
"""

from __future__ import annotations

import asyncio
import functools
import io
import logging
import os
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .. import indexes
from ..retrieval.errors import ConfigError, ImageError, RetrError
from ..retrieval.images import decode_image_bytes, printable, read_image
from .batcher import Batcher
from .state import Database, NotReady, Snapshot, Watcher, check_names

log = logging.getLogger("retr.serve")

MAX_K = 1000
THUMB_SIDE = 256  # px, the longer side of a thumbnail


class NotFound(RetrError):
    """No such database, or no such id in the state answering."""


class Gone(RetrError):
    """An indexed image's file can no longer be read."""


@dataclass(frozen=True)
class Query:
    """How to search: ``k`` results, ``nprobe`` lists (IVF indexes; None: the database's), ``symmetric``."""

    k: int = 10
    nprobe: int | None = None
    symmetric: bool = False


def _torch_threads(n: int) -> None:
    """Give the calling thread n torch threads, for good. ATen keeps one process-wide default and sets each
    thread's own count from it lazily, at the thread's first torch call, unless that thread has read its count
    before: without the read, the decoding threads' 1 became the forward's count too (the network ran on one
    core). `Encoder.decoding_workers` reads it for the same reason."""
    import torch

    torch.get_num_threads()  # the lazy per-thread setup happens now, not at the first forward
    torch.set_num_threads(n)


@dataclass(frozen=True)
class ServeOptions:
    """How the server runs. ``device``: as everywhere in retr (images are decoded by Pillow on the decoding
    threads, even with CUDA); ``max_batch`` / ``max_wait_ms``: the batchers' batch size and how long they wait to
    fill one; ``reload_s``: how often each database is checked for a newer committed state (0: never);
    ``max_pixels``: the decompression-bomb limit of uploads (None: Pillow's, as `retr query`); ``preload``: load
    every network at start rather than on the first image query; ``decode_workers``: threads that decode and
    preprocess images."""

    device: str = "auto"
    max_batch: int = 16
    max_wait_ms: float = 2.0
    reload_s: float = 1.0
    max_pixels: int | None = None
    preload: bool = True
    decode_workers: int = 2


class Service:
    """The served databases (``paths``, each named after its folder without ``.retr``) and what the routes share."""

    def __init__(self, paths: list[str | os.PathLike], options: ServeOptions | None = None):
        o = self.options = options or ServeOptions()
        if not paths:
            raise ConfigError("give at least one --db")
        if o.max_batch < 1:
            raise ConfigError(f"the batch size must be 1 or more, got {o.max_batch}")
        self.max_pixels = o.max_pixels
        self.databases: dict[str, Database] = {}
        opened: list[Database] = []
        try:
            for p in paths:
                opened.append(Database(p, device=o.device, max_batch=o.max_batch,
                                       max_wait_s=o.max_wait_ms / 1000))
            check_names(opened)
            if o.preload:
                for d in opened:
                    if d.generation is not None:
                        d.load_encoder()
        except BaseException:
            for d in opened:
                d.close()
            raise
        self.databases = {d.name: d for d in opened}
        self.default = opened[0].name
        import torch  # the encoders need it anyway

        threads = torch.get_num_threads()
        self._decode = ThreadPoolExecutor(max_workers=o.decode_workers, thread_name_prefix="retr-decode",
                                          initializer=_torch_threads, initargs=(1,))
        # the forward keeps the process's torch threads; the decoding threads run one each
        wait = o.max_wait_ms / 1000
        self._encode = Batcher(self._encode_batch, o.max_batch, wait, "retr-encode",
                               init=functools.partial(_torch_threads, threads))
        self._watcher: Watcher | None = None
        self._thumbs: OrderedDict = OrderedDict()

    # -- lifecycle -------------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start moving databases to their newest complete state (every ``reload_s`` seconds)."""
        if self._watcher is None and self.options.reload_s > 0:
            self._watcher = Watcher(list(self.databases.values()), self.options.reload_s)

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None
        self._encode.close()
        self._decode.shutdown(wait=True)
        for d in self.databases.values():
            d.close()

    def database(self, name: str | None) -> Database:
        d = self.databases.get(name or self.default)
        if d is None:
            raise NotFound(f"no database named '{name}' (served: {', '.join(self.databases)})")
        return d

    # -- batches ---------------------------------------------------------------------------------------------------
    @staticmethod
    def _encode_batch(items: list) -> list:
        """[(encoder, (3, h, w) tensor)] -> [(d,) float32 descriptor], one forward pass per encoder."""
        out: list = [None] * len(items)
        groups: dict[int, list[int]] = {}
        for j, (enc, _) in enumerate(items):
            groups.setdefault(id(enc), []).append(j)
        for idx in groups.values():
            enc = items[idx[0]][0]
            x = enc.encode_batch([items[j][1] for j in idx])
            for j, row in zip(idx, x):
                out[j] = row
        return out

    # -- queries ---------------------------------------------------------------------------------------------------
    @staticmethod
    def check(snap: Snapshot, q: Query) -> None:
        """Refuse a bad k or nprobe before it reaches a batch (one line, as `retr query` would)."""
        if not 1 <= q.k <= MAX_K:
            raise ConfigError(f"k must be between 1 and {MAX_K}, got {q.k}")
        indexes.check_nprobe(snap.engine.index, q.nprobe)

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._decode, fn, *args)

    async def _describe(self, db: Database, snap: Snapshot, load, ticket) -> np.ndarray:
        """``load(encoder)`` -> (H, W, 3) uint8 and its preprocessing on the decoding pool, then the network's
        batch; ``ticket``: this request's place announced to the encode batcher."""
        enc = db.encoder(snap)

        def prepare():
            return enc.preprocess(load(enc))

        try:
            x = await self._run(prepare)
        except BaseException:
            ticket.cancel()
            raise
        return await asyncio.wrap_future(self._encode.submit((enc, x), ticket))

    async def _answer(self, db: Database, snap: Snapshot, x: np.ndarray, q: Query, query: str, ticket=None) -> dict:
        results = await asyncio.wrap_future(snap.search(x, q, ticket))
        return {"db": db.name, "generation": snap.generation, "count": snap.count, "query": query,
                "results": results}

    async def _image_query(self, db: Database, snap: Snapshot, load, q: Query, query: str) -> dict:
        """Describe an image (``load``) and search with it; announced to both batchers from the start, so that
        batches being formed wait (briefly) for it."""
        searching, encoding = snap.announce(), self._encode.announce()
        try:
            x = await self._describe(db, snap, load, encoding)
            return await self._answer(db, snap, x, q, query, searching)
        finally:
            searching.cancel()
            encoding.cancel()

    async def search_image(self, name: str | None, data: bytes, filename: str, q: Query) -> dict:
        db = self.database(name)
        with db.use() as snap:
            self.check(snap, q)
            return await self._image_query(db, snap, lambda enc: decode_image_bytes(data, filename, self.max_pixels,
                                                                                    enc.draft_size), q, filename)

    async def search_id(self, name: str | None, i: int, q: Query) -> dict:
        db = self.database(name)
        with db.use() as snap:
            self.check(snap, q)
            path = await asyncio.wrap_future(snap.file(i))
            if path is None:
                raise NotFound(f"no image with id {i} in database '{db.name}'")
            try:
                return await self._image_query(db, snap, lambda enc: read_image(path, self.max_pixels,
                                                                                enc.draft_size), q, f"id:{i}")
            except ImageError as e:
                raise Gone(f"image {i} cannot be read any more: {_reason(e, path)}") from None

    async def search_vector(self, name: str | None, vector: list[float], q: Query) -> dict:
        db = self.database(name)
        with db.use() as snap:
            self.check(snap, q)
            d = snap.engine.encoder_config.dim
            x = np.asarray(vector, np.float32)
            if x.shape != (d,) or not np.isfinite(x).all():
                got = f"{x.size} numbers" if x.shape != (d,) else "a non-finite number"
                raise ConfigError(f"vector must be {d} finite numbers (a descriptor of the encoder of database "
                                  f"'{db.name}'), got {got}")
            return await self._answer(db, snap, x, q, "<vector>")

    # -- files -----------------------------------------------------------------------------------------------------
    async def image_file(self, name: str | None, i: int) -> str:
        """The file of indexed id ``i`` (its path comes from the store, never from the request)."""
        db = self.database(name)
        with db.use() as snap:
            path = await asyncio.wrap_future(snap.file(i))
        if path is None:
            raise NotFound(f"no image with id {i} in database '{db.name}'")
        if not os.path.isfile(path):
            raise Gone(f"image {i}'s file is no longer there")
        return path

    async def thumbnail(self, name: str | None, i: int) -> bytes:
        """A JPEG of at most ``THUMB_SIDE`` px a side of indexed id ``i``; the last 512 are kept in memory."""
        path = await self.image_file(name, i)
        try:
            st = os.stat(path)
        except OSError:
            raise Gone(f"image {i}'s file is no longer there") from None
        key = (path, st.st_mtime_ns, st.st_size)
        data = self._thumbs.get(key)
        if data is None:
            try:
                data = await self._run(_thumbnail, path, self.max_pixels)
            except ImageError as e:
                raise Gone(f"image {i} cannot be read any more: {_reason(e, path)}") from None
            self._thumbs[key] = data
            while len(self._thumbs) > 512:
                self._thumbs.popitem(last=False)
        return data

    def info(self, name: str | None) -> dict:
        db = self.database(name)
        with db.use() as snap:
            out = {k: v for k, v in snap.info.items() if k not in ("db", "root")}
            return {"name": db.name, "generation": snap.generation, "bytes_per_vector": out["code_size"], **out,
                    "databases": list(self.databases)}

    def health(self) -> dict:
        return {"status": "ok", "databases": {n: {"ready": d.generation is not None}
                                              for n, d in self.databases.items()}}


def _reason(e: Exception, path: str) -> str:
    """An `ImageError`'s reason without the server's path in front."""
    return str(e).removeprefix(f"{printable(path)}: ")


def _thumbnail(path: str, max_pixels: int | None) -> bytes:
    from PIL import Image

    im = Image.fromarray(read_image(path, max_pixels, (THUMB_SIDE, THUMB_SIDE)))
    im.thumbnail((THUMB_SIDE, THUMB_SIDE))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=85)
    return buf.getvalue()


__all__ = ["Service", "ServeOptions", "Query", "NotFound", "Gone", "NotReady", "MAX_K"]
