"""Describing on Ray (retrieval/distributed.py, `retr index --ray`): the database equals a local run's, and faults.

One local Ray session (2 CPUs) serves the whole module; every run starts its own actors (a few seconds each: a fresh
worker imports torch). Images: 40 small PNGs and two bad files among them, so that skipped files shift the batch
boundaries of every later shard (shards of one batch here). Torch runs on one thread in this process, so actors
run on one thread each and two of them fit the session's 2 CPUs.

- `retr index --ray` builds the database a local run builds (meta but the commit counter, files, ids, codes,
  skipped files; query results), the bad files skipped and listed as without Ray;
- an actor's process killed with SIGKILL mid-run: restarted, its calls run again, and the `Described` batches are
  still those of `describe.iter_descriptors` (positions, stamps, skipped files, descriptors bit for bit, in order);
- the driver (`retr index --ray ADDRESS` in another process) killed with SIGKILL mid-run: `retr index` again resumes
  and the database is the same;
- without Ray, `--ray` says in one line how to install it (tests/test_ray_missing.py, which runs without Ray).
"""

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from retr.retrieval import describe, distributed, engine
from retr.retrieval.check import check
from retr.retrieval.encoder import Encoder
from retr.retrieval.encoder_config import EncoderConfig
from retr.retrieval.errors import DatabaseError
from retr.retrieval.images import walk_images
from retr.retrieval.store import TXN_DELAY_ENV, Store

from conftest import run

ray = pytest.importorskip("ray", reason=f"Ray is not installed ({distributed.INSTALL_HINT})")

pytestmark = [pytest.mark.slow]

N_GOOD = 40
BATCH = 4
FAST = ["--backbone", "alexnet", "--weights", "none", "--pooling", "mac", "--dims", "8", "--device", "cpu",
        "--max-size", "64", "--batch-size", str(BATCH), "--freeze"]
BAD = {"img05b.jpg": "cannot identify image file", "img22b.png": "empty file"}


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # actors take the driver's thread count: 1 each, 2 actors on 2 CPUs
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    yield ray
    ray.shutdown()
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ray") / "photos"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(N_GOOD):
        x = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(np.kron(x, np.ones((8, 8, 1), np.uint8))).save(root / f"img{i:02d}.png")
    (root / "img05b.jpg").write_text("not an image")
    (root / "img22b.png").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def reference(photos, tmp_path_factory) -> Path:
    """The database of a local run (no Ray)."""
    db = tmp_path_factory.mktemp("ref") / "ref.retr"
    r = run("index", photos, "--db", db, *FAST)
    assert r.exit_code == 0, r.output
    return db


def contents(db: Path) -> dict:
    """Everything a database holds except its commit counter."""
    with Store(db) as s, s.snapshot():
        meta = {k.decode(): v for k, v in s.raw_items("meta") if k != b"generation"}
        return {"meta": meta, **{name: dict(s.raw_items(name)) for name in ("files", "ids", "codes", "skipped",
                                                                                 "features")}}


def query_results(db: Path, photos: Path) -> list:
    with engine.Engine(db, device="cpu") as eng:
        return [[(m.path, m.id, m.score) for m in r.results]
                for r in eng.search([photos / "img00.png", photos / "img31.png"], k=5)]


def same_database(db: Path, reference: Path, photos: Path) -> None:
    assert contents(db) == contents(reference)
    assert query_results(db, photos) == query_results(reference, photos)
    assert check(db).healthy


def test_index_equals_local(photos, reference, tmp_path):
    db = tmp_path / "ray.retr"
    r = run("index", photos, "--db", db, *FAST, "--ray")
    assert r.exit_code == 0, r.output
    same_database(db, reference, photos)
    skipped = engine.info(db).skipped
    assert sorted(skipped) == sorted(BAD)
    assert all(BAD[p] in reason for p, reason in skipped.items())
    r = run("info", "--db", db)
    assert "skipped      2 files" in r.output and "img05b.jpg" in r.output


def _descendants(pid: int) -> dict[int, str]:
    """{pid: command line} of the processes below ``pid``."""
    children: dict[int, list[int]] = {}
    cmd: dict[int, str] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd[int(d)] = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(d))
    out, todo = {}, [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out[c] = cmd.get(c, "")
            todo.append(c)
    return out


def _committed(db: Path) -> int:
    try:
        with Store(db) as s:
            return s.count("files")
    except DatabaseError:
        return 0


def test_worker_killed(photos, tmp_path, monkeypatch):
    """The Described batches of a local run, bit for bit and in order, from two actors, one of whose processes is
    killed with SIGKILL mid-run (it has decoded a shard and works on another): Ray restarts it, its calls run again,
    nothing is lost or duplicated."""
    cfg = EncoderConfig.create("alexnet", "none", None, "mac", max_size=64)
    paths, _ = walk_images(photos)
    want = list(describe.iter_descriptors(Encoder(cfg, device="cpu"), paths, batch_size=BATCH))
    trace = tmp_path / "trace.txt"
    monkeypatch.setenv(distributed.DELAY_ENV, "0.3")  # each step of each shard waits: the run lasts a few s
    monkeypatch.setenv(distributed.TRACE_ENV, str(trace))
    killed: list[int] = []
    done = threading.Event()

    def kill_one():
        while not done.wait(0.02):
            steps = [line.split() for line in trace.read_text().splitlines()] if trace.exists() else []
            started = [int(pid) for pid, step, _ in steps if step == "encode"]
            if started:  # its first shard decoded, its first forward passes under way
                os.kill(started[0], signal.SIGKILL)
                killed.append(started[0])
                return

    t = threading.Thread(target=kill_one, daemon=True)
    t.start()
    timings: dict = {}
    try:
        got = list(distributed.iter_descriptors(cfg, paths, distributed.RayConfig(actors=2, shard_batches=1),
                                                device="cpu", batch_size=BATCH, timings=timings))
    finally:
        done.set()
        t.join()
    assert killed, "no actor process was killed mid-run"
    pids = {int(line.split()[0]) for line in trace.read_text().splitlines()}
    assert len(pids) == 3 and killed[0] in pids  # two actors, one of them restarted, and the new process worked
    assert [b.index for b in got] == [b.index for b in want]
    assert [b.stamps for b in got] == [b.stamps for b in want]
    assert [b.skipped for b in got] == [b.skipped for b in want]
    for a, b in zip(got, want):
        assert np.array_equal(a.x, b.x)
    assert sum(len(b.skipped) for b in got) == 2
    # decoded again: the open batch at the start of each shard after a bad file, and the shard the killed process held
    assert timings["redecoded"] > 0


def test_driver_killed_resumes(photos, reference, tmp_path):
    """SIGKILL to `retr index --ray ADDRESS` (a driver connected to this session) mid-run; then `retr index` again
    resumes from its last committed batch and builds the same database. (Run again without Ray here: with it, the
    new actors would wait some 10 s for Ray to notice that the killed driver's actors are gone and free their CPUs;
    what is resumed is the store, which the driver writes as a local run does.)"""
    db = tmp_path / "driver.retr"
    address = ray.get_runtime_context().gcs_address
    env = dict(os.environ, **{TXN_DELAY_ENV: "0.2", distributed.DELAY_ENV: "0.2"})
    code = ("import sys, torch; torch.set_num_threads(1); from retr.cli import main; "
            f"main({['index', str(photos), '--db', str(db), *FAST, '--ray', address, '--json']!r}, prog_name='retr')")
    p = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        t0 = time.monotonic()
        while not 0 < _committed(db) < N_GOOD:
            assert p.poll() is None, p.stderr.read().decode()[-2000:]
            assert time.monotonic() - t0 < 90, "the driver never committed a batch"
            time.sleep(0.05)
        p.send_signal(signal.SIGKILL)
        p.wait(30)
    finally:
        if p.poll() is None:
            p.kill()
    partial = _committed(db)
    assert 0 < partial < N_GOOD
    r = run("index", photos, "--db", db, *FAST, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["added"] == N_GOOD - partial  # resumed: only the files not committed yet
    same_database(db, reference, photos)
