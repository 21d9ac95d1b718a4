"""A run that decodes files exits cleanly (issue "One engine, one contract"): `retr index` on a folder whose bad files
are re-tried died with SIGABRT after its summary ("terminate called without an active exception", exit 134).

Cause: a decoding worker kept the last job it had run in a local variable until it woke for its next one; the job
holds the transform, so the encoder and its model. When the iterator was closed the workers were not joined, and a
worker that woke late dropped the last reference to the model on its own thread while the interpreter was exiting.
Freeing a tensor releases the GIL; a daemon thread that takes it back during finalization is ended by pthread_exit,
whose unwinding through torch's C++ calls std::terminate. Now closing `iter_decoded` joins its workers and no worker
holds a job it has handed over, so the transform is freed by the consumer.
"""

import os
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retr.retrieval import images
from retr.retrieval.images import Skipped, iter_decoded


class Holder:
    """Stands for an encoder: a transform's owner that records the thread that frees it."""

    def __init__(self, freed_on: list):
        self.freed_on = freed_on

    def transform(self, x):
        return x

    def __del__(self):
        self.freed_on.append(threading.current_thread())


def decode_threads(before: set) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "retr-decode" and t not in before and t.is_alive()]


def write_folder(root: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        w, h = (int(v) for v in rng.integers(64, 129, 2))
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / f"img{i:03d}.jpg", quality=85)


def write_bad_files(root: Path, version: int) -> None:
    """A truncated JPEG, text named .jpg, an empty .png and garbage .webp; `version` changes their bytes (not the
    empty one's), so every run has them to decode again."""
    data = (root / "img000.jpg").read_bytes()
    (root / "bad_truncated.jpg").write_bytes(data[: len(data) // 2 + version])
    (root / "bad_text.jpg").write_text(f"not an image, version {version}\n")
    (root / "bad_empty.png").write_bytes(b"")
    (root / "bad_garbage.webp").write_bytes(np.random.default_rng(version).bytes(4096))
    t = time.time_ns() + version * 10**9  # a new mtime even within the file system's clock resolution
    for name in ("bad_truncated.jpg", "bad_text.jpg", "bad_empty.png", "bad_garbage.webp"):
        os.utime(root / name, ns=(t, t))


@pytest.mark.parametrize("early", [False, True])
def test_closing_joins_the_workers_and_the_consumer_frees_the_transform(tmp_path, early):
    write_folder(tmp_path, 6)
    write_bad_files(tmp_path, 0)
    paths = sorted(tmp_path.iterdir())
    before = set(threading.enumerate())
    freed_on: list = []
    holder = Holder(freed_on)
    gone = weakref.ref(holder)
    it = iter_decoded(paths, tmp_path, workers=2, transform=holder.transform, ahead=4)
    if early:
        next(it)  # a consumer that stops (a failed write): files still queued and in flight
    else:
        assert len(list(it)) == len(paths)
    it.close()
    assert decode_threads(before) == []  # joined: none left running at interpreter exit
    del it, holder
    assert gone() is None and freed_on == [threading.current_thread()]


def test_only_bad_files_the_reruns_case(tmp_path):
    write_folder(tmp_path, 1)
    write_bad_files(tmp_path, 0)
    paths = sorted(tmp_path.glob("bad_*"))
    before = set(threading.enumerate())
    freed_on: list = []
    holder = Holder(freed_on)
    for workers in (1, 2):
        out = [r for _, _, r in iter_decoded(paths, tmp_path, workers=workers, transform=holder.transform)]
        assert all(isinstance(r, Skipped) for r in out) and len(out) == 4
        assert decode_threads(before) == []  # exhausted: joined too
    del holder
    assert freed_on == [threading.current_thread()]


def test_an_abandoned_worker_does_not_free_the_transform(monkeypatch):
    release = threading.Event()

    def read(path, **kw):
        if Path(path).name == "stuck":
            release.wait(30)
        return Path(path).name

    monkeypatch.setattr(images, "read_image", read)
    before = set(threading.enumerate())
    freed_on: list = []
    holder = Holder(freed_on)
    try:
        it = iter_decoded(["a", "stuck", "b"], workers=1, timeout_s=0.2, transform=holder.transform)
        out = [r for _, _, r in it]
        assert out == ["a", Skipped("stuck", "decode timed out after 0.2 s"), "b"]
        stuck = decode_threads(before)
        assert len(stuck) == 1  # only the abandoned worker is left; its replacement was joined
        del it, holder
    finally:
        release.set()
    stuck[0].join(5)
    assert not stuck[0].is_alive() and freed_on == []  # its job is left for a consumer to free
    list(iter_decoded([]))
    assert freed_on == [threading.current_thread()]


@pytest.mark.slow
def test_index_reruns_that_decode_files_exit_zero(tmp_path):
    photos, db = tmp_path / "photos", tmp_path / "x.retr"
    write_folder(photos, 16)
    code = "import sys; from retr.cli import main; sys.exit(main(prog_name='retr'))"
    cmd = [sys.executable, "-c", code, "index", str(photos), "--db", str(db), "--backbone", "alexnet",
           "--weights", "none", "--batch-size", "8"]
    for run in range(4):  # the first run indexes; each later one decodes the 4 changed bad files again (~10 s a run)
        write_bad_files(photos, run)
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "terminate called" not in r.stderr, (run, r.returncode, r.stderr[-2000:])
