"""``retr eval``: the paper's compression-vs-accuracy grid on a benchmark, written as a report."""

from __future__ import annotations

import click

from ..eval.datasets import DATASETS
from ..eval.run import PAPER_EXPERIMENTS, evaluate
from ..retrieval.backbones import DEFAULT_BACKBONE, list_backbones
from ..retrieval.encoder import EncoderConfig
from ..retrieval.pooling import POOLINGS
from .main import _parse_scales, main


def _parse_levels(s: str) -> tuple[int, ...]:
    try:
        if "-" in s and "," not in s:
            a, b = (int(v) for v in s.split("-"))
            return tuple(range(a, b + 1))
        return tuple(int(v) for v in s.split(","))
    except ValueError:
        raise click.BadParameter(f"expected a range like 2-30 or a list like 2,4,8, got {s!r}") from None


@main.command("eval")
@click.argument("dataset", type=click.Choice(DATASETS))
@click.option("--root", type=click.Path(path_type=str), default=None,
              help="The dataset's folder in its official layout (neardup: any folder of photos, default the "
                   "bundled scikit-image photos; synthetic: where to write the generated images).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=str),
              help="Report folder: CSVs, results.json, PNG plots, report.html.")
@click.option("--experiments", default=",".join(PAPER_EXPERIMENTS), show_default=True,
              help="Comma-separated: dr1, dr2, q1, q2, qb, fc, and beyond the paper q1-quantile, q2-quantile, "
                   "q1-sigma, q2-sigma, fc-quantile, fc-sigma, pq, opq.")
@click.option("--backbone", default=DEFAULT_BACKBONE, show_default=True, type=click.Choice(list_backbones()))
@click.option("--weights", default="imagenet", show_default=True, help="imagenet, none, or PATH to a state_dict.")
@click.option("--layer", default=None, help="conv (pooled) or fc6/fc7 for alexnet/vgg16 (the paper: fc7).")
@click.option("--pooling", default=None, type=click.Choice(sorted(POOLINGS)), help="For conv [default: gem].")
@click.option("--scales", default="1", show_default=True)
@click.option("--max-size", type=int, default=None, help="Resize the longer side, no crop (retrieval style).")
@click.option("--features-cache", type=click.Path(file_okay=False, path_type=str), default=None,
              help="Folder where descriptors are cached and reused by later runs.")
@click.option("--no-crop", is_flag=True, help="Oxford/Paris: do not crop queries to their bounding box.")
@click.option("--distractors", type=click.Path(path_type=str), default=None, help="R1M distractor folder.")
@click.option("--codec-from", type=click.Choice(DATASETS), default=None,
              help="Learn PCA / min-max / PQ on this retrieval dataset's database instead (e.g. paris6k for "
                   "oxford5k).")
@click.option("--codec-from-root", type=click.Path(path_type=str), default=None,
              help="The --codec-from dataset's folder.")
@click.option("--reps", type=int, default=10, show_default=True, help="DR-1 repetitions.")
@click.option("--levels", default="2-30", show_default=True, help="Quantization levels h of Q-1/Q-2/FC.")
@click.option("--pca-projection", default="centred", show_default=True, type=click.Choice(["centred", "uncentred"]),
              help="uncentred reproduces the paper's MATLAB code (projection without subtracting the mean).")
@click.option("--solver", default="auto", show_default=True, type=click.Choice(["auto", "sklearn", "torch"]),
              help="Linear SVM solver for classification sets (sklearn's LinearSVC is the reference).")
@click.option("--device", default="auto", show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def eval_cmd(dataset, root, out, experiments, backbone, weights, layer, pooling, scales, max_size, features_cache,
             no_crop, distractors, codec_from, codec_from_root, reps, levels, pca_projection, solver, device,
             batch_size, seed):
    """Measure how much accuracy each level of compression costs on DATASET.

    \b
    retr eval synthetic --out reports/synthetic           # generated data, no download
    retr eval neardup --out reports/neardup               # bundled photos + seeded edits
    retr eval voc2007 --root ~/data/VOCdevkit/VOC2007 --backbone vgg16 --layer fc7 --out reports/voc
    retr eval roxford5k --root ~/data/roxford5k --backbone resnet101 --pooling gem --out reports/roxf
    """
    enc = EncoderConfig.create(backbone, weights, layer, pooling, scales=_parse_scales(scales), max_size=max_size)
    exps = tuple(e.strip() for e in experiments.split(",") if e.strip())
    r = evaluate(dataset, root, out, enc, exps, features_cache=features_cache, device=device, batch_size=batch_size,
                 crop=not no_crop, distractors=distractors, reps=reps, levels=_parse_levels(levels),
                 pca_projection=pca_projection, solver=solver, codec_from=codec_from, codec_from_root=codec_from_root,
                 seed=seed)
    base = ", ".join(f"{k} {v:.2f}" for k, v in r.grid.baseline.items())
    click.echo(f"{dataset}: original descriptors ({r.grid.n}-dim float32): {base}")
    click.echo(f"report: {r.files['html']} ({r.seconds:.0f} s)")
