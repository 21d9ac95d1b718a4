"""Sharded collections (retrieval/shards.py): `retr query --db A --db B` and `retr merge A B --db C`.

Two folders a/ (12 images) and b/ (8 images and a bad file) under one parent; shard A indexed with a frozen codec,
shard B with --codec-from A, and ALL (the parent, every image) with --codec-from A too. Both shards hold whole batches
(batch size 4), so ALL runs the same forward passes as the two shards together: its codes are the shards' bit for bit.

- a query over the two shards equals the query over ALL (paths, ranks, scores) and over the merge of the shards;
- the merge equals ALL: same ids, paths, records, codes, skipped files, spec and codec, without describing anything;
- what cannot be merged or searched together is refused in one line: another codec, a database given twice, the same
  file in two shards, an output that exists, a --root that does not hold the shards.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run
from PIL import Image

from retr.retrieval import engine, shards
from retr.retrieval.store import Store

FAST = ["--backbone", "alexnet", "--weights", "none", "--pooling", "mac", "--dims", "8", "--device", "cpu",
        "--max-size", "64", "--batch-size", "4"]


def write_images(folder: Path, n: int, seed: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        x = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(np.kron(x, np.ones((8, 8, 1), np.uint8))).save(folder / f"img{i:02d}.png")


def index(*args) -> None:
    r = run("index", *args, *FAST)
    assert r.exit_code == 0, r.output


@pytest.fixture(scope="module")
def collection(tmp_path_factory, one_torch_thread) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("shards")
    photos = tmp / "photos"
    write_images(photos / "a", 12, seed=1)
    write_images(photos / "b", 8, seed=2)
    (photos / "b" / "img03x.jpg").write_text("not an image")
    dbs = {name: tmp / f"{name}.retr" for name in ("A", "B", "ALL", "M")}
    index(photos / "a", "--db", dbs["A"], "--freeze")
    index(photos / "b", "--db", dbs["B"], "--codec-from", dbs["A"])
    index(photos, "--db", dbs["ALL"], "--codec-from", dbs["A"])
    r = run("merge", dbs["A"], dbs["B"], "--db", dbs["M"], "--json")
    assert r.exit_code == 0, r.output
    return {"photos": photos, "tmp": tmp, **dbs}


def contents(db: Path) -> dict:
    with Store(db) as s, s.snapshot():
        meta = {k.decode(): v for k, v in s.raw_items("meta") if k in (b"spec", b"codec", b"encoder", b"root")}
        return {"meta": meta, **{name: dict(s.raw_items(name)) for name in ("files", "ids", "codes", "skipped")}}


def queries(c) -> list[Path]:
    return [c["photos"] / "a" / "img00.png", c["photos"] / "b" / "img05.png", c["photos"] / "b" / "img01.png"]


def ranked(results) -> list:
    """(rank, path, score) of every match of every query; scores to 6 decimals (as --json prints them)."""
    return [[(m.rank, m.path, round(m.score, 6)) for m in r.results] for r in results]


def test_merge_equals_one_database(collection):
    c = collection
    assert contents(c["M"]) == contents(c["ALL"])
    info = engine.info(c["M"])
    assert info.count == 20 and info.root == str(c["photos"])
    assert info.skipped == engine.info(c["ALL"]).skipped == {"b/img03x.jpg": "cannot identify image file (not an "
                                                                             "image, or an unsupported format)"}


def test_query_over_shards_equals_merge_and_one_database(collection):
    c = collection
    over_shards = shards.search([c["A"], c["B"]], queries(c), k=10, device="cpu")
    assert ranked(over_shards) == ranked(engine.search(c["M"], queries(c), k=10, device="cpu"))
    assert ranked(over_shards) == ranked(engine.search(c["ALL"], queries(c), k=10, device="cpu"))
    top = over_shards[1].results[0]
    assert (top.path, top.db) == (str(c["photos"] / "b" / "img05.png"), str(c["B"]))
    assert {m.db for r in over_shards for m in r.results} == {str(c["A"]), str(c["B"])}


def test_query_command_over_shards(collection):
    c = collection
    r = run("query", *queries(c), "--db", c["A"], "--db", c["B"], "-k", "25", "--device", "cpu", "--json")
    assert r.exit_code == 0, r.output
    got = json.loads(r.output)
    r = run("query", *queries(c), "--db", c["M"], "-k", "25", "--device", "cpu", "--json")
    want = json.loads(r.output)
    assert [[(m["rank"], m["path"], m["score"]) for m in q["results"]] for q in got] == \
        [[(m["rank"], m["path"], m["score"]) for m in q["results"]] for q in want]
    assert all(len(q["results"]) == 20 for q in got)  # k beyond the collection: every image once
    assert {m["db"] for q in got for m in q["results"]} == {c["A"].as_posix(), c["B"].as_posix()}
    with shards.ShardedEngine([c["A"], c["B"]], device="cpu") as eng:
        x = eng.encoder([np.asarray(Image.open(queries(c)[0]).convert("RGB"))])
        D, S, I = eng.search_vectors(x, k=25)
    assert D.shape == S.shape == I.shape == (1, 25)
    assert (S[0, :20] >= 0).all() and (S[0, 20:] == -1).all() and (I[0, 20:] == -1).all()
    assert np.all(np.diff(D[0, :20]) <= 0)


def test_refusals(collection, tmp_path):
    c = collection
    other = tmp_path / "other.retr"
    index(c["photos"] / "b", "--db", other, "--freeze")  # its own codec
    r = run("query", queries(c)[0], "--db", c["A"], "--db", other, "--device", "cpu")
    assert r.exit_code == 1 and "has another codec than" in r.output and "--codec-from" in r.output
    assert len(r.output.strip().splitlines()) == 1
    r = run("merge", c["A"], other, "--db", tmp_path / "x.retr")
    assert r.exit_code == 1 and "has another codec than" in r.output
    r = run("merge", c["A"], c["A"], "--db", tmp_path / "x.retr")
    assert r.exit_code == 1 and "given twice" in r.output
    r = run("merge", c["A"], c["ALL"], "--db", tmp_path / "x.retr")
    assert r.exit_code == 1 and "is in both" in r.output
    r = run("merge", c["A"], c["B"], "--db", c["M"])
    assert r.exit_code == 1 and "already exists" in r.output
    r = run("merge", c["A"], c["B"], "--db", tmp_path / "x.retr", "--root", c["photos"] / "a")
    assert r.exit_code == 1 and "does not hold" in r.output
    assert not (tmp_path / "x.retr").exists() and not list(tmp_path.glob(".x.retr.merging-*"))


def test_merge_root(collection, tmp_path):
    """--root above the shards' common folder: paths carry the folders between, answers are the same files."""
    c = collection
    out = tmp_path / "rooted.retr"
    rep = shards.merge([c["B"], c["A"]], out, root=c["tmp"])
    assert rep.root == str(c["tmp"]) and rep.count == 20 and rep.shards == [(str(c["B"]), 8), (str(c["A"]), 12)]
    with Store(out) as s:
        paths = sorted(s.files())
    assert paths[0] == "photos/a/img00.png" and len(paths) == 20
    assert ranked(engine.search(out, queries(c), k=20, device="cpu")) == \
        ranked(shards.search([c["B"], c["A"]], queries(c), k=20, device="cpu"))
    r = run("check", "--db", out)
    assert r.exit_code == 0, r.output
