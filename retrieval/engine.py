"""The engine: index a folder into a database, search it, describe it. What the CLI calls, usable from Python.

    index_folder(folder, db)  -> IndexReport     walk, describe new files, fit or apply the codec, store, index
    search(db, queries, k)    -> [QueryResult]   describe the queries, search the derived Faiss index
    info(db)                  -> DatabaseInfo

Settings come from one place, `spec.resolve` (what the database holds, then what was asked, then defaults), and
images become descriptors one way, `describe.iter_descriptors`, for indexing and querying alike.

The codec is *provisional* while the database holds fewer images than the spec's ``train_size``: the float32
descriptors are kept and the codec is refitted on all of them whenever the collection changed, so a database
started on four images does not stay a four-dimensional one. Once there are ``train_size`` images (or on
``freeze``) the codec is fitted on a seeded sample of that many, *frozen*, and the descriptors are dropped (unless
``keep_features``); later runs only apply it.

A run that is interrupted (even by ``kill -9``) resumes where its last committed batch ended, and ends with the
database an uninterrupted run would have built, bit for bit: batches are formed from the decodable files in path
order, so the files left after a crash start at a batch boundary and every forward pass sees the same batch as in an
uninterrupted run; descriptors are coded in chunks fixed by their ids (``id // batch_size``), for the same reason
(a matrix product's rounding can depend on how many rows it has); a fit depends only on the set of stored ids.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from .. import indexes
from ..indexes.config import FASTSCAN_KINDS, fastscan_rerank_bytes
from ..indexes.vectors import l2n
from . import codec as codec_mod
from .codec import CodecConfig, CodecParams
from .database import INDEX_FILE, read_params, read_spec, refresh_index, write_spec
from .encoder_config import EncoderConfig
from .errors import ConfigError, DatabaseError
from .images import os_reason, relative_key, walk_images
from .spec import FROZEN, PROVISIONAL, DatabaseSpec, SpecRequest, resolve
from .store import FileRecord, SkipRecord, Store

if TYPE_CHECKING:
    from .distributed import RayConfig

__all__ = ["index_folder", "search", "info", "Engine", "IndexReport", "QueryResult", "Match", "DatabaseInfo",
           "INDEX_FILE"]


@dataclass
class IndexReport:
    """What one ``index_folder`` run did. Times in seconds.

    ``missing``: files still indexed whose file is gone from the folder (``forget_deleted`` removes them);
    ``skipped_unchanged``: files skipped before and unchanged since, not decoded again."""

    db: Path
    added: int
    updated: int
    removed: int
    unchanged: int
    skipped: dict[str, str]
    total: int
    code_size: int
    codec_fitted: bool
    codec_state: str = FROZEN
    codec_note: str | None = None
    missing: int = 0
    skipped_unchanged: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(self.__dict__, db=str(self.db))


@dataclass
class Match:
    rank: int
    score: float
    path: str
    id: int


@dataclass
class QueryResult:
    """The ranked ``results`` of one query, or the ``error`` that kept it from being answered."""

    query: str
    results: list[Match]
    error: str | None = None

    def to_dict(self) -> dict:
        d = {"query": self.query, "results": [m.__dict__ for m in self.results]}
        if self.error is not None:
            d["error"] = self.error
        return d


@dataclass
class DatabaseInfo:
    db: Path
    format_version: int
    count: int
    code_size: int
    descriptor_dim: int
    compression: float
    encoder: dict
    codec: dict
    codec_label: str | None
    codec_state: str | None
    codec_note: str | None
    train_size: int | None
    index_config: dict | None
    skipped: dict[str, str]
    features_kept: int
    root: str
    disk_bytes: int
    index: dict | None
    bytes_per_image: dict | None = None

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["db"] = str(self.db)
        return d


def bytes_per_image(count: int, code_size: int, pages: dict[str, int], index: dict | None,
                    index_extra: int = 0) -> dict | None:
    """What one image costs, in bytes (None for an empty database): ``code`` (the codec's output), ``lmdb`` (pages
    of each per-image LMDB sub-database divided by the images: records, keys and B-tree overhead; 4 KiB pages, so
    meaningful from a few hundred images on), ``lmdb_total``, and
    ``index`` (the saved index file per vector it holds: fast-scan codes + ids, or float32 vectors for flat / ivf /
    hnsw; None before it is built) and ``index_memory`` (what a server holds per vector once it is loaded: the file
    plus ``index_extra`` bytes in all, a fast-scan index's re-rank copy)."""
    if not count:
        return None
    # meta (settings, the fitted codec) and skipped-file records are not per image: left out
    pages = {name: b for name, b in pages.items() if name not in ("meta", "skipped")}
    lmdb = {name: round(b / count, 1) for name, b in pages.items() if b}
    n = index.get("ntotal") if index else None
    return {"code": code_size, "lmdb": lmdb, "lmdb_total": round(sum(pages.values()) / count, 1),
            "index": round(index["bytes"] / n, 1) if n else None,
            "index_memory": round((index["bytes"] + index_extra) / n, 1) if n else None}


def _index_extra(header: dict | None, params: CodecParams | None) -> int:
    """Bytes a loaded index holds beyond its file: a fast-scan index's re-rank copy (0 for the other kinds)."""
    kind = ((header or {}).get("config") or {}).get("kind")
    if kind not in FASTSCAN_KINDS or params is None or not header.get("ntotal"):
        return 0
    return fastscan_rerank_bytes(params.dims, params.config.levels, header["ntotal"])


def codec_note(spec: DatabaseSpec | None, params: CodecParams | None, count: int) -> str | None:
    """Why the codec is not the final one it was asked to be, in one sentence (None when it is)."""
    if spec is None or params is None:
        return None
    notes = []
    if not spec.frozen:
        notes.append(f"provisional: fitted on the {params.n_train} images indexed so far and refitted as the "
                     f"collection grows; frozen at {spec.train_size} images (--train-size) or with --freeze; "
                     "float32 descriptors kept until then")
    if params.capped:
        notes.append(f"dimensions capped at {params.dims} (asked {params.requested_dims}): PCA keeps at most as many "
                     f"dimensions as it has training descriptors ({params.n_train})")
    return "; ".join(notes) or None


# -- indexing -------------------------------------------------------------------------------------------------------
def _check_run_options(batch_size: int, workers: int, timeout_s: float) -> None:
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be 1 or more, got {batch_size}")
    if workers < 1:
        raise ConfigError(f"--workers must be 1 or more, got {workers}")
    if timeout_s is not None and timeout_s <= 0:
        raise ConfigError(f"the decode timeout must be positive, got {timeout_s} s")


def index_folder(folder: str | os.PathLike, db: str | os.PathLike, encoder: EncoderConfig | None = None,
                 codec: CodecConfig | None = None, index: indexes.IndexConfig | None = None, *,
                 request: SpecRequest | None = None, preset: str | None = None, train_size: int | None = None,
                 keep_features: bool = False, forget_deleted: bool = False, refit: bool = False,
                 freeze: bool = False, retry_skipped: bool = False, codec_from: str | os.PathLike | None = None,
                 device: str = "auto", batch_size: int = 32, workers: int = 2, timeout_s: float = 30.0,
                 seed: int = 0, progress: bool = True, jpeg_decode: str = "auto",
                 ray: str | RayConfig | None = None) -> IndexReport:
    """Index every image under ``folder`` into the database ``db`` (created if missing).

    Settings: ``request`` (what the CLI was given, field by field) or whole ``encoder`` / ``codec`` / ``index``
    configurations, a ``preset`` name and ``train_size``, resolved against the database by `spec.resolve`.
    Only new or changed files are described; files gone from the folder are removed with ``forget_deleted``;
    files skipped before are decoded again only when they changed or with ``retry_skipped``. ``refit`` refits a
    frozen codec from kept descriptors; ``freeze`` fits the final codec now, whatever the collection's size.
    ``jpeg_decode``: auto | device | pillow (`encoder.resolve_jpeg_decode`).
    ``ray``: None (describe here), ``"local"`` (a one-machine Ray cluster) or a Ray cluster's address, or a
    `distributed.RayConfig`: the same batches are then described by Ray actors (`distributed.iter_descriptors`).
    """
    _check_run_options(batch_size, workers, timeout_s)
    if ray is not None:
        from .distributed import require_ray

        require_ray()  # before anything is written: without Ray, say how to install it
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a folder of images")
    if request is None:
        request = SpecRequest.of(encoder, codec, index, train_size, preset)
    db = Path(db)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    with Store(db, write=True, create=True) as store:
        for tmp in db.glob(f"{INDEX_FILE}.*.tmp"):  # left by a run killed while saving the index
            tmp.unlink(missing_ok=True)
        if refit and store.count() and store.count("features") < store.count():
            raise ConfigError(f"{db} did not keep its descriptors; --refit needs a database indexed with "
                              "--keep-features")
        spec, params = _resolve_for_index(store, request, codec_from, refit)
        root = os.path.abspath(folder)
        stored_root = store.get_meta("root")
        if stored_root is not None and os.fsdecode(stored_root) != root and store.count() > 0:
            raise ConfigError(f"{db} indexes {os.fsdecode(stored_root)}, not {root}; use another --db")
        if stored_root != os.fsencode(root):
            store.put_meta({"root": os.fsencode(root)})
        scan = store.scan(None if params is None else params.code_size, 4 * spec.encoder.dim)
        if scan.damaged:  # never after a crash; after outside damage, what is lost is encoded again below
            store.heal(scan)

        plan = _plan(store, folder, retry_skipped)
        removed = 0
        if forget_deleted and plan.gone:
            store.delete(plan.gone)
            removed = len(plan.gone)
        timings["walk"] = time.perf_counter() - t0

        skipped: dict[str, SkipRecord] = dict(plan.skips)
        if plan.todo:
            sources = [t[0] for t in plan.todo]
            run = dict(batch_size=batch_size, workers=workers, timeout_s=timeout_s, progress=progress,
                       desc="encoding", timings=timings)
            if ray is None:
                from .describe import iter_descriptors
                from .encoder import Encoder  # torch: only when there is something to describe

                enc = Encoder(spec.encoder, device=device, seed=seed, jpeg_decode=jpeg_decode)
                batches = iter_descriptors(enc, sources, **run)
            else:  # the same batches, described by Ray actors
                from . import distributed

                batches = distributed.iter_descriptors(spec.encoder, sources, ray, device=device, seed=seed,
                                                       jpeg_decode=jpeg_decode, **run)
            # a provisional codec is refitted below: store descriptors only, code them after the fit
            apply = params if spec.frozen else None
            with contextlib.closing(batches):  # on an error, the progress line ends (and Ray's actors go) first
                skipped.update(_describe_into(store, batches, apply, plan.todo, keep_features or not spec.frozen,
                                              timings))
        old = store.skip_records()
        if skipped != old:
            store.set_skipped(skipped, clear=[p for p in old if p not in skipped])

        spec, params, fitted = _settle_codec(store, spec, params, refit=refit, freeze=freeze, seed=seed,
                                             timings=timings)
        _finish_codes(store, params, spec.encoder.dim, keep_features or not spec.frozen, batch_size, progress,
                      timings)
        t = time.perf_counter()
        refresh_index(store, params, spec.index)
        timings["index"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t0
        done = [t for t in plan.todo if t[1] not in skipped]
        n_updated = sum(1 for t in done if t[3] is not None)
        count = store.count()
        return IndexReport(db=db, added=len(done) - n_updated, updated=n_updated, removed=removed,
                           unchanged=plan.unchanged, skipped=store.skipped(), total=count,
                           code_size=params.code_size, codec_fitted=fitted, codec_state=spec.codec_state,
                           codec_note=codec_note(spec, params, count), missing=len(plan.gone) - removed,
                           skipped_unchanged=plan.skipped_unchanged, timings=timings)


def _resolve_for_index(store: Store, request: SpecRequest, codec_from,
                       refit: bool = False) -> tuple[DatabaseSpec, CodecParams | None]:
    """The spec this run uses and the fitted codec (None before the first fit), both committed to the store.

    A database that holds no image pins nothing: a failed first run's settings are replaced by what is asked now."""
    holds = store.count() > 0
    stored = read_spec(store)
    if codec_from is not None:
        with Store(codec_from) as other:
            theirs, their_params = read_spec(other), read_params(other)
        if theirs is None or their_params is None:
            raise DatabaseError(f"{codec_from} has no fitted codec yet")
        if not theirs.frozen:
            raise ConfigError(f"{codec_from}'s codec is still provisional ({theirs.train_size} images freeze it): "
                              f"freeze it first with `retr index FOLDER --db {codec_from} --freeze`")
        ours = read_params(store) if holds else None
        if ours is not None and ours.fingerprint() != their_params.fingerprint():
            raise ConfigError(f"{store.path} already has its own codec; --codec-from needs a new --db")
        spec = resolve(theirs, SpecRequest(encoder=request.encoder, codec=request.codec, index=request.index,
                                           model=request.model), source=str(codec_from))
        if ours is None or stored != spec:
            write_spec(store, spec, their_params)
        return spec, their_params
    spec = resolve(stored, request, holds_images=holds, refit=refit, source=str(store.path))
    params = read_params(store) if holds else None
    if spec != stored or (not holds and store.get_meta("codec") is not None):
        # an empty database forgets a failed first run's codec with its settings
        write_spec(store, spec, clear_codes=not holds, forget_codec=not holds)
    return spec, params


@dataclass
class _Plan:
    todo: list  # (path, relative key, stat, id of the older version or None)
    unchanged: int
    gone: list[int]
    skips: dict[str, SkipRecord]  # kept from earlier runs, or found by the walk
    skipped_unchanged: int


def _plan(store: Store, folder: Path, retry_skipped: bool) -> _Plan:
    """What this run has to describe: files new or changed since they were indexed or skipped."""
    paths, walk_skips = walk_images(folder)
    known = store.files()
    old_skips = store.skip_records()
    todo, seen = [], set()
    unchanged = skipped_unchanged = 0
    skips: dict[str, SkipRecord] = {}
    for p in paths:
        rel = relative_key(p, folder)
        seen.add(rel)
        try:
            st = p.stat()
        except OSError as e:  # gone or changed since the walk listed it
            skips[rel] = SkipRecord(os_reason(e))
            continue
        old = known.get(rel)
        if old is not None and old[1].size == st.st_size and old[1].mtime_ns == st.st_mtime_ns:
            unchanged += 1
        elif old is None and not retry_skipped and rel in old_skips and old_skips[rel].matches(st):
            skips[rel] = old_skips[rel]  # skipped before, unchanged since: its reason still holds
            skipped_unchanged += 1
        else:
            todo.append((p, rel, st, None if old is None else old[0]))
    for s in walk_skips:
        skips[s.path] = SkipRecord(s.reason)
    gone = [i for rel, (i, _) in known.items() if rel not in seen]
    return _Plan(todo, unchanged, gone, skips, skipped_unchanged)


def _describe_into(store: Store, batches, params: CodecParams | None, todo, keep_features: bool,
                   timings: dict) -> dict[str, SkipRecord]:
    """Store each `describe.Described` batch of ``todo`` (from the one pipeline, here or on Ray) in one transaction:
    codes with a frozen codec, descriptors when they are kept (or the codec is still to be fitted). Returns the files
    skipped.

    The codec and the LMDB transaction run on a writer thread fed through a bounded queue (`_Writer`), so the
    forward pass of the next batch never waits for a commit; batches are committed in order, one transaction each,
    as before. ``timings`` gets ``encode`` (the loop's wall time), ``store`` (the writer's busy seconds: ``codec``
    + ``commit``) and ``writer_wait`` (seconds the forward side waited for a full queue or the last commits)."""
    skipped: dict[str, SkipRecord] = {}
    t0 = time.perf_counter()

    def write(b) -> None:
        t = time.perf_counter()
        # size, time and hash of the bytes actually described, not of the earlier stat
        recs = [FileRecord(todo[i][1], st.size, st.mtime_ns, st.blake2b) for i, st in zip(b.index, b.stamps)]
        codes = codec_mod.encode(params, b.x) if params is not None else None
        feats = b.x if (params is None or keep_features) else None
        replaced = [todo[i][3] for i in b.index if todo[i][3] is not None]
        t1 = time.perf_counter()
        store.add(recs, codes=codes, features=feats, replace_ids=replaced)
        timings["codec"] = timings.get("codec", 0.0) + t1 - t
        timings["commit"] = timings.get("commit", 0.0) + time.perf_counter() - t1

    from threadpoolctl import threadpool_limits

    # NumPy's BLAS (the codec's PCA projection of a batch) on one thread: a pool of two would spin after each small
    # product on the cores the forward pass is using; torch's own threads are not limited
    with threadpool_limits(1, user_api="blas"), _Writer(write, depth=_WRITE_AHEAD) as writer:
        for b in batches:
            for i, reason in b.skipped:
                st = todo[i][2]
                skipped[todo[i][1]] = SkipRecord(reason, st.st_size, st.st_mtime_ns)
            if b.index:
                writer.put(b)
        writer.drain()
    timings.update(encode=time.perf_counter() - t0, store=timings.get("codec", 0.0) + timings.get("commit", 0.0),
                   writer_wait=writer.waited)
    # a changed file that no longer decodes must not keep its old code
    stale = [t[3] for t in todo if t[3] is not None and t[1] in skipped]
    if stale:
        store.delete(stale)
    return skipped


_WRITE_AHEAD = 2  # batches queued for the writer: enough to absorb one slow commit, few descriptors held


class _Writer:
    """Run ``write(item)`` for each item on one thread of its own, in order, at most ``depth`` items queued.

    ``put`` blocks while the queue is full (``waited`` counts those seconds and those of ``drain``); the first
    error of ``write`` is raised again by the next ``put`` or by ``drain``, and nothing after it is written.
    Leaving the context without ``drain`` (an error on the reading side) stops after the item being written."""

    def __init__(self, write, depth: int):
        self._write = write
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._stop = False
        self.waited = 0.0
        self._thread = threading.Thread(target=self._run, name="retr-writer", daemon=True)

    def __enter__(self) -> _Writer:
        self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            item = self._q.get()
            try:
                if item is _DONE or self._stop:
                    return
                if self._error is None:
                    self._write(item)
            except BaseException as e:  # handed to the reading side, which raises it
                self._error = e
            finally:
                self._q.task_done()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def put(self, item) -> None:
        self._raise()
        t = time.perf_counter()
        self._q.put(item)
        self.waited += time.perf_counter() - t

    def drain(self) -> None:
        t = time.perf_counter()
        self._q.put(_DONE)
        self._thread.join()
        self.waited += time.perf_counter() - t
        self._raise()

    def __exit__(self, *exc) -> None:
        if self._thread.is_alive():
            self._stop = True
            self._q.put(_DONE)
            self._thread.join()


_DONE = object()


def _ids_digest(ids: list[int]) -> str:
    return hashlib.sha256(np.asarray(ids, ">i8").tobytes()).hexdigest()[:16]


def _settle_codec(store: Store, spec: DatabaseSpec, params: CodecParams | None, *, refit: bool, freeze: bool,
                  seed: int, timings: dict) -> tuple[DatabaseSpec, CodecParams, bool]:
    """Fit the codec when it has to be: the first time, on ``refit``, when a provisional codec's collection changed,
    and when it is frozen (``train_size`` images reached, or ``freeze``). Returns (spec, params, fitted)."""
    ids = sorted(i for i, _ in store.files().values())
    if not ids:
        raise ConfigError("no image could be indexed, so there is nothing to fit the codec on (see `retr info`)")
    if spec.frozen and params is not None and not refit:
        return spec, params, False
    final = spec.frozen or freeze or len(ids) >= spec.train_size
    digest = _ids_digest(ids)
    if not final and params is not None and not refit and store.get_meta("fitted_on") == digest.encode():
        return spec, params, False  # provisional, and the collection is the one it was fitted on
    t = time.perf_counter()
    rng = np.random.default_rng(seed)
    n = spec.train_size
    sample = ids if len(ids) <= n else sorted(rng.choice(ids, n, replace=False).tolist())
    _, x = next(store.iter_arrays("features", spec.encoder.dim, "<f4", batch=len(sample), ids=sample))
    params = codec_mod.fit(np.asarray(x, np.float32), spec.codec)
    spec = spec.replace(codec_state=FROZEN if final else PROVISIONAL)
    # one transaction: the new codec and no code of an older one; committed before any code that depends on it
    write_spec(store, spec, params, clear_codes=True, fitted_on=digest)
    timings["fit"] = time.perf_counter() - t
    return spec, params, True


def _finish_codes(store: Store, params: CodecParams, d: int, keep_features: bool, batch: int, progress: bool,
                  timings: dict) -> None:
    """Give a code to every stored file that lacks one (after a fit, or a crash).

    One transaction per chunk of ids ``id // batch``: a chunk is all coded or not at all, so after a crash the
    remaining chunks are whole and each is encoded exactly as in an uninterrupted run.
    """
    with_code = set(store.sizes("codes"))
    missing = sorted(i for i, _ in store.files().values() if i not in with_code)
    if not missing:
        if not keep_features and store.count("features"):
            store.clear("features")
        return
    t = time.perf_counter()
    bar = tqdm(total=len(missing), desc="coding", unit="vec", disable=not progress)
    try:
        for _, chunk in itertools.groupby(missing, key=lambda i: i // batch):
            ids = list(chunk)
            _, x = next(store.iter_arrays("features", d, "<f4", batch=len(ids), ids=ids))
            store.put_codes(ids, codec_mod.encode(params, np.asarray(x, np.float32)),
                            drop_features=not keep_features)
            bar.update(len(ids))
    finally:
        bar.close()
    if not keep_features and store.count("features"):
        store.clear("features")  # descriptors of files no longer stored (forgotten while staged)
    timings["coding"] = time.perf_counter() - t


# -- searching ------------------------------------------------------------------------------------------------------
class Engine:
    """An open database and its index, for many queries. ``Engine(db).search([...], k)``.

    The index is built from (or loaded for) the snapshot the database is in when the engine opens, with the index
    configuration of the database's spec (or ``index``, for this engine only); the encoder is loaded on the first
    image query (``search_vectors`` needs none).

    ``store``: an open `Store` of ``db`` to read through instead of opening one, left open by ``close()`` (py-lmdb
    opens a database once per process, so a server that moves from one state to the next shares one store; opened
    inside ``store.snapshot()``, the engine is built from that snapshot)."""

    def __init__(self, db: str | os.PathLike, device: str = "auto", index: indexes.IndexConfig | None = None,
                 jpeg_decode: str = "auto", store: Store | None = None):
        self.db = Path(db)
        self.device = device
        self.jpeg_decode = jpeg_decode
        self._encoder = None
        self._owns_store = store is None
        self.store = Store(self.db) if store is None else store
        try:
            self._open(index)
        except BaseException:
            self.close()
            raise

    def _open(self, index: indexes.IndexConfig | None) -> None:
        with self.store.snapshot():  # configuration and codes of one committed state, even during a refit
            self.spec = read_spec(self.store)
            self.params = read_params(self.store)
            if self.spec is None or self.params is None or not self.store.count("codes"):
                raise DatabaseError(f"{self.db} has no fitted codec yet: finish `retr index` first")
            self.encoder_config = self.spec.encoder
            self.index_config = index or self.spec.index
            self.index = refresh_index(self.store, self.params, self.index_config)
            self.root = os.fsdecode(self.store.get_meta("root") or b"")

    @property
    def encoder(self):
        """The loaded network (`encoder.Encoder`), on first use."""
        if self._encoder is None:
            from .encoder import Encoder

            self._encoder = Encoder(self.encoder_config, device=self.device, jpeg_decode=self.jpeg_decode)
        return self._encoder

    def close(self) -> None:
        if self._owns_store:
            self.store.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def query_vectors(self, x: np.ndarray, symmetric: bool = False) -> np.ndarray:
        """Descriptors ``(m, d)`` -> the vectors searched ``(m, p) float32``: reduced but not quantised (asymmetric
        distance), or also quantised with ``symmetric``; L2-normalised."""
        if symmetric:
            y = codec_mod.decode(self.params, codec_mod.encode(self.params, x))
        else:
            y = codec_mod.reduce(self.params, x)
        return l2n(y)

    def search_vectors(self, x: np.ndarray, k: int = 10, symmetric: bool = False,
                       nprobe: int | None = None, expand: str = "none") -> tuple[np.ndarray, np.ndarray]:
        """Descriptors ``(m, d) float32`` -> ``D (m, k)`` cosine similarities, ``I (m, k)`` store ids (-1 where the
        database holds fewer than k). ``expand``: none | aqe | dba | diffusion re-ranks with the decoded database
        vectors (`expansion.expanded_search`; diffusion's scores are its f, not cosines)."""
        _check_k(k)
        if expand == "none":
            return indexes.search(self.index, self.query_vectors(x, symmetric), k, nprobe)
        from .expansion import expanded_search

        return expanded_search(self.query_vectors(x, symmetric), k, expand,
                               lambda v, kk: indexes.search(self.index, v, kk, nprobe), self.vectors)

    def vectors(self, ids) -> np.ndarray:
        """The stored vectors of ``ids (r,)`` as their codes decode them, L2-normalised: ``(r, p) float32`` (what the
        index scores)."""
        ids = [int(i) for i in ids]
        if not ids:
            return np.zeros((0, self.params.dims), np.float32)
        _, codes = next(self.store.iter_arrays("codes", self.params.code_size, "u1", batch=len(ids), ids=ids))
        return l2n(codec_mod.decode(self.params, codes))

    def search(self, queries: list, k: int = 10, symmetric: bool = False, nprobe: int | None = None,
               batch_size: int = 32, workers: int = 2, expand: str = "none") -> list[QueryResult]:
        """Each query is a path or an ``(H, W, 3) uint8`` array. A query image that cannot be read is answered
        with its ``error`` (the others are still answered). ``expand``: as `search_vectors`."""
        from .expansion import check_method

        _check_k(k)
        check_method(expand)
        indexes.check_nprobe(self.index, nprobe)
        if not queries:
            return []
        names, got, out = describe_queries(self.encoder, queries, batch_size, workers)
        ok = np.flatnonzero(got.ok)
        if len(ok):
            D, I = self.search_vectors(got.x[ok], k, symmetric, nprobe, expand)
            for j, d, ii in zip(ok, D, I):
                out[j] = QueryResult(names[j], self.matches(d, ii))
        return out

    def matches(self, d: np.ndarray, ii: np.ndarray) -> list[Match]:
        """One query's row of scores ``d (k,)`` and ids ``ii (k,)`` as ranked matches with paths."""
        keep = ii >= 0
        paths = self.store.paths(ii[keep])
        return [Match(r + 1, float(s), os.path.join(self.root, p), int(i))
                for r, (s, p, i) in enumerate(zip(d[keep], paths, ii[keep]))]


def describe_queries(encoder, queries: list, batch_size: int = 32, workers: int = 2):
    """Query images (paths or uint8 arrays) through the one pipeline: ``(names, descriptions, results)``, where
    ``results[i]`` is already a `QueryResult` with its ``error`` for a query that could not be read, else None."""
    from .describe import describe

    names = ["<array>" if isinstance(q, np.ndarray) else str(q) for q in queries]
    got = describe(encoder, queries, batch_size=batch_size, workers=workers)
    out: list[QueryResult | None] = [QueryResult(n, [], got.skipped[i]) if i in got.skipped else None
                                     for i, n in enumerate(names)]
    return names, got, out


def _check_k(k: int) -> None:
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"-k must be 1 or more, got {k}")


def search(db: str | os.PathLike, queries: list, k: int = 10, symmetric: bool = False, device: str = "auto",
           nprobe: int | None = None, jpeg_decode: str = "auto", expand: str = "none") -> list[QueryResult]:
    """One-shot search: open ``db``, describe ``queries`` (paths or uint8 arrays), return the top ``k`` of each;
    ``expand``: none | aqe | dba | diffusion (`Engine.search_vectors`)."""
    from .expansion import check_method

    _check_k(k)
    check_method(expand)
    with Engine(db, device=device, jpeg_decode=jpeg_decode) as eng:
        return eng.search(queries, k=k, symmetric=symmetric, nprobe=nprobe, expand=expand)


def info(db: str | os.PathLike, store: Store | None = None) -> DatabaseInfo:
    """Counts, bytes per vector, compression, settings (the spec) and skipped files of a database. ``store``: an
    open `Store` of ``db`` to read (in its current snapshot, if one is open) instead of opening one."""
    with contextlib.ExitStack() as stack:
        if store is None:
            store = stack.enter_context(Store(db))
        stack.enter_context(store.snapshot())
        spec = read_spec(store)
        params = read_params(store)
        count = store.count("codes")
        d = spec.encoder.dim if spec else 0
        header = indexes.read_header(Path(db) / INDEX_FILE)
        code_size = params.code_size if params else 0
        return DatabaseInfo(
            db=Path(db), format_version=int(store.get_meta("format_version")), count=count,
            code_size=code_size, descriptor_dim=d,
            compression=params.compression if params else 0.0,
            encoder=spec.encoder.to_dict() if spec else {}, codec=params.config.to_dict() if params else {},
            codec_label=params.label() if params else None,
            codec_state=spec.codec_state if spec and params else None,
            codec_note=codec_note(spec, params, count), train_size=spec.train_size if spec else None,
            index_config=spec.index.to_dict() if spec else None,
            skipped=store.skipped(), features_kept=store.count("features"),
            root=os.fsdecode(store.get_meta("root") or b""), disk_bytes=store.disk_bytes(), index=header,
            bytes_per_image=bytes_per_image(count, code_size, store.page_bytes(), header,
                                            _index_extra(header, params)))

