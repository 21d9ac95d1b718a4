"""``retr model``: make a compressed descriptor network (.retrm), describe one, and the paper's MB-vs-mAP table.

Importing this module imports no torch (`retr --help` starts fast): the options read the torch-free registries
(backbone_specs, names, compress's constants, cli/eval's dataset names) and the commands import the library.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..retrieval.backbone_specs import DEFAULT_BACKBONE, list_backbones
from ..retrieval.compress import CODEBOOKS, PAPER_SETTINGS
from ..retrieval.errors import ConfigError
from ..retrieval.names import LEARNT_POOLINGS, POOLINGS
from .eval import DATASET_NAMES
from .main import main
from .options import DEVICE, stack


def _bits(v: int) -> int | None:
    return None if v == 32 else v


@main.group("model")
def model_group():
    """Compressed descriptor networks: prune and quantize a backbone (+ NetVLAD) into a small .retrm file.

    \b
    retr model compress --backbone alexnet --pooling netvlad --train-on synthetic --epochs 3 \\
        --prune 0.01 --weight-bits 8 --out small.retrm
    retr model compress --train-on neardup --root ./photos --epochs 2 --out mine.retrm   # your own photos
    retr model info small.retrm
    retr model table --train-on synthetic --out reports/model
    """


_TRAIN_OPTS = [
    click.option("--train-on", type=click.Choice(DATASET_NAMES), default=None,
                 help="Retrieval dataset whose images initialise NetVLAD (k-means) and, with --epochs, fine-tune it; "
                      "neardup: the photos under --root (default the sample photos) and edited copies of them, "
                      "written beside the output."),
    click.option("--root", type=click.Path(path_type=str), default=None,
                 help="The --train-on dataset's folder (neardup: a folder of photos)."),
    click.option("--epochs", type=int, default=0, show_default=True,
                 help="Fine-tuning epochs (triplet loss + L1), hard negatives mined each epoch; 0: no fine-tuning."),
    click.option("--lr", type=float, default=1e-5, show_default=True),
    click.option("--l1", type=float, default=0.0, show_default=True, help="lambda of the L1 penalty on the weights."),
    click.option("--margin", type=float, default=0.1, show_default=True),
    click.option("--image-size", type=int, default=224, show_default=True,
                 help="Longer side of the training / evaluation images in pixels."),
    click.option("--checkpoint", type=click.Path(path_type=str), default=None,
                 help="Training checkpoint (.npz): resumed from when it exists, saved after each epoch."),
    DEVICE,
    click.option("--seed", type=int, default=0, show_default=True),
]

_ARCH_OPTS = [
    click.option("--backbone", default=DEFAULT_BACKBONE, show_default=True, type=click.Choice(list_backbones()),
                 help="CNN cut at its conv layer (the paper's: alexnet)."),
    click.option("--weights", default="imagenet", show_default=True, help="imagenet, none, or PATH to a state_dict."),
    click.option("--pooling", default="netvlad", show_default=True,
                 type=click.Choice(sorted(POOLINGS | LEARNT_POOLINGS))),
    click.option("--clusters", type=int, default=64, show_default=True, help="NetVLAD's K."),
]


def _train_config(epochs, lr, l1, margin, image_size, seed):
    from ..retrieval.train import TrainConfig

    return TrainConfig(epochs=epochs, lr=lr, l1=l1, margin=margin, image_size=image_size, seed=seed)


def _model_config(source, backbone, weights, pooling, clusters):
    from ..retrieval.model_file import ModelConfig

    return None if source else ModelConfig(backbone=backbone, weights=weights, pooling=pooling, netvlad_k=clusters)


@model_group.command("compress")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=str), help="The .retrm to write.")
@click.option("--from", "source", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Compress this .retrm (e.g. a fine-tuned float32 one) instead of building a model.")
@stack(*_ARCH_OPTS)
@click.option("--prune", type=float, default=0.0, show_default=True, metavar="THRESHOLD",
              help="Zero the weights with |w| below THRESHOLD (the paper's 'threshold for pruning').")
@click.option("--weight-bits", type=click.IntRange(2, 32), default=8, show_default=True,
              help="Bits per kept weight, 2-8 (per-layer codebooks); 32 keeps float32.")
@click.option("--codebook", type=click.Choice(CODEBOOKS), default="linear", show_default=True)
@stack(*_TRAIN_OPTS)
def compress_cmd(out, source, backbone, weights, pooling, clusters, prune, weight_bits, codebook, train_on, root,
                 epochs, lr, l1, margin, image_size, checkpoint, device, seed):
    """Build (NetVLAD: k-means on --train-on), optionally fine-tune, prune and quantize a network into --out."""
    from ..eval.model_table import make_model, write_loss_curve
    from ..retrieval.compress import CompressionConfig

    if 8 < weight_bits < 32:
        raise ConfigError(f"--weight-bits must be 2-8, or 32 for float32, got {weight_bits}")
    config = _model_config(source, backbone, weights, pooling, clusters)
    tc = _train_config(epochs, lr, l1, margin, image_size, seed) if epochs else None
    made = make_model(out, config, CompressionConfig(prune, _bits(weight_bits), codebook), source=source,
                      train_on=train_on, root=root, train_config=tc, checkpoint=checkpoint, device=device, seed=seed)
    if made.training is not None:
        curve = " ".join(f"{v:.4f}" for v in made.training.epoch_loss)
        png = write_loss_curve(made.training, Path(out).with_suffix(".loss.png"))
        click.echo(f"triplet loss by epoch: {curve} (curve: {png})")
        click.echo(f"mAP on {train_on}: {made.map_before:.2f} before, {made.map_after:.2f} after fine-tuning")
    f = made.file
    click.echo(f"{f.path}: {f.config.describe()}, {f.prune.percent:.2f}% of {f.prune.n} weights pruned, "
               f"{f.megabytes:.2f} MB")


@model_group.command("info")
@click.argument("path", type=click.Path(dir_okay=False, path_type=str))
@click.option("--json", "as_json", is_flag=True)
def info_cmd(path, as_json):
    """Configuration, size and per-layer pruning of a .retrm file."""
    from ..retrieval.model_file import read_model_file

    f = read_model_file(path)
    if as_json:
        click.echo(json.dumps({k: v for k, v in f.header.items() if k != "tensors"} | {"file_bytes": f.file_bytes},
                              indent=1))
        return
    c = f.compression
    bits = "float32" if c.bits is None else f"{c.bits} bits ({c.codebook} codebooks)"
    click.echo(f"model        {f.config.describe()} (base weights: {f.config.weights})")
    click.echo(f"compression  prune |w| < {c.threshold:g}, {bits}")
    click.echo(f"size         {f.file_bytes} bytes = {f.megabytes:.2f} MB "
               f"(float32 would be {4 * f.prune.n / 1e6:.2f} MB of compressible weights)")
    click.echo(f"pruned       {f.prune.pruned} of {f.prune.n} weights ({f.prune.percent:.2f}%)")
    for s in f.prune.layers:
        click.echo(f"  {s.name:40s} {s.n:>10d}  {s.percent:6.2f}%")


@model_group.command("table")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=str),
              help="Folder for model_table.{csv,json,md,png} and the models.")
@click.option("--from", "source", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Base model (.retrm, float32); default: build one from the options below.")
@stack(*_ARCH_OPTS)
@click.option("--eval-on", "eval_on", multiple=True, type=click.Choice(DATASET_NAMES),
              help="Datasets of the mAP columns (repeat; default the --train-on one).")
@click.option("--eval-root", "eval_roots", multiple=True, type=click.Path(path_type=str),
              help="Their folders, in the same order (default for the --train-on set: --root).")
@click.option("--settings", default=",".join(f"{b}:{t:g}" for b, t in PAPER_SETTINGS), show_default=True,
              help="bits:threshold pairs.")
@click.option("--codebook", type=click.Choice(CODEBOOKS), default="linear", show_default=True)
@click.option("--whiten-dims", type=int, default=256, show_default=True, help="PCA-whitening output dimension.")
@stack(*_TRAIN_OPTS)
def table_cmd(out, source, backbone, weights, pooling, clusters, eval_on, eval_roots, settings, codebook,
              whiten_dims, train_on, root, epochs, lr, l1, margin, image_size, checkpoint, device, seed):
    """The paper's table: % pruned, drop in mAP and MB for the base model and each bits:threshold setting."""
    from ..eval.model_table import (compute_model_table, load_retrieval_set, make_model, markdown,
                                    training_images_dir, write_loss_curve, write_model_table)
    from ..retrieval.compress import CompressionConfig

    try:
        pairs = tuple((int(b), float(t)) for b, t in (s.split(":") for s in settings.split(",")))
    except ValueError:
        raise click.BadParameter(f"expected bits:threshold pairs like 8:0.01,5:0.005, got {settings!r}") from None
    names = list(eval_on) or ([train_on] if train_on else [])
    if not names:
        raise ConfigError("name the evaluation set: --eval-on DATASET (or --train-on)")
    if len(eval_roots) > len(names):
        raise ConfigError(f"{len(eval_roots)} --eval-root for {len(names)} evaluation set(s): one folder per --eval-on")
    outp = Path(out)
    source_file = outp / "models" / "source.retrm"
    tc = _train_config(epochs, lr, l1, margin, image_size, seed) if epochs else None
    made = make_model(source_file, _model_config(source, backbone, weights, pooling, clusters), CompressionConfig(),
                      source=source, train_on=train_on, root=root, train_config=tc, checkpoint=checkpoint,
                      device=device, seed=seed)
    if made.training is not None:
        png = write_loss_curve(made.training, outp / "loss.png")
        click.echo(f"triplet loss by epoch: {' '.join(f'{v:.4f}' for v in made.training.epoch_loss)} (curve: {png})")
        click.echo(f"mAP on {train_on} (no whitening): {made.map_before:.2f} before, {made.map_after:.2f} after "
                   "fine-tuning")
    datasets = {}
    for i, n in enumerate(names):
        r = eval_roots[i] if i < len(eval_roots) else (root if n == train_on else None)
        # the training set, evaluated: its generated images (synthetic, neardup) are those make_model wrote
        images = training_images_dir(source_file, n) if (n, r) == (train_on, root) else outp / f"eval-{n}-images"
        datasets[n] = load_retrieval_set(n, r, images)
    t = compute_model_table(made.file.build(), datasets, outp, pairs, codebook=codebook, image_size=image_size,
                            whiten_dims=whiten_dims or None, device=device)
    files = write_model_table(t, outp)
    click.echo(f"PCA-whitening axes: {', '.join(f'{d} {p}' for d, p in t.whiten_dims.items())}")
    click.echo(markdown(t), nl=False)
    click.echo(f"files: {', '.join(str(p) for p in files.values())}")
