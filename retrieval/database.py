"""A database's stored settings and its derived index, read and written in one place for the engine and ``retr
check``: the `DatabaseSpec` record, the fitted codec, and the Faiss index derived from the codes.

Databases written before the spec existed hold only ``encoder`` (JSON) and ``codec`` (parameters) in ``meta``;
`read_spec` rebuilds their spec from those (their codec is frozen, their index as saved), so they still open.
"""

from __future__ import annotations

import json

import numpy as np

from .. import indexes
from . import codec as codec_mod
from .codec import CodecParams
from .encoder_config import EncoderConfig
from .spec import FROZEN, DatabaseSpec, check_index
from .store import Store
from ..indexes.vectors import l2n

INDEX_FILE = "index.faiss"


def read_params(store: Store) -> CodecParams | None:
    """The fitted codec, or None before the first fit."""
    raw = store.get_meta("codec")
    return None if raw is None else CodecParams.from_bytes(raw)


def read_spec(store: Store) -> DatabaseSpec | None:
    """The stored spec; for a database older than the spec, one rebuilt from its encoder, codec and index file;
    None for a database that never recorded an encoder."""
    raw = store.get_meta("spec")
    if raw is not None:
        return DatabaseSpec.from_bytes(raw)
    enc = store.get_meta("encoder")
    if enc is None:
        return None
    params = read_params(store)
    head = indexes.read_header(store.path / INDEX_FILE)
    try:
        index = indexes.IndexConfig.from_dict(head["config"]) if head else indexes.IndexConfig()
    except (indexes.IndexConfigError, TypeError):
        index = indexes.IndexConfig()
    spec = DatabaseSpec(encoder=EncoderConfig.from_dict(json.loads(enc)), index=index)
    if params is not None:
        spec = spec.replace(codec=params.config, codec_state=FROZEN)
    return spec


def write_spec(store: Store, spec: DatabaseSpec, params: CodecParams | None = None, *, clear_codes: bool = False,
               forget_codec: bool = False, fitted_on: str | None = None) -> None:
    """Commit ``spec`` (and ``params``, dropping every code of an older codec with ``clear_codes``; ``fitted_on``
    the digest of the ids it was fitted on) in one transaction, so a reader never sees a codec with codes of
    another. ``forget_codec`` removes the fitted codec (an empty database taking new settings)."""
    items = {"spec": spec.to_bytes(), "encoder": json.dumps(spec.encoder.to_dict(), sort_keys=True).encode()}
    if params is not None:
        items["codec"] = params.to_bytes()
    if fitted_on is not None:
        items["fitted_on"] = fitted_on.encode()
    store.put_meta(items, clear=("codes", "features") if forget_codec else ("codes",) if clear_codes else (),
                   delete=("codec", "fitted_on") if forget_codec else ())


def fingerprint(store: Store, params: CodecParams) -> str:
    """What a derived index was built from: the codec and the store's commit counter."""
    return f"{params.fingerprint()}-g{store.generation()}"


def build_index(params: CodecParams, config: indexes.IndexConfig, ids: np.ndarray, codes: np.ndarray):
    """The index over the stored ``codes (n, code_size) uint8``: fast-scan kinds scan the level indices directly
    (lossless, with the codec's levels table); the others hold the decoded, L2-normalised vectors ``(n, p)``."""
    if config.kind in indexes.FASTSCAN_KINDS:
        check_index(config, params.config)
        return indexes.build_fastscan(codec_mod.levels(params), codec_mod.indices(params, codes), ids, config)
    xb = codec_mod.decode(params, codes) if len(codes) else np.zeros((0, params.dims), np.float32)
    return indexes.build_index(l2n(xb), ids, config)


def refresh_index(store: Store, params: CodecParams, config: indexes.IndexConfig):
    """Load the saved index if it matches the store's fingerprint and ``config``, else rebuild it and save it
    atomically. The fingerprint and the codes come from one snapshot, so an index saved while another process
    writes is labelled with the state it was built from."""
    path = store.path / INDEX_FILE
    with store.snapshot():
        fp = fingerprint(store, params)
        idx = indexes.load_index(path, fp, config)
        if idx is None:
            ids, codes = store.read_all("codes", params.code_size, "u1")
    if idx is None:
        idx = build_index(params, config, ids, codes)
        try:
            indexes.save_index(idx, path, config, fp)
        except OSError:
            pass  # a read-only database still answers queries from the index built in memory
    return idx
