"""Issue 5, concurrency: queries run while another process indexes and each sees one committed batch boundary; a
second writer is refused at once; a reader survives the writer growing the map under it.

py-lmdb refuses to open one environment twice in a process, so the writers here are subprocesses and the test
process is the reader.
"""

import os
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from retr.cli import main
from retr.retrieval import engine
from retr.retrieval import store as store_mod
from retr.retrieval.store import TXN_DELAY_ENV, FileRecord, Store

FAST = ["--backbone", "alexnet", "--weights", "none", "--pooling", "mac", "--dims", "8", "--device", "cpu",
        "--max-size", "64", "--batch-size", "4"]
N1, N2 = 24, 40  # images indexed first, then added while the reader queries


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_images(root, start: int, n: int) -> None:
    rng = np.random.default_rng(start)
    for i in range(start, start + n):
        x = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(np.kron(x, np.ones((8, 8, 1), np.uint8))).save(root / f"img{i:03d}.png")


@pytest.mark.slow
def test_queries_during_indexing_see_whole_batches_and_a_second_writer_is_refused(tmp_path):
    photos, db = tmp_path / "photos", tmp_path / "x.retr"
    photos.mkdir()
    write_images(photos, 0, N1)
    r = CliRunner().invoke(main, ["index", str(photos), "--db", str(db), *FAST])
    assert r.exit_code == 0, r.output
    with engine.Engine(db, device="cpu") as eng:  # queries: 4 images of the first half, as descriptors
        queries = [f"img{i:03d}.png" for i in (0, 7, 13, 23)]
        qx = eng.encoder([np.asarray(Image.open(photos / q).convert("RGB")) for q in queries])
    write_images(photos, N1, N2)

    code = "import torch; torch.set_num_threads(1); from retr.cli import main; main(prog_name='retr')"
    writer = subprocess.Popen([sys.executable, "-c", code, "index", str(photos), "--db", str(db), *FAST],
                              env={**os.environ, TXN_DELAY_ENV: "0.25"}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        while writer.poll() is None:  # wait for the writer's first batch
            with Store(db) as s:
                if s.count("codes") > N1:
                    break
            time.sleep(0.01)
        assert writer.poll() is None, writer.communicate()

        t = time.perf_counter()
        r = CliRunner().invoke(main, ["index", str(photos), "--db", str(db), *FAST])
        refused_in = time.perf_counter() - t
        assert r.exit_code == 1 and r.output == (f"Error: database {db} is being written by another process (`retr "
                                                 "index`?); wait for it to finish\n")
        assert refused_in < 1.0 and writer.poll() is None  # refused at once, while the writer was still at work

        seen = []
        while writer.poll() is None:
            with engine.Engine(db, device="cpu") as eng:
                n = eng.index.ntotal
                D, I = eng.search_vectors(qx, k=3)
                paths = eng.store.paths(I.ravel())
            seen.append(n)
            assert n in range(N1, N1 + N2 + 1, 4)  # a whole number of committed batches of 4
            assert "<deleted>" not in paths and (I >= 0).all()
            assert paths[::3] == queries  # each query finds itself first
    finally:
        if writer.poll() is None:
            writer.kill()
        out, err = writer.communicate()
    assert writer.returncode == 0, err
    assert len(seen) >= 3 and len(set(seen)) >= 2, seen  # the reader overlapped several of the writer's commits
    with engine.Engine(db, device="cpu") as eng:
        assert eng.index.ntotal == N1 + N2


_GROW = """
import sys, numpy as np
import retr.retrieval.store as st
st._INITIAL_MAP_SIZE = 1 << 16
with st.Store(sys.argv[1], write=True) as s:
    n = 2000
    s.add([st.FileRecord(f"{i}.png", 1, 1, "ab" * 16) for i in range(n)], features=np.ones((n, 1024), np.float32))
    print(s.env.info()["map_size"])
"""


def test_a_reader_adopts_the_map_a_writer_grew(tmp_path, monkeypatch):
    monkeypatch.setattr(store_mod, "_INITIAL_MAP_SIZE", 1 << 16)  # 64 KiB: any real write outgrows it
    db = tmp_path / "x.retr"
    with Store(db, write=True, create=True) as s:
        s.add([FileRecord("a.png", 1, 1, "ab" * 16)], features=np.zeros((1, 1024), np.float32))
    with Store(db) as reader:
        before = reader.env.info()["map_size"]
        assert reader.count("features") == 1
        r = subprocess.run([sys.executable, "-c", _GROW, str(db)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert int(r.stdout) >= 8 << 20 > before  # 2000 x 4 KiB descriptors: the writer grew the map
        assert reader.count("features") == 2001  # MDB_MAP_RESIZED met and handled
        _, x = reader.read_all("features", 1024, "<f4")
        assert x.shape == (2001, 1024) and x[1:].min() == 1.0
