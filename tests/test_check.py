"""``retr check``: a healthy database passes; a stale or corrupt index file is listed and rebuilt by --repair; damage
injected into the store with py-lmdb is listed line by line, and the next ``retr index`` run heals it."""

import json
import shutil

import lmdb
import numpy as np
import pytest
from PIL import Image

from retr.retrieval import engine
from retr.retrieval.check import check
from retr.retrieval.store import FileRecord, Store, id_key, path_key
from conftest import run

FAST = ["--backbone", "alexnet", "--weights", "none", "--pooling", "mac", "--dims", "8", "--device", "cpu",
        "--max-size", "64", "--batch-size", "4"]
N = 12


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """(photos, db) with N images indexed; tests work on copies of db."""
    tmp = tmp_path_factory.mktemp("check")
    photos = tmp / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(N):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(photos / f"{i:02d}.png")
    db = tmp / "base.retr"
    r = run("index", photos, "--db", db, *FAST, "--freeze")  # a frozen codec: no float32 descriptors kept
    assert r.exit_code == 0, r.output
    return photos, db


@pytest.fixture
def db(base, tmp_path):
    copy = tmp_path / "x.retr"
    shutil.copytree(base[1], copy)
    return copy


def raw(db, fn):
    """Run ``fn(txn, dbs)`` in a raw py-lmdb write transaction: damage no retr code path would do."""
    env = lmdb.open(str(db), max_dbs=6)
    try:
        dbs = {n: env.open_db(n.encode()) for n in ("meta", "codes", "files", "ids", "features", "skipped")}
        with env.begin(write=True) as txn:
            fn(txn, dbs)
    finally:
        env.close()


def codes_of(db) -> dict[str, bytes]:
    with Store(db) as s:
        return {path: bytes(v) for path, (i, _) in s.files().items()
                for k, v in s.raw_items("codes") if k == id_key(i)}


def test_healthy(db):
    r = run("check", "--db", db)
    assert (r.exit_code, r.output) == (0, f"{db}: healthy ({N} images)\n")
    assert check(db).problems == []


@pytest.mark.parametrize("damage", ["corrupt", "truncated", "missing", "stale", "foreign"])
def test_bad_index_file_is_listed_then_rebuilt_by_repair(db, damage):
    path = db / engine.INDEX_FILE
    data = path.read_bytes()
    if damage == "corrupt":
        path.write_bytes(data[:-100] + bytes(100))  # same length: the id map zeroed, still deserialises
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "missing":
        path.unlink()
    elif damage == "stale":  # the store moved on since the index was saved
        with Store(db, write=True) as s:
            s.set_skipped({"new.jpg": "empty file"})
    else:
        path.write_bytes(b"not an index at all")
    what = "missing" if damage == "missing" else "stale or corrupt"
    r = run("check", "--db", db)
    assert r.exit_code == 1
    assert r.output == f"problem: index file {what} (run `retr check --db {db} --repair`)\n"
    r = run("check", "--db", db, "--repair")
    assert (r.exit_code, r.output) == (0, f"repaired: index file was {what}: rebuilt from the store\n"
                                          f"{db}: healthy ({N} images)\n")
    assert run("check", "--db", db).exit_code == 0
    with engine.Engine(db, device="cpu") as eng:
        assert eng.index.ntotal == N


def test_a_search_rebuilds_a_corrupt_index_without_trusting_it(db, base):
    path = db / engine.INDEX_FILE
    good = path.read_bytes()
    q = [base[0] / "04.png"]
    want = engine.search(db, q, k=3, device="cpu")[0].to_dict()
    path.write_bytes(good[:-100] + bytes(100))
    assert engine.search(db, q, k=3, device="cpu")[0].to_dict() == want
    assert path.read_bytes() == good  # rebuilt from the store, saved again: the same bytes
    assert check(db).healthy


def test_a_rerun_with_nothing_to_do_commits_nothing_and_sweeps_temp_files(base, db):
    (db / f"{engine.INDEX_FILE}.abc123.tmp").write_bytes(b"half an index")  # a run killed while saving
    with Store(db) as s:
        g = s.generation()
    index_bytes = (db / engine.INDEX_FILE).read_bytes()
    rep = engine.index_folder(base[0], db, device="cpu", progress=False)
    assert (rep.added, rep.unchanged, rep.total) == (0, N, N)
    with Store(db) as s:
        assert s.generation() == g  # no write transaction: the index stays current
    assert sorted(f.name for f in db.iterdir()) == ["data.mdb", engine.INDEX_FILE, "lock.mdb", "writer.lock"]
    assert (db / engine.INDEX_FILE).read_bytes() == index_bytes


def test_repair_never_touches_the_store(db):
    (db / engine.INDEX_FILE).unlink()
    before = (db / "data.mdb").read_bytes()
    assert check(db, repair=True).healthy
    assert (db / "data.mdb").read_bytes() == before


def test_injected_damage_is_listed_and_healed_by_the_next_index_run(base, db):
    photos, _ = base
    good = codes_of(db)
    with Store(db) as s:
        files = s.files()
    i_short, i_lost = files["03.png"][0], files["07.png"][0]

    def damage(txn, dbs):
        txn.put(id_key(999), b"\x01" * 2, db=dbs["codes"])  # orphan code
        txn.put(id_key(998), b"\0" * 1024, db=dbs["features"])  # orphan descriptor
        txn.put(id_key(i_short), b"\x01", db=dbs["codes"])  # code of the wrong size
        txn.delete(id_key(i_lost), db=dbs["codes"])  # neither code nor descriptor left
        txn.put(path_key("ghost.png"), id_key(997), db=dbs["ids"])  # path of no file
        txn.put(path_key("05.png"), b"unreadable", db=dbs["skipped"])  # indexed and skipped at once

    raw(db, damage)
    again = f"run `retr index FOLDER --db {db}` again"
    r = run("check", "--db", db)
    assert r.exit_code == 1
    assert r.output.splitlines() == [
        f"problem: id {i_lost} (07.png): neither a code nor a descriptor ({again} to encode it)",
        f"problem: id {i_short} (03.png): code of 1 bytes, expected 2 ({again} to encode it)",
        f"problem: path ghost.png: points to id 997, which has no such file record ({again} to drop it)",
        f"problem: id 999: orphan code (no file record) ({again} to drop it)",
        f"problem: id 998: orphan descriptor (no file record) ({again} to drop it)",
        f"problem: 05.png: both indexed and recorded as skipped ({again})",
    ]  # the index file is not listed: raw edits leave the generation, hence the fingerprint, as it was
    (db / engine.INDEX_FILE).unlink()
    r = run("check", "--db", db, "--repair")  # no index is built from damaged codes
    assert r.exit_code == 1 and r.output.splitlines()[-1] == \
        f"problem: index file missing, not rebuilt: the codes are damaged ({again} first)"
    with pytest.raises(Exception, match="run `retr check"):  # a search meets the damage: one line, not garbage
        engine.search(db, [photos / "00.png"], device="cpu")

    rep = engine.index_folder(photos, db, device="cpu", progress=False)
    assert (rep.added, rep.updated, rep.total) == (2, 0, N)  # the two damaged files were encoded again
    assert run("check", "--db", db).exit_code == 0
    healed = codes_of(db)
    assert set(healed) == set(good) and all(len(c) == 2 for c in healed.values())
    assert {p: c for p, c in healed.items() if p not in ("03.png", "07.png")} == \
        {p: c for p, c in good.items() if p not in ("03.png", "07.png")}


def test_unfinished_run_lists_only_what_the_next_run_finishes(tmp_path):
    """A store as a crash leaves it: descriptors staged, no codec yet; then codec present, codes partly written."""
    db = tmp_path / "x.retr"
    x = np.random.default_rng(0).standard_normal((6, 256)).astype(np.float32)
    enc = {"backbone": "alexnet", "weights": "none", "layer": "conv", "pooling": "mac", "gem_p": 3.0,
           "scales": [1.0], "max_size": 64, "weights_sha256": None, "version": 1}
    with Store(db, write=True, create=True) as s:
        s.put_meta({"encoder": json.dumps(enc).encode(), "root": b"/photos"})
        s.add([FileRecord(f"{i}.png", 10, 1, "ab" * 16) for i in range(6)], features=x)
    again = f"run `retr index FOLDER --db {db}` again"
    assert check(db).problems == [f"no fitted codec (indexing did not finish: {again})"]
    from retr.retrieval import codec as codec_mod
    params = codec_mod.fit(x, codec_mod.CodecConfig(dims=4))
    with Store(db, write=True) as s:
        s.put_meta({"codec": params.to_bytes()}, clear=("codes",))
        s.put_codes([0, 1], codec_mod.encode(params, x[:2]), drop_features=True)
    assert check(db).problems == [f"4 of 6 files have no code yet (indexing did not finish: {again})",
                                  f"index file missing (run `retr check --db {db} --repair`)"]


class _FailingEnv:
    """An LMDB environment whose ``fail_at``-th write transaction fails to commit, as on a full disk."""

    def __init__(self, env, fail_at: int, count: list):
        self._env, self._fail_at, self._count = env, fail_at, count

    def __getattr__(self, name):
        return getattr(self._env, name)

    def begin(self, write=False, **kw):
        txn = self._env.begin(write=write, **kw)
        if not write:
            return txn
        self._count.append(1)
        return _FailingTxn(txn) if len(self._count) == self._fail_at else txn


class _FailingTxn:
    def __init__(self, txn):
        self._txn = txn

    def __getattr__(self, name):
        return getattr(self._txn, name)

    def __enter__(self):
        return self

    def __exit__(self, kind, *exc):
        self._txn.abort()
        if kind is None:
            raise lmdb.DiskError("mdb_txn_commit: No space left on device")


@pytest.mark.parametrize("fail_at, left", [
    (5, "no codec"),  # write transactions: 1 version, 2 encoder, 3 root, 4-6 batches, 7 codec, 8-10 code chunks
    (7, "no codec"),
    (9, "8 uncoded"),
])
def test_failing_write_leaves_the_last_committed_batch_and_a_rerun_completes(base, tmp_path, monkeypatch, fail_at,
                                                                             left):
    photos, reference = base
    db = tmp_path / "full.retr"
    real_open, count = lmdb.open, []
    monkeypatch.setattr(lmdb, "open", lambda *a, **kw: _FailingEnv(real_open(*a, **kw), fail_at, count))
    r = run("index", photos, "--db", db, *FAST)
    monkeypatch.setattr(lmdb, "open", real_open)
    assert r.exit_code == 1 and r.output.splitlines()[-1] == (  # after the progress bar
        f"Error: write to {db} failed (mdb_txn_commit: No space left on device); the database is intact up to its "
        "last committed batch: free some space, then run the same command again")

    again = f"run `retr index FOLDER --db {db}` again"
    expected = {"no codec": [f"no fitted codec (indexing did not finish: {again})"],
                "8 uncoded": [f"8 of {N} files have no code yet (indexing did not finish: {again})",
                              f"index file missing (run `retr check --db {db} --repair`)"]}[left]
    assert check(db).problems == expected
    with Store(db) as s:  # batches of 4 committed before the failure, none after
        assert s.count("files") == {5: 4, 7: N, 9: N}[fail_at]
    assert run("index", photos, "--db", db, *FAST).exit_code == 0
    assert check(db).healthy
    assert codes_of(db) == codes_of(reference)


def test_a_map_that_cannot_grow_is_one_line(tmp_path, monkeypatch):
    import retr.retrieval.store as store_mod

    monkeypatch.setattr(store_mod, "_INITIAL_MAP_SIZE", 1 << 16)
    real_open = lmdb.open

    class NoGrowth(_FailingEnv):
        def set_mapsize(self, size):
            if size > 1 << 16:
                raise lmdb.MemoryError("mdb_env_set_mapsize: Cannot allocate memory")
            self._env.set_mapsize(size)

    monkeypatch.setattr(lmdb, "open", lambda *a, **kw: NoGrowth(real_open(*a, **kw), 0, []))
    db = tmp_path / "x.retr"
    with Store(db, write=True, create=True) as s:
        s.add([FileRecord("a.png", 1, 1, "ab" * 16)], codes=np.zeros((1, 4), np.uint8))
        with pytest.raises(Exception) as e:
            s.add([FileRecord(f"{i}.png", 1, 1, "ab" * 16) for i in range(100)], codes=np.zeros((100, 4096), np.uint8))
        assert str(e.value) == (f"{db} is full and cannot grow to 0 MiB (mdb_env_set_mapsize: Cannot allocate "
                                "memory); the database is intact up to its last committed batch")
        assert s.count("files") == 1
