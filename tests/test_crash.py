"""Issue 5, crashes: ``retr index`` killed with SIGKILL at seeded random moments of encoding, fitting and storing, then
run again to completion, builds the database an uninterrupted run builds: same ids, paths, records, codes, skipped
files, codec, and query results; ``retr check`` passes after every resume.

The killed runs are forked from a process that has already imported retr (multiprocessing's forkserver): each is a
separate process running ``retr index`` exactly as the command line does, killed with SIGKILL, without paying the
5 s of importing torch every time. The reference run is a plain ``python`` subprocess, so the comparison also
covers a fresh interpreter against forked ones. ``RETR_TEST_TXN_DELAY_S`` makes every write transaction wait before
committing, which stretches the run so kills land inside open transactions and in every phase. Each kill aims at a
phase: it waits (polling the store, as a reader) until the run enters that phase, then a seeded random part of the
phase's length measured on a first stretched run. Every process runs torch on one thread (on a busy 2-core
machine two threads are ~20x slower), the same in the reference and in the killed and resumed runs.
"""

import multiprocessing
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retr.retrieval import engine
from retr.retrieval.database import fingerprint, read_params
from retr.retrieval.check import check
from retr.retrieval.errors import DatabaseError
from retr.retrieval.store import TXN_DELAY_ENV, Store

pytestmark = [pytest.mark.crash, pytest.mark.slow]

N_GOOD = 40
BATCH = 4
TXN_DELAY_S = 0.05
PHASES = ("encoding", "fitting", "coding", "index")  # in order; "fitting" ends when the codec is committed
KILLS_PER_PHASE = 7  # in each of encoding, fitting, coding; plus a few anywhere in the run
KILLS_ANYWHERE = 3
SEED = 5
FAST = ["--backbone", "alexnet", "--weights", "none", "--pooling", "mac", "--dims", "8", "--device", "cpu",
        "--max-size", "64", "--batch-size", str(BATCH), "--freeze", "--json"]
# what a database may show between a kill and the next run: an unfinished run, never damage
UNFINISHED = ("no encoder configuration", "no fitted codec", "have no code yet", "index file missing",
              "index file stale or corrupt")


def make_photos(root: Path) -> None:
    """N_GOOD 64x64 images and two bad files among them (so skipped files shift the batches)."""
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(N_GOOD):
        x = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(np.kron(x, np.ones((8, 8, 1), np.uint8))).save(root / f"img{i:02d}.png")
    (root / "img05b.jpg").write_text("not an image")
    (root / "img22b.png").write_bytes(b"")


def index_args(photos: Path, db: Path) -> list[str]:
    return ["index", str(photos), "--db", str(db), *FAST]


def _child_code(args: list[str], delay: float) -> str:
    return (f"import os, sys, torch; os.environ[{TXN_DELAY_ENV!r}] = {str(delay)!r}; torch.set_num_threads(1); "
            f"sys.stdout = open(os.devnull, 'w'); from retr.cli import main; main({args!r}, prog_name='retr')")


def start_child(ctx, args: list[str], delay: float) -> multiprocessing.Process:
    p = ctx.Process(target=exec, args=(_child_code(args, delay),), daemon=True)
    p.start()
    return p


def wait_for(path: Path, proc, timeout: float = 60.0) -> float:
    """Wait until ``path`` exists; returns the time it appeared (perf_counter)."""
    t0 = time.perf_counter()
    while not path.exists():
        if not proc.is_alive() or time.perf_counter() - t0 > timeout:
            raise AssertionError(f"{path} never appeared (exit code {proc.exitcode})")
        time.sleep(0.002)
    return time.perf_counter()


def phase(db: Path) -> str:
    """Where a run stands, read from the store: start, setup, encoding, fitting, coding, index or done."""
    if not (db / "data.mdb").exists():
        return "start"
    try:
        with Store(db) as s, s.snapshot():
            files, codes = s.count("files"), s.count("codes")
            params = read_params(s)
            fp = fingerprint(s, params) if params else None
    except DatabaseError:  # created, format version not committed yet
        return "start"
    if params is None:
        return "setup" if files == 0 else "encoding" if files < N_GOOD else "fitting"
    if codes < N_GOOD:
        return "coding"
    head = engine.indexes.read_header(db / engine.INDEX_FILE)
    return "done" if head and head["fingerprint"] == fp else "index"


def contents(db: Path) -> dict:
    """Everything a database holds except its commit counter."""
    with Store(db) as s, s.snapshot():
        meta = {k.decode(): v for k, v in s.raw_items("meta") if k != b"generation"}
        return {"meta": meta, **{name: dict(s.raw_items(name)) for name in ("files", "ids", "codes", "skipped",
                                                                                 "features")}}


def query_results(db: Path, x) -> list:
    """Top 5 (ids, paths, scores) for query descriptors ``x (m, d)``."""
    with engine.Engine(db, device="cpu") as eng:
        D, I = eng.search_vectors(x, k=5)
        return [list(zip(ii.tolist(), eng.store.paths(ii), d.tolist())) for d, ii in zip(D, I)]


def kill_in(ctx, photos: Path, db: Path, target: str, delay: float) -> None:
    """Run the stretched command and SIGKILL it ``delay`` s into phase ``target`` (or into the run: "anywhere")."""
    p = start_child(ctx, index_args(photos, db), TXN_DELAY_S)
    wait_for(db / "data.mdb", p)
    if target != "anywhere":
        later = PHASES[PHASES.index(target):] + ("done",)
        while phase(db) not in later and p.is_alive():
            time.sleep(0.003)
    time.sleep(delay)
    p.kill()  # SIGKILL
    p.join()


def test_kill_9_at_random_points_then_resume_gives_the_reference_database(tmp_path, capsys):
    photos = tmp_path / "photos"
    make_photos(photos)

    # the reference: one uninterrupted run in a fresh interpreter
    ref = tmp_path / "ref.retr"
    r = subprocess.run([sys.executable, "-c", "import torch; torch.set_num_threads(1); from retr.cli import main; "
                        "main(prog_name='retr')", *index_args(photos, ref)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    want = contents(ref)
    assert len(want["codes"]) == N_GOOD and len(want["skipped"]) == 2 and not want["features"]
    assert check(ref).healthy
    with engine.Engine(ref, device="cpu") as eng:
        qx = eng.encoder([np.asarray(Image.open(photos / f"img{i:02d}.png").convert("RGB")) for i in (3, 31)])
    want_q = query_results(ref, qx)

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["retr.cli"])

    # a first stretched run, uninterrupted: when each phase begins, from the creation of data.mdb
    db = tmp_path / "timeline.retr"
    p = start_child(ctx, index_args(photos, db), TXN_DELAY_S)
    t0 = wait_for(db / "data.mdb", p)
    begins: dict[str, float] = {}
    while p.is_alive():
        begins.setdefault(phase(db), time.perf_counter() - t0)
        time.sleep(0.005)
    end = time.perf_counter() - t0
    assert p.exitcode == 0 and contents(db) == want
    assert all(ph in begins for ph in PHASES[:3]), begins
    length = {ph: min([begins[q] for q in PHASES[i + 1:] + ("done",) if q in begins] + [end]) - begins[ph]
              for i, ph in enumerate(PHASES[:3])}

    rng = np.random.default_rng(SEED)
    plan = [(ph, rng.uniform(0, length[ph])) for ph in PHASES[:3] for _ in range(KILLS_PER_PHASE)]
    plan += [("anywhere", rng.uniform(0, end)) for _ in range(KILLS_ANYWHERE)]
    landed, lines = Counter(), []
    t_kills = time.perf_counter()
    for k, (target, delay) in enumerate(plan):
        db = tmp_path / f"k{k:02d}.retr"
        kill_in(ctx, photos, db, target, delay)
        at = phase(db)
        landed[at] += 1
        if at not in ("start", "done"):  # the store shows an unfinished run, never damage
            problems = check(db).problems
            assert all(any(u in x for u in UNFINISHED) for x in problems), (k, at, problems)
        p = start_child(ctx, index_args(photos, db), 0.0)  # the same command, to completion
        p.join(120)
        assert p.exitcode == 0, (k, target, at)
        rep = check(db)
        assert rep.healthy, (k, at, rep.problems)
        got = contents(db)
        diff = {n: len(set(got[n].items()) ^ set(want[n].items())) for n in want}
        assert sum(diff.values()) == 0, (k, target, delay, at, diff)
        assert query_results(db, qx) == want_q
        lines.append(f"  kill {k:2d}: {delay:4.2f} s into {target:8s} -> landed in {at}")

    with capsys.disabled():
        print(f"\ncrash test: {len(plan)} kill points (seed {SEED}) in {time.perf_counter() - t_kills:.0f} s; "
              f"stretched run {end:.2f} s ({TXN_DELAY_S} s per write transaction), phases began at "
              + ", ".join(f"{k} {v:.2f} s" for k, v in begins.items()))
        print("\n".join(lines))
        print(f"landed: {dict(landed)}; after every resume: 0 differences from the reference (ids, paths, records, "
              "codes, skipped, codec, queries), check healthy")
    assert len(plan) >= 20
    assert all(landed[ph] >= 1 for ph in PHASES[:3]), landed
