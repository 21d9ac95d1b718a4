"""Options shared by several commands, declared once so that a name means one thing on every command.

Only light modules are imported here (no torch, no faiss): ``retr --help`` and ``retr info`` start fast.
"""

from __future__ import annotations

import click

from ..indexes.config import KINDS
from ..retrieval.backbone_specs import DEFAULT_BACKBONE, list_backbones
from ..retrieval.names import LEARNT_POOLINGS, POOLINGS
from ..retrieval.encoder_config import EncoderConfig


def stack(*decorators):
    """Apply click option decorators in the order they are listed (as they read in ``--help``)."""
    def deco(f):
        for d in reversed(decorators):
            f = d(f)
        return f
    return deco


def given(ctx: click.Context, name: str) -> bool:
    """Whether option ``name`` was given (not left at its default)."""
    return ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)


def parse_scales(s: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in s.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers such as 1,0.707,1.414, got {s!r}") from None


# -- the encoder: retr index, retr eval, retr model ------------------------------------------------------------------
ENCODER_OPTIONS = stack(
    click.option("--backbone", default=DEFAULT_BACKBONE, show_default=True, type=click.Choice(list_backbones()),
                 help="CNN that computes descriptors."),
    click.option("--weights", default="imagenet", show_default=True,
                 help="imagenet (torchvision's weights API; bundled offline for efficientnet_lite*), none (seeded "
                      "random, for tests), or PATH to a local state_dict."),
    click.option("--layer", default=None,
                 help="conv (pooled; the default) or a vector layer such as fc7 of alexnet/vgg16 (the paper's)."),
    click.option("--pooling", default=None, type=click.Choice(sorted(POOLINGS | LEARNT_POOLINGS)),
                 help="Pooling of the conv layer [default: gem]; netvlad comes with a --model; none on fc layers."),
    click.option("--scales", default="1", show_default=True, help="Multi-scale factors, e.g. 1,0.707,1.414."),
    click.option("--max-size", type=click.IntRange(min=32), default=None,
                 help="Resize the longer side to this many pixels, no crop (retrieval style) [default: the "
                      "weights' resize + centre crop]."),
)
ENCODER_NAMES = ("backbone", "weights", "layer", "pooling", "scales", "max_size")


def asked_encoder(ctx: click.Context, **values) -> dict:
    """The encoder settings given on the command line, by field name (what `spec.SpecRequest.encoder` takes)."""
    out = {}
    for name in ENCODER_NAMES:
        if given(ctx, name):
            v = values[name]
            out[name] = parse_scales(v) if name == "scales" else v
    if "weights" in out and out["weights"] not in ("imagenet", "none"):
        cfg = EncoderConfig.create(out.get("backbone", DEFAULT_BACKBONE), out["weights"])
        out["weights"], out["weights_sha256"] = cfg.weights, cfg.weights_sha256
    return out


def encoder_config(backbone, weights, layer, pooling, scales, max_size) -> EncoderConfig:
    """A whole encoder configuration from the shared options (commands that build no database: eval)."""
    return EncoderConfig.create(backbone, weights, layer, pooling, scales=parse_scales(scales), max_size=max_size)


# -- running: device and decoding ----------------------------------------------------------------------------------
DEVICE = click.option("--device", default="auto", show_default=True,
                      help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N.")
RUN_OPTIONS = stack(
    DEVICE,
    click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
                 help="Images per forward pass."),
    click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
                 help="Threads that read and decode images beside the forward pass."),
    click.option("--jpeg-decode", type=click.Choice(["auto", "device", "pillow"]), default="auto",
                 show_default=True,
                 help="Where JPEGs are decoded, for every image of the run: in batches on the model's device "
                      "(auto: with CUDA) or by Pillow in the decoding threads."),
)


# -- the codec and the index: retr index -----------------------------------------------------------------------------
def parse_dims(s: str) -> dict:
    """'256' -> dims 256; '10%' -> keep 0.10 (a fraction of the descriptor's dimensions, floor as in the paper)."""
    try:
        if s.endswith("%"):
            return {"dims": None, "keep": float(s[:-1]) / 100}
        return {"dims": int(s), "keep": None}
    except ValueError:
        raise click.BadParameter(f"expected a number of dimensions (256) or a percentage (10%), got {s!r}") from None


CODEC_OPTIONS = stack(
    click.option("--reduction", default="pca", show_default=True, type=click.Choice(["pca", "dr1", "none"]),
                 help="pca: the paper's DR-2, the directions of most variance; dr1: a seeded random subset of "
                      "dimensions; none: keep every dimension."),
    click.option("--dims", default="256", show_default=True,
                 help="Dimensions kept after reduction: a count (256) or a percentage of the descriptor's (10%)."),
    click.option("--whiten/--no-whiten", default=False, show_default=True, help="PCA whitening."),
    click.option("--quantizer", default="q2", show_default=True, type=click.Choice(["q2", "q1", "none"]),
                 help="q2: a [min, max] range per dimension (the paper's Q-2); q1: one global range; none: float32."),
    click.option("--levels", type=int, default=4, show_default=True,
                 help="Quantization levels h per dimension: ceil(log2 h) bits each (h=4: 2 bits)."),
    click.option("--range", "range_", default="minmax", show_default=True,
                 help="Quantizer range: minmax (the paper), quantile:0.001, or sigma:3."),
    click.option("--packing", default="bits", show_default=True, type=click.Choice(["bits", "radix"]),
                 help="bits: ceil(log2 h) bits per dimension; radix: log2(h) bits (h=3 -> 1.585)."),
    # beyond the paper: options beside its codec, never a change to it
    click.option("--allocation", default="uniform", show_default=True, type=click.Choice(["uniform", "variance"]),
                 help="uniform: h levels in every dimension (the paper); variance: integer bits per dimension by "
                      "PCA variance, --budget bytes per vector in all (q2; the index is then flat, ivf or hnsw)."),
    click.option("--budget", type=click.IntRange(min=1), default=None,
                 help="Bytes per vector of --allocation variance (e.g. 16 or 32)."),
    click.option("--levels-kind", default="uniform", show_default=True, type=click.Choice(["uniform", "lloyd"]),
                 help="uniform: levels evenly spaced in the range (the paper); lloyd: each dimension's Lloyd-Max "
                      "levels (1-D k-means of its training values; q2, --range minmax)."),
)
CODEC_NAMES = ("reduction", "dims", "whiten", "quantizer", "levels", "range_", "packing", "allocation", "budget",
               "levels_kind")


def asked_codec(ctx: click.Context, **values) -> dict:
    out = {}
    for name in CODEC_NAMES:
        if given(ctx, name):
            v = values[name]
            if name == "dims":
                out.update(parse_dims(v))
            else:
                out[name.rstrip("_")] = v
    return out


INDEX_OPTIONS = stack(
    click.option("--index", "index_kind", default=None, type=click.Choice(KINDS),
                 help="The Faiss index derived from the codes [default: the database's, else fastscan where the "
                      "codec allows it (Q-1/Q-2, one h <= 16), else flat]. fastscan and ivf-fastscan scan the "
                      "codes themselves; flat, ivf and hnsw hold the decoded float32 vectors."),
    click.option("--nlist", type=click.IntRange(min=1), default=None,
                 help="IVF lists [default: about 4 sqrt(n), at least 39 vectors per list]."),
    click.option("--nprobe", "index_nprobe", type=click.IntRange(min=1), default=None,
                 help="IVF lists a search visits, stored as the database's default [default: from the list count]."),
    click.option("--rerank", type=click.IntRange(min=1), default=None,
                 help="fastscan candidates re-ranked exactly per query [default: 100]."),
    click.option("--hnsw-m", type=click.IntRange(min=2), default=None, help="HNSW links per node [default: 32]."),
)


def asked_index(index_kind, nlist, index_nprobe, rerank, hnsw_m) -> dict:
    d = {"kind": index_kind, "nlist": nlist, "nprobe": index_nprobe, "rerank": rerank, "hnsw_m": hnsw_m}
    return {k: v for k, v in d.items() if v is not None}
