"""``retr eval``: the paper's compression-vs-accuracy grid on a benchmark, written as a report."""

from __future__ import annotations

import click

from .main import main
from .options import ENCODER_OPTIONS, RUN_OPTIONS, encoder_config

# the benchmark names, as eval/datasets.py registers them (listed here so that `retr --help` imports no dataset code;
# tests/test_contract.py checks that the two lists agree)
DATASET_NAMES = ("oxford5k", "paris6k", "roxford5k", "rparis6k", "voc2007", "holidays", "mit67", "food101",
                 "neardup", "synthetic", "synthetic-cls")
DEFAULT_EXPERIMENTS = "dr1,dr2,q1,q2,qb,fc"  # eval.stress.PAPER_EXPERIMENTS (checked by the same test)


def _parse_levels(s: str) -> tuple[int, ...]:
    try:
        if "-" in s and "," not in s:
            a, b = (int(v) for v in s.split("-"))
            return tuple(range(a, b + 1))
        return tuple(int(v) for v in s.split(","))
    except ValueError:
        raise click.BadParameter(f"expected a range like 2-30 or a list like 2,4,8, got {s!r}") from None


@main.command("eval")
@click.argument("dataset", type=click.Choice(DATASET_NAMES))
@click.option("--root", type=click.Path(path_type=str), default=None,
              help="The dataset's folder in its official layout (neardup: any folder of photos, default the "
                   "bundled scikit-image photos; synthetic: where to write the generated images).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=str),
              help="Report folder: CSVs, results.json, PNG plots, report.html.")
@click.option("--experiments", default=DEFAULT_EXPERIMENTS, show_default=True,
              help="Comma-separated: dr1, dr2, q1, q2, qb, fc, and beyond the paper q1-quantile, q2-quantile, "
                   "q1-sigma, q2-sigma, fc-quantile, fc-sigma, pq, opq (at the Q-2/FC code sizes), fcb, fcbl, alloc, "
                   "allocl (bit allocation by variance / Lloyd-Max levels at equal bytes), model.")
@ENCODER_OPTIONS
@click.option("--features-cache", type=click.Path(file_okay=False, path_type=str), default=None,
              help="Folder where descriptors are cached and reused by later runs.")
@click.option("--no-crop", is_flag=True, help="Oxford/Paris: do not crop queries to their bounding box.")
@click.option("--distractors", type=click.Path(path_type=str), default=None, help="R1M distractor folder.")
@click.option("--fit-on", type=click.Choice(DATASET_NAMES), default=None,
              help="Learn PCA / min-max / PQ on this retrieval dataset's database instead (e.g. paris6k for "
                   "oxford5k).")
@click.option("--fit-on-root", type=click.Path(path_type=str), default=None, help="The --fit-on dataset's folder.")
@click.option("--reps", type=click.IntRange(min=1), default=10, show_default=True, help="DR-1 repetitions.")
@click.option("--grid-levels", default="2-30", show_default=True,
              help="The quantization levels h that Q-1/Q-2/FC sweep (a range 2-30 or a list 2,4,8).")
@click.option("--pca-projection", default="centred", show_default=True, type=click.Choice(["centred", "uncentred"]),
              help="uncentred reproduces the paper's MATLAB code (projection without subtracting the mean).")
@click.option("--index", "index_kind", default="flat", show_default=True,
              type=click.Choice(["flat", "ivf", "hnsw"]),
              help="How retrieval sets are searched at every grid point: flat ranks exactly; ivf and hnsw search the "
                   "index `retr index --index` builds, so approximate search is measured as users get it.")
@click.option("--expand", default="", show_default=False,
              help="Also rank every grid point of a retrieval set with these query expansions (comma-separated: "
                   "aqe, dba, diffusion, as `retr query --expand`) and report each one's score and gain over plain "
                   "search per level. Exact ranking (--index flat); not for classification sets.")
@click.option("--solver", default="auto", show_default=True, type=click.Choice(["auto", "sklearn", "torch"]),
              help="Linear SVM solver for classification sets (sklearn's LinearSVC is the reference).")
@RUN_OPTIONS
@click.option("--seed", type=int, default=0, show_default=True)
def eval_cmd(dataset, root, out, experiments, backbone, weights, layer, pooling, scales, max_size, features_cache,
             no_crop, distractors, fit_on, fit_on_root, reps, grid_levels, pca_projection, index_kind, expand,
             solver, device, batch_size, workers, jpeg_decode, seed):
    """Measure how much accuracy each level of compression costs on DATASET.

    \b
    retr eval synthetic --out reports/synthetic           # generated data, no download
    retr eval neardup --out reports/neardup               # bundled photos + seeded edits
    retr eval voc2007 --root ~/data/VOCdevkit/VOC2007 --backbone vgg16 --layer fc7 --out reports/voc
    retr eval roxford5k --root ~/data/roxford5k --backbone resnet101 --pooling gem --out reports/roxf
    retr eval neardup --experiments q2 --grid-levels 2,4,8,16 --expand aqe,dba,diffusion --out reports/qe
    """
    from ..eval.run import evaluate
    from ..eval.stress import split_score

    enc = encoder_config(backbone, weights, layer, pooling, scales, max_size)
    exps = tuple(e.strip() for e in experiments.split(",") if e.strip())
    r = evaluate(dataset, root, out, enc, exps, features_cache=features_cache, device=device, batch_size=batch_size,
                 workers=workers, jpeg_decode=jpeg_decode, index=index_kind, crop=not no_crop, distractors=distractors,
                 reps=reps, levels=_parse_levels(grid_levels), pca_projection=pca_projection, solver=solver,
                 codec_from=fit_on, codec_from_root=fit_on_root, seed=seed,
                 expand=tuple(e.strip() for e in expand.split(",") if e.strip()))
    base = ", ".join(f"{k} {v:.2f}" for k, v in r.grid.baseline.items())
    click.echo(f"{dataset}: original descriptors ({r.grid.n}-dim float32): {base}")
    if r.files.get("expansion"):
        identity = r.grid.points[0].scores
        gains = "; ".join(f"{name} {identity[name]:.2f} ({identity[name] - identity[split_score(name)[1]]:+.2f})"
                          for name in identity if split_score(name)[0])
        click.echo(f"query expansion on them: {gains}; per level: {r.files['expansion'][0]}")
    for name, why in r.grid.skipped.items():  # also in the report's "Left out" section
        click.echo(f"not run: {name}: {why}")
    click.echo(f"report: {r.files['html']} ({r.seconds:.0f} s)")
