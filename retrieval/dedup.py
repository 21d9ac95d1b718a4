"""Groups of near-duplicate images in a database, found on its stored codes (``retr dedup``).

Every stored code is decoded and L2-normalised (the vectors the database's index holds) and searched against that
index: a range search for every neighbour scoring at least ``threshold`` (`indexes.neighbours.range_search`), or,
with ``k``, a k-NN search of each image's k nearest others, of which those scoring at least ``threshold`` count. A
*pair* is two images whose cosine is at least the threshold; *groups* are the connected components of the pairs
(an image joins a group when it is a near-duplicate of any member), largest first.

Scores are symmetric: both images as their codes decode them (quantized on both sides), where `retr query` scores a
query that is reduced but not quantized. The default threshold is measured (`bench/dedup.py`, README "Near-duplicates
and query expansion").

Legend: n stored vectors, ids (n,) int64 store ids (ascending), xb (n, p) decoded normalised vectors; pairs as
a (e,), b (e,) int64 ids with a < b and s (e,) float32 cosines.
"""

from __future__ import annotations

import csv
import html
import io
import os
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..indexes.vectors import l2n
from . import codec as codec_mod
from .errors import ConfigError
from .fileio import atomic_write

# The default thresholds, measured by bench/dedup.py on the bundled photos, their tiles and seeded edits (README
# "Near-duplicates and query expansion"): on one draw of the edits (seed 0), the smallest cosine at which the groups'
# precision reaches 0.95 for every codec of the family; checked on other draws. Cosines of PCA-reduced (centred)
# vectors are much lower than those of raw CNN descriptors (all positive), and whitened ones lower still.
DEFAULT_THRESHOLDS = {
    "pca": 0.80,  # the default codec, PCA 256 + Q-2 h = 4
    "pca-whitened": 0.26,  # PCA 256 whitened + Q-2 h = 4 (whitening fitted on 480 images only: see the README)
    "uncentred": 0.93,  # no reduction or DR-1: float32 (--reduction none --quantizer none) 0.92, Q-2 h = 4 0.93
}
DEFAULT_THRESHOLD = DEFAULT_THRESHOLDS["pca"]
_CHUNK = 65536  # vectors decoded and searched at a time


@dataclass
class Group:
    """One group of near-duplicates: store ``ids`` (ascending), their ``paths`` relative to the database's root (in
    the same order), and its ``pairs`` ``(id a, id b, score)``, a < b, best first (ties in id order)."""

    ids: list[int]
    paths: list[str]
    pairs: list[tuple[int, int, float]]

    @property
    def size(self) -> int:
        return len(self.ids)

    def best_scores(self) -> list[float]:
        """Each member's best score with another member, in the order of ``ids``."""
        best = dict.fromkeys(self.ids, -1.0)
        for a, b, s in self.pairs:
            best[a], best[b] = max(best[a], s), max(best[b], s)
        return [best[i] for i in self.ids]

    def to_dict(self) -> dict:
        return {"size": self.size, "ids": self.ids, "paths": self.paths,
                "pairs": [{"a": a, "b": b, "score": round(s, 6)} for a, b, s in self.pairs]}


@dataclass
class DedupReport:
    """What `find_groups` found: ``groups`` largest first; ``pairs`` the number of pairs at or above ``threshold``;
    ``count`` the images searched; ``k`` None for a range search; ``seconds`` the search and grouping time."""

    db: Path
    root: str
    count: int
    threshold: float
    k: int | None
    index: str
    pairs: int
    groups: list[Group] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def duplicates(self) -> int:
        """Images in some group."""
        return sum(g.size for g in self.groups)

    def to_dict(self) -> dict:
        return {"db": str(self.db), "root": self.root, "count": self.count, "threshold": self.threshold,
                "k": self.k, "index": self.index, "pairs": self.pairs, "duplicates": self.duplicates,
                "seconds": round(self.seconds, 3), "groups": [g.to_dict() for g in self.groups]}


def threshold_family(config: codec_mod.CodecConfig | None = None) -> str:
    """Which of ``DEFAULT_THRESHOLDS`` applies to a codec configuration (None: the default codec)."""
    if config is None or config.reduction in ("pca", "dr2"):
        return "pca-whitened" if config is not None and config.whiten else "pca"
    return "uncentred"


def default_threshold(config: codec_mod.CodecConfig | None = None) -> float:
    """The measured default threshold for a database of this codec configuration (`threshold_family`)."""
    return DEFAULT_THRESHOLDS[threshold_family(config)]


def check_options(threshold: float | None, k: int | None, config: codec_mod.CodecConfig | None = None) -> float:
    """The threshold to use (`default_threshold` of ``config`` for None); a threshold outside [-1, 1] or a k below 1
    is a user's mistake, refused in one line."""
    t = default_threshold(config) if threshold is None else float(threshold)
    if not -1.0 <= t <= 1.0:
        raise ConfigError(f"--threshold is a cosine similarity, between -1 and 1; got {threshold}")
    if k is not None and (not isinstance(k, (int, np.integer)) or k < 1):
        raise ConfigError(f"--k must be 1 or more, got {k}")
    return t


def find_pairs(index, ids: np.ndarray, xb: np.ndarray, threshold: float,
               k: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of the vectors ``xb (r, p)`` (ids ``ids (r,)``, held by ``index``) with the index's vectors that score at
    least ``threshold``: ``a, b, s`` with a < b, one row per pair (its best score where both sides found it), by
    (a, b). ``k``: look at each vector's k nearest others only (k-NN search) instead of a range search."""
    from .. import indexes
    from ..indexes.neighbours import range_search

    ids = np.asarray(ids, np.int64)
    if k is None:
        lims, D, I = range_search(index, xb, threshold)
        q = np.repeat(ids, np.diff(lims))
    else:
        D, I = indexes.search(index, xb, k + 1)  # itself among them
        q = np.repeat(ids, D.shape[1])
        D, I = D.ravel(), I.ravel()
    keep = (I >= 0) & (I != q) & (D >= threshold)
    return _unique_pairs(q[keep], I[keep], D[keep])


def _unique_pairs(i: np.ndarray, j: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs oriented a < b, each once with its best score, sorted by (a, b)."""
    a, b = np.minimum(i, j).astype(np.int64), np.maximum(i, j).astype(np.int64)
    s = np.asarray(s, np.float32)
    order = np.lexsort((-s, b, a))
    a, b, s = a[order], b[order], s[order]
    first = np.ones(len(a), bool)
    first[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    return a[first], b[first], s[first]


def components(ids: np.ndarray, a: np.ndarray, b: np.ndarray) -> list[np.ndarray]:
    """Connected components of the graph on ``ids (n,)`` (ascending) whose edges are the pairs ``a, b``: every
    component of two or more, as ascending id arrays, largest first (ties: smallest first id first)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    ids = np.asarray(ids, np.int64)
    if not len(a):
        return []
    pa, pb = np.searchsorted(ids, a), np.searchsorted(ids, b)
    n = len(ids)
    graph = coo_matrix((np.ones(len(pa), np.int8), (pa, pb)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    sizes = np.bincount(labels)
    members = np.flatnonzero(sizes[labels] >= 2)  # ascending positions, so each component comes out ascending
    if not len(members):
        return []
    lab = labels[members]
    order = np.argsort(lab, kind="stable")
    groups = np.split(ids[members[order]], np.flatnonzero(np.diff(lab[order])) + 1)
    return sorted(groups, key=lambda g: (-len(g), int(g[0])))


def group(ids: np.ndarray, a: np.ndarray, b: np.ndarray, s: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """`components` of the pairs, each with the positions of its pairs in (a, b, s), best first (ties in (a, b)
    order): ``[(ids of the group, pair positions)]``, largest group first."""
    comps = components(ids, a, b)
    where = np.full(len(ids), -1, np.int64)
    for g, members in enumerate(comps):
        where[np.searchsorted(ids, members)] = g
    owner = where[np.searchsorted(ids, a)] if len(a) else np.zeros(0, np.int64)
    order = np.lexsort((b, a, -np.asarray(s), owner))
    owner_sorted = owner[order]
    bounds = np.searchsorted(owner_sorted, np.arange(len(comps) + 1))
    return [(members, order[bounds[g]:bounds[g + 1]]) for g, members in enumerate(comps)]


def find_groups(db: str | os.PathLike, threshold: float | None = None, k: int | None = None) -> DedupReport:
    """Every group of near-duplicates among the images of ``db`` (module doc): pairs scoring at least ``threshold``
    (default: `default_threshold` of the database's codec) found by a range search over the database's index, or
    among each image's ``k`` nearest others; groups are their connected components, largest first."""
    from .engine import Engine

    check_options(threshold, k)
    with Engine(db) as eng:
        t = check_options(threshold, k, eng.params.config)
        t0 = time.perf_counter()
        parts, all_ids = [], []
        with eng.store.snapshot():
            for ids, codes in eng.store.iter_arrays("codes", eng.params.code_size, "u1", batch=_CHUNK):
                xb = l2n(codec_mod.decode(eng.params, codes))
                parts.append(find_pairs(eng.index, ids, xb, t, k))
                all_ids.append(ids)
        ids = np.concatenate(all_ids) if all_ids else np.zeros(0, np.int64)
        a, b, s = _unique_pairs(*(np.concatenate(x) for x in zip(*parts))) if parts else (np.zeros(0, np.int64),) * 3
        found = group(ids, a, b, s)
        seconds = time.perf_counter() - t0
        groups = []
        for members, at in found:
            paths = eng.store.paths(members)
            groups.append(Group([int(i) for i in members], paths,
                                [(int(a[j]), int(b[j]), float(s[j])) for j in at]))
        return DedupReport(db=Path(db), root=eng.root, count=len(ids), threshold=t, k=k,
                           index=eng.index_config.describe(), pairs=len(a), groups=groups, seconds=seconds)


def to_csv(report: DedupReport) -> str:
    """One row per image in a group: ``group,size,id,path,best_score`` (group numbers from 1, largest first; the
    best score of the image with another member)."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["group", "size", "id", "path", "best_score"])
    for n, g in enumerate(report.groups, 1):
        for i, p, s in zip(g.ids, g.paths, g.best_scores()):
            w.writerow([n, g.size, i, p, f"{s:.6f}"])
    return out.getvalue()


def write_html(report: DedupReport, page: str | os.PathLike) -> Path:
    """A page with each group's thumbnails (links to the files, relative to the page's folder) and scores: each
    image's best score within its group, and the group's pairs. Written atomically; returns its path."""
    page = Path(page)

    def href(rel: str) -> str:
        target = os.path.join(report.root, rel)
        return urllib.parse.quote(Path(os.path.relpath(target, os.path.abspath(page.parent))).as_posix())

    body = []
    for n, g in enumerate(report.groups, 1):
        names = dict(zip(g.ids, g.paths))
        cells = "".join(
            f'<figure><a href="{href(p)}"><img src="{href(p)}" loading="lazy" alt="{html.escape(p)}"></a>'
            f"<figcaption>{html.escape(p)}<br>id {i}, best {s:.3f}</figcaption></figure>"
            for i, p, s in zip(g.ids, g.paths, g.best_scores()))
        pairs = "".join(f"<tr><td>{a}</td><td>{b}</td><td>{s:.4f}</td><td>{html.escape(names[a])}</td>"
                        f"<td>{html.escape(names[b])}</td></tr>" for a, b, s in g.pairs)
        scores = [s for _, _, s in g.pairs]
        body.append(f"<section><h2>Group {n}: {g.size} images, scores {min(scores):.3f} to {max(scores):.3f}</h2>"
                    f'<div class="row">{cells}</div><details><summary>{len(g.pairs)} pairs</summary><table>'
                    f"<tr><th>id a</th><th>id b</th><th>score</th><th>a</th><th>b</th></tr>{pairs}</table></details>"
                    "</section>")
    summary = (f"{len(report.groups)} groups of near-duplicates ({report.duplicates} of {report.count} images, "
               f"{report.pairs} pairs) at cosine &ge; {report.threshold:g}"
               + (f" among each image's {report.k} nearest" if report.k else "")
               + f"; index {html.escape(report.index)}.")
    text = ("<!doctype html><meta charset=utf-8><title>retr dedup</title><style>body{font-family:sans-serif}"
            ".row{display:flex;flex-wrap:wrap;gap:8px}figure{margin:0}img{height:120px}figcaption{font-size:12px;"
            "max-width:200px;overflow-wrap:anywhere}td,th{font-size:12px;padding:0 6px;text-align:left}</style>"
            f"<h1>Near-duplicates in {html.escape(str(report.db))}</h1><p>{summary}</p><p>A score is the cosine "
            "similarity of two stored vectors as their codes decode them; a group holds every image linked to "
            "another member by a pair at or above the threshold.</p>" + "\n".join(body))
    return atomic_write(page, text.encode())


__all__ = ["DEFAULT_THRESHOLD", "DEFAULT_THRESHOLDS", "DedupReport", "Group", "check_options", "components",
           "default_threshold", "find_groups", "find_pairs", "group", "threshold_family", "to_csv", "write_html"]
