"""The engine: index a folder into a database, search it, describe it. What the CLI calls, usable from Python.

    index_folder(folder, db)  -> IndexReport     walk, decode, encode, fit the codec once, store codes, build the index
    search(db, queries, k)    -> [QueryResult]   encode the queries, search the derived Faiss index
    info(db)                  -> DatabaseInfo

Indexing streams: a thread pool decodes and preprocesses images ahead of the forward pass; each batch is one LMDB
write transaction. On the first run descriptors are staged in the store (``features``) until the codec is fitted on
a seeded sample of them, committed, and applied to every staged descriptor; later runs reuse the frozen codec.

A run that is interrupted (even by ``kill -9``) resumes where its last committed batch ended, and ends with the
database an uninterrupted run would have built, bit for bit: batches are formed from the decodable files in path
order, so the files left after a crash start at a batch boundary and every forward pass sees the same batch as in an
uninterrupted run; staged descriptors are coded in chunks fixed by their ids (``id // batch_size``), for the same
reason (a matrix product's rounding can depend on how many rows it has).
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .. import indexes
from . import codec as codec_mod
from .codec import CodecConfig, CodecParams
from .encoder import Encoder, EncoderConfig
from .errors import ConfigError, DatabaseError, ImageError
from .images import (
    JpegBytes,
    Skipped,
    batch_prefetch,
    decode_image_bytes,
    iter_decoded,
    os_reason,
    printable,
    read_image,
    relative_key,
    walk_images,
)
from .store import FileRecord, Store

INDEX_FILE = "index.faiss"
DEFAULT_CODEC = CodecConfig(reduction="pca", dims=256, quantizer="q2", levels=4)


@dataclass
class IndexReport:
    """What one ``index_folder`` run did. Times in seconds."""

    db: Path
    added: int
    updated: int
    removed: int
    unchanged: int
    skipped: dict[str, str]
    total: int
    code_size: int
    codec_fitted: bool
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class Match:
    rank: int
    score: float
    path: str
    id: int


@dataclass
class QueryResult:
    query: str
    results: list[Match]

    def to_dict(self) -> dict:
        return {"query": self.query, "results": [m.__dict__ for m in self.results]}


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
    codec_note: str | None
    skipped: dict[str, str]
    features_kept: int
    root: str
    disk_bytes: int
    index: dict | None

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["db"] = str(self.db)
        return d


# -- reading the stored configuration -------------------------------------------------------------------------------
def _stored_encoder(store: Store) -> EncoderConfig | None:
    raw = store.get_meta("encoder")
    return None if raw is None else EncoderConfig.from_dict(json.loads(raw))


def _stored_codec(store: Store) -> CodecParams | None:
    raw = store.get_meta("codec")
    return None if raw is None else CodecParams.from_bytes(raw)


def _fingerprint(store: Store, params: CodecParams) -> str:
    return f"{params.fingerprint()}-g{store.generation()}"


def _check_same(kind: str, stored: dict, asked: dict, db: Path) -> None:
    diff = [f"{k}: stored {stored.get(k)!r}, asked {asked.get(k)!r}" for k in asked if stored.get(k) != asked.get(k)]
    if diff:
        raise ConfigError(f"{db} was built with another {kind} ({'; '.join(diff)}); index into a new --db, "
                          "or drop the contradicting options")


# -- indexing -------------------------------------------------------------------------------------------------------
def index_folder(folder: str | os.PathLike, db: str | os.PathLike, encoder: EncoderConfig | None = None,
                 codec: CodecConfig | None = None, index: indexes.IndexConfig | None = None, *,
                 train_size: int = 20000, keep_features: bool = False, prune: bool = False, refit: bool = False,
                 codec_from: str | os.PathLike | None = None, device: str = "auto", batch_size: int = 32,
                 workers: int = 2, timeout_s: float = 30.0, seed: int = 0, progress: bool = True,
                 jpeg_on_device: bool | None = None) -> IndexReport:
    """Index every image under ``folder`` into the database ``db`` (created if missing).

    ``encoder``/``codec`` None means: what the database already uses, else the defaults (EfficientNet-Lite0 conv+GeM;
    PCA 256 + Q-2 with 4 levels = 64 bytes per image). Given ones that contradict the database raise ConfigError.
    Only new or changed files are encoded; files gone from the folder are removed with ``prune``.
    ``jpeg_on_device``: decode JPEGs in batches on the model's device (default: on CUDA) rather than with Pillow in
    the ``workers`` threads.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a folder of images")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be 1 or more, got {batch_size}")
    db = Path(db)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    with Store(db, write=True, create=True) as store:
        for tmp in db.glob(f"{INDEX_FILE}.*.tmp"):  # left by a run killed while saving the index
            tmp.unlink(missing_ok=True)
        enc_cfg = _resolve_encoder(store, encoder, codec_from)
        params = _resolve_codec(store, codec, codec_from, enc_cfg, refit)
        root = os.path.abspath(folder)
        stored_root = store.get_meta("root")
        if stored_root is not None and os.fsdecode(stored_root) != root and store.count() > 0:
            raise ConfigError(f"{db} indexes {os.fsdecode(stored_root)}, not {root}; use another --db")
        if stored_root != os.fsencode(root):
            store.put_meta({"root": os.fsencode(root)})
        scan = store.scan(None if params is None else params.code_size, 4 * enc_cfg.dim)
        if scan.damaged:  # never after a crash; after outside damage, what is lost is encoded again below
            store.heal(scan)

        paths, walk_skips = walk_images(folder)
        known = store.files()
        todo: list[tuple[Path, str, os.stat_result, int | None]] = []
        unchanged = 0
        seen = set()
        for p in paths:
            rel = relative_key(p, folder)
            seen.add(rel)
            try:
                st = p.stat()
            except OSError as e:  # gone or changed since the walk listed it
                walk_skips.append(Skipped(rel, os_reason(e)))
                continue
            old = known.get(rel)
            if old is not None and old[1].size == st.st_size and old[1].mtime_ns == st.st_mtime_ns:
                unchanged += 1
            else:
                todo.append((p, rel, st, None if old is None else old[0]))
        gone = [i for rel, (i, _) in known.items() if rel not in seen]
        removed = 0
        if prune and gone:
            store.delete(gone)
            removed = len(gone)
        timings["walk"] = time.perf_counter() - t0

        skipped = {s.path: s.reason for s in walk_skips}
        if todo:
            enc = Encoder(enc_cfg, device=device, seed=seed)
            skipped.update(_encode_into(store, enc, params, todo, batch_size, workers, timeout_s, keep_features,
                                        progress, timings, jpeg_on_device))
        # skipped files are never stored, so every run retries them: this run's list replaces the old one
        old_skipped = store.skipped()
        if skipped != old_skipped:
            store.set_skipped(skipped, clear=old_skipped)

        fitted = False
        if params is None or refit:
            params = _fit_codec(store, enc_cfg, codec or DEFAULT_CODEC, train_size, seed, timings)
            fitted = True
        _finish_codes(store, params, enc_cfg.dim, keep_features, batch_size, progress, timings)
        t = time.perf_counter()
        _refresh_index(store, params, index or indexes.IndexConfig())
        timings["index"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t0
        done = [t for t in todo if t[1] not in skipped]
        n_updated = sum(1 for t in done if t[3] is not None)
        return IndexReport(db=db, added=len(done) - n_updated, updated=n_updated, removed=removed,
                           unchanged=unchanged, skipped=store.skipped(), total=store.count(),
                           code_size=params.code_size, codec_fitted=fitted, timings=timings)


def _resolve_encoder(store: Store, asked: EncoderConfig | None, codec_from) -> EncoderConfig:
    stored = _stored_encoder(store)
    if codec_from is not None:
        with Store(codec_from) as other:
            theirs = _stored_encoder(other)
        if theirs is None:
            raise DatabaseError(f"{codec_from} has no encoder configuration yet")
        if asked is not None:
            _check_same("encoder than --codec-from", theirs.to_dict(), asked.to_dict(), Path(codec_from))
        asked = theirs
    if stored is not None:
        if asked is not None:
            _check_same("encoder", stored.to_dict(), asked.to_dict(), store.path)
        return stored
    cfg = asked or EncoderConfig()
    store.put_meta({"encoder": json.dumps(cfg.to_dict(), sort_keys=True).encode()})
    return cfg


def _resolve_codec(store: Store, asked: CodecConfig | None, codec_from, enc: EncoderConfig,
                   refit: bool) -> CodecParams | None:
    """The frozen codec to apply, or None when it still has to be fitted (first run, or ``refit``)."""
    stored = _stored_codec(store)
    if codec_from is not None:
        with Store(codec_from) as other:
            theirs = _stored_codec(other)
        if theirs is None:
            raise DatabaseError(f"{codec_from} has no fitted codec yet")
        if stored is not None and stored.fingerprint() != theirs.fingerprint():
            raise ConfigError(f"{store.path} already has its own codec; --codec-from needs a new --db")
        if stored is None:
            store.put_meta({"codec": theirs.to_bytes()})
        return theirs
    if refit:
        if store.count() and store.count("features") < store.count():
            raise ConfigError(f"{store.path} did not keep its descriptors; --refit needs a database indexed with "
                              "--keep-features")
        return None
    if stored is not None and asked is not None and asked != stored.config:
        _check_same("codec", stored.config.to_dict(), asked.to_dict(), store.path)
    return stored


def _decode_jpegs(enc: Encoder, batch: list, skipped: dict[str, str]) -> None:
    """Replace the `JpegBytes` in ``batch`` (entries ``(todo entry, image, stamp)``) by tensors decoded on the
    encoder's device, in one call; if it fails, file by file through Pillow, and a file Pillow cannot decode either
    leaves the batch for ``skipped`` with Pillow's reason."""
    at = [k for k, b in enumerate(batch) if isinstance(b[1], JpegBytes)]
    if not at:
        return
    try:
        decoded: list = enc.preprocess_jpegs([batch[k][1].data for k in at])
    except RuntimeError:  # a corrupt scan in one file fails the whole call; Pillow finds which and says why
        decoded = []
        for k in at:
            try:
                decoded.append(enc.preprocess(decode_image_bytes(batch[k][1].data, batch[k][0][1])))
            except ImageError as e:
                decoded.append(Skipped(batch[k][0][1], str(e).removeprefix(f"{printable(batch[k][0][1])}: ")))
    for k, x in zip(at, decoded):
        batch[k] = (batch[k][0], x, batch[k][2])
    for b in batch:
        if isinstance(b[1], Skipped):
            skipped[b[0][1]] = b[1].reason
    batch[:] = [b for b in batch if not isinstance(b[1], Skipped)]


def _encode_into(store: Store, enc: Encoder, params: CodecParams | None, todo, batch_size: int, workers: int,
                 timeout_s: float, keep_features: bool, progress: bool, timings: dict,
                 jpeg_on_device: bool | None = None) -> dict[str, str]:
    """Decode, encode and store ``todo`` in batches; returns ``{relative path: reason}`` of files skipped.

    jpeg_on_device (None: when the encoder runs on CUDA): the decoding workers only read and check JPEG files,
    which are decoded in batches on the encoder's device (`Encoder.preprocess_jpegs`): on a GPU, Pillow on the CPU
    cores is otherwise the bottleneck (bench/README.md). Other formats are decoded by Pillow as always.
    """
    skipped: dict[str, str] = {}
    if jpeg_on_device is None:
        jpeg_on_device = enc.device.type == "cuda"
    bar = tqdm(total=len(todo), desc="encoding", unit="img", disable=not progress)
    batch: list = []
    t_fwd = t_store = t_jpeg = 0.0
    t0 = time.perf_counter()

    def flush():
        nonlocal t_fwd, t_store, t_jpeg
        t = time.perf_counter()
        n = len(batch)
        _decode_jpegs(enc, batch, skipped)
        t_jpeg += time.perf_counter() - t
        bar.update(n - len(batch))
        if not batch:
            return
        t = time.perf_counter()
        x = enc.encode_batch([b[1] for b in batch])
        t_fwd += time.perf_counter() - t
        t = time.perf_counter()
        # size, time and hash of the bytes actually decoded, not of the earlier stat
        recs = [FileRecord(rel, st.size, st.mtime_ns, st.blake2b) for (_, rel, _, _), _, st in batch]
        codes = codec_mod.encode(params, x) if params is not None else None
        feats = x if (params is None or keep_features) else None
        store.add(recs, codes=codes, features=feats, replace_ids=[b[0][3] for b in batch if b[0][3] is not None])
        t_store += time.perf_counter() - t
        bar.update(len(batch))
        batch.clear()

    with enc.decoding_workers() as worker_init:
        items = iter_decoded([t[0] for t in todo], workers=workers, timeout_s=timeout_s, transform=enc.preprocess,
                             draft_size=enc.draft_size, stamp=True, ahead=batch_prefetch(batch_size, workers),
                             worker_init=worker_init, defer_jpeg=jpeg_on_device)
        try:
            for i, _, result in items:
                if isinstance(result, Skipped):
                    skipped[todo[i][1]] = result.reason
                    bar.update(1)
                    continue
                batch.append((todo[i], *result))
                if len(batch) == batch_size:
                    flush()
            flush()
        finally:
            items.close()  # a failed write: stop the decoding threads now
            bar.close()  # and end the progress line before the error is printed
    timings.update(encode=time.perf_counter() - t0, forward=t_fwd, store=t_store)
    if jpeg_on_device:
        timings["device_decode"] = t_jpeg
    # a changed file that no longer decodes must not keep its old code
    stale = [t[3] for t in todo if t[3] is not None and t[1] in skipped]
    if stale:
        store.delete(stale)
    return skipped


def _fit_codec(store: Store, enc: EncoderConfig, config: CodecConfig, train_size: int, seed: int,
               timings: dict) -> CodecParams:
    """Fit on a seeded sample of up to ``train_size`` staged descriptors, commit, and return the codec."""
    t = time.perf_counter()
    all_ids = sorted(i for i, _ in store.files().values())
    if not all_ids:
        raise ConfigError("no image could be indexed, so there is nothing to fit the codec on (see `retr info`)")
    rng = np.random.default_rng(seed)
    sample = all_ids if len(all_ids) <= train_size else sorted(rng.choice(all_ids, train_size, replace=False).tolist())
    _, x = next(store.iter_arrays("features", enc.dim, "<f4", batch=len(sample), ids=sample))
    params = codec_mod.fit(np.asarray(x, np.float32), config)
    # one transaction: the new codec and no code of an older one; committed before any code that depends on it
    store.put_meta({"codec": params.to_bytes()}, clear=("codes",))
    timings["fit"] = time.perf_counter() - t
    return params


def _finish_codes(store: Store, params: CodecParams, d: int, keep_features: bool, batch: int, progress: bool,
                  timings: dict) -> None:
    """Give a code to every stored file that lacks one (staged on the first run, or after a crash or a refit).

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
        store.clear("features")  # descriptors of files no longer stored (pruned while staged)
    timings["coding"] = time.perf_counter() - t


# -- the derived index ----------------------------------------------------------------------------------------------
def _build_index(params: CodecParams, config: indexes.IndexConfig, ids: np.ndarray, codes: np.ndarray):
    """The index over the stored ``codes (n, code_size) uint8``: fast-scan kinds scan the level indices directly
    (lossless, with the codec's levels table); the others hold the decoded, L2-normalised vectors ``(n, p)``."""
    if config.kind in indexes.FASTSCAN_KINDS:
        cfg = params.config
        if cfg.quantizer == "none" or cfg.levels > indexes.fastscan.MAX_LEVELS:
            raise ConfigError(f"--index {config.kind} scans quantized codes: it needs --quantizer q1/q2 with "
                              f"--levels <= {indexes.fastscan.MAX_LEVELS}")
        return indexes.build_fastscan(codec_mod.levels(params), codec_mod.indices(params, codes), ids, config)
    xb = codec_mod.decode(params, codes) if len(codes) else np.zeros((0, params.dims), np.float32)
    return indexes.build_index(_l2n(xb), ids, config)


def _l2n(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(n, 1e-12)).astype(np.float32)


def _refresh_index(store: Store, params: CodecParams, config: indexes.IndexConfig):
    """Load the saved index if it matches the store's fingerprint, else rebuild it and save it atomically.

    The fingerprint and the codes come from one snapshot, so an index saved while another process writes is labelled
    with the state it was built from."""
    path = store.path / INDEX_FILE
    with store.snapshot():
        fp = _fingerprint(store, params)
        idx = indexes.load_index(path, fp, config)
        if idx is None:
            ids, codes = store.read_all("codes", params.code_size, "u1")
    if idx is None:
        idx = _build_index(params, config, ids, codes)
        try:
            indexes.save_index(idx, path, config, fp)
        except OSError:
            pass  # a read-only database still answers queries from the index built in memory
    return idx


# -- searching ------------------------------------------------------------------------------------------------------
class Engine:
    """An open database and its index, for many queries. ``Engine(db).search([...], k)``.

    The index is built from (or loaded for) the snapshot the database is in when the engine opens; the encoder is
    loaded on the first image query (``search_vectors`` needs none)."""

    def __init__(self, db: str | os.PathLike, device: str = "auto", index: indexes.IndexConfig | None = None):
        self.db = Path(db)
        self.device = device
        self.store = Store(self.db)
        try:
            self._open(index)
        except BaseException:
            self.store.close()
            raise

    def _open(self, index: indexes.IndexConfig | None) -> None:
        with self.store.snapshot():  # configuration and codes of one committed state, even during a refit
            self.encoder_config = _stored_encoder(self.store)
            self.params = _stored_codec(self.store)
            if self.encoder_config is None or self.params is None:
                raise DatabaseError(f"{self.db} has no fitted codec yet: finish `retr index` first")
            saved = indexes.read_header(self.db / INDEX_FILE)
            cfg = index or (indexes.IndexConfig.from_dict(saved["config"]) if saved else indexes.IndexConfig())
            self.index = _refresh_index(self.store, self.params, cfg)
            self.root = os.fsdecode(self.store.get_meta("root") or b"")

    @functools.cached_property
    def encoder(self) -> Encoder:
        return Encoder(self.encoder_config, device=self.device)

    def close(self) -> None:
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
        return _l2n(y)

    def search_vectors(self, x: np.ndarray, k: int = 10, symmetric: bool = False,
                       nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Descriptors ``(m, d) float32`` -> ``D (m, k)`` cosine similarities, ``I (m, k)`` store ids."""
        return indexes.search(self.index, self.query_vectors(x, symmetric), k, nprobe)

    def search(self, queries: list, k: int = 10, symmetric: bool = False,
               nprobe: int | None = None) -> list[QueryResult]:
        """Each query is a path or an ``(H, W, 3) uint8`` array; a bad query image raises ImageError."""
        images, names = [], []
        for q in queries:
            if isinstance(q, np.ndarray):
                images.append(q)
                names.append("<array>")
            else:
                images.append(read_image(Path(q)))
                names.append(str(q))
        if not images:
            return []
        D, I = self.search_vectors(self.encoder(images), k, symmetric, nprobe)
        out = []
        for name, d, ii in zip(names, D, I):
            keep = ii >= 0
            paths = self.store.paths(ii[keep])
            matches = [Match(r + 1, float(s), os.path.join(self.root, p), int(i))
                       for r, (s, p, i) in enumerate(zip(d[keep], paths, ii[keep]))]
            out.append(QueryResult(name, matches))
        return out


def search(db: str | os.PathLike, queries: list, k: int = 10, symmetric: bool = False, device: str = "auto",
           nprobe: int | None = None) -> list[QueryResult]:
    """One-shot search: open ``db``, encode ``queries`` (paths or uint8 arrays), return the top ``k`` of each."""
    with Engine(db, device=device) as eng:
        return eng.search(queries, k=k, symmetric=symmetric, nprobe=nprobe)


def info(db: str | os.PathLike) -> DatabaseInfo:
    """Counts, bytes per vector, compression, configurations and skipped files of a database."""
    with Store(db) as store, store.snapshot():
        enc = _stored_encoder(store)
        params = _stored_codec(store)
        d = enc.dim if enc else 0
        note = None
        if params is not None and params.capped:
            note = (f"dimensions capped at {params.dims} (asked {params.requested_dims}): the codec was fitted on "
                    f"{params.n_train} descriptors")
        return DatabaseInfo(
            db=Path(db), format_version=int(store.get_meta("format_version")), count=store.count("codes"),
            code_size=params.code_size if params else 0, descriptor_dim=d,
            compression=params.compression if params else 0.0,
            encoder=enc.to_dict() if enc else {}, codec=params.config.to_dict() if params else {},
            codec_note=note, skipped=store.skipped(), features_kept=store.count("features"),
            root=os.fsdecode(store.get_meta("root") or b""), disk_bytes=store.disk_bytes(),
            index=indexes.read_header(Path(db) / INDEX_FILE))
