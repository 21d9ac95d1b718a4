"""``retr check``: verify a database and rebuild what is derived from it.

The store is the source of truth and is never modified here; ``repair`` only rebuilds the Faiss index file. What
the store itself lacks or has damaged is repaired by the next ``retr index`` run (which finishes an interrupted run
and encodes again any file that lost its code), so each problem says which of the two commands fixes it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .. import indexes
from .database import INDEX_FILE, fingerprint, read_params, read_spec, refresh_index
from .errors import RetrError
from .images import printable
from .store import FORMAT_VERSION, Store

_SHOWN = 10  # problems of one kind listed one by one; the rest are counted


@dataclass
class CheckReport:
    db: Path
    count: int
    problems: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # worth knowing, not a fault of the database

    @property
    def healthy(self) -> bool:
        return not self.problems


def _listed(problems: list[str], items: list, what, remedy: str) -> None:
    """One line per item (``what(item)``), at most ``_SHOWN``, then a count; ``remedy`` ends each line."""
    for x in items[:_SHOWN]:
        problems.append(f"{what(x)} ({remedy})")
    if len(items) > _SHOWN:
        problems.append(f"... and {len(items) - _SHOWN} more like it ({remedy})")


def check(db: str | os.PathLike, repair: bool = False) -> CheckReport:
    """List every inconsistency of ``db``; with ``repair``, rebuild a missing, stale or corrupt index.

    Opening fails with a one-line DatabaseError for a path that is not a database or of a newer format version.
    """
    db = Path(db)
    with Store(db) as store, store.snapshot():
        rep = CheckReport(db, store.count("files"))
        p = rep.problems
        again = f"run `retr index FOLDER --db {db}` again"
        v = int(store.get_meta("format_version"))
        if v != FORMAT_VERSION:
            p.append(f"format version {v}, expected {FORMAT_VERSION}")
        spec = params = None
        try:
            spec = read_spec(store)
            params = read_params(store)
        except (RetrError, ValueError) as e:
            p.append(f"unreadable configuration: {e}")
        enc = spec.encoder if spec is not None else None
        if enc is None:
            p.append(f"no encoder configuration (indexing never started: {again})")
        if params is None:
            p.append(f"no fitted codec (indexing did not finish: {again})")
        elif enc is not None and params.input_dim != enc.dim:
            p.append(f"codec expects {params.input_dim}-dim descriptors, encoder gives {enc.dim}")

        scan = store.scan(None if params is None else params.code_size, 4 * enc.dim if enc else 0)
        recs = scan.records

        def name(i: int) -> str:
            return f"id {i} ({printable(recs[i].path)})" if i in recs else f"id {i}"

        if scan.staged and params is not None:  # without a codec every file is staged, as it should be
            p.append(f"{len(scan.staged)} of {scan.files} files have no code yet (indexing did not finish: {again})")
        bad_code = {i for i, _ in scan.bad_codes}
        _listed(p, [i for i in scan.lost if i not in bad_code], lambda i: f"{name(i)}: neither a code nor a "
                "descriptor", f"{again} to encode it")
        _listed(p, scan.bad_codes, lambda x: f"{name(x[0])}: code of {x[1]} bytes, expected {params.code_size}",
                f"{again} to encode it")
        if enc is not None:
            _listed(p, scan.bad_features, lambda x: f"{name(x[0])}: descriptor of {x[1]} bytes, expected "
                                                    f"{4 * enc.dim}", again)
        _listed(p, scan.unreadable_records, lambda i: f"id {i}: unreadable file record", f"{again} to encode it")
        _listed(p, scan.unlisted, lambda i: f"{name(i)}: missing from the path index", f"{again} to encode it")
        _listed(p, scan.orphan_paths, lambda x: f"path {printable(x[0])}: points to id {x[1]}, which has no such "
                                                "file record", f"{again} to drop it")
        _listed(p, scan.orphan_codes, lambda i: f"id {i}: orphan code (no file record)", f"{again} to drop it")
        _listed(p, scan.orphan_features, lambda i: f"id {i}: orphan descriptor (no file record)",
                f"{again} to drop it")
        _listed(p, scan.skipped_and_indexed, lambda x: f"{printable(x)}: both indexed and recorded as skipped",
                again)

        if params is not None and spec is not None:
            path = db / INDEX_FILE
            cfg = spec.index
            if indexes.load_index(path, fingerprint(store, params), cfg) is None:
                what = "missing" if not path.exists() else "stale or corrupt"
                if repair and not (scan.bad_codes or scan.orphan_codes):
                    refresh_index(store, params, cfg)
                    rep.repaired.append(f"index file was {what}: rebuilt from the store")
                elif repair:
                    p.append(f"index file {what}, not rebuilt: the codes are damaged ({again} first)")
                else:
                    p.append(f"index file {what} (run `retr check --db {db} --repair`)")
        root = os.fsdecode(store.get_meta("root") or b"")
        if root:
            gone = [r.path for r in recs.values() if not os.path.lexists(os.path.join(root, r.path))]
            if gone:
                rep.notes.append(f"{len(gone)} indexed files are no longer in {printable(root)} and still come up in "
                                 f"results (e.g. {printable(gone[0])}): `retr index {printable(root)} --db {db} "
                                 "--forget-deleted` removes them")
        return rep
