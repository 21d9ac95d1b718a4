"""``retr model``: make a compressed descriptor network (.retrm), describe one, and the paper's MB-vs-mAP table."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..eval.datasets import DATASETS
from ..eval.model_table import PAPER_SETTINGS, make_model, markdown, model_table, write_loss_curve
from ..retrieval.backbones import list_backbones
from ..retrieval.compress import CODEBOOKS, CompressionConfig
from ..retrieval.errors import ConfigError
from ..retrieval.model_file import ModelConfig, read_model_file
from ..retrieval.pooling import LEARNT_POOLINGS, POOLINGS
from ..retrieval.train import TrainConfig
from .main import main


def _bits(v: int) -> int | None:
    return None if v == 32 else v


@main.group("model")
def model_group():
    """Compressed descriptor networks: prune and quantize a backbone (+ NetVLAD) into a small .retrm file.

    \b
    retr model compress --backbone alexnet --pooling netvlad --train-on synthetic --epochs 3 \\
        --prune 0.01 --weight-bits 8 --out small.retrm
    retr model info small.retrm
    retr model table --train-on synthetic --out reports/model
    """


_TRAIN_OPTS = [
    click.option("--train-on", type=click.Choice(DATASETS), default=None,
                 help="Retrieval dataset whose images initialise NetVLAD (k-means) and, with --epochs, fine-tune it."),
    click.option("--root", type=click.Path(path_type=str), default=None, help="The --train-on dataset's folder."),
    click.option("--epochs", type=int, default=0, show_default=True,
                 help="Fine-tuning epochs (triplet loss + L1), hard negatives mined each epoch; 0: no fine-tuning."),
    click.option("--lr", type=float, default=1e-5, show_default=True),
    click.option("--l1", type=float, default=0.0, show_default=True, help="lambda of the L1 penalty on the weights."),
    click.option("--margin", type=float, default=0.1, show_default=True),
    click.option("--image-size", type=int, default=224, show_default=True,
                 help="Longer side of the training / evaluation images in pixels."),
    click.option("--checkpoint", type=click.Path(path_type=str), default=None,
                 help="Training checkpoint (.npz): resumed from when it exists, saved after each epoch."),
    click.option("--device", default="auto", show_default=True),
    click.option("--seed", type=int, default=0, show_default=True),
]

_ARCH_OPTS = [
    click.option("--backbone", default="alexnet", show_default=True, type=click.Choice(list_backbones())),
    click.option("--weights", default="imagenet", show_default=True, help="imagenet, none, or PATH to a state_dict."),
    click.option("--pooling", default="netvlad", show_default=True,
                 type=click.Choice(sorted(POOLINGS | LEARNT_POOLINGS))),
    click.option("--clusters", type=int, default=64, show_default=True, help="NetVLAD's K."),
]


def _options(opts):
    def deco(f):
        for o in reversed(opts):
            f = o(f)
        return f
    return deco


def _train_config(epochs, lr, l1, margin, image_size, seed) -> TrainConfig:
    return TrainConfig(epochs=epochs, lr=lr, l1=l1, margin=margin, image_size=image_size, seed=seed)


@model_group.command("compress")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=str), help="The .retrm to write.")
@click.option("--from", "source", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Compress this .retrm (e.g. a fine-tuned float32 one) instead of building a model.")
@_options(_ARCH_OPTS)
@click.option("--prune", type=float, default=0.0, show_default=True, help="Zero the weights with |w| below this.")
@click.option("--weight-bits", type=click.IntRange(2, 32), default=8, show_default=True,
              help="Bits per kept weight, 2-8 (per-layer codebooks); 32 keeps float32.")
@click.option("--codebook", type=click.Choice(CODEBOOKS), default="linear", show_default=True)
@_options(_TRAIN_OPTS)
def compress_cmd(out, source, backbone, weights, pooling, clusters, prune, weight_bits, codebook, train_on, root,
                 epochs, lr, l1, margin, image_size, checkpoint, device, seed):
    """Build (NetVLAD: k-means on --train-on), optionally fine-tune, prune and quantize a network into --out."""
    if 8 < weight_bits < 32:
        raise ConfigError(f"--weight-bits must be 2-8, or 32 for float32, got {weight_bits}")
    config = None if source else ModelConfig(backbone=backbone, weights=weights, pooling=pooling,
                                             netvlad_k=clusters)
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
@_options(_ARCH_OPTS)
@click.option("--eval-on", "eval_on", multiple=True, type=click.Choice(DATASETS),
              help="Datasets of the mAP columns (repeat; default the --train-on one).")
@click.option("--eval-root", "eval_roots", multiple=True, type=click.Path(path_type=str),
              help="Their folders, in the same order.")
@click.option("--settings", default=",".join(f"{b}:{t:g}" for b, t in PAPER_SETTINGS), show_default=True,
              help="bits:threshold pairs.")
@click.option("--codebook", type=click.Choice(CODEBOOKS), default="linear", show_default=True)
@click.option("--whiten-dims", type=int, default=256, show_default=True, help="PCA-whitening output dimension.")
@_options(_TRAIN_OPTS)
def table_cmd(out, source, backbone, weights, pooling, clusters, eval_on, eval_roots, settings, codebook,
              whiten_dims, train_on, root, epochs, lr, l1, margin, image_size, checkpoint, device, seed):
    """The paper's table: % pruned, drop in mAP and MB for the base model and each bits:threshold setting."""
    from ..eval.datasets import load_dataset

    try:
        pairs = tuple((int(b), float(t)) for b, t in (s.split(":") for s in settings.split(",")))
    except ValueError:
        raise click.BadParameter(f"expected bits:threshold pairs like 8:0.01,5:0.005, got {settings!r}") from None
    outp = Path(out)
    tc = _train_config(epochs, lr, l1, margin, image_size, seed) if epochs else None
    config = None if source else ModelConfig(backbone=backbone, weights=weights, pooling=pooling,
                                             netvlad_k=clusters)
    made = make_model(outp / "models" / "source.retrm", config, CompressionConfig(), source=source,
                      train_on=train_on, root=root, train_config=tc, checkpoint=checkpoint, device=device, seed=seed)
    if made.training is not None:
        png = write_loss_curve(made.training, outp / "loss.png")
        click.echo(f"triplet loss by epoch: {' '.join(f'{v:.4f}' for v in made.training.epoch_loss)} (curve: {png})")
        click.echo(f"mAP on {train_on} (no whitening): {made.map_before:.2f} before, {made.map_after:.2f} after "
                   "fine-tuning")
    names = list(eval_on) or ([train_on] if train_on else [])
    if not names:
        raise ConfigError("name the evaluation set: --eval-on DATASET (or --train-on)")
    roots = list(eval_roots) + [None] * (len(names) - len(eval_roots))
    datasets = {}
    for n, r in zip(names, roots):
        if n == "synthetic" and r is None:
            r = str(outp / "models" / "source-synthetic-images")
        datasets[n] = load_dataset(n, r)
    t = model_table(made.file.build(), datasets, outp, pairs, codebook=codebook, image_size=image_size,
                    whiten_dims=whiten_dims or None, device=device if device != "auto" else "cpu")
    click.echo(f"PCA-whitening axes: {', '.join(f'{d} {p}' for d, p in t.whiten_dims.items())}")
    click.echo(markdown(t), nl=False)
    click.echo(f"files: {', '.join(str(p) for p in t.files.values())}")
