"""Sharded collections: several databases that share an encoder and a codec, searched as one, or merged into one.

    ShardedEngine([a, b, ...]).search(queries, k) -> [QueryResult]   each shard searched, results merged by score
    search([a, b, ...], queries, k)               -> [QueryResult]   the same, one shot (`retr query --db A --db B`)
    merge([a, b, ...], out, root=None)            -> MergeReport      one database from the shards (`retr merge`)

Shards share a codec when each was indexed with ``--codec-from`` the first (whose codec must be frozen: ``retr index
... --freeze``, or ``--train-size`` images): their codes then decode into one space, a query is described and
reduced once, and a score from one shard compares with a score from another. Searching N shards and keeping the
best ``k`` by score gives what one database holding every image gives with an exhaustive index (``flat``,
``fastscan``): the same vectors, the same scores, ties broken by shard order then rank (a merged database numbers
the first shard's images first). With IVF or HNSW each shard has its own approximation.

**Paths in a merged database.** A database stores paths relative to its one root (the folder it indexes), and shards
usually index different folders. `merge` re-roots every path at the deepest folder that holds every shard's root
(``os.path.commonpath``), or at ``root`` when given (which must hold them all): the merged database answers with the
same absolute paths as the shards, and `retr index ROOT --db MERGED` later adds what is new under that root. Two
shards that hold the same file (the same absolute path) are refused rather than merged twice.

Merging copies codes, file records (size, mtime, hash), skipped files and, when every shard kept them, descriptors:
nothing is decoded or encoded again. The result is written into a temporary folder beside ``out`` and renamed into
place at the end, so ``out`` is either complete or absent.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import indexes
from .codec import CodecParams
from .database import read_params, read_spec, refresh_index, write_spec
from .engine import Engine, Match, QueryResult, _check_k, describe_queries
from .errors import ConfigError, DatabaseError
from .spec import DatabaseSpec
from .store import FileRecord, Store, key_id

__all__ = ["ShardedEngine", "ShardMatch", "MergeReport", "search", "merge"]


@dataclass
class ShardMatch(Match):
    """A `Match` from one of several databases: ``id`` is that database's (``db``)."""

    db: str = ""


def _check_distinct(dbs: Sequence[str | os.PathLike]) -> None:
    """Refuse a database given twice (its images would count twice); before opening any (LMDB opens one once)."""
    if not dbs:
        raise ConfigError("no database given: give at least one")
    seen: dict[Path, str] = {}
    for db in dbs:
        key = Path(db).resolve()
        if key in seen:
            raise ConfigError(f"{db} is given twice (as {seen[key]}); give each database once")
        seen[key] = str(db)


def _check_shared(dbs: Sequence[str | os.PathLike], specs: list[DatabaseSpec | None],
                  params: list[CodecParams | None]) -> None:
    """Refuse databases that do not share one encoder and one codec, naming the first that differs and the fix."""
    for db, spec, p in zip(dbs, specs, params):
        if spec is None or p is None:
            raise DatabaseError(f"{db} has no fitted codec yet: finish `retr index` first")
    first, fp = dbs[0], params[0].fingerprint()
    for db, spec, p in zip(dbs[1:], specs[1:], params[1:]):
        if spec.encoder != specs[0].encoder:
            raise ConfigError(f"{db} is described by another encoder than {first} ({spec.encoder.describe()} vs "
                              f"{specs[0].encoder.describe()}): shards must share one; index it with --codec-from "
                              f"{first}")
        if p.fingerprint() != fp:
            raise ConfigError(f"{db} has another codec than {first} (fingerprint {p.fingerprint()} vs {fp}): "
                              f"shards must share one; index it with --codec-from {first} (which needs a frozen "
                              f"codec: `retr index FOLDER --db {first} --freeze`)")


class ShardedEngine:
    """Several open databases that share an encoder and a codec, searched as one collection: ``ShardedEngine([a,
    b]).search([...], k)``. Each keeps its own index (`engine.Engine`); the query is described and reduced once."""

    def __init__(self, dbs: Sequence[str | os.PathLike], device: str = "auto",
                 index: indexes.IndexConfig | None = None, jpeg_decode: str = "auto"):
        _check_distinct(dbs)
        self.dbs = [str(db) for db in dbs]
        self.engines: list[Engine] = []
        try:
            for db in dbs:
                self.engines.append(Engine(db, device=device, index=index, jpeg_decode=jpeg_decode))
            _check_shared(self.dbs, [e.spec for e in self.engines], [e.params for e in self.engines])
        except BaseException:
            self.close()
            raise

    @property
    def encoder(self):
        """The loaded network, shared by every shard (the first shard's engine loads it on first use)."""
        return self.engines[0].encoder

    def close(self) -> None:
        for e in self.engines:
            e.close()

    def __enter__(self) -> ShardedEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def search_vectors(self, x: np.ndarray, k: int = 10, symmetric: bool = False,
                       nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Descriptors ``(m, d) float32`` -> ``D (m, k)`` cosine similarities, ``S (m, k)`` shard numbers (positions
        in ``dbs``) and ``I (m, k)`` ids in those shards; best first, -1 in S and I where every shard together
        holds fewer than k."""
        _check_k(k)
        for e in self.engines:
            indexes.check_nprobe(e.index, nprobe)
        xq = self.engines[0].query_vectors(x, symmetric)
        m = len(xq)
        parts = [indexes.search(e.index, xq, k, nprobe) for e in self.engines]
        D = np.full((m, k), -np.inf, np.float32)
        S = np.full((m, k), -1, np.int64)
        I = np.full((m, k), -1, np.int64)
        for q in range(m):
            d = np.concatenate([p[0][q] for p in parts])
            s = np.concatenate([np.full(len(p[1][q]), j) for j, p in enumerate(parts)])
            r = np.concatenate([np.arange(len(p[1][q])) for p in parts])
            ii = np.concatenate([p[1][q] for p in parts])
            keep = ii >= 0
            d, s, r, ii = d[keep], s[keep], r[keep], ii[keep]
            order = np.lexsort((r, s, -d))[:k]  # by score, then shard order, then rank in the shard
            n = len(order)
            D[q, :n], S[q, :n], I[q, :n] = d[order], s[order], ii[order]
        return D, S, I

    def search(self, queries: list, k: int = 10, symmetric: bool = False, nprobe: int | None = None,
               batch_size: int = 32, workers: int = 2) -> list[QueryResult]:
        """Each query is a path or an ``(H, W, 3) uint8`` array; results are `ShardMatch`es. A query image that
        cannot be read is answered with its ``error`` (the others are still answered)."""
        _check_k(k)
        for e in self.engines:
            indexes.check_nprobe(e.index, nprobe)
        if not queries:
            return []
        names, got, out = describe_queries(self.encoder, queries, batch_size, workers)
        ok = np.flatnonzero(got.ok)
        if len(ok):
            D, S, I = self.search_vectors(got.x[ok], k, symmetric, nprobe)
            for j, d, s, ii in zip(ok, D, S, I):
                out[j] = QueryResult(names[j], self.matches(d, s, ii))
        return out

    def matches(self, d: np.ndarray, s: np.ndarray, ii: np.ndarray) -> list[ShardMatch]:
        """One query's row of scores, shard numbers and ids as ranked matches with absolute paths."""
        out = []
        for r, (score, j, i) in enumerate(zip(d, s, ii)):
            if j < 0:
                break
            e = self.engines[j]
            path = e.store.paths([i])[0]
            out.append(ShardMatch(r + 1, float(score), os.path.join(e.root, path), int(i), self.dbs[j]))
        return out


def search(dbs: Sequence[str | os.PathLike], queries: list, k: int = 10, symmetric: bool = False,
           device: str = "auto", nprobe: int | None = None, jpeg_decode: str = "auto") -> list[QueryResult]:
    """One-shot search of several databases that share a codec: the top ``k`` of each query over all of them."""
    _check_k(k)
    with ShardedEngine(dbs, device=device, jpeg_decode=jpeg_decode) as eng:
        return eng.search(queries, k=k, symmetric=symmetric, nprobe=nprobe)


# -- merging ----------------------------------------------------------------------------------------------------------
@dataclass
class MergeReport:
    """What `merge` wrote: ``count`` images from ``shards`` (path, images), re-rooted at ``root``. ``seconds`` in
    all; ``timings``: ``check`` (opening and checking the shards, paths), ``copy`` (codes, records, skipped files),
    ``index`` (building the merged index), seconds."""

    db: Path
    count: int
    shards: list[tuple[str, int]]
    root: str
    code_size: int
    skipped: int
    features: bool
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def codes_per_s(self) -> float:
        """Images merged per second, index building included."""
        return self.count / self.seconds if self.seconds > 0 else float("inf")

    def to_dict(self) -> dict:
        return dict(self.__dict__, db=str(self.db), codes_per_s=self.codes_per_s)


def _merged_root(roots: list[str], root: str | os.PathLike | None) -> str:
    if root is None:
        return os.path.commonpath(roots)
    root = os.path.abspath(root)
    outside = [r for r in roots if os.path.commonpath([root, r]) != root]
    if outside:
        raise ConfigError(f"--root {root} does not hold {outside[0]}, the folder of a shard; give a folder that "
                          "holds every shard's")
    return root


def _prefix(shard_root: str, root: str) -> str:
    """What goes before a shard's relative paths to make them relative to ``root``: '' or 'sub/dir/'."""
    rel = os.path.relpath(shard_root, root).replace(os.sep, "/")
    return "" if rel == "." else rel + "/"


def _nested(roots: list[str]) -> bool:
    """Whether a shard's folder is another's or inside it (only then can two shards hold the same file)."""
    return any(i != j and os.path.commonpath([a, b]) == a for i, a in enumerate(roots) for j, b in enumerate(roots))


def merge(dbs: Sequence[str | os.PathLike], out: str | os.PathLike, root: str | os.PathLike | None = None,
          chunk: int = 65536) -> MergeReport:
    """Write one database ``out`` (which must not exist) holding every image of ``dbs``, shards that share a codec,
    without describing anything again: codes, file records, skipped files (and descriptors when every shard kept
    them) are copied, ids numbered in shard order, paths re-rooted at ``root`` (default: the deepest folder that
    holds every shard's root), the index built. ``chunk``: images per write transaction."""
    t0 = time.perf_counter()
    _check_distinct(dbs)
    out = Path(out)
    if out.exists():
        raise ConfigError(f"{out} already exists; `retr merge` writes a new database: choose another --db")
    with contextlib.ExitStack() as stack:
        stores = []
        for db in dbs:
            s = stack.enter_context(Store(db))
            stack.enter_context(s.snapshot())  # each shard read from one committed state
            stores.append(s)
        specs, params = [read_spec(s) for s in stores], [read_params(s) for s in stores]
        _check_shared([str(d) for d in dbs], specs, params)
        for db, s, spec in zip(dbs, stores, specs):
            if not spec.frozen:
                raise ConfigError(f"{db}'s codec is still provisional: shards share a frozen codec; freeze it with "
                                  f"`retr index FOLDER --db {db} --freeze` and index the others with --codec-from")
            if s.count("codes") != s.count("files"):
                raise DatabaseError(f"{db} has images without a code (an unfinished `retr index`): run it again "
                                    "first")
        roots = [os.fsdecode(s.get_meta("root") or b"") for s in stores]
        for db, r in zip(dbs, roots):
            if not r:
                raise DatabaseError(f"{db} records no indexed folder; run `retr index FOLDER --db {db}` first")
        new_root = _merged_root(roots, root)
        with_features = all(s.count("features") == s.count("files") for s in stores)
        spec, p = specs[0], params[0]

        prefixes = [_prefix(r, new_root) for r in roots]
        # every path once: the same file in two shards is an error, not two images
        owner: dict[str, str] = {}
        if _nested(roots):
            for db, s, pre in zip(dbs, stores, prefixes):
                for k, _ in s.raw_items("ids"):
                    key = pre + os.fsdecode(k)
                    if key in owner:
                        raise ConfigError(f"{os.path.join(new_root, key)} is in both {owner[key]} and {db}; merge "
                                          "shards of different files")
                    owner[key] = str(db)

        timings = {"check": time.perf_counter() - t0}
        tmp = out.parent / f".{out.name}.merging-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            shards, skipped = [], {}
            with Store(tmp, write=True, create=True) as dst:
                write_spec(dst, spec, p)
                dst.put_meta({"root": os.fsencode(new_root)})
                for db, s, pre in zip(dbs, stores, prefixes):
                    n = _copy(s, dst, pre, p.code_size, spec.encoder.dim if with_features else None, chunk)
                    shards.append((str(db), n))
                    for rel, rec in s.skip_records().items():
                        key = pre + rel
                        if key not in owner:  # indexed by another shard: not a skipped file of the collection
                            skipped[key] = rec
                if skipped:
                    dst.set_skipped(skipped)
                t = time.perf_counter()
                timings["copy"] = t - t0 - timings["check"]
                refresh_index(dst, p, spec.index)
                timings["index"] = time.perf_counter() - t
                count = dst.count("files")
            os.rename(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return MergeReport(out, count, shards, new_root, p.code_size, len(skipped), with_features,
                       time.perf_counter() - t0, timings)


def _copy(src: Store, dst: Store, prefix: str, code_size: int, dim: int | None, chunk: int) -> int:
    """Append every image of ``src`` to ``dst`` in id order, ``prefix`` before each path, ``chunk`` per transaction;
    returns how many."""
    records = src.raw_items("files")
    feats = src.iter_arrays("features", dim, "<f4", batch=chunk) if dim is not None else None
    n = 0
    for ids, codes in src.iter_arrays("codes", code_size, "u1", batch=chunk):
        recs = []
        for i in ids:
            k, v = next(records)
            if key_id(k) != i:
                raise DatabaseError(f"{src.path}: id {i} has a code but no file record; run `retr check --db "
                                    f"{src.path}`")
            rec = FileRecord.from_bytes(v)
            recs.append(FileRecord(prefix + rec.path, rec.size, rec.mtime_ns, rec.blake2b) if prefix else rec)
        x = None
        if feats is not None:
            fids, x = next(feats)
            if not np.array_equal(fids, ids):
                raise DatabaseError(f"{src.path}: descriptors and codes list different ids; run `retr check`")
        dst.add(recs, codes=codes, features=x)
        n += len(recs)
    return n

