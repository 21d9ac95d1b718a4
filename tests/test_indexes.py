"""Faiss indexes over arrays: exact search agrees with brute force; saved files are trusted only when current."""

import numpy as np
import pytest

from retr.indexes import IndexConfig, IndexConfigError, build_index, default_nlist, load_index, save_index, search


def data(n=500, d=16, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_flat_matches_brute_force_with_ids():
    xb, xq = data(), data(5, seed=1)
    ids = np.arange(500, dtype=np.int64) * 10 + 7
    D, I = search(build_index(xb, ids, IndexConfig("flat")), xq, 3)
    sims = xq @ xb.T
    want = np.argsort(-sims, axis=1)[:, :3]
    np.testing.assert_array_equal(I, ids[want])
    np.testing.assert_allclose(D, np.take_along_axis(sims, want, 1), rtol=1e-5)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indexes_find_the_item_itself(kind):
    xb = data(2000)
    ids = np.arange(2000, dtype=np.int64)
    idx = build_index(xb, ids, IndexConfig(kind, nprobe=8))
    _, I = search(idx, xb[:50], 1)
    assert (I[:, 0] == ids[:50]).mean() >= 0.95


def test_default_nlist_respects_faiss_minimum():
    assert default_nlist(100) == 2  # 100 // 39
    assert default_nlist(1_000_000) == 4000  # 4 * sqrt(n)


def test_k_larger_than_database():
    xb = data(3)
    D, I = search(build_index(xb, np.arange(3), IndexConfig()), xb[:1], 10)
    assert I.shape == (1, 3)


def test_save_load_fingerprint(tmp_path):
    xb = data(50)
    idx = build_index(xb, np.arange(50), IndexConfig())
    p = tmp_path / "index.faiss"
    save_index(idx, p, IndexConfig(), "fp1")
    assert load_index(p, "fp1", IndexConfig()).ntotal == 50
    assert load_index(p, "fp2") is None  # stale
    assert load_index(p, "fp1", IndexConfig("ivf")) is None  # another config
    p.write_bytes(p.read_bytes()[:100])  # corrupt: never trusted
    assert load_index(p, "fp1") is None


def test_bad_config():
    with pytest.raises(IndexConfigError, match="unknown index kind"):
        IndexConfig("lsh")
    with pytest.raises(IndexConfigError, match="unknown index option"):
        IndexConfig.from_dict({"kind": "flat", "nlists": 3})
