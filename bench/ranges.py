"""Which quantizer range should the engine use by default? Near-duplicate mAP for each range at h = 4.

    python -m bench.ranges --grid 3           # 72 tiles, 360 queries: about 2 minutes on 2 CPU cores
    python -m bench.ranges --grid 4           # 128 tiles, 640 queries

The bundled scikit-image photographs are too few (8) to separate anything: every range finds every original. So each
photo is cut into a grid of `--grid` x `--grid` tiles, and every tile is a database image of its own: tiles of one
photo share colours and texture, which makes them hard negatives for each other. Each tile gets `--edits` seeded
Copydays-style edits (crop, rotation, JPEG, scale, colour, contrast, blur, text, flip) as queries whose one positive
is the tile. Descriptors: the default backbone (EfficientNet-Lite0, ImageNet weights, conv + GeM). The codec is the
engine's default (PCA to `--dims`, capped by the number of database images, then Q-2 with h levels) fitted on the
database, searched as `retr query` does (asymmetric: queries reduced, not quantised), once per range. Writes
`bench/results/ranges-grid<GRID>.json`.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from retr.eval.datasets import build_neardup
from retr.eval.edits import sample_photos
from retr.eval.metrics import compute_map
from retr.eval.run import compute_features
from retr.indexes.vectors import l2n
from retr.retrieval import codec
from retr.retrieval.encoder import Encoder, EncoderConfig

RANGES = ("minmax", "quantile:0.001", "quantile:0.01", "sigma:3", "sigma:2")


def write_tiles(out: Path, grid: int) -> int:
    """Cut each sample photo into grid x grid tiles saved as JPEGs in ``out``; returns the number of tiles."""
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    for name, img in sample_photos().items():
        h, w = img.shape[0] // grid, img.shape[1] // grid
        for i in range(grid):
            for j in range(grid):
                Image.fromarray(img[i * h:(i + 1) * h, j * w:(j + 1) * w]).save(out / f"{name}_{i}{j}.jpg", quality=95)
                n += 1
    return n




def scores(xdb: np.ndarray, xq: np.ndarray, gnd: list) -> tuple[float, float]:
    """mAP and recall@1, both in %, of cosine ranking."""
    ranks = np.argsort(-(xq @ xdb.T), axis=1, kind="stable")
    m, _, _, _ = compute_map(ranks.T, gnd)
    r1 = float(np.mean([ranks[i, 0] in set(g["ok"]) for i, g in enumerate(gnd)]))
    return 100 * m, 100 * r1


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grid", type=int, default=3)
    ap.add_argument("--edits", type=int, default=5)
    ap.add_argument("--dims", type=int, default=256)
    ap.add_argument("--levels", type=int, default=4)
    ap.add_argument("--out", default=None, help="JSON output [bench/results/ranges-grid<GRID>.json]")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        n_tiles = write_tiles(Path(tmp) / "tiles", a.grid)
        ds = build_neardup(Path(tmp) / "tiles", Path(tmp) / "neardup", edits_per_image=a.edits, seed=0)
        enc = Encoder(EncoderConfig(), device="cpu")
        xdb = compute_features(enc, ds.db_paths, desc="database")
        xq = compute_features(enc, [q.path for q in ds.queries], desc="queries")
    rows = [{"range": "float32 (no codec)", "bytes": 4 * xdb.shape[1], **dict(zip(("map", "recall@1"),
                                                                                  scores(xdb, xq, ds.gnd)))}]
    for rng in RANGES:
        cfg = codec.CodecConfig(reduction="pca", dims=a.dims, quantizer="q2", levels=a.levels, range=rng)
        params = codec.fit(xdb, cfg)
        yb = l2n(codec.decode(params, codec.encode(params, xdb)))
        yq = l2n(codec.reduce(params, xq))
        m, r1 = scores(yb, yq, ds.gnd)
        rows.append({"range": rng, "dims": params.dims, "bytes": params.code_size, "map": m, "recall@1": r1})
    print(f"near-duplicates: {n_tiles} tiles of the {len(sample_photos())} bundled photos as the database, "
          f"{len(ds.queries)} edited copies as queries; EfficientNet-Lite0 conv+GeM; PCA + Q-2 h={a.levels}")
    print(f"{'range':20s} {'bytes':>6s} {'mAP %':>7s} {'R@1 %':>7s}")
    for r in rows:
        print(f"{r['range']:20s} {r['bytes']:6d} {r['map']:7.2f} {r['recall@1']:7.2f}")
    res = {"rows": rows, "tiles": n_tiles, "queries": len(ds.queries), "args": vars(a),
           "machine": platform.platform(), "seconds": round(time.perf_counter() - t0, 1)}
    out = Path(a.out or f"bench/results/ranges-grid{a.grid}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
