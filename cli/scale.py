"""``retr merge``: one database from shards that share a codec (retrieval/shards.py)."""

from __future__ import annotations

import json

import click

from .main import main


@main.command("merge")
@click.argument("shards", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--db", required=True, type=click.Path(path_type=str), help="The database to write (must not exist).")
@click.option("--root", default=None, type=click.Path(file_okay=False, path_type=str),
              help="Folder the merged paths are relative to; it must hold every shard's folder [default: the "
                   "deepest folder that does].")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def merge_cmd(shards, db, root, as_json):
    """Write one database --db holding every image of SHARDS, databases that share a codec (indexed with
    --codec-from the first), without describing anything again: codes, file records and skipped files are copied,
    paths re-rooted at one folder, the index built.
    """
    from ..retrieval.images import printable
    from ..retrieval.shards import merge

    rep = merge(list(shards), db, root=root)
    if as_json:
        click.echo(json.dumps(rep.to_dict(), indent=1))
        return
    parts = ", ".join(f"{printable(path)} {n}" for path, n in rep.shards)
    click.echo(f"{rep.db}: {rep.count} images ({parts}), {rep.code_size} bytes each, root {printable(rep.root)}, "
               f"{rep.skipped} skipped; in {rep.seconds:.1f} s ({rep.codes_per_s:,.0f} codes/s)")
