"""Fast-scan over Q-2 codes: the mapping onto 4-bit PQ codes is lossless, re-ranked search equals exact search on the
normalised decoded vectors, the IVF variant finds the neighbours, and the index survives save / load."""

import faiss
import numpy as np
import pytest
from retr.indexes import (FastScanIndex, IndexConfig, IndexConfigError, build_fastscan, build_index, load_index,
                          save_index, search, to_gpu_if_available)
from retr.indexes import fastscan as F
from retr.retrieval import codec as C


def coded(h: int, n: int = 2000, p: int = 13, seed: int = 0, clusters: int = 0):
    """Q-2 codec with h levels fitted on Gaussian data with decaying variances (a mixture of `clusters` Gaussians
    when > 0): levels (p, h), idx (n, p), the codec's decoding (n, p) and its normalised rows."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, p))
    if clusters:
        x = 0.3 * x + rng.standard_normal((clusters, p))[rng.integers(0, clusters, n)]
    x = (x * np.linspace(1.0, 0.2, p)).astype(np.float32)
    params = C.fit(x, C.CodecConfig(reduction="none", quantizer="q2", levels=h))
    codes = C.encode(params, x)
    idx = C.unpack_bits(codes, p, (h - 1).bit_length())
    y = C.decode(params, codes)
    return C.levels(params), idx, y, y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)


def queries(m: int, p: int, seed: int = 1) -> np.ndarray:
    q = np.random.default_rng(seed).standard_normal((m, p)).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def test_layout_groups_dimensions_into_16_centroids():
    assert [F.group_size(h) for h in (1, 2, 3, 4, 5, 16)] == [4, 4, 2, 2, 1, 1]
    assert F.layout(13, 4) == (2, 7) and F.layout(13, 2) == (4, 4) and F.layout(13, 16) == (1, 13)
    with pytest.raises(IndexConfigError, match="1 to 16 levels"):
        F.group_size(17)


def test_codes_hand_computed():
    # h = 4, g = 2: groups (1, 2) -> 1 + 2*4 = 9, (3, 0) -> 3, (2, pad 0) -> 2, then a zero nibble; low nibble first
    np.testing.assert_array_equal(F.codes(np.array([[1, 2, 3, 0, 2]], np.uint8), 4), [[0x39, 0x02]])
    # h = 3, g = 2: (2, 1) -> 2 + 1*3 = 5, (0, 2) -> 6
    np.testing.assert_array_equal(F.codes(np.array([[2, 1, 0, 2]], np.uint8), 3), [[0x65]])


def test_centroids_hand_computed():
    levels = np.array([[-1.0, 0.0, 1.0], [10.0, 20.0, 30.0], [5.0, 6.0, 7.0]], np.float32)  # p = 3, h = 3
    c = F.centroids(levels)  # g = 2, M = 2
    assert c.shape == (2, 16, 2)
    np.testing.assert_array_equal(c[0, 5], [1.0, 20.0])  # 5 = 2 + 1*3
    np.testing.assert_array_equal(c[1, 2], [7.0, 0.0])  # the padded dimension is 0
    np.testing.assert_array_equal(c[0, 9:], np.broadcast_to(c[0, 0], (7, 2)))  # unused: copies of centroid 0


@pytest.mark.parametrize("h", [1, 2, 3, 4, 5, 16])
def test_mapping_is_lossless(h):
    levels, idx, y, _ = coded(h)
    # Faiss's own decoder of the PQ codes ...
    g, M = F.layout(13, h)
    pq = faiss.IndexPQ(M * g, M, 4, faiss.METRIC_INNER_PRODUCT)
    faiss.copy_array_to_vector(F.centroids(levels).ravel(), pq.pq.centroids)
    pq.is_trained = True
    assert np.abs(pq.sa_decode(F.codes(idx, h))[:, :13] - y).max() == 0.0
    # ... and the codes stored in both fast-scan indexes reproduce the codec's decoding exactly, read by Faiss
    # and by the re-rank's own reader of the fast-scan blocks
    pos = np.arange(len(idx))
    for kind in ("fastscan", "ivf-fastscan"):
        index = build_fastscan(levels, idx, pos, IndexConfig(kind, nlist=8))
        assert np.abs(index.inner.reconstruct_batch(pos)[:, :13] - y).max() == 0.0
        assert np.abs(index.reconstruct(pos) - y).max() == 0.0
    assert np.abs(F.decode(levels, idx) - y).max() == 0.0


def exact(xn: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    return -np.sort(-(q @ xn.T), axis=1)[:, :k]


@pytest.mark.parametrize("kind", ["fastscan", "ivf-fastscan"])
@pytest.mark.parametrize("h", [2, 3, 4, 16])
def test_rerank_of_all_candidates_equals_exact_search(kind, h):
    levels, idx, _, xn = coded(h, n=1500)
    ids = np.arange(1500, dtype=np.int64) * 10 + 7
    q = queries(20, 13)
    # every list probed and every vector re-ranked: the result must be exact search on the decoded vectors
    index = build_fastscan(levels, idx, ids, IndexConfig(kind, nlist=8, nprobe=8, rerank=1500))
    D, I = search(index, q, 10)
    np.testing.assert_allclose(D, exact(xn, q, 10), atol=1e-6)  # scores, not ids: decoded vectors can tie
    np.testing.assert_allclose(np.einsum("mkd,md->mk", xn[(I - 7) // 10], q), D, atol=1e-6)
    for i in range(3):  # one query at a time: the serving path, which re-ranks by decoding
        D1, I1 = index.search(q[i : i + 1], 10)
        np.testing.assert_allclose(D1, D[i : i + 1], atol=1e-6)
        np.testing.assert_allclose(np.einsum("kd,d->k", xn[(I1[0] - 7) // 10], q[i]), D1[0], atol=1e-6)


def test_default_rerank_is_exact_at_higher_dimension():
    levels, idx, _, xn = coded(4, n=3000, p=64)
    q = queries(50, 64)
    index = build_fastscan(levels, idx, np.arange(3000), IndexConfig("fastscan"))
    assert index.rerank == 100 and index.code_size == 16  # 64 dims, 2 per 4-bit code
    D, _ = search(index, q, 10)
    np.testing.assert_allclose(D, exact(xn, q, 10), atol=1e-6)


def test_ivf_fastscan_recall():
    levels, idx, _, xn = coded(4, n=4000, p=32, clusters=40)
    q = xn[:100] + 0.1 * queries(100, 32)  # queries near the data, as in retrieval
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    index = build_fastscan(levels, idx, np.arange(4000), IndexConfig("ivf-fastscan", nlist=64))
    assert index.inner.nprobe == F.default_fastscan_nprobe(64) == 8 and index.inner.by_residual is False
    want = exact(xn, q, 10)[:, -1:]
    hits = lambda I: (np.einsum("mkd,md->mk", xn[I], q) >= want - 1e-6).mean()  # noqa: E731
    assert hits(search(index, q, 10)[1]) >= 0.9
    assert hits(search(index, q, 10, nprobe=64)[1]) >= 0.99  # every list: only the re-rank depth limits recall
    index.rerank = 4000
    assert hits(search(index, q, 10, nprobe=64)[1]) == 1.0  # every list, every vector re-ranked: exact


@pytest.mark.parametrize("kind", ["fastscan", "ivf-fastscan"])
def test_save_load_round_trip(tmp_path, kind):
    levels, idx, _, _ = coded(3, n=1000)
    cfg = IndexConfig(kind, nlist=8, rerank=40)
    index = build_fastscan(levels, idx, np.arange(1000) + 100, cfg)
    path = tmp_path / "index.faiss"
    save_index(index, path, cfg, "fp")
    back = load_index(path, "fp", cfg)
    assert isinstance(back, FastScanIndex) and (back.kind, back.rerank, back.d, back.ntotal) == (kind, 40, 13, 1000)
    # decoding after load exercises the fine-quantizer repair of IndexIVFPQFastScan
    np.testing.assert_array_equal(back.reconstruct(np.arange(1000)), index.reconstruct(np.arange(1000)))
    q = queries(5, 13)
    for a, b in zip(search(index, q, 10), search(back, q, 10)):
        np.testing.assert_array_equal(a, b)
    assert load_index(path, "fp", IndexConfig(kind, nlist=8, rerank=41)) is None  # another config


def test_degenerate_queries_and_levels():
    levels, idx, _, _ = coded(1, n=200)  # one level: every vector is the same
    D, I = search(build_fastscan(levels, idx, np.arange(200), IndexConfig("fastscan")), queries(2, 13), 5)
    assert (I >= 0).all() and np.ptp(D, axis=1).max() < 1e-6
    levels, idx, _, _ = coded(4, n=200)
    D, I = search(build_fastscan(levels, idx, np.arange(200), IndexConfig("fastscan")), np.zeros((1, 13)), 5)
    assert (I >= 0).all() and (D == 0).all()  # a zero query: every cosine is 0
    D, I = search(build_fastscan(levels, idx[:3], np.arange(3), IndexConfig("fastscan")), queries(1, 13), 10)
    assert I.shape == (1, 3) and sorted(I[0]) == [0, 1, 2]  # k clamped to the collection
    # one query (the serving path) and the same query in a batch (the general path) agree, also where the lists
    # visited hold fewer vectors than the re-rank depth (-1 at the end of Faiss's candidates)
    levels, idx, _, _ = coded(4, n=400)
    index = build_fastscan(levels, idx, np.arange(400) * 3, IndexConfig("ivf-fastscan", nlist=16, nprobe=1, rerank=200))
    short = 0
    for q in queries(4, 13):
        one, two = index.search(q[None], 30), index.search(np.vstack([q, q]), 30)
        short += (one[1] == -1).any()
        np.testing.assert_array_equal(one[1], two[1][:1])
        np.testing.assert_allclose(one[0], two[0][:1], rtol=0, atol=1e-6)
    assert short == 4  # the one list visited holds fewer than 30 vectors for each of these queries


def test_config_and_errors():
    cfg = IndexConfig("ivf-fastscan", nlist=16, nprobe=4, rerank=30)
    assert IndexConfig.from_dict(cfg.to_dict()) == cfg
    assert IndexConfig().rerank == 100
    with pytest.raises(IndexConfigError, match="rerank must be >= 1"):
        IndexConfig("fastscan", rerank=0)
    levels, idx, _, xn = coded(4, n=100)
    with pytest.raises(IndexConfigError, match="build_fastscan"):
        build_index(xn, np.arange(100), IndexConfig("fastscan"))
    with pytest.raises(IndexConfigError, match="at least 64 vectors"):
        build_fastscan(levels, idx[:50], np.arange(50), IndexConfig("ivf-fastscan", nlist=64))
    with pytest.raises(ValueError, match="queries must be"):
        search(build_fastscan(levels, idx, np.arange(100), IndexConfig("fastscan")), queries(1, 12), 5)


@pytest.mark.gpu
@pytest.mark.skipif(faiss.get_num_gpus() == 0, reason="needs a CUDA device")
def test_gpu_index_matches_cpu():
    levels, idx, _, xn = coded(4, n=2000, p=64)
    q = queries(20, 64)
    index = build_fastscan(levels, idx, np.arange(2000), IndexConfig("fastscan", rerank=2000))
    D, _ = search(to_gpu_if_available(index), q, 10)
    np.testing.assert_allclose(D, search(index, q, 10)[0], atol=1e-5)


def test_hnsw_coarse_quantizer():
    levels, idx, _, xn = coded(4, n=4000, p=32, clusters=40)
    q = xn[:50] + 0.1 * queries(50, 32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    flat = build_fastscan(levels, idx, np.arange(4000), IndexConfig("ivf-fastscan", nlist=64))
    hnsw = build_fastscan(levels, idx, np.arange(4000), IndexConfig("ivf-fastscan", nlist=64, coarse="hnsw"))
    assert isinstance(faiss.downcast_index(hnsw.inner.quantizer), faiss.IndexHNSWFlat)
    # the same lists (vectors assigned exactly either way); with every list probed the results are the same
    assert [hnsw.inner.get_list_size(i) for i in range(64)] == [flat.inner.get_list_size(i) for i in range(64)]
    for a, b in zip(search(flat, q, 10, nprobe=64), search(hnsw, q, 10, nprobe=64)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    Df, _ = search(flat, q, 10)
    Dh, _ = search(hnsw, q, 10)
    assert np.abs(Dh - Df).max() < 1e-6  # 64 centroids: the graph finds the same nearest lists


def test_coarse_option_is_backward_compatible(tmp_path):
    old = {"kind": "ivf-fastscan", "nlist": 16, "nprobe": 4, "hnsw_m": 32, "rerank": 30}  # written before coarse
    assert IndexConfig.from_dict(old) == IndexConfig("ivf-fastscan", 16, 4, rerank=30)
    assert IndexConfig.from_dict(old).to_dict() == old  # saved headers of old indexes still compare equal
    cfg = IndexConfig("ivf-fastscan", nlist=8, coarse="hnsw")
    assert IndexConfig.from_dict(cfg.to_dict()) == cfg and "coarse hnsw" in cfg.describe()
    with pytest.raises(IndexConfigError, match="ivf-fastscan only"):
        IndexConfig("fastscan", coarse="hnsw")
    with pytest.raises(IndexConfigError, match="unknown coarse"):
        IndexConfig("ivf-fastscan", coarse="lsh")
    levels, idx, _, _ = coded(3, n=1000)
    index = build_fastscan(levels, idx, np.arange(1000), cfg)
    save_index(index, tmp_path / "i.faiss", cfg, "fp")
    back = load_index(tmp_path / "i.faiss", "fp", cfg)
    q = queries(5, 13)
    for a, b in zip(search(index, q, 10), search(back, q, 10)):
        np.testing.assert_array_equal(a, b)


def test_candidates_then_top_is_search():
    levels, idx, _, xn = coded(4, n=1500)
    index = build_fastscan(levels, idx, np.arange(1500) + 3, IndexConfig("ivf-fastscan", nlist=8, rerank=50))
    q = index.padded(queries(7, 13))
    assert q.shape == (7, 14)  # 13 dimensions, 2 per group: 7 groups, an odd number (the copy pads one)
    S, P = index.candidates(q, 50)
    # the candidates are the scan's, each scored by its exact cosine with the decoded vector
    np.testing.assert_array_equal(np.sort(P, axis=1), np.sort(index.scan(q, 50), axis=1))
    np.testing.assert_allclose(S, np.einsum("mkd,md->mk", xn[P], q[:, :13]), atol=2e-6)
    D, I = index.top(S, P, 10)
    np.testing.assert_array_equal(I, search(index, queries(7, 13), 10)[1])
    # rows with fewer candidates than asked (-1 at the end) rank what there is
    P[:, 5:] = -1
    S[:, 5:] = -np.inf
    D, I = index.top(S, P, 10)
    assert (I[:, :5] >= 0).all() and (I[:, 5:] == -1).all() and np.isinf(D[:, 5:]).all()


@pytest.mark.parametrize("kind, p, n", [("fastscan", 14, 45), ("ivf-fastscan", 10, 333)])
def test_an_index_built_twice_serialises_to_the_same_bytes(kind, p, n):
    # Faiss leaves the lanes after the last vector of a block uninitialised; build_fastscan zeroes them
    rng = np.random.default_rng(0)
    lv = np.sort(rng.random((p, 4), dtype=np.float32), axis=1)
    idx = rng.integers(0, 4, (n, p)).astype(np.uint8)
    cfg = IndexConfig(kind, nlist=8 if kind == "ivf-fastscan" else None)
    blobs = []
    for _ in range(3):
        junk = [np.full(1 << 14, 255, np.uint8) for _ in range(20)]  # dirty the allocator's free memory
        blobs.append(faiss.serialize_index(build_fastscan(lv, idx, np.arange(n), cfg).index).tobytes())
        del junk
    assert blobs[0] == blobs[1] == blobs[2]


@pytest.mark.parametrize("kind", ["fastscan", "ivf-fastscan"])
def test_a_batch_equals_its_queries_one_at_a_time(kind, monkeypatch):
    # Faiss re-ranks a batch on its threads, one query per thread at a time, from look-up tables; a single query
    # is re-ranked by decoding its candidates: the same ranking, scores equal to float rounding
    rng = np.random.default_rng(3)
    p, n = 16, 2000
    lv = np.sort(rng.standard_normal((p, 4), dtype=np.float32), axis=1)
    idx = rng.integers(0, 4, (n, p)).astype(np.uint8)
    index = build_fastscan(lv, idx, np.arange(n) * 7, IndexConfig(kind, nlist=16 if kind == "ivf-fastscan" else None,
                                                                  rerank=40))
    xq = rng.standard_normal((300, p), dtype=np.float32)
    xq /= np.linalg.norm(xq, axis=1, keepdims=True)
    D, I = index.search(xq, 10)
    one = [index.search(xq[i : i + 1], 10) for i in range(len(xq))]
    monkeypatch.setattr(F, "_QCHUNK", 7)  # a large batch is searched in chunks
    np.testing.assert_array_equal(index.search(xq, 10)[1], I)
    np.testing.assert_array_equal(I, np.vstack([i for _, i in one]))
    np.testing.assert_allclose(D, np.vstack([d for d, _ in one]), rtol=0, atol=1e-6)


def test_rerank_copy_decodes_as_the_blocks_and_is_counted():
    for h, p in [(4, 13), (16, 6), (2, 9)]:  # odd and even numbers of groups
        levels, idx, y, _ = coded(h, n=300, p=p)
        index = build_fastscan(levels, idx, np.arange(300), IndexConfig("fastscan"))
        pairs = index._pairs
        assert pairs.sa_code_size() == -(-F.layout(p, h)[1] // 2)
        np.testing.assert_array_equal(pairs.reconstruct_n(0, 300)[:, :p], y)
        pos = np.array([0, 17, 299, 5, -1])  # what a served query decodes, -1 (no candidate) as the last vector
        np.testing.assert_array_equal(index._decoded(pos), pairs.reconstruct_batch(np.array([0, 17, 299, 5, 299])))
        assert index.rerank_bytes == 300 * pairs.sa_code_size() + pairs.pq.M * 256 * pairs.pq.dsub * 4 + 300 * 4
        assert F.memory_bytes(index) == faiss.serialize_index(index.index).size + index.rerank_bytes
        assert index.rerank_bytes == F.fastscan_rerank_bytes(p, h, 300)  # what `retr info` states without loading
