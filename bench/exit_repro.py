"""Reproduce the exit-time abort of `retr index` reruns that decode files (issue "One engine, one contract"): SIGABRT
("terminate called without an active exception", exit 134) after the summary. Fixed in `images.iter_decoded`, which
now joins its workers on close; `tests/test_exit.py` is the test.

    python bench/exit_repro.py --runs 20 [--workers 1] [--no-bad] [--same-bad]

Makes a folder of 120 small random-noise JPEGs (64-200 px) plus 4 bad files (truncated JPEG, text named .jpg, empty
.png, garbage .webp), indexes it once (alexnet, --weights none, batch 8), then reruns the same command ``--runs``
times and counts the exit codes. Before each rerun the bad files are rewritten, so that every rerun decodes them
again whether or not the engine re-tries unchanged skipped files (``--same-bad``: leave them as they are). The race
needs a busy machine: on 2 cores under load, 7 of 25 and 2 of 20 reruns aborted before the fix.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

CLI = "import sys; from retr.cli import main; sys.exit(main(prog_name='retr'))"
BAD = ("bad_truncated.jpg", "bad_text.jpg", "bad_empty.png", "bad_garbage.webp")


def make_folder(root: Path, n: int = 120, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        w, h = (int(v) for v in rng.integers(64, 201, size=2))
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / f"img{i:03d}.jpg", quality=85)


def write_bad_files(root: Path, version: int) -> None:
    data = (root / "img000.jpg").read_bytes()
    (root / BAD[0]).write_bytes(data[: len(data) // 2 + version])
    (root / BAD[1]).write_text(f"this is not an image ({version})\n")
    (root / BAD[2]).write_bytes(b"")
    (root / BAD[3]).write_bytes(np.random.default_rng(version).bytes(4096))
    t = time.time_ns() + version * 10**9
    for name in BAD:
        os.utime(root / name, ns=(t, t))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--no-bad", action="store_true", help="no bad files: reruns have nothing to decode")
    ap.add_argument("--same-bad", action="store_true", help="do not rewrite the bad files before each rerun")
    ap.add_argument("--dir", default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.dir or tmp)
        folder, db = base / "photos", base / "photos.retr"
        make_folder(folder)
        cmd = [sys.executable, "-c", CLI, "index", str(folder), "--db", str(db), "--backbone", "alexnet",
               "--weights", "none", "--batch-size", "8"]
        cmd += ["--workers", str(args.workers)] if args.workers is not None else []
        codes: collections.Counter[int] = collections.Counter()
        for k in range(args.runs + 1):
            if not args.no_bad and (k == 0 or not args.same_bad):
                write_bad_files(folder, k)
            r = subprocess.run(cmd, capture_output=True, text=True)
            if k == 0:
                print("first run: exit", r.returncode, flush=True)
                continue
            codes[r.returncode] += 1
            if r.returncode != 0:
                print(f"rerun {k}: exit {r.returncode}\n{r.stderr[-1000:]}", flush=True)
        print(f"exit codes over {args.runs} reruns: {dict(codes)}")


if __name__ == "__main__":
    main()
