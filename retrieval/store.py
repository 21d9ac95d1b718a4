"""The LMDB store: the source of truth of a retr database.

A database is a directory (``photos.retr/``) holding LMDB's ``data.mdb`` and ``lock.mdb`` plus derived files (the
Faiss index) that can always be rebuilt from it. Named sub-databases:

``meta``      format version, the database spec (JSON, `spec.DatabaseSpec`), encoder configuration (JSON, also in the
              spec), fitted codec parameters (bytes), generation counter, root
``codes``     id (8-byte big-endian) -> packed code, ``code_size`` bytes
``files``     id -> JSON record ``{path, size, mtime_ns, blake2b}`` (path relative to the indexed root)
``ids``       path key (``os.fsencode`` of the relative path) -> id
``features``  id -> raw descriptor, (d,) float32 little-endian (kept while the codec is provisional, and with
              ``keep_features``, so the codec can be refitted)
``skipped``   path key -> JSON ``{reason, size, mtime_ns}`` (a bare UTF-8 reason in older databases): files that
              could not be indexed, and the stamp they had then

Every change is one write transaction; the ``generation`` counter increases with each, and the store's fingerprint
(codec fingerprint + generation) tells whether a derived index is stale. A crash (even ``kill -9``) or a failing
write loses at most the transaction in progress. LMDB allows one writer at a time: a second writer is refused at once
through a non-blocking ``flock`` on ``writer.lock`` rather than left waiting on LMDB's mutex. Readers in other
processes run beside the writer, each read transaction (or ``snapshot()`` block) on one committed state; when the
writer grows the map past a reader's, the reader adopts the new size (LMDB's ``MDB_MAP_RESIZED``) and goes on.
A database in a folder the user cannot write can still be read: LMDB's lock file is then skipped. Such a reader has
no slot in LMDB's reader table, so it is only safe while nobody writes: true of a read-only copy or file system.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import struct
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import lmdb
import numpy as np

from .errors import DatabaseError

FORMAT_VERSION = 1
_SUBDBS = (b"meta", b"codes", b"files", b"ids", b"features", b"skipped")
_INITIAL_MAP_SIZE = 1 << 28  # 256 MiB; sparse on disk, doubled whenever a transaction fills it
_ID = struct.Struct(">Q")  # big-endian so LMDB's byte order is id order
_READ_ONLY_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS)
# Crash tests only: seconds to wait inside every write transaction before it commits, so that a SIGKILL lands in
# open transactions and the run lasts long enough to be killed in each of its phases.
TXN_DELAY_ENV = "RETR_TEST_TXN_DELAY_S"


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


@dataclass(frozen=True)
class SkipRecord:
    """Why a file was not indexed, and the ``size`` / ``mtime_ns`` it had then (None when it could not be read):
    an unchanged skipped file is not decoded again."""

    reason: str
    size: int | None = None
    mtime_ns: int | None = None

    def to_bytes(self) -> bytes:
        return json.dumps({"reason": self.reason, "size": self.size, "mtime_ns": self.mtime_ns}).encode()

    @classmethod
    def from_bytes(cls, b: bytes) -> SkipRecord:
        if b[:1] == b"{":
            try:
                d = json.loads(b)
                return cls(str(d["reason"]), d.get("size"), d.get("mtime_ns"))
            except (ValueError, KeyError, TypeError):
                pass
        return cls(b.decode(errors="replace"))  # written before the stamp was kept: a bare reason

    def matches(self, st: os.stat_result) -> bool:
        return self.size == st.st_size and self.mtime_ns == st.st_mtime_ns


@dataclass
class Scan:
    """The inconsistencies of a store, all from one snapshot (``Store.scan``). Lists of ids unless said otherwise.

    After a crash only ``staged`` (descriptors waiting for the codec) can be non-empty: every other field lists
    damage done from outside (a disk error, a hand-edited database), which ``Store.heal`` removes.
    """

    files: int = 0
    unreadable_records: list[int] = field(default_factory=list)
    unlisted: list[int] = field(default_factory=list)  # a record whose path does not map back to its id
    orphan_paths: list[tuple[str, int]] = field(default_factory=list)  # (path, id) without that file record
    orphan_codes: list[int] = field(default_factory=list)
    orphan_features: list[int] = field(default_factory=list)
    bad_codes: list[tuple[int, int]] = field(default_factory=list)  # (id, bytes) of the wrong size
    bad_features: list[tuple[int, int]] = field(default_factory=list)
    staged: list[int] = field(default_factory=list)  # a descriptor but no code yet (indexing not finished)
    lost: list[int] = field(default_factory=list)  # neither a code nor a descriptor: must be encoded again
    skipped_and_indexed: list[str] = field(default_factory=list)  # paths
    records: dict[int, FileRecord] = field(default_factory=dict)

    @property
    def damaged(self) -> bool:
        """Whether anything beyond an unfinished run is wrong."""
        return any((self.unreadable_records, self.unlisted, self.orphan_paths, self.orphan_codes,
                    self.orphan_features, self.bad_codes, self.bad_features, self.lost, self.skipped_and_indexed))


class Store:
    """An open retr database. Use as a context manager; ``write=True`` takes the single-writer lock.

    Each read call is one LMDB read transaction; reads inside ``with store.snapshot():`` share one, so they all see
    the same committed state even while another process writes.
    """

    def __init__(self, path: str | os.PathLike, write: bool = False, create: bool = False):
        self.path = Path(path)
        self.writable = write
        self.env = None
        self._lock_fd: int | None = None
        self._local = threading.local()  # the snapshot transaction of each thread
        self._txn_delay = float(os.environ.get(TXN_DELAY_ENV) or 0)
        if create:
            self._make_dir()
        elif not (self.path / "data.mdb").is_file():
            if self.path.exists():
                raise DatabaseError(f"{self.path} is not a retr database (no data.mdb inside)")
            raise DatabaseError(f"database {self.path} does not exist: create it with `retr index FOLDER --db "
                                f"{self.path}`")
        if write:
            self._take_writer_lock()
        try:
            self.env = self._open_env(write, create)
            if write:
                # growing the map needs the writer; readers adopt the new size when they meet it
                self.env.set_mapsize(max(self.env.info()["map_size"], _INITIAL_MAP_SIZE))
            self._dbs = {name.decode(): self.env.open_db(name, create=write) for name in _SUBDBS}
        except lmdb.Error as e:
            self.close()
            if write and _is_read_only(e):
                raise DatabaseError(f"database {self.path} is read-only ({e}): cannot write to it; index into a "
                                    "--db you can write") from None
            raise DatabaseError(f"{self.path} is not a readable retr database ({e})") from None
        try:
            self._check_version(create)
        except BaseException:
            self.close()
            raise

    # -- lifecycle -------------------------------------------------------------------------------------------------
    def _make_dir(self) -> None:
        """Create the database folder; refuse a file, or a folder that already holds something else."""
        ours = {"data.mdb", "lock.mdb", "writer.lock"}
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            foreign = not (self.path / "data.mdb").exists() and any(f.name not in ours for f in self.path.iterdir())
        except FileExistsError:
            raise DatabaseError(f"{self.path} is a file, not a retr database; choose another --db") from None
        except OSError as e:
            raise DatabaseError(f"cannot create database {self.path}: {e.strerror}") from None
        if foreign:
            raise DatabaseError(f"{self.path} already holds other files and is not a retr database; choose a new "
                                "--db")

    def _open_env(self, write: bool, create: bool) -> lmdb.Environment:
        kw = dict(map_size=_INITIAL_MAP_SIZE, max_dbs=len(_SUBDBS), readonly=not write, create=create)
        try:
            return lmdb.open(str(self.path), lock=True, **kw)
        except lmdb.Error as e:
            if write or not _is_read_only(e):
                raise
        # A reader that cannot create or open lock.mdb (read-only folder or file): read without LMDB's lock
        return lmdb.open(str(self.path), lock=False, **kw)

    def _take_writer_lock(self) -> None:
        try:
            fd = os.open(self.path / "writer.lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            if e.errno in _READ_ONLY_ERRNOS:
                raise DatabaseError(f"database {self.path} is read-only ({e.strerror}): cannot write to it; index "
                                    "into a --db you can write") from None
            raise DatabaseError(f"cannot lock database {self.path} for writing: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DatabaseError(f"database {self.path} is being written by another process (`retr index`?); "
                                "wait for it to finish") from None
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
        try:
            v = int(v)
        except ValueError:
            raise DatabaseError(f"{self.path} is not a retr database (format version {v!r})") from None
        if v > FORMAT_VERSION:
            raise DatabaseError(f"database {self.path} has format version {v}, newer than this retr "
                                f"understands ({FORMAT_VERSION}): upgrade retr")

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None
        self._release_writer_lock()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- transactions ----------------------------------------------------------------------------------------------
    def _begin(self, write: bool = False, buffers: bool = False) -> lmdb.Transaction:
        try:
            return self.env.begin(write=write, buffers=buffers)
        except lmdb.MapResizedError:
            # another process grew the map beyond ours: adopt its size (no transaction of ours is open here)
            self.env.set_mapsize(0)
            return self.env.begin(write=write, buffers=buffers)

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Every read of this thread inside the block sees the same committed state (one read transaction)."""
        if getattr(self._local, "txn", None) is not None:
            yield
            return
        with self._begin() as txn:
            self._local.txn = txn
            try:
                yield
            finally:
                self._local.txn = None

    @contextmanager
    def _reading(self, buffers: bool = False) -> Iterator[lmdb.Transaction]:
        txn = getattr(self._local, "txn", None)
        if txn is not None:
            yield txn
            return
        with self._begin(buffers=buffers) as txn:
            yield txn

    # -- writing ---------------------------------------------------------------------------------------------------
    def _write(self, fn) -> None:
        """Run ``fn(txn)`` in one write transaction, doubling the map size when it fills."""
        if not self.writable:
            raise RuntimeError("store opened read-only")
        while True:
            try:
                with self._begin(write=True) as txn:
                    fn(txn)
                    gen = int(txn.get(b"generation", db=self._dbs["meta"]) or b"0")
                    txn.put(b"generation", str(gen + 1).encode(), db=self._dbs["meta"])
                    if self._txn_delay:
                        time.sleep(self._txn_delay)
                return
            except lmdb.MapFullError:
                size = self.env.info()["map_size"] * 2
                try:
                    self.env.set_mapsize(size)
                except lmdb.Error as e:
                    raise DatabaseError(f"{self.path} is full and cannot grow to {size >> 20} MiB ({e}); the "
                                        "database is intact up to its last committed batch") from None
            except lmdb.Error as e:  # disk full, I/O error: the last committed transaction stays valid
                what = "free some space, then" if isinstance(e, lmdb.DiskError) else "fix the cause, then"
                raise DatabaseError(f"write to {self.path} failed ({e}); the database is intact up to its last "
                                    f"committed batch: {what} run the same command again") from None

    def put_meta(self, items: dict[str, bytes], clear: Iterable[str] = (), delete: Iterable[str] = ()) -> None:
        """Set ``meta`` keys, remove those in ``delete`` and empty the sub-databases in ``clear`` (e.g. ``codes``
        with a new codec), atomically."""
        def fn(txn):
            for name in clear:
                txn.drop(self._dbs[name], delete=False)
            for k in delete:
                txn.delete(k.encode(), db=self._dbs["meta"])
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

    def set_skipped(self, skipped: dict[str, SkipRecord | str], clear: Iterable[str] = ()) -> None:
        """Record ``{relative path: SkipRecord (or a bare reason)}`` for files that could not be indexed; forget
        those in ``clear``."""
        def fn(txn):
            for p in clear:
                txn.delete(path_key(p), db=self._dbs["skipped"])
            for p, rec in skipped.items():
                rec = rec if isinstance(rec, SkipRecord) else SkipRecord(rec)
                txn.put(path_key(p), rec.to_bytes(), db=self._dbs["skipped"])
        self._write(fn)

    def heal(self, scan: Scan) -> None:
        """Remove what ``scan`` found damaged, in one transaction: orphan entries and entries of the wrong size go;
        a file whose record is unreadable or unlisted, or that is left with neither code nor descriptor, is
        forgotten so that the next run encodes it again."""
        def fn(txn):
            for i in scan.orphan_codes + [i for i, _ in scan.bad_codes]:
                txn.delete(id_key(i), db=self._dbs["codes"])
            for i in scan.orphan_features + [i for i, _ in scan.bad_features]:
                txn.delete(id_key(i), db=self._dbs["features"])
            for path, _ in scan.orphan_paths:
                txn.delete(path_key(path), db=self._dbs["ids"])
            for path in scan.skipped_and_indexed:
                txn.delete(path_key(path), db=self._dbs["skipped"])
            for i in scan.unreadable_records + scan.unlisted + scan.lost:
                self._delete_in(txn, i)
        self._write(fn)

    def clear(self, name: str) -> None:
        """Empty one sub-database (e.g. ``features`` once every file has its code)."""
        self._write(lambda txn: txn.drop(self._dbs[name], delete=False))

    # -- reading ---------------------------------------------------------------------------------------------------
    def get_meta(self, key: str) -> bytes | None:
        with self._reading() as txn:
            return txn.get(key.encode(), db=self._dbs["meta"])

    def generation(self) -> int:
        return int(self.get_meta("generation") or b"0")

    def count(self, name: str = "files") -> int:
        with self._reading() as txn:
            return txn.stat(self._dbs[name])["entries"]

    def files(self) -> dict[str, tuple[int, FileRecord]]:
        """``{relative path: (id, record)}`` of every stored file."""
        with self._reading() as txn:
            out = {}
            for k, v in txn.cursor(db=self._dbs["files"]):
                rec = FileRecord.from_bytes(v)
                out[rec.path] = (key_id(k), rec)
            return out

    def record(self, i: int) -> FileRecord | None:
        with self._reading() as txn:
            v = txn.get(id_key(i), db=self._dbs["files"])
            return None if v is None else FileRecord.from_bytes(v)

    def paths(self, ids: Iterable[int]) -> list[str]:
        with self._reading() as txn:
            out = []
            for i in ids:
                v = txn.get(id_key(int(i)), db=self._dbs["files"])
                out.append(FileRecord.from_bytes(v).path if v is not None else "<deleted>")
            return out

    def raw_items(self, name: str) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) of one sub-database, from one snapshot (for ``retr check``)."""
        with self._reading() as txn:
            for k, v in txn.cursor(db=self._dbs[name]):
                yield bytes(k), bytes(v)

    def sizes(self, name: str) -> dict[int, int]:
        """``{id: value length in bytes}`` of the ``codes`` or ``features`` sub-database."""
        with self._reading(buffers=True) as txn:
            return {key_id(bytes(k)): len(v) for k, v in txn.cursor(db=self._dbs[name])}

    def skipped(self) -> dict[str, str]:
        """``{relative path: reason}`` of the files that could not be indexed."""
        return {p: r.reason for p, r in self.skip_records().items()}

    def skip_records(self) -> dict[str, SkipRecord]:
        with self._reading() as txn:
            return {os.fsdecode(bytes(k)): SkipRecord.from_bytes(bytes(v))
                    for k, v in txn.cursor(db=self._dbs["skipped"])}

    def iter_arrays(self, name: str, width: int, dtype: str, batch: int = 65536,
                    ids: list[int] | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Stream ``(ids (b,) int64, rows (b, width) dtype)`` from the ``codes`` or ``features`` sub-database, in id
        order (or for the given ``ids``), all from one snapshot."""
        itemsize = np.dtype(dtype).itemsize * width
        with self._reading(buffers=True) as txn:
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

    def scan(self, code_size: int | None, feature_size: int) -> Scan:
        """Every inconsistency of the store (see ``Scan``), from one snapshot. ``code_size`` is the codec's (None:
        no codec, sizes unchecked); ``feature_size`` the bytes of one descriptor (4 d)."""
        sc = Scan()
        with self.snapshot():
            for k, v in self.raw_items("files"):
                try:
                    sc.records[key_id(k)] = FileRecord.from_bytes(v)
                except (ValueError, TypeError, KeyError, UnicodeError):
                    sc.unreadable_records.append(key_id(k))
            sc.files = len(sc.records) + len(sc.unreadable_records)
            ids = {os.fsdecode(k): key_id(v) if len(v) == _ID.size else -1 for k, v in self.raw_items("ids")}
            codes, feats = self.sizes("codes"), self.sizes("features")
            skipped = self.skipped()
        for path, i in ids.items():
            rec = sc.records.get(i)
            if rec is None or rec.path != path:
                sc.orphan_paths.append((path, i))
        for i, rec in sc.records.items():
            if ids.get(rec.path) != i:
                sc.unlisted.append(i)
        known = set(sc.records) | set(sc.unreadable_records)
        sc.orphan_codes = [i for i in codes if i not in known]
        sc.orphan_features = [i for i in feats if i not in known]
        sc.bad_codes = [(i, n) for i, n in codes.items() if i in known and code_size is not None and n != code_size]
        sc.bad_features = [(i, n) for i, n in feats.items() if i in known and n != feature_size]
        bad_codes, bad_feats = {i for i, _ in sc.bad_codes}, {i for i, _ in sc.bad_features}
        for i in sc.records:
            if i in sc.unlisted or (i in codes and i not in bad_codes):
                continue
            (sc.staged if i in feats and i not in bad_feats else sc.lost).append(i)
        sc.skipped_and_indexed = sorted(p for p in skipped if p in ids)
        return sc

    def disk_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.iterdir() if f.is_file())

    def page_bytes(self) -> dict[str, int]:
        """``{sub-database: bytes of the LMDB pages it occupies}`` (branch, leaf and overflow pages times the page
        size): what each kind of record costs on disk, B-tree overhead included; free pages are not counted."""
        with self._reading() as txn:
            out = {}
            for name, db in self._dbs.items():
                st = txn.stat(db)
                out[name] = st["psize"] * (st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"])
            return out


def _is_read_only(e: lmdb.Error) -> bool:
    """Whether an LMDB error means the files cannot be written (permissions, read-only file system)."""
    if isinstance(e, lmdb.ReadonlyError):
        return True
    msg = str(e)
    return any(os.strerror(n) in msg for n in _READ_ONLY_ERRNOS)
