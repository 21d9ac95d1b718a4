"""Save and load an index file atomically, with a JSON sidecar that carries the fingerprint of its source.

``index.faiss`` is Faiss's own serialisation; ``index.json`` holds ``{version, config, fingerprint, ntotal, d}``.
An index whose sidecar is missing, unreadable, of another version or of another fingerprint is stale: callers rebuild it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import faiss

from .config import IndexConfig

INDEX_FORMAT_VERSION = 1


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_index(index: faiss.Index, path: str | os.PathLike, config: IndexConfig, fingerprint: str) -> None:
    """Write ``path`` (the index) then ``path.json`` (its sidecar), each atomically; the sidecar last, so a crash in
    between leaves an index that does not match its sidecar's fingerprint and is rebuilt."""
    path = Path(path)
    if faiss.get_num_gpus() > 0 and hasattr(faiss, "index_gpu_to_cpu"):
        try:
            index = faiss.index_gpu_to_cpu(index)
        except RuntimeError:
            pass  # already a CPU index
    _atomic_write(path, lambda tmp: faiss.write_index(index, tmp))
    side = {"version": INDEX_FORMAT_VERSION, "config": config.to_dict(), "fingerprint": fingerprint,
            "ntotal": int(index.ntotal), "d": int(index.d), "bytes": path.stat().st_size}

    def write_side(tmp):
        with open(tmp, "w") as f:
            json.dump(side, f, indent=1)
    _atomic_write(path.with_suffix(path.suffix + ".json"), write_side)


def read_sidecar(path: str | os.PathLike) -> dict | None:
    p = Path(path)
    side = p.with_suffix(p.suffix + ".json")
    try:
        with open(side) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    if meta.get("version") != INDEX_FORMAT_VERSION:
        return None
    return meta


def load_index(path: str | os.PathLike, fingerprint: str, config: IndexConfig | None = None) -> faiss.Index | None:
    """The saved index if it is current (same fingerprint, same config when given, size as recorded), else None."""
    path = Path(path)
    meta = read_sidecar(path)
    if meta is None or meta.get("fingerprint") != fingerprint:
        return None
    if config is not None and meta.get("config") != config.to_dict():
        return None
    try:
        if path.stat().st_size != meta.get("bytes"):
            return None
        index = faiss.read_index(str(path))
    except (OSError, RuntimeError):
        return None  # corrupt or missing: never trusted, the caller rebuilds
    if index.ntotal != meta.get("ntotal"):
        return None
    return index
