"""`retr dedup`: how good are its groups, which threshold should be its default, and how fast is it at scale.

    python -m bench.dedup                      # labelled set, seed 0: the threshold sweep that chose the default
    python -m bench.dedup --seed 1             # other seeded edits: the default checked on data it was not chosen on
    python -m bench.dedup --scale 1000000      # 1M x 64-byte codes grouped with ivf-fastscan (synthetic codes)

**Labelled set** (`--grid`, `--seed`): each colour photograph bundled with scikit-image (downscaled to 1,024 px at
most, as `eval/datasets.build_neardup`) and each of its `--grid` x `--grid` tiles is a *source*; each source gets the
five seeded edits of `retr demo` (crop, flip, rotation, JPEG, colour: `eval/edits.EDITS`). Every source and its five
copies are one true group: a pair is positive when both images come from the same source. A photo and its tiles, and
two tiles of one photo, share pixels or texture but are not near-duplicates: such pairs count as false positives, and
are also counted apart (``fp_same_photo``).

The set is indexed by `engine.index_folder` with every default (EfficientNet-Lite0 ImageNet weights, conv + GeM, PCA
256 + Q-2 h = 4 = 64 bytes), as `retr index` would, but with the flat index pinned (the default until 2 December
2026, when the README's figures were recorded; the pair scores do not depend on it, the expansion mAP through the
engine could by a hair); the codec is provisional, fitted on the whole set,
which also keeps the float32 descriptors. Scored: the database's decoded vectors; the float32 descriptors (what a
database indexed with `--reduction none --quantizer none` scores, 5,120 bytes); and two codecs fitted on the same
descriptors as the database fits its own: PCA 256 whitened + Q-2 h = 4, and Q-2 h = 4 without reduction (320 bytes).
For each threshold, over every pair of images: precision and recall of the *pairs* (score >= threshold) and of the
pairs that the *groups* put together (connected components, what `retr dedup` shows). At the default threshold
`dedup.find_groups` itself is run on the database and must find exactly the pairs of the dense computation. Query
expansion is measured on the same set: every image is a query (itself junk, its source's other images positive), mAP
for each `--expand` method through the engine and on the float32 descriptors.

**Scale** (`--scale N`): `bench.search`'s synthetic stand-in for PCA-reduced descriptors (N x 256, 10,000 Gaussian
clusters, decaying spectrum), of which 1% are replaced by a near-copy of another vector (Gaussian noise of norm
`--noise`, default 0.1: cosine 0.995 before coding, about 0.955 after; renormalised): the planted pairs. Codec Q-2
h = 4, no reduction (64 bytes), fitted on 100,000 vectors; the engine's `ivf-fastscan` index (default lists and
nprobe) built from the codes; every decoded vector searched against it (`dedup.find_pairs`, range search at
`--scale-threshold`) and the pairs grouped (`dedup.group`), with `--threads` Faiss threads. Reported: build, search
(wall and process CPU seconds) and grouping times, pairs, groups, recall of the planted pairs (and the share of them
whose decoded vectors reach the threshold: what an exact search finds) and their share of the pairs found. This is
the library path of `retr dedup` without the LMDB store (reading 1M codes from it is not timed).

Results: stdout and bench/results/dedup.json (`--out`), merged into what the file holds (one entry per grid and seed,
one per scale).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench import common

EDIT_NAMES = ("crop", "flip", "rotate", "jpeg", "colour")  # retr demo's
SEP = "--"  # source folder names: <photo> or <photo>--tile<i><j>
THRESHOLDS = [round(t, 2) for t in np.arange(0.0, 1.0, 0.01)]


def write_set(out: Path, grid: int, seed: int) -> int:
    """The labelled set under ``out``: ``<source>/orig.jpg`` and ``<source>/<edit>.jpg``; returns the sources."""
    from retr.eval.edits import EDITS, sample_photos

    n = 0
    for pi, (name, img) in enumerate(sample_photos().items()):
        im = Image.fromarray(img)
        im.thumbnail((1024, 1024), Image.LANCZOS)
        img = np.asarray(im)
        h, w = img.shape[0] // grid, img.shape[1] // grid
        sources = [(name, img)] + [(f"{name}{SEP}tile{i}{j}", img[i * h:(i + 1) * h, j * w:(j + 1) * w])
                                   for i in range(grid) for j in range(grid)]
        for si, (src, x) in enumerate(sources):
            d = out / src
            d.mkdir(parents=True)
            Image.fromarray(x).save(d / "orig.jpg", quality=95)
            rng = np.random.default_rng([seed, pi, si])
            for e in EDIT_NAMES:
                Image.fromarray(EDITS[e](np.ascontiguousarray(x), rng)).save(d / f"{e}.jpg", quality=95)
            n += 1
    return n


def pair_scores(pred: np.ndarray, pos: np.ndarray, same_photo: np.ndarray) -> dict:
    """Precision, recall, F1 and counts of predicted pairs ``pred`` against positives ``pos`` (upper-triangle
    boolean vectors of the same length)."""
    tp = int((pred & pos).sum())
    fp = int((pred & ~pos).sum())
    fn = int((~pred & pos).sum())
    p = tp / (tp + fp) if tp + fp else 1.0
    r = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(f1, 4), "tp": tp, "fp": fp, "fn": fn,
            "fp_same_photo": int((pred & ~pos & same_photo).sum())}


def sweep(x: np.ndarray, source: np.ndarray, photo: np.ndarray, thresholds) -> list[dict]:
    """For each threshold: the pairs' and the groups' precision / recall on L2-normalised ``x (n, p)``."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(x)
    iu, ju = np.triu_indices(n, 1)
    s = (x @ x.T)[iu, ju]
    pos = source[iu] == source[ju]
    same_photo = (photo[iu] == photo[ju]) & ~pos
    rows = []
    for t in thresholds:
        pred = s >= t
        _, lab = connected_components(coo_matrix((np.ones(pred.sum()), (iu[pred], ju[pred])), shape=(n, n)),
                                      directed=False)
        grouped = lab[iu] == lab[ju]
        rows.append({"threshold": t, "pairs": pair_scores(pred, pos, same_photo),
                     "groups": pair_scores(grouped, pos, same_photo)})
    return rows


def labelled(args) -> dict:
    import torch

    from retr.indexes.config import IndexConfig
    from retr.indexes.vectors import l2n
    from retr.retrieval import codec, dedup, engine

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder, db = Path(tmp) / "set", Path(tmp) / "set.retr"
        t0 = time.perf_counter()
        n_sources = write_set(folder, args.grid, args.seed)
        t_write = time.perf_counter() - t0
        cpu0 = common.machine_cpu_s()
        t0 = time.perf_counter()
        rep = engine.index_folder(folder, db, index=IndexConfig("flat"), device="cpu", progress=False)
        t_index = time.perf_counter() - t0
        cpu1 = common.machine_cpu_s()
        with engine.Engine(db, device="cpu") as eng:
            recs = sorted(eng.store.files().values())
            ids = np.array([i for i, _ in recs])
            paths = [r.path for _, r in recs]
            xc = eng.vectors(ids)
            fid, feats = eng.store.read_all("features", eng.spec.encoder.dim, "<f4")
            assert np.array_equal(fid, ids)
            label = eng.params.label()
            source = np.array([p.split("/")[0] for p in paths])
            expand = expansion_map(eng, feats, ids, source)
        photo = np.array([s.split(SEP)[0] for s in source])
        edit = np.array([Path(p).stem for p in paths])
        t0 = time.perf_counter()
        found = dedup.find_groups(db)
        t_dedup = time.perf_counter() - t0
    # the database's vectors, and other codecs fitted (as the database fitted its own) on the same descriptors
    variants = {f"{label} (the database's)": (xc, eng.params.config, rep.code_size),
                "float32 (--reduction none --quantizer none)": (l2n(feats), None, 4 * feats.shape[1])}
    for name, cfg in (("pca256-q2h4 whitened", codec.CodecConfig(whiten=True)),
                      ("q2h4 without reduction", codec.CodecConfig(reduction="none"))):
        params = codec.fit(feats, cfg)
        variants[name] = (l2n(codec.decode(params, codec.encode(params, feats))), cfg, params.code_size)
    res = {}
    for name, (x, cfg, nbytes) in variants.items():
        if cfg is None:
            cfg = codec.CodecConfig(reduction="none", quantizer="none")
        rows = sweep(x, source, photo, THRESHOLDS)
        t_def = dedup.default_threshold(cfg)
        at = next(r for r in rows if abs(r["threshold"] - t_def) < 1e-9)
        reach = [r for r in rows if r["groups"]["precision"] >= 0.95]
        res[name] = {"bytes": nbytes, "default_threshold": t_def, "at_default": at,
                     "recall_by_edit_at_default": recall_by_edit(x, source, edit, t_def),
                     "best_group_f1": max(rows, key=lambda r: (r["groups"]["f1"], r["threshold"])),
                     "first_group_precision_0.95": reach[0] if reach else None, "sweep": compact(rows)}
    # find_groups on the database must find the dense computation's pairs at the default threshold
    t_def = dedup.default_threshold(eng.params.config)
    iu, ju = np.triu_indices(len(ids), 1)
    keep = (xc @ xc.T)[iu, ju] >= t_def
    dense = set(zip(ids[iu[keep]].tolist(), ids[ju[keep]].tolist()))
    got = {(a, b) for g in found.groups for a, b, _ in g.pairs}
    busy = None
    if cpu0 and cpu1:
        busy = round((cpu1[0] - cpu0[0]) / max(cpu1[1] - cpu0[1], 1e-9), 3)
    return {"grid": args.grid, "seed": args.seed, "sources": n_sources, "images": len(ids),
            "positive_pairs": int(sum(np.sum(source == s_) * (np.sum(source == s_) - 1) // 2
                                      for s_ in np.unique(source))),
            "find_groups": {"threshold": found.threshold, "pairs": found.pairs, "groups": len(found.groups),
                            "equals_dense": got == dense, "seconds": round(t_dedup, 2)},
            "seconds": {"write": round(t_write, 1), "index": round(t_index, 1)},
            "machine_busy_share_while_indexing": busy, "expansion_map": expand, "variants": res}


def expansion_map(eng, feats: np.ndarray, ids: np.ndarray, source: np.ndarray) -> dict:
    """mAP (%) of every image of the set as a query (itself junk, its source's other images positive) for each
    ``--expand`` method: through the engine (the database's codec; queries reduced, not quantized, as `retr query`)
    and on the float32 descriptors (`expansion.expanded_search` over an exact search), with seconds per query."""
    from retr.eval.metrics import compute_map
    from retr.indexes.vectors import l2n
    from retr.retrieval import expansion

    n = len(ids)
    gnd = [{"ok": np.flatnonzero((source == source[i]) & (np.arange(n) != i)), "junk": np.array([i])}
           for i in range(n)]
    xf = l2n(feats)

    def search(x, k):
        sc = x @ xf.T
        order = np.argsort(-sc, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(sc, order, 1), order

    out = {}
    for method in expansion.METHODS:
        row = {}
        for name, run_ in (("codec", lambda: eng.search_vectors(feats, k=n, expand=method)),
                           ("float32", lambda: expansion.expanded_search(xf, n, method, search, lambda i: xf[i]))):
            t0 = time.perf_counter()
            _, I = run_()
            sec = time.perf_counter() - t0
            pos = np.searchsorted(ids, I) if name == "codec" else I
            m, _, _, _ = compute_map(pos.T, gnd)
            row[name] = {"map": round(100 * m, 2), "ms_per_query": round(1000 * sec / n, 1)}
        out[method] = row
    return out


def compact(rows: list[dict]) -> dict:
    """A sweep as one list per measure (what the JSON keeps): thresholds, then pairs_/groups_ precision, recall,
    fp and fp_same_photo, aligned."""
    out = {"threshold": [r["threshold"] for r in rows]}
    for kind in ("pairs", "groups"):
        for key in ("precision", "recall", "fp", "fp_same_photo"):
            out[f"{kind}_{key}"] = [r[kind][key] for r in rows]
    return out


def recall_by_edit(x: np.ndarray, source: np.ndarray, edit: np.ndarray, t: float) -> dict:
    """Share of the (original, edited copy) pairs scoring >= t, by edit."""
    orig = {s: i for i, (s, e) in enumerate(zip(source, edit)) if e == "orig"}
    out = {}
    for e in EDIT_NAMES:
        rows = [(orig[s], i) for i, (s, e2) in enumerate(zip(source, edit)) if e2 == e]
        out[e] = round(float(np.mean([x[a] @ x[b] >= t for a, b in rows])), 4)
    return out


def scale(args) -> dict:
    import faiss

    from bench.search import synthetic
    from retr import indexes
    from retr.indexes.vectors import l2n
    from retr.retrieval import codec, dedup

    faiss.omp_set_num_threads(args.threads)
    n, d = args.scale, 256
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    x, _ = synthetic(n, d, 10_000, 0, args.seed)
    m = n // 100
    src = rng.choice(n, m, replace=False)
    rest = np.setdiff1d(np.arange(n), src)
    dst = rng.choice(rest, m, replace=False)
    for c0 in range(0, m, 65536):
        s, t = src[c0:c0 + 65536], dst[c0:c0 + 65536]
        noise = rng.standard_normal((len(s), d)).astype(np.float32)
        noise *= args.noise / np.linalg.norm(noise, axis=1, keepdims=True)
        x[t] = l2n(x[s] + noise)
    t_data = time.perf_counter() - t0
    cpu0 = common.machine_cpu_s()
    t0 = time.perf_counter()
    sample = np.sort(rng.choice(n, min(n, 100_000), replace=False))
    params = codec.fit(x[sample], codec.CodecConfig(reduction="none", quantizer="q2", levels=4))
    codes = np.concatenate([codec.encode(params, x[i:i + 65536]) for i in range(0, n, 65536)])
    del x
    t_codec = time.perf_counter() - t0
    # planted pairs whose decoded vectors reach the threshold: what an exact search would find
    lo, hi = np.minimum(src, dst), np.maximum(src, dst)
    reach = float(np.mean(np.einsum("ij,ij->i", l2n(codec.decode(params, codes[lo])),
                                    l2n(codec.decode(params, codes[hi]))) >= args.scale_threshold))
    ids = np.arange(n, dtype=np.int64)
    t0 = time.perf_counter()
    cfg = indexes.IndexConfig(kind="ivf-fastscan")
    index = indexes.build_fastscan(codec.levels(params), codec.indices(params, codes), ids, cfg)
    t_build = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    parts = []
    for i in range(0, n, 65536):
        parts.append(dedup.find_pairs(index, ids[i:i + 65536], l2n(codec.decode(params, codes[i:i + 65536])),
                                      args.scale_threshold))
        print(f"  searched {min(n, i + 65536):,} / {n:,} in {time.perf_counter() - t0:.0f} s", flush=True)
    a, b, s = dedup._unique_pairs(*(np.concatenate(v) for v in zip(*parts)))
    t_search, c_search = time.perf_counter() - t0, time.process_time() - c0
    t0 = time.perf_counter()
    groups = dedup.group(ids, a, b, s)
    t_group = time.perf_counter() - t0
    cpu1 = common.machine_cpu_s()
    planted = {(int(min(p, q)), int(max(p, q))) for p, q in zip(src, dst)}
    found = set(zip(a.tolist(), b.tolist()))
    sizes = np.bincount([len(g) for g, _ in groups]) if groups else np.zeros(1, int)
    busy = None
    if cpu0 and cpu1:
        busy = round((cpu1[0] - cpu0[0]) / max(cpu1[1] - cpu0[1], 1e-9), 3)
    return {"n": n, "d": d, "code_bytes": params.code_size, "index": cfg.describe(), "nlist": int(index.inner.nlist),
            "nprobe": int(index.inner.nprobe), "threshold": args.scale_threshold, "noise": args.noise,
            "threads": args.threads, "planted_pairs": len(planted),
            "planted_above_threshold": round(reach, 4), "planted_recall": round(len(planted & found) / len(planted), 4),
            "planted_share_of_pairs": round(len(planted & found) / max(len(found), 1), 4), "pairs": len(a),
            "groups": len(groups),
            "group_sizes": {str(k): int(v) for k, v in enumerate(sizes) if v},
            "seconds": {"data": round(t_data, 1), "codec": round(t_codec, 1), "build": round(t_build, 1),
                        "search": round(t_search, 1), "search_process_cpu": round(c_search, 1),
                        "group": round(t_group, 2),
                        "dedup_total": round(t_build + t_search + t_group, 1)},
            "vectors_per_s": round(n / t_search), "machine_busy_share": busy}


def run(args) -> dict:
    out = {}
    if args.out and args.out.exists():
        out = json.loads(args.out.read_text())
    out.setdefault("machine", {})
    out["machine"] = {"cpu": common.cpu_model(), "cores": __import__("os").cpu_count()}
    if args.scale:
        res = scale(args)
        res["command"] = common.command("dedup", args.argv)
        out.setdefault("scale", {})[str(args.scale)] = res
        sec = res["seconds"]
        print(f"{res['n']:,} x {res['code_bytes']} B, {res['index']} (nlist {res['nlist']}, nprobe {res['nprobe']}), "
              f"{args.threads} threads: build {sec['build']} s, search {sec['search']} s "
              f"({res['vectors_per_s']:,} vectors/s, {sec['search_process_cpu']} s of CPU), grouping {sec['group']} s; "
              f"{res['pairs']:,} pairs, "
              f"{res['groups']:,} groups; planted pairs found {100 * res['planted_recall']:.2f}% (above the threshold "
              f"{100 * res['planted_above_threshold']:.2f}%), "
              f"{100 * res['planted_share_of_pairs']:.2f}% of the pairs found "
              f"(machine busy {res['machine_busy_share']})")
    else:
        res = labelled(args)
        res["command"] = common.command("dedup", args.argv)
        out.setdefault("labelled", {})[f"grid{args.grid}-seed{args.seed}"] = res
        print(f"{res['images']} images ({res['sources']} sources x 6), {res['positive_pairs']} positive pairs")
        print(f"{'':44s} {'thr':>5s} | pairs P / R (fp, same photo) | groups P / R")
        for name, v in res["variants"].items():
            sw = v["sweep"]
            for j, t in enumerate(sw["threshold"]):
                if round(t * 100) % 5 and abs(t - v["default_threshold"]) > 1e-9:
                    continue
                mark = "*" if abs(t - v["default_threshold"]) < 1e-9 else " "
                print(f"{name:44s} {t:5.2f}{mark}| {sw['pairs_precision'][j]:.3f} / {sw['pairs_recall'][j]:.3f} "
                      f"({sw['pairs_fp'][j]}, {sw['pairs_fp_same_photo'][j]}) | {sw['groups_precision'][j]:.3f} / "
                      f"{sw['groups_recall'][j]:.3f}")
            b, f = v["best_group_f1"], v["first_group_precision_0.95"]
            print(f"  {name} ({v['bytes']} B): best group F1 {b['groups']['f1']:.3f} at {b['threshold']:.2f}; groups' "
                  f"precision >= 0.95 from {f['threshold'] if f else None}; recall by edit at the default "
                  f"{v['default_threshold']}: {v['recall_by_edit_at_default']}")
        print(f"find_groups: {res['find_groups']}")
        print("mAP of every image as a query, by --expand: "
              + "; ".join(f"{m}: codec {v['codec']['map']} ({v['codec']['ms_per_query']} ms/q), float32 "
                          f"{v['float32']['map']}" for m, v in res["expansion_map"].items()))
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grid", type=int, default=3, help="tiles per side of each photo [3]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch / Faiss threads [2]")
    ap.add_argument("--scale", type=int, default=0, help="N: run the scale measurement on N synthetic codes instead")
    ap.add_argument("--scale-threshold", type=float, default=0.9, help="cosine of the scale run's range search [0.9]")
    ap.add_argument("--noise", type=float, default=0.1, help="norm of the noise of the planted near-copies [0.1]")
    ap.add_argument("--out", type=Path, default=Path("bench/results/dedup.json"))
    return common.main(ap, run, argv)


if __name__ == "__main__":
    main()
