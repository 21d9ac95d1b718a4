"""Near-duplicate groups (retrieval/dedup.py, indexes/neighbours.py, ``retr dedup``): range search against brute
force for every index kind, hand-made pairs and components, and the command on a tiny database against the groups
computed from its decoded vectors."""

import csv
import io
import json
import os
import urllib.parse
from pathlib import Path

import numpy as np
import pytest

from conftest import indexed_families, run
from retr import indexes
from retr.indexes.neighbours import range_search
from retr.indexes.vectors import l2n
from retr.retrieval import dedup
from retr.retrieval.engine import Engine
from retr.retrieval.errors import ConfigError


def brute_range(xq, xb, ids, t):
    """{query row: sorted ids scoring >= t} by exact inner products."""
    s = xq @ xb.T
    return {i: sorted(ids[s[i] >= t].tolist()) for i in range(len(xq))}


def as_sets(lims, I):
    return {i: sorted(I[lims[i]:lims[i + 1]].tolist()) for i in range(len(lims) - 1)}


def test_range_search_is_brute_force_for_faiss_and_fastscan_indexes():
    # codes of h = 2 levels -1 and +1: every decoded vector has the same norm and the fast-scan tables are exact, so
    # the fast-scan candidates are the exact ones and only the range search's own logic is tested
    rng = np.random.default_rng(0)
    p = 16
    levels = np.tile(np.array([[-1.0, 1.0]], np.float32), (p, 1))
    # 70 near-copies of one code (one of its first 4 bits redrawn: more than the 32 neighbours asked first, so
    # fast-scan's k is doubled) and 130 random codes
    idx = rng.integers(0, 2, (200, p)).astype(np.uint8)
    idx[:70] = idx[0]
    idx[np.arange(1, 70), rng.integers(0, 4, 69)] ^= 1
    ids = np.arange(200, dtype=np.int64) * 3 + 5
    xb = l2n(levels[np.arange(p), idx])
    t = 0.7  # cosine 1 - 2 hamming / 16: at most 2 bits apart
    want = brute_range(xb, xb, ids, t)
    assert max(len(v) for v in want.values()) > 64
    for kind in ("flat", "fastscan"):
        cfg = indexes.IndexConfig(kind=kind, rerank=16)
        index = (indexes.build_fastscan(levels, idx, ids, cfg) if kind == "fastscan"
                 else indexes.build_index(xb, ids, cfg))
        lims, D, I = range_search(index, xb, t)
        assert as_sets(lims, I) == want, kind
        assert (D >= t).all() and all((np.diff(D[a:b]) <= 0).all() for a, b in zip(lims[:-1], lims[1:]))
        s = np.einsum("ij,ij->i", np.repeat(xb, np.diff(lims), axis=0), xb[(I - 5) // 3])
        assert np.allclose(D, s, atol=1e-5)
    lims, D, I = range_search(indexes.build_index(xb, ids, indexes.IndexConfig()), xb[:0], t)
    assert lims.tolist() == [0] and len(D) == len(I) == 0


# four vectors in the plane: a at 0 degrees, b at 10, c at 20, d at 90; e and f at 180 and 185
ANGLES = (0, 10, 20, 90, 180, 185)
IDS = np.array([2, 3, 5, 7, 11, 13])


def plane():
    a = np.radians(ANGLES)
    return np.stack([np.cos(a), np.sin(a)], 1).astype(np.float32)


def test_pairs_and_groups_by_hand():
    xb = plane()
    index = indexes.build_index(xb, IDS, indexes.IndexConfig())
    c10, c20, c5 = np.cos(np.radians([10, 20, 5]))
    # at cosine 0.95 (18.2 degrees): a-b and b-c (10 degrees apart) and e-f (5), not a-c (20)
    a, b, s = dedup.find_pairs(index, IDS, xb, 0.95)
    assert list(zip(a.tolist(), b.tolist())) == [(2, 3), (3, 5), (11, 13)]
    assert np.allclose(s, [c10, c10, c5], atol=1e-6)
    groups = dedup.group(IDS, a, b, s)
    assert [g.tolist() for g, _ in groups] == [[2, 3, 5], [11, 13]]
    assert [at.tolist() for _, at in groups] == [[0, 1], [2]]  # ties in (a, b) order
    # at 0.9 (25.8 degrees) a-c joins, best first; k = 1 keeps each vector's nearest other only
    a, b, s = dedup.find_pairs(index, IDS, xb, 0.9)
    assert list(zip(a.tolist(), b.tolist())) == [(2, 3), (2, 5), (3, 5), (11, 13)]
    assert [at.tolist() for _, at in dedup.group(IDS, a, b, s)] == [[0, 2, 1], [3]]
    assert np.isclose(s[1], c20, atol=1e-6)
    a, b, _ = dedup.find_pairs(index, IDS, xb, 0.9, k=1)
    assert list(zip(a.tolist(), b.tolist())) == [(2, 3), (3, 5), (11, 13)]  # a's nearest is b, c's is b
    assert dedup.find_pairs(index, IDS, xb, 0.999)[0].tolist() == []


def test_components_largest_first_then_smallest_id():
    ids = np.arange(1, 11)
    a, b = np.array([9, 1, 2, 4, 6]), np.array([10, 2, 3, 5, 7])
    assert [g.tolist() for g in dedup.components(ids, a, b)] == [[1, 2, 3], [4, 5], [6, 7], [9, 10]]
    assert dedup.components(ids, a[:0], b[:0]) == []


def test_options_are_checked():
    assert dedup.check_options(None, None) == dedup.DEFAULT_THRESHOLD
    with pytest.raises(ConfigError, match="between -1 and 1"):
        dedup.check_options(1.5, None)
    with pytest.raises(ConfigError, match="--k"):
        dedup.check_options(0.9, 0)


@pytest.fixture(scope="module")
def db(tmp_path_factory, one_torch_thread):
    return indexed_families(tmp_path_factory.mktemp("dedup"))


def oracle(d, t):
    """Groups from every decoded vector: all pairs at or above t, components by a plain flood fill."""
    with Engine(d) as eng:
        files = {i: rec.path for i, rec in eng.store.files().values()}
        ids = np.array(sorted(files))
        xb = eng.vectors(ids)
    s = xb @ xb.T
    pairs = {(int(ids[i]), int(ids[j])): float(s[i, j]) for i in range(len(ids)) for j in range(i + 1, len(ids))
             if s[i, j] >= t}
    nbr = {int(i): set() for i in ids}
    for a, b in pairs:
        nbr[a].add(b)
        nbr[b].add(a)
    seen, groups = set(), []
    for i in sorted(nbr):
        if i in seen or not nbr[i]:
            continue
        todo, g = [i], set()
        while todo:
            j = todo.pop()
            if j not in g:
                g.add(j)
                todo += nbr[j]
        seen |= g
        groups.append(sorted(g))
    groups.sort(key=lambda g: (-len(g), g[0]))
    return groups, pairs, files


@pytest.mark.parametrize("t", [0.7, 0.85])
def test_dedup_json_equals_the_groups_of_the_decoded_vectors(db, t):
    _, d = db
    r = run("dedup", "--db", d, "--threshold", t, "--json")
    assert r.exit_code == 0, r.output
    got = json.loads(r.output)
    groups, pairs, files = oracle(d, t)
    assert groups and got["count"] == 21 and got["threshold"] == t and got["k"] is None
    assert [g["ids"] for g in got["groups"]] == groups
    assert got["pairs"] == len(pairs) and got["duplicates"] == sum(map(len, groups))
    for g in got["groups"]:
        assert g["paths"] == [files[i] for i in g["ids"]]
        assert [p["score"] for p in g["pairs"]] == sorted((p["score"] for p in g["pairs"]), reverse=True)
        for p in g["pairs"]:
            assert p["score"] == pytest.approx(pairs[(p["a"], p["b"])], abs=1e-5)


def test_dedup_text_csv_html(db, tmp_path):
    root, d = db
    t = 0.7
    groups, _, files = oracle(d, t)
    r = run("dedup", "--db", d, "--threshold", t)
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].startswith(f"{d}: {len(groups)} groups of near-duplicates") and "range search" in lines[0]
    assert sum(line.startswith("# group") for line in lines) == len(groups)
    r = run("dedup", "--db", d, "--threshold", t, "--csv")
    rows = list(csv.DictReader(io.StringIO(r.output)))
    assert [int(row["id"]) for row in rows] == [i for g in groups for i in g]
    assert [int(row["group"]) for row in rows] == [n for n, g in enumerate(groups, 1) for _ in g]
    page = tmp_path / "pages" / "dups.html"
    r = run("dedup", "--db", d, "--threshold", t, "--html", page)
    assert r.exit_code == 0 and page.exists()
    text = page.read_text()
    assert text.count("<section>") == len(groups)
    links = [urllib.parse.unquote(s.split('"')[1]) for s in text.split("<img src=")[1:]]
    assert len(links) == sum(map(len, groups))
    for link in links:
        assert not os.path.isabs(link) and (page.parent / link).resolve().is_file()
    assert {Path(link).as_posix().split("photos/", 1)[1] for link in links} == {files[i] for g in groups for i in g}


def test_dedup_with_k_and_the_default_threshold(db):
    _, d = db
    with_k = dedup.find_groups(d, threshold=0.7, k=20)  # 20 = every other image: the range search's pairs
    assert [g.ids for g in with_k.groups] == oracle(d, 0.7)[0] and with_k.k == 20
    one = dedup.find_groups(d, threshold=0.7, k=1)
    assert one.pairs <= with_k.pairs
    assert dedup.find_groups(d).threshold == dedup.DEFAULT_THRESHOLD


def test_dedup_errors_are_one_line(db, tmp_path):
    _, d = db
    r = run("dedup", "--db", d, "--json", "--csv")
    assert r.exit_code == 2 and "give one" in r.output
    r = run("dedup", "--db", d, "--threshold", 2)
    assert r.exit_code == 2
    r = run("dedup", "--db", tmp_path / "nothing.retr")
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1, r.output


def test_help_states_the_default_thresholds():
    from retr.retrieval.codec import CodecConfig

    text = " ".join(run("dedup", "--help").output.split())
    t = dedup.DEFAULT_THRESHOLDS
    assert (f"0.80 for PCA, {t['pca-whitened']:.2f} for whitened PCA, {t['uncentred']:.2f} without reduction or with "
            "DR-1" in text) and t["pca"] == 0.80 == dedup.DEFAULT_THRESHOLD
    assert dedup.default_threshold(CodecConfig()) == dedup.default_threshold() == t["pca"]
    assert dedup.default_threshold(CodecConfig(reduction="dr2")) == t["pca"]
    assert dedup.default_threshold(CodecConfig(whiten=True)) == t["pca-whitened"]
    for cfg in (CodecConfig(reduction="none", quantizer="none"), CodecConfig(reduction="dr1", dims=8)):
        assert dedup.default_threshold(cfg) == t["uncentred"]


def test_dedup_through_a_fastscan_index_finds_the_same_groups(db, tmp_path):
    import shutil

    root, d = db
    copy = tmp_path / "fs.retr"
    shutil.copytree(d, copy)
    r = run("index", root / "photos", "--db", copy, "--index", "fastscan", "--device", "cpu")
    assert r.exit_code == 0, r.output
    rep = dedup.find_groups(copy, threshold=0.7)
    assert rep.index.startswith("fastscan") and [g.ids for g in rep.groups] == oracle(d, 0.7)[0]
