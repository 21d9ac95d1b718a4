"""Named presets: a few tested combinations of encoder, codec and index (``retr index --preset NAME``).

Like hloc's ``confs``: a name stands for a whole configuration, so a database can be described in one word and two
databases built with the same preset share their settings. ``retr presets`` lists them with their bytes per
vector. A preset replaces retr's defaults; options given beside it still win (and a database that holds images
keeps what it was built with: see `spec.resolve`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..indexes.config import IndexConfig
from .codec import CodecConfig
from .encoder_config import EncoderConfig
from .errors import ConfigError
from .spec import DatabaseSpec, bytes_per_vector


@dataclass(frozen=True)
class Preset:
    """A named configuration. ``needs_model``: the encoder comes from a compressed model file (``--model``)."""

    name: str
    summary: str
    encoder: dict = field(default_factory=dict)
    codec: CodecConfig = field(default_factory=CodecConfig)
    index: IndexConfig | None = None  # None: the codec's default index (`spec.default_index`)
    needs_model: bool = False

    def spec(self) -> DatabaseSpec:
        enc = EncoderConfig.create(**self.encoder) if self.encoder else EncoderConfig()
        return DatabaseSpec(encoder=enc, codec=self.codec, index=self.index)

    def bytes_per_vector(self) -> int | None:
        return bytes_per_vector(self.spec())


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("default", "EfficientNet-Lite0 conv + GeM (1,280-D, offline ImageNet weights), PCA 256, Q-2 h=4",
           codec=CodecConfig(reduction="pca", dims=256, quantizer="q2", levels=4)),
    Preset("compact16", "EfficientNet-Lite0 conv + GeM, PCA 64, Q-2 h=4: 16 bytes, exact fast-scan search",
           codec=CodecConfig(reduction="pca", dims=64, quantizer="q2", levels=4),
           index=IndexConfig(kind="fastscan")),
    Preset("paper-fc7", "the ICIP 2016 setting: VGG16 fc7 (4,096-D, after ReLU), DR-2 to 409 dims (a tenth), "
           "Q-2 h=32: the paper's 98.4% compression point",
           encoder={"backbone": "vgg16", "layer": "fc7"},
           codec=CodecConfig(reduction="pca", dims=409, quantizer="q2", levels=32)),
    Preset("netvlad", "the ACPR 2017 setting: a compressed backbone + NetVLAD model (--model FILE.retrm from "
           "`retr model compress`), PCA-whitened to 256, Q-2 h=4",
           codec=CodecConfig(reduction="pca", dims=256, whiten=True, quantizer="q2", levels=4),
           needs_model=True),
)}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)} (`retr presets`)") from None
