"""What one image costs in a database, in bytes, for each index kind: on disk (LMDB records, index file) and in memory.

    python -m bench.footprint                         # 1,200 photos, retr's default settings, every index kind
    python -m bench.footprint --n 400 --backbone alexnet --weights none

Data: `--n` JPEG photos of 500x375 made as bench/encode.py makes them (seeded crops of scikit-image's bundled
photographs), in folders named like a user's (``photos/000123.jpg``). One `retr index` run with the given encoder
and retr's default codec (PCA 256, Q-2 h = 4: 64-byte codes), `--freeze` so the codec is final and the float32
descriptors are dropped, as in a collection past `--train-size`; then, per index kind, the index is rebuilt
(`retr index --index KIND` on the same database: only the derived index changes).

Per kind (`engine.info(db).bytes_per_image`, the figures `retr info` prints): the code; the LMDB pages of each
per-image sub-database divided by the images (codes, file records, path -> id); the index file per vector (Faiss's
serialisation: codes or vectors, ids, lists or graph); and what a server holds in memory once the index is loaded:
the file's content, plus for fast-scan kinds the re-rank copy that FastScanIndex derives at load (two 4-bit groups
per byte, a float32 inverse norm per vector, and 8-bit centroid tables whose fixed size, 256 KiB for 128 groups,
weighs on small collections). The process's resident-memory growth is not used: at this size it is dominated by
Faiss's and NumPy's first allocations, not by the index.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from pathlib import Path

from bench import common
from bench.encode import make_photos
from retr.retrieval import engine
from retr.retrieval.encoder import EncoderConfig
from retr.indexes import IndexConfig

RESULTS = Path(__file__).parent / "results" / "footprint.json"
KINDS = ("fastscan", "ivf-fastscan", "flat", "ivf", "hnsw")


def run(args: argparse.Namespace) -> dict:
    enc = EncoderConfig.create(args.backbone, weights=args.weights)
    rows = []
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        folder = Path(tmp) / "photos"
        make_photos(folder, args.n, (500, 375), args.seed)
        db = Path(tmp) / "photos.retr"
        engine.index_folder(folder, db, enc, freeze=True, device="cpu", progress=False)
        for kind in KINDS:
            cfg = IndexConfig(kind, nlist=args.nlist if "ivf" in kind else None)
            engine.index_folder(folder, db, index=cfg, device="cpu", progress=False)
            info = engine.info(db)
            b = info.bytes_per_image
            rows.append({"index": IndexConfig.from_dict(info.index_config).describe(), "kind": kind,
                         "images": info.count, "code": b["code"], "lmdb": b["lmdb"], "lmdb_total": b["lmdb_total"],
                         "index_file": b["index"], "index_memory": b["index_memory"],
                         "disk_total_per_image": round(info.disk_bytes / info.count, 1)})
            print(f"  {rows[-1]['index']:34} code {b['code']} B, LMDB {b['lmdb_total']:.0f} B {b['lmdb']}, "
                  f"index file {b['index']:.0f} B, in memory {b['index_memory']:.0f} B per image", flush=True)
    return {"command": common.command("footprint", args.argv), "n": args.n, "encoder": enc.to_dict(),
            "codec": info.codec, "code_size": info.code_size, "rows": rows,
            "machine": f"{platform.machine()}, {common.cpu_model()}",
            "note": "LMDB figures are whole 4 KiB pages per sub-database divided by the images; data.mdb on disk is "
                    "larger (free pages, the map's growth): see disk_total_per_image"}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1200, help="photos indexed")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--weights", default="imagenet")
    ap.add_argument("--nlist", type=int, default=None, help="IVF lists (default: the engine's, from n)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tmp", default=None, help="folder for the photos and the database (default: the system's)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="JSON results")
    return common.main(ap, run, argv)


if __name__ == "__main__":
    main()
