"""``retr demo``: the whole job on the photographs bundled with scikit-image, offline.

Writes the photos to ``photos/`` and seeded edited copies of each (crop, flip, rotation, JPEG re-compression, colour
shift) to ``queries/``, indexes the photos with the default backbone and codec, queries the database with every edited
copy and checks that its original comes first, and writes an HTML page with each query beside its results.
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..retrieval import engine
from ..retrieval.encoder_config import EncoderConfig
from .edits import EDITS, sample_photos

DEMO_EDITS = ("crop", "flip", "rotate", "jpeg", "colour")


@dataclass
class DemoResult:
    folder: Path
    db: Path
    html: Path
    n_photos: int
    n_queries: int
    found_at_1: int
    ranks: dict[str, int]  # edited copy -> rank of its original among the other images (1 = first)
    code_size: int
    index: engine.IndexReport


def write_collection(photos: Path, queries: Path, seed: int = 0) -> tuple[list[Path], dict[Path, Path]]:
    """Write the sample photos to ``photos`` and their edited copies to ``queries``; returns
    (originals, {copy: original})."""
    photos.mkdir(parents=True, exist_ok=True)
    queries.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    originals, copies = [], {}
    for name, img in sample_photos().items():
        orig = photos / f"{name}.jpg"
        Image.fromarray(img).save(orig, quality=95)
        originals.append(orig)
        for edit in DEMO_EDITS:
            p = queries / f"{name}_{edit}.jpg"
            Image.fromarray(EDITS[edit](img, rng)).save(p, quality=90)
            copies[p] = orig
    return originals, copies


def run_demo(out: str | os.PathLike = "retr-demo", k: int = 5, seed: int = 0, device: str = "auto",
             encoder: EncoderConfig | None = None, progress: bool = True) -> DemoResult:
    """Build the demo under ``out`` (``photos/``, ``queries/``, ``demo.retr``, ``demo.html``) and measure it."""
    out = Path(out)
    folder, db = out / "photos", out / "demo.retr"
    originals, copies = write_collection(folder, out / "queries", seed)
    rep = engine.index_folder(folder, db, encoder, device=device, seed=seed, progress=progress)
    ranks: dict[str, int] = {}
    rows = []
    with engine.Engine(db, device=device) as eng:
        queries = sorted(copies)
        results = eng.search([str(q) for q in queries], k=len(originals))
        for q, r in zip(queries, results):
            rank = next(m.rank for m in r.results if Path(m.path).resolve() == copies[q].resolve())
            ranks[q.name] = rank
            rows.append((q, r.results[:k]))
    page = out / "demo.html"
    found = sum(r == 1 for r in ranks.values())
    info = engine.info(db)
    summary = (f"Original found at rank 1 for {found} of {len(copies)} edited copies. Database: {rep.total} photos, "
               f"{rep.code_size} byte{'' if rep.code_size == 1 else 's'} per image ({info.codec_label}, "
               f"{100 * info.compression:.2f}% smaller than the {4 * info.descriptor_dim}-byte float32 descriptor; "
               f"encoder {info.encoder['backbone']}).")
    _write_html(page, rows, copies, summary)
    return DemoResult(folder=folder, db=db, html=page, n_photos=len(originals), n_queries=len(copies),
                      found_at_1=found, ranks=ranks, code_size=rep.code_size, index=rep)


def _write_html(page: Path, rows: list, copies: dict[Path, Path], summary: str) -> None:
    """One row per query: the query thumbnail, then its results with scores; the original is outlined."""
    def img(path: str, caption: str, mark: bool) -> str:
        rel = os.path.relpath(path, page.parent)
        style = "outline:4px solid #2a2;" if mark else ""
        return (f'<figure><img src="{html.escape(rel)}" style="{style}"><figcaption>{html.escape(caption)}'
                "</figcaption></figure>")

    body = []
    for q, matches in rows:
        cells = [img(str(q), f"query: {q.name}", False)]
        for m in matches:
            is_orig = Path(m.path).resolve() == copies[q].resolve()
            cells.append(img(m.path, f"#{m.rank} {m.score:.3f} {Path(m.path).name}", is_orig))
        body.append('<div class="row">' + "".join(cells) + "</div>")
    page.write_text(
        "<!doctype html><meta charset=utf-8><title>retr demo</title><style>body{font-family:sans-serif}"
        ".row{display:flex;gap:8px;margin:12px 0}figure{margin:0}img{height:120px}figcaption{font-size:12px}"
        "</style><h1>retr demo: each edited copy and what it finds</h1>"
        f"<p><strong>{html.escape(summary)}</strong></p>"
        "<p>Green outline: the copy's original. Scores are cosine similarities between the query's reduced descriptor "
        "and each stored, quantized vector.</p>" + "\n".join(body))
