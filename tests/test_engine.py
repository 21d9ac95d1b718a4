"""End to end through the CLI: index generated near-duplicate families, check bytes, self-retrieval and mAP@10."""

import json

import numpy as np
import pytest

from conftest import run
from retr.retrieval import engine

ARGS = ["--backbone", "alexnet", "--weights", "none", "--pooling", "mac", "--reduction", "pca", "--dims", "64",
        "--quantizer", "q2", "--levels", "4", "--device", "cpu"]


@pytest.fixture
def indexed(families, tmp_path):
    root, fams = families
    db = tmp_path / "fam.retr"
    r = run("index", root, "--db", db, *ARGS)
    assert r.exit_code == 0, r.output
    return root, fams, db


@pytest.mark.slow
def test_index_info_query_families(indexed, capsys):
    root, fams, db = indexed
    info = json.loads(run("info", "--db", db, "--json").output)
    assert info["count"] == 70
    assert info["code_size"] == 16  # 64 dims x 2 bits
    assert info["descriptor_dim"] == 256 and abs(info["compression"] - (1 - 16 / 1024)) < 1e-9
    assert info["skipped"] == {}

    every = [p for ps in fams.values() for p in ps]
    out = json.loads(run("query", *every, "--db", db, "-k", 10, "--json").output)
    ap = []
    for q, res in zip(every, out):
        paths = [r["path"] for r in res["results"]]
        assert paths[0] == str(q)  # every image finds itself first
        fam = q.parent.name
        rel = [p.split("/")[-2] == fam for p in paths[1:]]  # the 6 other members of its family
        hits = np.cumsum(rel)
        ap.append(sum(h / (i + 1) for i, (h, r) in enumerate(zip(hits, rel)) if r) / 6)
    m = float(np.mean(ap))
    with capsys.disabled():
        print(f"\nnear-duplicate mAP@10 (alexnet random weights, MAC, PCA64+Q2h4, 16 B/vector): {m:.3f}")
    assert m > 0.5


@pytest.mark.slow
def test_reindex_adds_only_new_and_prunes(indexed, tmp_path):
    root, fams, db = indexed
    rep = engine.index_folder(root, db, device="cpu", progress=False)
    assert (rep.added, rep.unchanged, rep.total) == (0, 70, 70)
    fams["f00"][0].unlink()
    (root / "f00" / "broken.jpg").write_bytes(b"not an image")
    rep = engine.index_folder(root, db, device="cpu", progress=False, forget_deleted=True)
    assert (rep.added, rep.removed, rep.total) == (0, 1, 69)
    assert list(rep.skipped) == ["f00/broken.jpg"]


def test_errors_are_one_line(tmp_path):
    r = run("query", tmp_path / "q.jpg", "--db", tmp_path / "none.retr")
    assert r.exit_code != 0 and "does not exist" in r.output and "Traceback" not in r.output
    r = run("index", tmp_path, "--db", tmp_path / "x.retr", "--backbone", "vgg16", "--layer", "fc7", "--pooling", "gem")
    assert r.exit_code != 0 and "pooling applies to the conv layer only" in r.output
