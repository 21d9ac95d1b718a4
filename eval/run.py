"""``retr eval``: descriptors of a benchmark, the paper's stress grid over them, and a report.

    evaluate(dataset, root, out, encoder, experiments) -> EvalResult

Descriptors are computed once per (dataset, encoder) and cached as ``.npy`` under ``features_cache``; every experiment
of the grid reuses them, and the grid caches each point under ``out/cache`` so an interrupted run resumes.
Retrieval sets score mAP per protocol (codec fitted on the database descriptors, applied to database and queries);
classification sets score a one-vs-rest linear SVM (C = 1) trained on the stressed training split.

With ``expand`` (``retr eval --expand aqe,dba,diffusion``), retrieval sets also rank every grid point's stressed
(decoded) vectors with each query expansion method of `retrieval.expansion` (`expanded_rankings`), scored by the
same protocols under the names "<method>:<metric>" (`stress.variant_score`); the report puts them beside plain
search, with the gain, per level.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..retrieval.backbones import get_spec
from ..retrieval.encoder import Encoder, EncoderConfig, resolve_device
from ..retrieval.errors import ConfigError, DatasetError
from ..retrieval import expansion
from ..retrieval.fileio import atomic_write
from . import metrics, report, stress
from .datasets import ClassificationDataset, RetrievalDataset, load_dataset
from .model_table import html_section
from .svm import LinearModel, classification_metric, decision, train_ovr

PAPER_EXPERIMENTS = stress.PAPER_EXPERIMENTS  # defined once, in stress.py; cli/eval.py imports it from here
EVAL_INDEXES = ("flat", "ivf", "hnsw")
GRID_ONLY = {"model"}  # experiments that are not points of the stress grid
EXPAND_METHODS = tuple(m for m in expansion.METHODS if m != "none")  # plain search is always scored
# --expand works on exact n x n cosines of the database (DBA's neighbours, the diffusion's graph): 800 MB of float64
# at 10,000 vectors, enough for the revisited Oxford (4,993) and Paris (6,322) databases without distractors.
EXPAND_MAX_DB = 10_000


@dataclass
class EvalResult:
    dataset: str
    grid: stress.GridResult
    out: Path
    files: dict
    seconds: float


def dataset_fingerprint(paths: list[Path], extra: str = "") -> str:
    """Names and sizes of the images (cheap, changes when the dataset does)."""
    h = hashlib.sha256(extra.encode())
    for p in paths:
        h.update(os.fsencode(p.name))
        try:
            h.update(str(p.stat().st_size).encode())
        except OSError:
            h.update(b"?")
    return h.hexdigest()[:16]


def compute_features(encoder: Encoder, paths: list[Path], bboxes: list | None = None, batch_size: int = 32,
                     workers: int = 2, desc: str = "descriptors", progress: bool = True) -> np.ndarray:
    """``(n, d) float32`` descriptors of ``paths`` (cropped to ``bboxes`` (x1, y1, x2, y2) where given), through the
    engine's own pipeline (`retrieval.describe`), so a benchmark measures the descriptors users get.

    A benchmark image that cannot be decoded is an error, not a skip: skipping would shift the ground truth.
    """
    from ..retrieval.describe import describe

    got = describe(encoder, paths, crops=bboxes, batch_size=batch_size, workers=workers, progress=progress, desc=desc)
    if got.skipped:
        i, reason = next(iter(sorted(got.skipped.items())))
        raise DatasetError(f"{paths[i]}: {reason}; a benchmark image must decode (re-extract the dataset)")
    return got.x


# Version of what an image becomes (decoding, preprocessing, network, pooling), in the feature cache's keys: raise it
# when descriptors change for the same EncoderConfig, so that `cached_features` recomputes them instead of reusing
# stale ones (the cache is the only persisted artifact of `retr eval` with no version of its own).
PIPELINE_VERSION = 1


def cached_features(cache: Path | None, key: str, fn) -> np.ndarray:
    """``fn()`` cached as ``cache/key.npy`` (written atomically)."""
    if cache is None:
        return fn()
    f = cache / f"{key}.npy"
    if f.exists():
        return np.load(f, allow_pickle=False)
    x = fn()
    atomic_write(f, lambda fh: np.save(fh, x))
    return x


def ranking(xdb: np.ndarray, xq: np.ndarray, index: str = "flat") -> np.ndarray:
    """Every database position ranked for each query, ``(n_db, n_q)`` (revisitop's layout), by inner product.

    ``flat`` ranks exactly (a stable sort of ``xq @ xdb.T``: what `IndexFlatIP` returns, ties in id order);
    ``ivf`` and ``hnsw`` search the index `retr query` would build over these vectors (`indexes.build_index`,
    default parameters), so approximate search is measured as users get it; positions the search did not return
    rank last, in id order."""
    if index == "flat":
        return np.argsort(-(xq @ xdb.T), axis=1, kind="stable").T
    from .. import indexes

    n = len(xdb)
    idx = indexes.build_index(xdb, np.arange(n, dtype=np.int64), indexes.IndexConfig(kind=index))
    _, found = indexes.search(idx, xq, n)
    out = np.empty((len(xq), n), np.int64)
    for j, row in enumerate(found):
        row = row[row >= 0]
        seen = np.zeros(n, bool)
        seen[row] = True
        out[j] = np.concatenate([row, np.flatnonzero(~seen)])
    return out.T


def protocol_scores(ds: RetrievalDataset, ranks: np.ndarray) -> dict[str, float]:
    """The dataset's protocols scored on ``ranks (n_db, n_q)`` (`ranking`'s layout): ``{protocol: mAP 0-100}``
    (Easy / Medium / Hard for the revisited sets; "map", and "recall@1" for neardup, otherwise)."""
    if ds.protocols == ("easy", "medium", "hard"):
        res = metrics.revisited_protocols(ranks, ds.gnd)
        return {p: 100 * res[p].map for p in ds.protocols}
    m, _, _, _ = metrics.compute_map(ranks, ds.gnd)
    out = {"map": 100 * m}
    if ds.protocols == ("neardup",):
        out["recall@1"] = 100 * metrics.recall_at_k(ranks.T[:, :1], [set(g["ok"]) for g in ds.gnd], 1)
    return out


def expanded_rankings(xdb: np.ndarray, xq: np.ndarray, methods: tuple[str, ...],
                      ranks: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Every database position ranked for each query by each query expansion method, ``{method: (n_db, n_q)}``.

    xdb (n, d), xq (m, d): L2-normalised float32 rows (the grid's stressed vectors); ranks: their plain exact
    ranking (`ranking` with ``flat``), computed when None. The functions of `retrieval.expansion` over the whole
    database, exactly:

    - ``aqe``: `expansion.aqe` of each query over its best AQE_K of ``ranks``, ranked again by cosine;
    - ``dba``: the queries ranked by cosine against `expansion.dba` (xdb), every vector augmented;
    - ``diffusion``: ranked by decreasing `expansion.diffusion` (xq, xdb) score, the graph over all of xdb (no
      truncation: `retr query --expand diffusion` diffuses among each query's best 1,000, the same when n <= 1,000).

    Ties keep database order, as `ranking`."""
    out = {}
    for method in methods:
        if method == "aqe":
            I = (ranking(xdb, xq) if ranks is None else ranks)[: expansion.AQE_K].T
            out[method] = ranking(xdb, expansion.aqe(xq, xdb, I))
        elif method == "dba":
            out[method] = ranking(expansion.dba(xdb), xq)
        elif method == "diffusion":
            out[method] = np.argsort(-expansion.diffusion(xq, xdb), axis=1, kind="stable").T
        else:
            raise ConfigError(f"unknown --expand {method!r}; choose among {', '.join(EXPAND_METHODS)}")
    return out


def retrieval_scores(ds: RetrievalDataset, index: str = "flat", expand: tuple[str, ...] = ()):
    """score_fn for the grid: ``(xdb (n, d), xq (m, d)) -> {protocol: mAP 0-100, ...}``, ranked by `ranking`; with
    ``expand`` (methods of EXPAND_METHODS, flat index only), also ``{"<method>:<protocol>": ...}`` of the same
    protocols on each method's `expanded_rankings`."""
    expand = check_expand(expand, index)

    def score(xdb: np.ndarray, xq: np.ndarray) -> dict[str, float]:
        ranks = ranking(xdb, xq, index)
        out = protocol_scores(ds, ranks)
        for method, r in expanded_rankings(xdb, xq, expand, ranks).items():
            out.update({stress.variant_score(method, k): v for k, v in protocol_scores(ds, r).items()})
        return out
    return score


def check_expand(methods: tuple[str, ...], index: str = "flat") -> tuple[str, ...]:
    """The ``--expand`` methods asked, validated, repeats removed, in EXPAND_METHODS' order; they rank exactly, so
    only with the ``flat`` index (a ConfigError otherwise, as for an unknown method)."""
    for m in methods:
        if m not in EXPAND_METHODS:
            why = " (plain search is always scored)" if m == "none" else ""
            raise ConfigError(f"--expand {m!r}{why}: choose among {', '.join(EXPAND_METHODS)}, comma-separated")
    if methods and index != "flat":
        raise ConfigError(f"--expand ranks exactly (the expansions' neighbours and graph are exact): use --index "
                          f"flat, not {index}")
    return tuple(m for m in EXPAND_METHODS if m in methods)


# The grid's SVM tolerance: bench/README.md measured max |mAP - LinearSVC's mAP| 0.005 points at 1e-5 on a VOC
# 2007-shaped grid (0.03 at 1e-4; the solver's default 1e-6 is ~1.35x the time of 1e-4).
GRID_SVM_TOL = 1e-5


def classification_scores(ds: ClassificationDataset, solver: str, tol: float = GRID_SVM_TOL):
    """score_fn for the grid: ``(xtr (n, d), xte (m, d)) -> {metric: 0-100}``, one-vs-rest SVMs on the labels.

    The grid runs neighbours one after the other (q2 at h then h + 1, fc at (p, h) then (p, h + 1), ...), so each
    training starts from the last solution of the same dimension d; `train_ovr` keeps that start only when it is
    near the new optimum, else starts from 0, so it only saves time (bench/README.md: 1.2x-6x on such points)."""
    last: dict[int, LinearModel] = {}

    def score(xtr: np.ndarray, xte: np.ndarray) -> dict[str, float]:
        model = train_ovr(xtr, ds.train_labels, solver=solver, tol=tol, warm_start=last.get(xtr.shape[1]))
        last[xtr.shape[1]] = model
        return {ds.metric: 100 * classification_metric(decision(model, xte), ds.test_labels, ds.metric)}
    return score


def evaluate(dataset: str, root: str | os.PathLike | None, out: str | os.PathLike,
             encoder: EncoderConfig | None = None, experiments: tuple[str, ...] = PAPER_EXPERIMENTS, *,
             features_cache: str | os.PathLike | None = None, device: str = "auto", batch_size: int = 32,
             workers: int = 2, jpeg_decode: str = "auto", index: str = "flat", crop: bool = True,
             distractors: str | os.PathLike | None = None, reps: int = 10,
             levels: tuple[int, ...] = tuple(range(2, 31)), pca_projection: str = "centred", solver: str = "auto",
             codec_from: str | None = None, codec_from_root: str | os.PathLike | None = None,
             seed: int = 0, progress: bool = True, expand: tuple[str, ...] = ()) -> EvalResult:
    """Run the stress grid on one benchmark and write CSV, JSON, PNG and HTML under ``out``.

    Every transform (PCA, min/max, PQ) is learnt on the training split (the database for retrieval sets), or, with
    ``codec_from``, on the database descriptors of another retrieval dataset read from ``codec_from_root`` (e.g.
    learn on Paris, evaluate on Oxford). ``expand``: query expansion methods (EXPAND_METHODS) also scored at every
    point of a retrieval set (module doc); refused for classification sets."""
    t0 = time.perf_counter()
    out = Path(out)
    expand = check_expand(tuple(expand), index)  # before any image is read
    enc_cfg = encoder or EncoderConfig()
    kw = {}
    if dataset in ("oxford5k", "paris6k"):
        kw["crop"] = crop
    if dataset in ("roxford5k", "rparis6k") and distractors:
        kw["distractors"] = Path(distractors)
    if dataset == "neardup":
        kw["out"] = out / "neardup-images"
    if dataset in ("synthetic", "synthetic-cls") and root is None:
        root = out / f"{dataset}-images"
    ds = load_dataset(dataset, root, **kw)
    if expand and not isinstance(ds, RetrievalDataset):
        raise ConfigError(f"--expand re-ranks retrieval results; {dataset} is a classification dataset (scored by "
                          "linear SVMs): drop --expand")
    if expand and len(ds.db_paths) > EXPAND_MAX_DB:
        raise ConfigError(f"--expand computes exact cosines among the {len(ds.db_paths)} database images: at most "
                          f"{EXPAND_MAX_DB:,} (leave out the distractors)")
    if index not in EVAL_INDEXES:
        raise ConfigError(f"--index {index}: retr eval searches the grid's vectors with {', '.join(EVAL_INDEXES)} "
                          "(fast-scan kinds scan Q-2 codes of at most 16 levels, not every point of the grid)")
    enc = Encoder(enc_cfg, device=device, seed=seed, jpeg_decode=jpeg_decode)
    cache = Path(features_cache) if features_cache else None
    efp = hashlib.sha256(json.dumps(enc_cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:12]

    def feats(paths, name, bboxes=None):
        key = f"{dataset}-{name}-v{PIPELINE_VERSION}-{efp}-{dataset_fingerprint(paths, str(bboxes))}"
        return cached_features(cache, key, lambda: compute_features(enc, paths, bboxes, batch_size, workers,
                                                                    f"{dataset} {name}", progress))

    if isinstance(ds, RetrievalDataset):
        xtr = feats(ds.db_paths, "db")
        xte = feats([q.path for q in ds.queries], "queries", [q.bbox for q in ds.queries])
        score_fn = retrieval_scores(ds, index, expand)
        all_paths = ds.db_paths + [q.path for q in ds.queries]
    else:
        xtr = feats(ds.train_paths, "train")
        xte = feats(ds.test_paths, "test")
        score_fn = classification_scores(ds, solver)
        all_paths = ds.train_paths + ds.test_paths
    fit_on = None
    if codec_from is not None:
        other = load_dataset(codec_from, codec_from_root, **({"out": out / "codec-from-images"}
                                                             if codec_from == "neardup" else {}))
        if not isinstance(other, RetrievalDataset):
            raise ConfigError(f"--codec-from {codec_from}: learn the codec on a retrieval dataset's database")
        key = f"{codec_from}-db-v{PIPELINE_VERSION}-{efp}-{dataset_fingerprint(other.db_paths)}"
        fit_on = cached_features(cache, key, lambda: compute_features(enc, other.db_paths, None, batch_size, workers,
                                                                       f"{codec_from} db", progress))
    # stress.plan_grid fits DR-2 / FC sizes to what the training split supports, and names what it leaves out
    grid_experiments = tuple(e for e in experiments if e not in GRID_ONLY)
    plan = stress.plan_grid(xtr.shape[1], len(xtr) if fit_on is None else len(fit_on), grid_experiments, reps=reps,
                            levels=levels, pca_projection=pca_projection, fc_levels=levels)
    # the cache tag names the expansions: points cached without them lack their scores
    grid = stress.run_plan(plan, xtr, xte, score_fn, layer=enc_cfg.layer, cache_dir=out / "cache", progress=progress,
                           fit_on=fit_on, cache_tag=f"expand={','.join(expand)}" if expand else "")
    manifest = report.build_manifest(dataset=dataset, root=str(root) if root else None, encoder=enc_cfg.to_dict(),
                                     dataset_fingerprint=dataset_fingerprint(all_paths), n_train=len(xtr),
                                     n_test=len(xte), seed=seed, experiments=list(experiments),
                                     codec_from=codec_from, expand=list(expand),
                                     wall_time_s=round(time.perf_counter() - t0, 1))
    files = report.write_report(grid, out, dataset, enc_cfg.backbone, manifest,
                                title=f"{dataset}: {enc_cfg.describe()}")
    if "model" in experiments:
        files["model_table"] = _model_experiment(ds, dataset, enc_cfg, out, files["html"], device, seed)
    return EvalResult(dataset, grid, out, files, time.perf_counter() - t0)


def _model_experiment(ds, dataset: str, enc_cfg: EncoderConfig, out: Path, html_page: Path, device: str,
                      seed: int) -> Path:
    """The ACPR 2017 table: the backbone + NetVLAD, pruned and quantized at the paper's settings, mAP vs MB on
    ``ds``; written beside the report (model_table.*) and appended to its HTML page."""
    from ..retrieval.model_file import ModelConfig, build_model
    from .model_table import model_table, training_images

    if not isinstance(ds, RetrievalDataset):
        raise ConfigError("--experiments model needs a retrieval dataset (oxford5k, paris6k, synthetic, ...)")
    size = get_spec(enc_cfg.backbone).input_size
    base = build_model(ModelConfig(backbone=enc_cfg.backbone, weights=enc_cfg.weights, pooling="netvlad"),
                       training_images(ds, enc_cfg.backbone, size, seed=seed), seed=seed)
    dev = str(resolve_device(device))
    table = model_table(base, {dataset: ds}, out, image_size=size, device=dev)
    png = out / "model_table.png"
    page = html_page.read_text()
    html_page.write_text(page.replace("</body>", html_section(table, png if png.exists() else None) + "</body>"))
    return out / "model_table.csv"

