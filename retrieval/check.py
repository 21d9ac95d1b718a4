"""``retr check``: verify a database and rebuild what is derived from it.

The store is the source of truth and is never modified here; ``repair`` only rebuilds the Faiss index file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .. import indexes
from .codec import CodecParams
from .encoder import EncoderConfig
from .engine import INDEX_FILE, _fingerprint, _refresh_index
from .errors import RetrError
from .store import FORMAT_VERSION, FileRecord, Store, key_id


@dataclass
class CheckReport:
    db: Path
    count: int
    problems: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.problems


def check(db: str | os.PathLike, repair: bool = False) -> CheckReport:
    """List every inconsistency of ``db``; with ``repair``, rebuild a missing, stale or corrupt index."""
    db = Path(db)
    with Store(db) as store:
        rep = CheckReport(db, store.count("files"))
        p = rep.problems
        v = int(store.get_meta("format_version"))
        if v != FORMAT_VERSION:
            p.append(f"format version {v}, expected {FORMAT_VERSION}")
        params = None
        try:
            raw = store.get_meta("encoder")
            enc = EncoderConfig.from_dict(json.loads(raw)) if raw else None
            if enc is None:
                p.append("no encoder configuration")
            raw = store.get_meta("codec")
            params = CodecParams.from_bytes(raw) if raw else None
        except (RetrError, ValueError) as e:
            p.append(f"unreadable configuration: {e}")
        if params is None:
            p.append("no fitted codec (indexing never finished: run `retr index` again)")
        elif enc is not None and params.input_dim != enc.dim:
            p.append(f"codec expects {params.input_dim}-dim descriptors, encoder gives {enc.dim}")

        files = {}
        for k, val in store.raw_items("files"):
            try:
                files[key_id(k)] = FileRecord.from_bytes(val)
            except (ValueError, TypeError, KeyError):
                p.append(f"id {key_id(k)}: unreadable file record")
        ids = {}
        for k, val in store.raw_items("ids"):
            ids[os.fsdecode(k)] = key_id(val)
        for i, rec in files.items():
            if ids.get(rec.path) != i:
                p.append(f"id {i} ({rec.path}): missing from the path index")
        for path, i in ids.items():
            if i not in files:
                p.append(f"path {path}: points to id {i}, which has no file record")
        for k, val in store.raw_items("codes"):
            i = key_id(k)
            if i not in files:
                p.append(f"id {i}: orphan code (no file record)")
            elif params is not None and len(val) != params.code_size:
                p.append(f"id {i} ({files[i].path}): code of {len(val)} bytes, expected {params.code_size}")
        coded = {key_id(k) for k, _ in store.raw_items("codes")}
        for i, rec in files.items():
            if i not in coded:
                p.append(f"id {i} ({rec.path}): no code")
        for k, _ in store.raw_items("features"):
            if key_id(k) not in files:
                p.append(f"id {key_id(k)}: orphan descriptor (no file record)")
        for path in store.skipped():
            if path in ids:
                p.append(f"{path}: both indexed and recorded as skipped")

        if params is not None:
            fp = _fingerprint(store, params)
            head = indexes.read_header(db / INDEX_FILE)
            cfg = indexes.IndexConfig.from_dict(head["config"]) if head else indexes.IndexConfig()
            if indexes.load_index(db / INDEX_FILE, fp, cfg) is None:
                what = "missing" if not (db / INDEX_FILE).exists() else "stale or corrupt"
                if repair and not [x for x in p if "code" in x]:
                    _refresh_index(store, params, cfg)
                    rep.repaired.append(f"index file was {what}: rebuilt from the store")
                else:
                    p.append(f"index file {what} (run `retr check --db {db} --repair`)")
        return rep

