"""``retr dedup``: groups of near-duplicate images in a database (retrieval/dedup.py)."""

from __future__ import annotations

import json

import click

from .main import main, printable


@main.command("dedup")
@click.option("--db", required=True, type=click.Path(path_type=str), help="Database directory.")
@click.option("--threshold", type=click.FloatRange(-1.0, 1.0), default=None,
              help="Cosine similarity at or above which two images are near-duplicates [default: by the database's "
                   "codec, 0.80 for PCA, 0.26 for whitened PCA, 0.93 without reduction or with DR-1; measured on "
                   "edited copies of photos: see the README].")
@click.option("--k", "k", type=click.IntRange(min=1), default=None,
              help="Look only at each image's K nearest others (k-NN search) [default: every neighbour above the "
                   "threshold (range search)].")
@click.option("--json", "as_json", is_flag=True, help="Print the groups, with ids, paths and pair scores, as JSON.")
@click.option("--csv", "as_csv", is_flag=True, help="Print group,size,id,path,best_score rows as CSV.")
@click.option("--html", "html_page", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Also write a page with each group's thumbnails (links to the files) and scores.")
def dedup_cmd(db, threshold, k, as_json, as_csv, html_page):
    """Find every group of near-duplicate images in --db, largest first.

    Each stored vector is searched against the database's index; two images whose cosine similarity (both as their
    codes decode them) reaches the threshold make a pair, and a group is every image linked by pairs.
    """
    if as_json and as_csv:
        raise click.UsageError("--json and --csv print different formats: give one of them")
    from ..retrieval.dedup import find_groups, to_csv, write_html

    rep = find_groups(db, threshold=threshold, k=k)
    if html_page:
        write_html(rep, html_page)
    if as_json:
        click.echo(json.dumps(rep.to_dict(), indent=1))
    elif as_csv:
        click.echo(to_csv(rep), nl=False)
    else:
        how = f"among each image's {k} nearest" if k else "range search"
        click.echo(f"{printable(db)}: {len(rep.groups)} group{'' if len(rep.groups) == 1 else 's'} of near-duplicates "
                   f"({rep.duplicates} of {rep.count} images, {rep.pairs} pairs) at cosine >= {rep.threshold:g} "
                   f"({how}, index {rep.index}) in {rep.seconds:.1f} s")
        for n, g in enumerate(rep.groups, 1):
            scores = [s for _, _, s in g.pairs]
            click.echo(f"# group {n}: {g.size} images, scores {min(scores):.3f} to {max(scores):.3f}")
            for p, s in zip(g.paths, g.best_scores()):
                click.echo(f"  {s:.3f}  {printable(p)}")
    if html_page and not (as_json or as_csv):
        click.echo(f"wrote {printable(html_page)}")
