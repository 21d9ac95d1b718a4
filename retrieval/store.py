"""The LMDB store: the source of truth of a retr database.

A database is a directory (``photos.retr/``) holding LMDB's ``data.mdb`` and ``lock.mdb`` plus derived files (the
Faiss index) that can always be rebuilt from it. Named sub-databases:

``meta``      format version, encoder configuration (JSON), codec parameters (bytes), generation counter, root
``codes``     id (8-byte big-endian) -> packed code, ``code_size`` bytes
``files``     id -> JSON record ``{path, size, mtime_ns, blake2b}`` (path relative to the indexed root)
``ids``       path key (``os.fsencode`` of the relative path) -> id
``features``  id -> raw descriptor, (d,) float32 little-endian (staged before the codec is fitted; kept with
              ``keep_features`` so the codec can be refitted)
``skipped``   path key -> reason (UTF-8): files that could not be indexed

Every change is one write transaction; the ``generation`` counter increases with each, and the store's fingerprint
(codec fingerprint + generation) tells whether a derived index is stale. LMDB allows one writer at a time: a second
writer is refused at once through a non-blocking ``flock`` on ``writer.lock`` rather than left waiting on LMDB's mutex.
"""

from __future__ import annotations

import fcntl
import json
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import lmdb
import numpy as np

from .errors import DatabaseError

FORMAT_VERSION = 1
_SUBDBS = (b"meta", b"codes", b"files", b"ids", b"features", b"skipped")
_INITIAL_MAP_SIZE = 1 << 28  # 256 MiB; sparse on disk, doubled whenever a transaction fills it
_ID = struct.Struct(">Q")  # big-endian so LMDB's byte order is id order


def id_key(i: int) -> bytes:
    return _ID.pack(i)


def key_id(k: bytes) -> int:
    return _ID.unpack(k)[0]


def path_key(rel: str) -> bytes:
    """Relative path -> LMDB key. ``os.fsencode`` round-trips non-UTF-8 names (surrogateescape)."""
    return os.fsencode(rel)


@dataclass(frozen=True)
class FileRecord:
    """What the store knows of one indexed file; ``path`` is relative to the indexed root."""

    path: str
    size: int
    mtime_ns: int
    blake2b: str

    def to_bytes(self) -> bytes:
        # surrogateescape keeps non-UTF-8 names exact inside JSON
        d = {"path": self.path.encode("utf-8", "surrogateescape").decode("latin-1"), "size": self.size,
             "mtime_ns": self.mtime_ns, "blake2b": self.blake2b}
        return json.dumps(d, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, b: bytes) -> FileRecord:
        d = json.loads(b)
        d["path"] = d["path"].encode("latin-1").decode("utf-8", "surrogateescape")
        return cls(**d)


class Store:
    """An open retr database. Use as a context manager; ``write=True`` takes the single-writer lock.

    Reads see a consistent snapshot (one LMDB read transaction per call).
    """

    def __init__(self, path: str | os.PathLike, write: bool = False, create: bool = False):
        self.path = Path(path)
        self.writable = write
        self._lock_fd: int | None = None
        if not create and not (self.path / "data.mdb").is_file():
            if self.path.exists():
                raise DatabaseError(f"{self.path} is not a retr database (no data.mdb inside)")
            raise DatabaseError(f"database {self.path} does not exist: create it with `retr index FOLDER --db {self.path}`")
        if create:
            self.path.mkdir(parents=True, exist_ok=True)
        if write:
            self._take_writer_lock()
        try:
            self.env = lmdb.open(str(self.path), map_size=_INITIAL_MAP_SIZE, max_dbs=len(_SUBDBS), readonly=not write,
                                 lock=True, create=create)
        except lmdb.Error as e:
            self._release_writer_lock()
            raise DatabaseError(f"cannot open database {self.path}: {e}") from None
        if write:
            # growing the map needs the writer; readers pick the new size up on their own
            self.env.set_mapsize(max(self.env.info()["map_size"], _INITIAL_MAP_SIZE))
        try:
            self._dbs = {name.decode(): self.env.open_db(name, create=write) for name in _SUBDBS}
        except lmdb.Error as e:
            self.close()
            raise DatabaseError(f"{self.path} is not a retr database ({e})") from None
        self._check_version(create)

    # -- lifecycle -------------------------------------------------------------------------------------------------
    def _take_writer_lock(self) -> None:
        try:
            fd = os.open(self.path / "writer.lock", os.O_RDWR | os.O_CREAT, 0o644)
        except PermissionError:
            raise DatabaseError(f"database {self.path} is read-only: cannot write to it") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DatabaseError(f"database {self.path} is being written by another process; wait for it to finish") from None
        self._lock_fd = fd

    def _release_writer_lock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def _check_version(self, create: bool) -> None:
        v = self.get_meta("format_version")
        if v is None:
            if create:
                self.put_meta({"format_version": str(FORMAT_VERSION).encode()})
                return
            raise DatabaseError(f"{self.path} is not a retr database (no format version)")
        if int(v) > FORMAT_VERSION:
            raise DatabaseError(f"database {self.path} has format version {int(v)}, newer than this retr "
                                f"understands ({FORMAT_VERSION}): upgrade retr")

    def close(self) -> None:
        if getattr(self, "env", None) is not None:
            self.env.close()
            self.env = None
        self._release_writer_lock()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- writing ---------------------------------------------------------------------------------------------------
    def _write(self, fn) -> None:
        """Run ``fn(txn)`` in one write transaction, doubling the map size when it fills."""
        if not self.writable:
            raise RuntimeError("store opened read-only")
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    fn(txn)
                    gen = int(txn.get(b"generation", db=self._dbs["meta"]) or b"0")
                    txn.put(b"generation", str(gen + 1).encode(), db=self._dbs["meta"])
                return
            except lmdb.MapFullError:
                self.env.set_mapsize(self.env.info()["map_size"] * 2)
            except lmdb.Error as e:  # disk full, I/O error: the last committed transaction stays valid
                raise DatabaseError(f"write to {self.path} failed ({e}); the database is intact up to its last "
                                    "committed batch") from None

    def put_meta(self, items: dict[str, bytes]) -> None:
        def fn(txn):
            for k, v in items.items():
                txn.put(k.encode(), v, db=self._dbs["meta"])
        self._write(fn)

    def add(self, records: list[FileRecord], codes: np.ndarray | None = None, features: np.ndarray | None = None,
            replace_ids: Iterable[int] = ()) -> list[int]:
        """Store one batch atomically: new ids for ``records`` with their codes ``(n, code_size) uint8`` and/or
        features ``(n, d) float32``; ids in ``replace_ids`` (changed files) are removed in the same transaction.
        Returns the new ids."""
        ids: list[int] = []

        def fn(txn):
            ids.clear()
            for i in replace_ids:
                self._delete_in(txn, i)
            nxt = int(txn.get(b"next_id", db=self._dbs["meta"]) or b"0")
            for j, rec in enumerate(records):
                i = nxt + j
                ids.append(i)
                k = id_key(i)
                txn.put(k, rec.to_bytes(), db=self._dbs["files"])
                txn.put(path_key(rec.path), k, db=self._dbs["ids"])
                txn.delete(path_key(rec.path), db=self._dbs["skipped"])
                if codes is not None:
                    txn.put(k, codes[j].tobytes(), db=self._dbs["codes"])
                if features is not None:
                    txn.put(k, np.ascontiguousarray(features[j], dtype="<f4").tobytes(), db=self._dbs["features"])
            txn.put(b"next_id", str(nxt + len(records)).encode(), db=self._dbs["meta"])
        self._write(fn)
        return ids

    def put_codes(self, ids: list[int], codes: np.ndarray, drop_features: bool = False) -> None:
        """Attach codes ``(n, code_size) uint8`` to existing ids (after the codec is fitted), one transaction."""
        def fn(txn):
            for i, c in zip(ids, codes):
                txn.put(id_key(i), c.tobytes(), db=self._dbs["codes"])
                if drop_features:
                    txn.delete(id_key(i), db=self._dbs["features"])
        self._write(fn)

    def _delete_in(self, txn, i: int) -> None:
        k = id_key(i)
        rec = txn.get(k, db=self._dbs["files"])
        if rec is not None:
            txn.delete(path_key(FileRecord.from_bytes(rec).path), db=self._dbs["ids"])
        for name in ("files", "codes", "features"):
            txn.delete(k, db=self._dbs[name])

    def delete(self, ids: Iterable[int]) -> None:
        ids = list(ids)
        self._write(lambda txn: [self._delete_in(txn, i) for i in ids])

    def set_skipped(self, skipped: dict[str, str], clear: Iterable[str] = ()) -> None:
        """Record ``{relative path: reason}`` for files that could not be indexed; forget those in ``clear``."""
        def fn(txn):
            for p in clear:
                txn.delete(path_key(p), db=self._dbs["skipped"])
            for p, reason in skipped.items():
                txn.put(path_key(p), reason.encode(), db=self._dbs["skipped"])
        self._write(fn)

    def clear(self, name: str) -> None:
        """Empty one sub-database (e.g. ``codes`` before a refit)."""
        self._write(lambda txn: txn.drop(self._dbs[name], delete=False))

    # -- reading ---------------------------------------------------------------------------------------------------
    def get_meta(self, key: str) -> bytes | None:
        with self.env.begin() as txn:
            return txn.get(key.encode(), db=self._dbs["meta"])

    def generation(self) -> int:
        return int(self.get_meta("generation") or b"0")

    def count(self, name: str = "files") -> int:
        with self.env.begin() as txn:
            return txn.stat(self._dbs[name])["entries"]

    def files(self) -> dict[str, tuple[int, FileRecord]]:
        """``{relative path: (id, record)}`` of every stored file."""
        with self.env.begin() as txn:
            out = {}
            for k, v in txn.cursor(db=self._dbs["files"]):
                rec = FileRecord.from_bytes(v)
                out[rec.path] = (key_id(k), rec)
            return out

    def record(self, i: int) -> FileRecord | None:
        with self.env.begin() as txn:
            v = txn.get(id_key(i), db=self._dbs["files"])
            return None if v is None else FileRecord.from_bytes(v)

    def paths(self, ids: Iterable[int]) -> list[str]:
        with self.env.begin() as txn:
            out = []
            for i in ids:
                v = txn.get(id_key(int(i)), db=self._dbs["files"])
                out.append(FileRecord.from_bytes(v).path if v is not None else "<deleted>")
            return out

    def raw_items(self, name: str) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) of one sub-database, from one snapshot (for ``retr check``)."""
        with self.env.begin() as txn:
            yield from txn.cursor(db=self._dbs[name])

    def skipped(self) -> dict[str, str]:
        with self.env.begin() as txn:
            return {os.fsdecode(k): v.decode() for k, v in txn.cursor(db=self._dbs["skipped"])}

    def iter_arrays(self, name: str, width: int, dtype: str, batch: int = 65536,
                    ids: list[int] | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Stream ``(ids (b,) int64, rows (b, width) dtype)`` from the ``codes`` or ``features`` sub-database, in id
        order (or for the given ``ids``), all from one snapshot."""
        itemsize = np.dtype(dtype).itemsize * width
        with self.env.begin(buffers=True) as txn:
            def rows():
                if ids is None:
                    yield from txn.cursor(db=self._dbs[name])
                else:
                    for i in ids:
                        v = txn.get(id_key(i), db=self._dbs[name])
                        if v is None:
                            raise DatabaseError(f"{self.path}: id {i} has no entry in '{name}'; run `retr check --db "
                                                f"{self.path}`")
                        yield id_key(i), v
            buf_ids, buf = [], []
            for k, v in rows():
                if len(v) != itemsize:
                    raise DatabaseError(f"{self.path}: entry {key_id(bytes(k))} of '{name}' has {len(v)} bytes, "
                                        f"expected {itemsize}; run `retr check --db {self.path}`")
                buf_ids.append(key_id(bytes(k)))
                buf.append(bytes(v))
                if len(buf) == batch:
                    yield np.array(buf_ids, np.int64), np.frombuffer(b"".join(buf), dtype).reshape(-1, width)
                    buf_ids, buf = [], []
            if buf:
                yield np.array(buf_ids, np.int64), np.frombuffer(b"".join(buf), dtype).reshape(-1, width)

    def read_all(self, name: str, width: int, dtype: str) -> tuple[np.ndarray, np.ndarray]:
        """All ``(ids (n,) int64, rows (n, width))`` of one sub-database."""
        parts = list(self.iter_arrays(name, width, dtype))
        if not parts:
            return np.zeros(0, np.int64), np.zeros((0, width), dtype)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def disk_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.iterdir() if f.is_file())
