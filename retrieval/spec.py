"""The database spec: everything that decides what a database holds, as one versioned record, resolved by one rule.

A `DatabaseSpec` is the encoder, the codec and the index configurations, the training size that freezes the codec,
and the state of the codec (``provisional`` while the collection is smaller than ``train_size``: float32
descriptors are kept and the codec is refitted as the collection grows; ``frozen`` once it is fitted for good).
It is stored as JSON under the ``spec`` key of the database's ``meta`` sub-database, next to the fitted codec
parameters (``codec``).

`resolve(stored, request)` is the only place where settings are decided, for ``index_folder``, ``Engine``,
``retr check`` and ``retr info`` alike. The rule: what the database holds, then what was asked, then the defaults
(of the preset, if one was asked, else retr's). Asking for an encoder or codec setting that contradicts what the
database holds is an error naming both values; a database that holds no image yet pins nothing. The index is
derived data: asking for another index kind or index parameter replaces the stored one (the index is rebuilt).

The default index is decided by the codec (`default_index`): ``fastscan`` over the codes themselves wherever the
codec allows it (Q-1/Q-2 with the same h <= 16 levels in every dimension), so a server holds the compressed codes,
not float32 vectors; ``flat`` over the decoded vectors otherwise.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from ..indexes.config import FASTSCAN_KINDS, FASTSCAN_MAX_LEVELS, IndexConfig, IndexConfigError
from .codec import CodecConfig, code_size_for
from .encoder_config import EncoderConfig
from .errors import ConfigError

SPEC_VERSION = 1
PROVISIONAL, FROZEN = "provisional", "frozen"
DEFAULT_TRAIN_SIZE = 20000


@dataclass(frozen=True)
class DatabaseSpec:
    """What a database is built with. ``train_size``: descriptors the final codec is fitted on (a seeded sample);
    until the database holds that many, the codec is ``provisional``."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    index: IndexConfig | None = None  # None: the codec's default (`default_index`)
    train_size: int = DEFAULT_TRAIN_SIZE
    codec_state: str = PROVISIONAL
    version: int = SPEC_VERSION

    def __post_init__(self) -> None:
        if self.index is None:
            object.__setattr__(self, "index", default_index(self.codec))
        if self.codec_state not in (PROVISIONAL, FROZEN):
            raise ConfigError(f"unknown codec state {self.codec_state!r}; expected {PROVISIONAL} or {FROZEN}")
        if not isinstance(self.train_size, int) or self.train_size < 1:
            raise ConfigError(f"--train-size must be 1 or more, got {self.train_size}")

    @property
    def frozen(self) -> bool:
        return self.codec_state == FROZEN

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "encoder": self.encoder.to_dict(), "codec": self.codec.to_dict(),
                "index": self.index.to_dict(), "train_size": self.train_size, "codec_state": self.codec_state}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DatabaseSpec:
        if d.get("version", SPEC_VERSION) > SPEC_VERSION:
            raise ConfigError(f"database spec version {d['version']} is newer than this retr; upgrade retr")
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown database spec field(s): {', '.join(sorted(unknown))}")
        try:
            index = IndexConfig.from_dict(d.get("index") or {})
        except IndexConfigError as e:
            raise ConfigError(str(e)) from None
        return cls(encoder=EncoderConfig.from_dict(d["encoder"]), codec=CodecConfig.from_dict(d["codec"]),
                   index=index, train_size=int(d.get("train_size", DEFAULT_TRAIN_SIZE)),
                   codec_state=d.get("codec_state", FROZEN), version=SPEC_VERSION)

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> DatabaseSpec:
        try:
            d = json.loads(raw)
        except ValueError:
            raise ConfigError("the database spec is not valid JSON; run `retr check`") from None
        return cls.from_dict(d)

    def replace(self, **kw) -> DatabaseSpec:
        return dataclasses.replace(self, **kw)


@dataclass(frozen=True)
class SpecRequest:
    """What a user asked for, field by field: only the settings given explicitly (on the command line, or by a
    caller of the library) appear in ``encoder``, ``codec`` and ``index``; the rest comes from the database or the
    defaults. ``preset`` names a `presets.PRESETS` entry whose settings replace retr's defaults."""

    encoder: dict[str, Any] = field(default_factory=dict)
    codec: dict[str, Any] = field(default_factory=dict)
    index: dict[str, Any] = field(default_factory=dict)
    train_size: int | None = None
    preset: str | None = None
    model: str | None = None  # a compressed model file (.retrm) as the encoder

    @classmethod
    def of(cls, encoder: EncoderConfig | None = None, codec: CodecConfig | None = None,
           index: IndexConfig | None = None, train_size: int | None = None, preset: str | None = None) -> SpecRequest:
        """A request from whole configurations (the library's ``index_folder(encoder=..., codec=...)``): every field
        of a given configuration counts as asked, except the encoder's derived ``version``."""
        enc = {} if encoder is None else {k: v for k, v in encoder.to_dict().items() if k != "version"}
        return cls(encoder=enc, codec={} if codec is None else codec.to_dict(),
                   index={} if index is None else index.to_dict(), train_size=train_size, preset=preset)


def fastscan_refusal(codec: CodecConfig) -> str | None:
    """Why the fast-scan indexes cannot scan this codec's codes, in one sentence; None when they can."""
    if codec.quantizer == "none":
        return "the codec stores float32 descriptors, not quantized codes (--quantizer none)"
    if codec.allocation != "uniform":
        return ("allocation variance gives each dimension its own number of levels; fast-scan needs the same h in "
                "every dimension")
    if codec.levels > FASTSCAN_MAX_LEVELS:
        return f"--levels {codec.levels} is above the {FASTSCAN_MAX_LEVELS} levels a 4-bit fast-scan group holds"
    return None


def default_index(codec: CodecConfig) -> IndexConfig:
    """The index a database gets when none is asked: ``fastscan`` over the stored codes (exact re-rank of the best
    candidates from the codes; in memory the code, an 8-byte id and the re-rank copy, about twice the code size in
    all, per vector) wherever the codec allows it, else ``flat`` over the decoded float32 vectors (4 p bytes per
    vector)."""
    return IndexConfig("flat") if fastscan_refusal(codec) else IndexConfig("fastscan")


def check_index(index: IndexConfig, codec: CodecConfig) -> None:
    """A ConfigError in one line when a fast-scan index is asked for codes it cannot scan."""
    why = fastscan_refusal(codec) if index.kind in FASTSCAN_KINDS else None
    if why:
        raise ConfigError(f"--index {index.kind} scans the quantized codes, but {why}: use --index flat, ivf or "
                          "hnsw")


def _defaults(preset: str | None) -> tuple[DatabaseSpec, bool]:
    """The defaults' spec and whether it names an index (a preset may; retr's defaults leave it to the codec)."""
    if preset is None:
        return DatabaseSpec(), False
    from .presets import get_preset

    p = get_preset(preset)
    return p.spec(), p.index is not None


def _needs_model(preset: str) -> bool:
    from .presets import get_preset

    return get_preset(preset).needs_model


def _asked_encoder(base: EncoderConfig, asked: dict[str, Any], model: str | None) -> EncoderConfig:
    """The full encoder configuration a request describes on top of ``base`` (layer and pooling follow the backbone
    when not given; a weights file is hashed)."""
    if model is not None:
        kw = {k: asked[k] for k in ("scales", "max_size") if k in asked}
        return EncoderConfig.from_model_file(model, **kw)
    if not asked:
        return base
    d = {k: v for k, v in base.to_dict().items() if k not in ("version", "weights_sha256")}
    if "backbone" in asked and asked["backbone"] != base.backbone:
        d.update(layer=None, pooling=None)  # another backbone: its own default layer, and GeM on conv
    if "layer" in asked and asked["layer"] != base.layer and "pooling" not in asked:
        d["pooling"] = None
    d.update(asked)
    if "scales" in d:
        d["scales"] = tuple(d["scales"])
    backbone, weights, layer, pooling = d.pop("backbone"), d.pop("weights"), d.pop("layer"), d.pop("pooling")
    sha = asked.get("weights_sha256")
    d.pop("weights_sha256", None)
    cfg = EncoderConfig.create(backbone, weights, layer, pooling, **d)
    return cfg if sha is None else dataclasses.replace(cfg, weights_sha256=sha)


def _conflicts(what: str, stored: dict[str, Any], asked: dict[str, Any], keys) -> list[str]:
    return [f"{what} {k}: the database has {stored.get(k)!r}, asked {asked.get(k)!r}"
            for k in keys if stored.get(k) != asked.get(k)]


def resolve(stored: DatabaseSpec | None, request: SpecRequest | None = None, *, holds_images: bool = True,
            refit: bool = False, source: str = "the database") -> DatabaseSpec:
    """The spec to use: ``stored`` (when the database holds images), then ``request``, then the defaults.

    ``holds_images`` False (an empty database, e.g. after a failed first run) means ``stored`` pins nothing.
    ``refit``: the codec is about to be fitted again, so the codec asked for replaces the stored one.
    Raises ConfigError naming both values when the request contradicts the stored encoder or codec, when the
    codec is frozen and another ``train_size`` is asked, or when the result cannot store anything (h = 1)."""
    request = request or SpecRequest()
    base, base_names_index = _defaults(request.preset)
    needs_model = request.preset is not None and _needs_model(request.preset)
    if needs_model and request.model is None and (stored is None or not holds_images):
        raise ConfigError(f"preset {request.preset} describes images with a compressed model: add --model "
                          "FILE.retrm (from `retr model compress --pooling netvlad`)")
    asked_enc = _asked_encoder(base.encoder, request.encoder, request.model)
    asked_codec = _merge_codec(base.codec, request.codec)
    if stored is None or not holds_images:
        index = _merge_index(base.index if base_names_index else default_index(asked_codec), request.index)
        spec = DatabaseSpec(encoder=asked_enc, codec=asked_codec, index=index,
                            train_size=request.train_size or base.train_size)
        _check_storable(spec)
        check_index(spec.index, spec.codec)
        return spec
    problems = []
    enc_keys = set(request.encoder) | ({"model", "weights_sha256"} if request.model else set())
    if request.preset is not None and not needs_model:  # a preset asks for every setting it names
        enc_keys |= {"backbone", "weights", "layer", "pooling"}
    if "weights" in enc_keys:
        enc_keys.add("weights_sha256")
    problems += _conflicts("encoder", stored.encoder.to_dict(), asked_enc.to_dict(), sorted(enc_keys))
    codec_keys = set(request.codec) | (set(base.codec.to_dict()) if request.preset else set())
    if not refit:
        problems += _conflicts("codec", stored.codec.to_dict(), asked_codec.to_dict(), sorted(codec_keys))
    if problems:
        raise ConfigError(f"{source} was built differently ({'; '.join(problems)}): index into a new --db, or drop "
                          "the contradicting options")
    train_size = stored.train_size
    if request.train_size is not None and request.train_size != stored.train_size:
        if stored.frozen:
            raise ConfigError(f"{source}'s codec is frozen (fitted on its train size {stored.train_size}); "
                              f"--train-size {request.train_size} would change nothing: drop it, or --refit")
        train_size = request.train_size
    index = _merge_index(stored.index, request.index)
    spec = stored.replace(index=index, train_size=train_size)
    if refit and codec_keys:
        spec = spec.replace(codec=_merge_codec(stored.codec, {k: asked_codec.to_dict()[k] for k in codec_keys}))
        _check_storable(spec)
        if "kind" not in request.index and fastscan_refusal(spec.codec) and spec.index.kind in FASTSCAN_KINDS:
            # the refitted codec cannot be scanned by the index the old one had, and no index was asked
            spec = spec.replace(index=default_index(spec.codec))
    check_index(spec.index, spec.codec)
    return spec


def _merge_codec(base: CodecConfig, asked: dict[str, Any]) -> CodecConfig:
    if not asked:
        return base
    d = base.to_dict()
    if "keep" in asked and asked["keep"] is not None:
        d["dims"] = None
    if "dims" in asked and asked["dims"] is not None:
        d["keep"] = None
    d.update(asked)
    return CodecConfig.from_dict(d)


def _merge_index(base: IndexConfig, asked: dict[str, Any]) -> IndexConfig:
    """Another kind starts from that kind's defaults; the same kind keeps the parameters not asked again."""
    if not asked:
        return base
    start = base.to_dict() if asked.get("kind", base.kind) == base.kind else {}
    try:
        return IndexConfig.from_dict({**start, **asked})
    except IndexConfigError as e:
        raise ConfigError(str(e)) from None


def _check_storable(spec: DatabaseSpec) -> None:
    c = spec.codec
    if c.quantizer != "none" and c.levels < 2:
        raise ConfigError(f"--levels {c.levels} keeps no information (ceil(log2 {c.levels}) = 0 bits per dimension, "
                          "0 bytes per image): a database needs --levels 2 or more")


def bytes_per_vector(spec: DatabaseSpec) -> int | None:
    """The code size this spec gives when its dimensions are not capped, or None when it depends on the data
    (``keep`` fractions of an unknown input, or every dimension kept)."""
    c = spec.codec
    if c.reduction == "none":
        p = spec.encoder.dim
    elif c.dims is not None:
        p = min(c.dims, spec.encoder.dim)
    elif c.keep is not None:
        p = max(1, math.floor(c.keep * spec.encoder.dim))
    else:
        p = spec.encoder.dim
    return code_size_for(c, p)
