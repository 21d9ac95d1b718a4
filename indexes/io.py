"""Save and load an index file atomically, with the fingerprint of its source inside it.

The file is one container, so an index can never be paired with another index's metadata:
``RETRIDX1`` magic, a little-endian uint32 header length, a JSON header ``{version, config, fingerprint, ntotal, d,
bytes, blake2b}``, then Faiss's own serialisation (``bytes`` long, ``blake2b`` its 128-bit hex digest). It is written
to a temporary file and moved into place with ``os.replace``. An index whose header is unreadable, of another version,
of another fingerprint or configuration, whose body does not match its length and digest (zeroed bytes in the id map
still deserialise) or does not deserialise is stale: ``load_index`` returns None and the caller rebuilds it.
``read_header`` needs no Faiss: Faiss is imported by the functions that save or load an index.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from .config import FASTSCAN_KINDS, IndexConfig, IndexConfigError

if TYPE_CHECKING:
    import faiss

    from .fastscan import FastScanIndex

INDEX_FORMAT_VERSION = 1
_MAGIC = b"RETRIDX1"


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_index(index: faiss.Index | FastScanIndex, path: str | os.PathLike, config: IndexConfig,
               fingerprint: str) -> None:
    """Write ``index`` with its ``config`` and the ``fingerprint`` of the data it was built from, atomically.
    A `FastScanIndex` is stored as its Faiss index, with its query dimension p as ``d``."""
    import faiss  # here, not at import: read_header and the package import stay free of Faiss

    from .fastscan import FastScanIndex

    d = int(index.d)  # a FastScanIndex's p, not its padded Faiss dimension
    if isinstance(index, FastScanIndex):
        index = index.index
    elif faiss.get_num_gpus() > 0:
        try:
            index = faiss.index_gpu_to_cpu(index)
        except RuntimeError:
            pass  # already a CPU index
    body = faiss.serialize_index(index).tobytes()
    header = json.dumps({"version": INDEX_FORMAT_VERSION, "config": config.to_dict(), "fingerprint": fingerprint,
                         "ntotal": int(index.ntotal), "d": d, "bytes": len(body),
                         "blake2b": hashlib.blake2b(body, digest_size=16).hexdigest()}).encode()
    _atomic_write(Path(path), _MAGIC + struct.pack("<I", len(header)) + header + body)


def read_header(path: str | os.PathLike) -> dict | None:
    """The JSON header of an index file, or None when it is missing, foreign or of another version."""
    try:
        with open(path, "rb") as f:
            if f.read(len(_MAGIC)) != _MAGIC:
                return None
            (n,) = struct.unpack("<I", f.read(4))
            meta = json.loads(f.read(n))
    except (OSError, ValueError, struct.error):
        return None
    return meta if meta.get("version") == INDEX_FORMAT_VERSION else None


def load_index(path: str | os.PathLike, fingerprint: str,
               config: IndexConfig | None = None) -> faiss.Index | FastScanIndex | None:
    """The saved index if it is current (same fingerprint, same config when given, intact), else None.
    Fast-scan kinds come back as a `FastScanIndex` with the ``rerank`` of the saved configuration."""
    import faiss
    import numpy as np

    from .fastscan import FastScanIndex

    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    meta = read_header(path)
    if meta is None or meta.get("fingerprint") != fingerprint:
        return None
    if config is not None and meta.get("config") != config.to_dict():
        return None
    start = len(_MAGIC) + 4 + struct.unpack("<I", data[len(_MAGIC):len(_MAGIC) + 4])[0]
    body = data[start:]
    if len(body) != meta.get("bytes") or hashlib.blake2b(body, digest_size=16).hexdigest() != meta.get("blake2b"):
        return None  # truncated, padded or altered: never trusted
    try:
        index = faiss.deserialize_index(np.frombuffer(body, dtype=np.uint8))
    except RuntimeError:
        return None
    if index.ntotal != meta.get("ntotal"):
        return None
    try:
        saved = IndexConfig.from_dict(meta.get("config") or {})
    except (IndexConfigError, TypeError):
        return None
    if saved.kind in FASTSCAN_KINDS:
        if not isinstance(index, faiss.IndexIDMap) or not isinstance(meta.get("d"), int):
            return None
        return FastScanIndex(index, saved.rerank, meta["d"])
    return index
