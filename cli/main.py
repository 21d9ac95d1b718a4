"""The ``retr`` command. Each command parses options, calls one library function, prints its result.

Errors a user can cause (``RetrError``) become one line on stderr and exit code 1, here and only here. Heavy
libraries (torch, faiss) are imported inside the commands that need them, so ``retr --help`` and ``retr info``
start in a fraction of a second.
"""

from __future__ import annotations

import json
import sys

import click

from ..indexes.config import IndexConfigError
from ..retrieval.errors import RetrError
from .options import (
    CODEC_OPTIONS,
    DEVICE,
    ENCODER_OPTIONS,
    INDEX_OPTIONS,
    RUN_OPTIONS,
    asked_codec,
    asked_encoder,
    asked_index,
    parse_scales,
)


def printable(path) -> str:
    """`images.printable`, imported when first needed (it pulls numpy and Pillow, which `retr --help` does not need)."""
    from ..retrieval.images import printable as show

    return show(path)


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
    retr index ./photos --db photos.retr       # build a database (or update it)
    retr query query.jpg --db photos.retr -k 10
    retr info --db photos.retr
    retr presets                               # named settings for --preset
    """


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


@main.command("index")
@click.argument("folder", type=click.Path(file_okay=False, path_type=str))
@click.option("--db", required=True, type=click.Path(path_type=str), help="Database directory (created if missing).")
@click.option("--preset", default=None, help="Named settings (`retr presets`); options given beside it win.")
@ENCODER_OPTIONS
@click.option("--model", "model_file", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Describe with a compressed model file (.retrm from `retr model compress`) instead of --backbone.")
@CODEC_OPTIONS
@INDEX_OPTIONS
@click.option("--train-size", type=click.IntRange(min=1), default=None,
              help="Images the codec is fitted on [default: 20000]; until the database holds that many, the codec is "
                   "provisional and refitted as it grows.")
@click.option("--freeze", is_flag=True, help="Fit the final codec now, even on fewer than --train-size images.")
@click.option("--keep-features", is_flag=True, help="Keep the float32 descriptors after the codec is frozen "
                                                    "(needed by --refit).")
@click.option("--refit", is_flag=True, help="Refit a frozen codec from kept descriptors and recode everything.")
@click.option("--codec-from", type=click.Path(path_type=str), default=None,
              help="Share another database's encoder and frozen codec (databases to query or merge together).")
@click.option("--forget-deleted", is_flag=True, help="Remove files that are no longer in the folder.")
@click.option("--retry-skipped", is_flag=True, help="Decode again files skipped before, even if unchanged.")
@RUN_OPTIONS
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Describe on Ray actors: alone, a one-machine cluster; or a cluster's HOST:PORT (put it after "
                   "FOLDER). Same database as without it. Needs `pip install -e '.[ray]'`.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def index_cmd(ctx, folder, db, preset, backbone, weights, layer, pooling, scales, max_size, model_file, reduction,
              dims, whiten, quantizer, levels, range_, packing, allocation, budget, levels_kind, index_kind, nlist,
              index_nprobe, rerank, hnsw_m, train_size, freeze, keep_features, refit, codec_from, forget_deleted,
              retry_skipped, device, batch_size, workers, jpeg_decode, ray_address, as_json):
    """Index every image under FOLDER into the database --db.

    Settings come from what the database holds, then the options given, then the --preset (or the defaults); an
    option that contradicts the database is an error. Later runs describe only new or changed files. Files that
    cannot be decoded are skipped, listed by `retr info`, and retried when they change (or with --retry-skipped).
    """
    from ..retrieval import engine
    from ..retrieval.spec import SpecRequest

    enc = asked_encoder(ctx, backbone=backbone, weights=weights, layer=layer, pooling=pooling, scales=scales,
                        max_size=max_size)
    request = SpecRequest(encoder=enc, codec=asked_codec(ctx, reduction=reduction, dims=dims, whiten=whiten,
                                                         quantizer=quantizer, levels=levels, range_=range_,
                                                         packing=packing, allocation=allocation, budget=budget,
                                                         levels_kind=levels_kind),
                          index=asked_index(index_kind, nlist, index_nprobe, rerank, hnsw_m), train_size=train_size,
                          preset=preset, model=model_file)
    rep = engine.index_folder(folder, db, request=request, keep_features=keep_features, forget_deleted=forget_deleted,
                              refit=refit, freeze=freeze, retry_skipped=retry_skipped, codec_from=codec_from,
                              device=device, batch_size=batch_size, workers=workers, progress=not as_json,
                              jpeg_decode=jpeg_decode, ray=ray_address)
    if as_json:
        click.echo(json.dumps(rep.to_dict(), indent=1))
        return
    click.echo(f"{rep.db}: {_plural(rep.total, 'image')}, {_plural(rep.code_size, 'byte')} each "
               f"(+{rep.added} new, {rep.updated} updated, {rep.removed} removed, {rep.unchanged} unchanged, "
               f"{len(rep.skipped)} skipped) in {rep.timings.get('total', 0):.1f} s"
               f"{'; codec fitted' if rep.codec_fitted else ''}")
    if rep.codec_note:
        click.echo(f"codec: {rep.codec_note}")
    if rep.missing:
        click.echo(f"{_plural(rep.missing, 'indexed file')} no longer in the folder still come up in results: "
                   "--forget-deleted removes them", err=True)
    if rep.skipped:
        again = f" ({rep.skipped_unchanged} unchanged since, not decoded again)" if rep.skipped_unchanged else ""
        click.echo(f"skipped files{again}: see `retr info --db {db}`", err=True)


@main.command("query")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--db", "dbs", required=True, multiple=True, type=click.Path(path_type=str),
              help="Database directory; several (--db A --db B) that share a codec (--codec-from) are searched as "
                   "one collection, results merged by score.")
@click.option("-k", "k", type=click.IntRange(min=1), default=10, show_default=True, help="Results per query.")
@click.option("--symmetric", is_flag=True, help="Quantise the query too (default: asymmetric, reduced only).")
@click.option("--nprobe", type=click.IntRange(min=1), default=None,
              help="IVF lists visited (ivf and ivf-fastscan indexes) [default: the database's].")
@click.option("--expand", type=click.Choice(["none", "aqe", "dba", "diffusion"]), default="none", show_default=True,
              help="Re-rank with the database's decoded vectors: alpha-query expansion (alpha 3, 2 neighbours), "
                   "database-side augmentation, or diffusion on a k-NN graph (Iscen et al. 2017; scores are then "
                   "diffusion values, not cosines).")
@DEVICE
@click.option("--json", "as_json", is_flag=True, help="Print [{query, results: [{rank, score, path, id}]}].")
def query_cmd(images, dbs, k, symmetric, nprobe, expand, device, as_json):
    """Find the images of --db that look most like each of IMAGES.

    The score is the cosine similarity between the query's descriptor, reduced by the database's codec, and each
    stored vector as its code decodes it: an indexed image queried with itself scores below 1 by the quantization
    error (about 0.9 with 2 bits per dimension), and the ranking is what matters. An image that cannot be read is
    reported (exit code 1) and the others are answered.
    """
    from ..retrieval import engine, shards

    if len(dbs) == 1:
        results = engine.search(dbs[0], list(images), k=k, symmetric=symmetric, device=device, nprobe=nprobe,
                                expand=expand)
    elif expand != "none":
        raise click.UsageError("--expand re-ranks within one database: give one --db")
    else:
        results = shards.search(list(dbs), list(images), k=k, symmetric=symmetric, device=device, nprobe=nprobe)
    if as_json:
        click.echo(json.dumps([{"query": r.query, **({"error": r.error} if r.error else {}),
                                "results": [{"rank": m.rank, "score": round(m.score, 6), "path": m.path, "id": m.id,
                                             **({"db": m.db} if hasattr(m, "db") else {})}
                                            for m in r.results]} for r in results], indent=1))
    else:
        for r in results:
            if r.error is None:
                click.echo(f"# {printable(r.query)}")
                for m in r.results:
                    click.echo(f"{m.rank:4d}  {m.score:.4f}  {printable(m.path)}")
    failed = [r for r in results if r.error is not None]
    for r in failed:
        click.echo(f"Error: {printable(r.query)}: {r.error}", err=True)
    if failed:
        raise click.exceptions.Exit(1)


@main.command("info")
@click.option("--db", required=True, type=click.Path(path_type=str), help="Database directory.")
@click.option("--json", "as_json", is_flag=True)
def info_cmd(db, as_json):
    """Count, bytes per vector, compression, settings and skipped files of a database."""
    from ..retrieval import engine
    from ..retrieval.encoder_config import EncoderConfig

    i = engine.info(db)
    if as_json:
        click.echo(json.dumps(i.to_dict(), indent=1))
        return
    enc = EncoderConfig.from_dict(i.encoder).describe() if i.encoder else "(none yet)"
    raw = 4 * i.descriptor_dim
    click.echo(f"database     {i.db} (format {i.format_version}, {i.disk_bytes / 2**20:.1f} MiB on disk)")
    click.echo(f"root         {printable(i.root)}")
    click.echo(f"images       {i.count}")
    click.echo(f"encoder      {enc}")
    click.echo(f"codec        {i.codec_label or '(not fitted yet)'}" + (f", {i.codec_state}" if i.codec_state else ""))
    if i.codec_note:
        click.echo(f"             note: {i.codec_note}")
    if i.code_size:
        click.echo(f"bytes/vector {i.code_size} (float32 descriptor: {raw} bytes; {100 * i.compression:.2f}% smaller)")
    if i.index_config:
        from ..indexes.config import IndexConfig

        built = (f"; built over {i.index['ntotal']} vectors, {i.index['bytes'] / 2**20:.2f} MiB" if i.index
                 else "; not built yet")
        click.echo(f"index        {IndexConfig.from_dict(i.index_config).describe()}{built}")
    b = i.bytes_per_image
    if b:
        parts = ", ".join(f"{k} {v:.0f}" for k, v in sorted(b["lmdb"].items(), key=lambda kv: -kv[1]))
        index = "not built yet"
        if b["index"]:
            index = f"{b['index']:.0f} B in its file"
            if b.get("index_memory") and b["index_memory"] != b["index"]:
                index += f", {b['index_memory']:.0f} B in memory once loaded (with the re-rank copy)"
        click.echo(f"per image    code {b['code']} B; LMDB {b['lmdb_total']:.0f} B on disk ({parts}); index {index}")
    if i.features_kept:
        click.echo(f"features     {i.features_kept} float32 descriptors kept (the codec can be refitted)")
    click.echo(f"skipped      {_plural(len(i.skipped), 'file')}")
    for p, reason in sorted(i.skipped.items()):
        click.echo(f"  {printable(p)}: {reason}")


@main.command("check")
@click.option("--db", required=True, type=click.Path(path_type=str), help="Database directory.")
@click.option("--repair", is_flag=True, help="Rebuild what is derived (the Faiss index); the store is never changed.")
def check_cmd(db, repair):
    """Verify a database: format, settings, every id's path and code, orphans, the index's fingerprint.

    Exits 0 when healthy, 1 after printing each problem. Notes (files deleted from the folder) do not fail it.
    """
    from ..retrieval.check import check

    rep = check(db, repair=repair)
    for line in rep.repaired:
        click.echo(f"repaired: {line}")
    for line in rep.notes:
        click.echo(f"note: {line}")
    for line in rep.problems:
        click.echo(f"problem: {line}", err=True)
    if not rep.healthy:
        raise click.exceptions.Exit(1)
    click.echo(f"{db}: healthy ({_plural(rep.count, 'image')})")


@main.command("presets")
@click.option("--json", "as_json", is_flag=True)
def presets_cmd(as_json):
    """The named settings `retr index --preset NAME` takes, with their bytes per vector."""
    from ..retrieval.presets import PRESETS

    rows = []
    for p in PRESETS.values():
        spec = p.spec()
        rows.append({"name": p.name, "bytes_per_vector": p.bytes_per_vector(), "summary": p.summary,
                     "encoder": "--model FILE" if p.needs_model else spec.encoder.describe(),
                     "codec": spec.codec.short_name(), "index": spec.index.kind})
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    for r in rows:
        click.echo(f"{r['name']:10s} {r['bytes_per_vector']:>4d} B  {r['codec']:14s} {r['index']:9s} {r['summary']}")


__all__ = ["main", "ENCODER_OPTIONS", "RUN_OPTIONS", "parse_scales"]

if __name__ == "__main__":
    sys.exit(main())
