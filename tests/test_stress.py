"""Tests of retr.eval.stress: the paper's grids, Q-B bit erasure, run_grid end to end, caching, Table 3."""

import json
import math

import numpy as np
import pytest

from retr.eval import stress
from retr.retrieval import codec
from retr.eval.metrics import average_precision
from retr.eval.stress import (
    PAPER_EXPERIMENTS,
    GridResult,
    Point,
    dr1_sizes,
    erase_bits,
    fc_grid,
    l2_normalize,
    plan_grid,
    run_grid,
    summary_table,
)
from retr.retrieval.errors import ConfigError

# ---------------------------------------------------------------------------------------------------------
# Grids


def test_dr_sizes_follow_the_paper_formula():
    sizes = dr1_sizes(4096)
    assert len(sizes) == 20
    assert sizes[:3] == [4096, 3891, 3686]  # floor(4096 * 20/20), floor(4096 * 19/20) = floor(3891.2), ...
    assert sizes[-1] == 204  # floor(4096 / 20) = floor(204.8)
    # The reference dr-1 / dr-2 VGG-M CSVs list the same sizes in increasing order, except 2047 where the
    # formula gives 4096 * 10 / 20 = 2048 exactly (a floating-point slip of the original code; its FC
    # CSV has 2048).
    csv = [204, 409, 614, 819, 1024, 1228, 1433, 1638, 1843, 2047, 2252, 2457, 2662, 2867, 3072, 3276,
           3481, 3686, 3891, 4096]  # fmt: skip
    assert [p if p != 2048 else 2047 for p in sorted(sizes)] == csv
    assert dr1_sizes(20) == list(range(20, 0, -1))


def test_fc_grid_is_the_reference_csv_grid():
    dims, levels = fc_grid(4096)
    assert dims == [409, 819, 1228, 1638, 2048, 2457, 2867, 3276, 3686]  # fc_vgg-m_voc_2007.csv
    assert levels == list(range(2, 31))
    assert len(dims) * len(levels) == 261  # the CSV's rows
    assert fc_grid(4096, coarse=True) == ([409, 819, 1228, 2048], [2, 3, 4, 6, 8, 16])


# ---------------------------------------------------------------------------------------------------------
# Q-B


def test_erase_bits_float64_by_hand():
    x = np.array([1.5, 3.7, 0.3, -1.75])
    # 1.5 = 1.1b: its only mantissa bit is bit 51, the highest of the 52; erasing 51 bits keeps it
    np.testing.assert_array_equal(erase_bits(x, 0), x)
    assert erase_bits(x, 51)[0] == 1.5
    np.testing.assert_array_equal(erase_bits(x, 52), [1.0, 2.0, 0.25, -1.0])  # mantissa gone: powers of 2
    # 53 bits also clear the exponent's lowest bit (biased exponents: 1.5 -> 1023 = 0b01111111111,
    # 3.7 -> 1024 = 0b10000000000, 0.3 -> 1021 = 0b01111111101): 1023 -> 1022, 1024 stays, 1021 -> 1020
    np.testing.assert_array_equal(erase_bits(x, 53), [0.5, 2.0, 0.125, -0.5])
    # 62 bits leave the sign and the exponent's top bit: values >= 2 become 2, values < 2 become 0
    np.testing.assert_array_equal(erase_bits(x, 62), [0.0, 2.0, 0.0, -0.0])
    np.testing.assert_array_equal(erase_bits(x, 64), [0.0, 0.0, 0.0, 0.0])
    assert erase_bits(x, 10).dtype == np.float64
    np.testing.assert_array_equal(x, [1.5, 3.7, 0.3, -1.75])  # the input is not modified


def test_erase_bits_float32_by_hand():
    x = np.array([1.5, 3.7, -0.3, 1.75], np.float32)
    out = erase_bits(x, 23, width=32)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [1.0, 2.0, -0.25, 1.0])  # 23 mantissa bits gone: powers of two
    assert erase_bits(x, 21, width=32)[3] == 1.75  # 1.11b: mantissa bits 22 and 21 survive 21 erased bits
    assert erase_bits(x, 22, width=32)[3] == 1.5
    np.testing.assert_array_equal(erase_bits(x, 32, width=32), [0, 0, 0, 0])
    # float32 values have 29 zero low bits as float64: erasing up to 29 of them changes nothing
    np.testing.assert_array_equal(erase_bits(x, 29), x.astype(np.float64))
    with pytest.raises(ValueError):
        erase_bits(x, 33, width=32)


def test_quantize_is_decode_of_encode_and_l2_normalize_is_the_formula():
    """The grid skips bit packing (lossless) and normalises in blocks of rows: both bit-identical to the plain
    definitions, across blocks (3000 x 300: 4 blocks of rows)."""
    from retr.eval.stress import _quantize
    from retr.retrieval import codec

    rng = np.random.default_rng(4)
    y_tr, y_te = rng.normal(size=(3000, 300)).astype(np.float32), 3 * rng.normal(size=(50, 300)).astype(np.float32)
    for cfg in (codec.CodecConfig(reduction="none", quantizer="q2", levels=7),
                codec.CodecConfig(reduction="none", quantizer="q1", levels=3, range="sigma:2")):
        a, b, size = _quantize(y_tr, y_te, cfg)
        params = codec.fit(y_tr, cfg)
        assert np.array_equal(a, codec.decode(params, codec.encode(params, y_tr)))
        assert np.array_equal(b, codec.decode(params, codec.encode(params, y_te)))
        assert size == params.code_size
    y = y_tr.astype(np.float64)
    y[5] = 0
    want = (y / np.where((n := np.linalg.norm(y, axis=1, keepdims=True)) > 0, n, 1.0)).astype(np.float32)
    assert np.array_equal(l2_normalize(y), want)


def test_l2_normalize_keeps_zero_rows():
    out = l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])


# ---------------------------------------------------------------------------------------------------------
# run_grid end to end


def features(m: int, seed: int, d: int = 32, n_cls: int = 3):
    """Nonnegative features around 3 class centres (shared by every seed), labels 0..2."""
    centres = np.maximum(np.random.default_rng(100).normal(size=(n_cls, d)), 0)
    rng = np.random.default_rng(seed)
    c = np.arange(m) % n_cls
    return np.maximum(centres[c] + 1.2 * rng.normal(size=(m, d)), 0).astype(np.float32), c


XTR, CTR = features(300, 1)
XTE, CTE = features(90, 2)


def score(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Nearest class mean accuracy and a retrieval mAP (rank xtr by inner product, same class = relevant)."""
    mu = np.stack([a[CTR == k].mean(0) for k in range(3)])
    acc = 100 * np.mean((b @ mu.T).argmax(1) == CTE)
    order = np.argsort(-(b @ a.T), axis=1, kind="stable")
    aps = [average_precision(CTR[order[i]] == CTE[i], int(np.sum(CTR == CTE[i]))) for i in range(len(b))]
    return {"acc": float(acc), "map": 100 * float(np.mean(aps))}


SMALL = dict(
    reps=3, dr_sizes=[32, 16, 8], levels=[2, 3, 4], fc_dims=[16, 8], fc_levels=[2, 4],
    qb_bits=[0, 20, 40, 64], progress=False,
)  # fmt: skip


def run(experiments=PAPER_EXPERIMENTS, fn=score, **kw):
    return run_grid(XTR, XTE, fn, experiments, **{**SMALL, **kw})


def points(result, experiment, **match):
    same = lambda p: all(getattr(p, k) == v for k, v in match.items())  # noqa: E731
    return [p for p in result.points if p.experiment == experiment and same(p)]


def assert_rotation_scores(got, want):
    """Scores of rotated features equal those of the originals up to float32 rounding.

    The rotation is a float32 matrix product whose last bits depend on the BLAS build, and 7 pairs of
    neighbours in the rankings are closer than 1e-6 (at ranks >= 84 of 300): a swap of one such pair moves the
    mAP by < 2e-4 points. The nearest-class-mean margins are >= 2e-3, far above the rounding: accuracy is exact.
    """
    assert got["acc"] == want["acc"]
    assert got["map"] == pytest.approx(want["map"], abs=1e-2)


def test_run_grid_points_bytes_and_baseline(tmp_path):
    r = run(pca_projection="uncentred", cache_dir=tmp_path)
    base = score(l2_normalize(XTR), l2_normalize(XTE))
    assert r.baseline == base and r.metric_names == ["acc", "map"] and r.n == 32 and r.layer == "fc7"
    assert 50 < base["map"] < 95  # not a trivial problem: stresses move the score
    (ident,) = points(r, "identity")
    assert ident.scores == base and ident.bytes_per_vector == 128 and ident.compression == 0.0
    assert r.experiments == ["identity", "dr1", "dr2", "q1", "q2", "qb64", "qb32", "fc"]

    # dr1: `reps` points per size, seeds 0..reps-1; all 32 dims selected = the identity itself
    for p in (32, 16, 8):
        assert sorted(q.rep for q in points(r, "dr1", dims=p)) == [0, 1, 2]
    assert all(q.scores == base for q in points(r, "dr1", dims=32))
    assert len({q.scores["map"] for q in points(r, "dr1", dims=8)}) > 1  # different random subsets
    dr1_8 = points(r, "dr1", dims=8)[0]
    assert dr1_8.bytes_per_vector == 32 and dr1_8.compression == 0.75

    # uncentred PCA at full rank is a rotation: inner products, hence both scores, are preserved
    (full,) = points(r, "dr2", dims=32)
    assert_rotation_scores(full.scores, base)

    # quantization: ceil(log2 h) bits per dimension, 32 dims
    assert [(q.levels, q.bytes_per_vector) for q in points(r, "q2")] == [(2, 4.0), (3, 8.0), (4, 8.0)]
    assert points(r, "q1", levels=2)[0].compression == 1 - 4 / 128
    # FC: 16 dims x 2 bits (h = 4) = 4 bytes, 8 dims x 1 bit = 1 byte
    assert points(r, "fc", dims=16, levels=4)[0].bytes_per_vector == 4.0
    assert points(r, "fc", dims=8, levels=2)[0].bytes_per_vector == 1.0
    assert points(r, "fc", dims=8, levels=2)[0].compression == 1 - 1 / 128

    # Q-B: float32 features lose nothing to 20 erased float64 bits; bytes (64 - k) / 8 * 32
    qb64 = {q.removed_bits: q for q in points(r, "qb64")}
    assert qb64[0].bytes_per_vector == 256 and qb64[0].compression == -1.0 and qb64[0].scores == base
    assert qb64[20].scores == base and qb64[20].bytes_per_vector == 176
    assert qb64[64].bytes_per_vector == 0 and qb64[64].compression == 1.0
    qb32 = {q.removed_bits: q for q in points(r, "qb32")}
    assert sorted(qb32) == [0, 20] and qb32[0].scores == base and qb32[20].bytes_per_vector == 48

    # every point was cached as soon as scored
    assert len(list(tmp_path.glob("*/*.json"))) == len(r.points)
    assert GridResult.from_dict(json.loads(json.dumps(r.to_dict()))).to_dict() == r.to_dict()
    assert GridResult.load(r.save(tmp_path / "result.json")).to_dict() == r.to_dict()
    assert r.settings["pca_projection"] == "uncentred" and r.settings["dr1_seeds"] == [0, 1, 2]


def test_centred_pca_scores_the_centred_features():
    r = run(("dr2",), dr_sizes=[32])
    (full,) = points(r, "dr2")
    mean = XTR.astype(np.float64).mean(0)
    # centred PCA at full rank = a rotation of x - mean, which the L2 normalisation then sees
    expected = score(l2_normalize(XTR - mean), l2_normalize(XTE - mean))
    assert_rotation_scores(full.scores, expected)
    uncentred = score(l2_normalize(XTR), l2_normalize(XTE))
    assert abs(expected["map"] - uncentred["map"]) > 1 and expected["acc"] != uncentred["acc"]  # tells them apart
    assert r.settings["pca_projection"] == "centred"


def test_cached_points_are_reused_and_missing_ones_computed(tmp_path):
    first = run(cache_dir=tmp_path)

    def boom(a, b):
        raise AssertionError("a cached point was scored again")

    assert run(fn=boom, cache_dir=tmp_path).to_dict() == first.to_dict()

    # an interrupted run: one point's file is missing, only that point is scored
    (missing,) = tmp_path.glob("fc/p16-h4-*.json")
    missing.unlink()
    calls = []

    def counting(a, b):
        calls.append(a.shape)
        return score(a, b)

    assert run(fn=counting, cache_dir=tmp_path).to_dict() == first.to_dict()
    assert calls == [(300, 16)]

    # other features, or another cache tag, do not reuse the cache
    calls.clear()
    run(("q2",), fn=counting, cache_dir=tmp_path, levels=[2], cache_tag="retrieval")
    assert len(calls) == 2  # identity and q2 h=2


def test_robust_ranges_and_product_quantization():
    r = run(("q2-quantile", "fc-sigma", "pq", "opq"), pq_bytes=[4, 8], pq_nbits=4)
    assert [q.levels for q in points(r, "q2-quantile")] == [2, 3, 4]
    assert [(q.dims, q.levels) for q in points(r, "fc-sigma")] == [(16, 2), (16, 4), (8, 2), (8, 4)]
    # M sub-quantizers x 4 bits: M = 4 -> 2 bytes, M = 8 -> 4 bytes; OPQ rotates to min(32, 4M) dims
    assert [(q.dims, q.bytes_per_vector) for q in points(r, "pq")] == [(32, 2.0), (32, 4.0)]
    assert [(q.dims, q.bytes_per_vector) for q in points(r, "opq")] == [(16, 2.0), (32, 4.0)]
    for q in r.points:
        assert 0 <= q.scores["map"] <= 100
    assert r.settings["ranges"] == {"quantile": "quantile:0.001", "sigma": "sigma:3"}


def test_bad_grids_are_config_errors():
    with pytest.raises(ConfigError, match="unknown stress experiment"):
        run(("dr3",))
    with pytest.raises(ConfigError, match="unknown stress experiment"):
        run(("dr1-sigma",))
    with pytest.raises(ConfigError, match="divide"):
        run(("pq",), pq_bytes=[5], pq_nbits=4)
    with pytest.raises(ConfigError, match="pca_projection"):
        run(("dr2",), pca_projection="whitened")
    with pytest.raises(ConfigError, match=r"sizes must be integers in \[1, 32\], not 0"):
        run(("dr1",), dr_sizes=[8, 0])
    with pytest.raises(ConfigError, match=r"levels must be integers in \[1, 65536\], not 0"):
        run(("fc",), fc_levels=[0])


# ---------------------------------------------------------------------------------------------------------
# Planning: what the data allows


def test_plan_of_the_paper_grid_is_unchanged_when_the_data_allows_it():
    plan = plan_grid(4096, 5011)
    assert plan.experiments == PAPER_EXPERIMENTS and not plan.skipped and not plan.adapted
    assert plan.dr1_sizes == plan.dr2_sizes == tuple(dr1_sizes(4096))
    assert (list(plan.fc_dims), list(plan.fc_levels)) == fc_grid(4096) and plan.levels == tuple(range(2, 31))
    pts = plan.points()
    # identity, dr1 20 x 10, dr2 20, q1 / q2 29 each, qb64 65, qb32 33, fc 261 (bench/stress.py's 638 points)
    assert len(pts) == 1 + 200 + 20 + 58 + 98 + 261
    assert [p.key for p in pts[:3]] == ["identity", "p4096-r0", "p4096-r1"]
    assert {p.key for p in pts if p.experiment == "fc"} >= {"p409-h2-centred-minmax", "p3686-h30-centred-minmax"}


def test_dr2_adapts_its_steps_to_what_pca_can_keep():
    """retr eval synthetic: 60 database images of 1280 dims. The paper's DR-2 sizes (64..1280) are all out of PCA's
    reach (60 dims): DR-2 takes the same 20 steps of 60 instead of silently scoring nothing; DR-1 is unchanged."""
    plan = plan_grid(1280, 60, ("dr1", "dr2", "fc"))
    assert plan.dr1_sizes == tuple(dr1_sizes(1280))
    assert plan.dr2_sizes == tuple(dr1_sizes(60)) and plan.dr2_sizes[:3] == (60, 57, 54) and plan.dr2_sizes[-1] == 3
    assert plan.fc_dims == (6, 12, 18, 24, 30, 36, 42, 48, 54)  # tenths of 60, as retr eval always did
    assert "PCA keeps at most 60 dimensions (60 training vectors" in plan.adapted["dr2"]
    assert "fc" in plan.adapted and not plan.skipped
    # neardup: 8 database images; the steps of 8 without repeats
    assert plan_grid(1280, 8, ("dr2",)).dr2_sizes == (8, 7, 6, 5, 4, 3, 2, 1)
    # some of the paper's sizes in reach: those, and the others named
    some = plan_grid(100, 50, ("dr2",))
    assert some.dr2_sizes == (50, 45, 40, 35, 30, 25, 20, 15, 10, 5)
    assert some.adapted["dr2"].startswith("sizes 100, 95, ..., 55 left out: PCA keeps at most 50")
    # sizes asked for explicitly are never replaced: none in reach is a skip with its reason
    assert plan_grid(100, 50, ("dr2",), dr_sizes=[80, 60]).skipped == {
        "dr2": "PCA keeps at most 50 dimensions (50 training vectors, 100 input dimensions), fewer than every size "
        "asked (80, 60)"
    }


def test_few_dimensions_run_without_and_with_dr():
    """16-dim features: the 20 DR steps collapse (16 * 1 // 20 = 0); a grid without DR must not even look at them,
    and one with DR takes the distinct nonzero sizes, each with its own repetitions."""
    x16, xq16 = XTR[:, :16], XTE[:, :16]
    assert [p.experiment for p in run_grid(x16, xq16, score, ("q2",), levels=[2], progress=False).points] == [
        "identity",
        "q2",
    ]
    r = run_grid(x16, xq16, score, ("dr1", "dr2"), reps=2, progress=False)
    assert [p.dims for p in r.aggregate("dr1")] == list(range(1, 17))
    assert all(row["reps"] == 2 for row in r.table("dr1", "map"))
    assert [p.dims for p in r.aggregate("dr2")] == list(range(1, 17)) and not r.skipped


def test_what_the_data_cannot_support_is_skipped_with_its_reason(capsys):
    def mean_score(a, b):
        return {"map": float(np.mean(b @ a.T))}

    r = run_grid(XTR[:20], XTE, mean_score, ("q2", "pq", "qb32", "dr2"), levels=[2], qb_bits=[40], pq_bytes=[4],
                 dr_sizes=[32, 24], progress=True)  # fmt: skip
    assert r.experiments == ["identity", "q2"]
    assert r.skipped["pq"] == (
        "8-bit codes train 256 centroids per sub-quantizer, from >= 256 training vectors; there are 20"
    )
    assert r.skipped["qb32"] == "no number of removed bits in [0, 32] among those asked (40)"
    assert r.skipped["dr2"].startswith("PCA keeps at most 20 dimensions (20 training vectors, 32 input dimensions)")
    err = capsys.readouterr().err
    assert "stress fc7: pq skipped: 8-bit codes" in err and "stress fc7: qb32 skipped" in err
    assert GridResult.from_dict(json.loads(json.dumps(r.to_dict()))).skipped == r.skipped
    # a result written before skipped experiments were recorded still loads, with none
    old = {k: v for k, v in r.to_dict().items() if k != "skipped"}
    assert GridResult.from_dict(old).skipped == {}


def test_pq_and_opq_are_planned_at_the_code_sizes_of_q2_and_fc_points():
    """1280-D, 5000 training vectors. Q-2 sizes: 1280 x 1..5 bits / 8 = 160, 320, 480, 640, 800 B; FC sizes: p x bits
    / 8 for p = 128, 256, ..., 1152. One size per octave [2^k / sqrt 2, 2^k sqrt 2) up to 512 B, a Q-2 size first:
    16 (FC 128 x 1 bit), 32 (FC 128 x 2 bits, 256 x 1), 64 (nearest 2^6 among 48, 64, 80), then Q-2's 160, 320, 480."""
    plan = plan_grid(1280, 5000, ("pq", "opq"))
    assert plan.pq_bytes == (16, 32, 64, 160, 320, 480)
    # OPQ's output M min(4, n // M): 64, 128, 256 dims; 160 -> 640, 320 -> 960, 480 -> 960 dims: beyond 512
    assert plan.opq_bytes == (16, 32, 64)
    assert plan.adapted["opq"] == (
        "M = 160, 320, 480 left out: OPQ's output M min(4, n // M) is capped at 512 dimensions"
    )
    note = plan.adapted["pq"]
    assert note.startswith("at the code sizes of Q-2 / FC points, one per octave: 16, 32, 64, 160, 320, 480 B")
    assert "560, 576, 640, 720, 800 B (above PQ_MAX_BYTES = 512" in note  # Q-2 h = 9..32 and FC sizes beyond 512 B
    assert "48, 80, 96, 112, 128, 144, 192," in note and "(another size of the same octave was taken)" in note
    pts = [p for p in plan.points() if p.kind in ("pq", "opq")]
    assert [(p.key, p.dims) for p in pts][:7] == [("m16-b8", 1280), ("m32-b8", 1280), ("m64-b8", 1280),
                                                  ("m160-b8", 1280), ("m320-b8", 1280), ("m480-b8", 1280),
                                                  ("m16-b8-o64", 64)]  # fmt: skip
    # 288 training vectors (README's neardup tiles): Faiss' OPQ starts from a PCA to its output dimensions, which
    # crashes with fewer training vectors: M min(4, n // M, 288 // M) = 64, 128, 256, 160 dims; 320 and 480 B none
    plan = plan_grid(1280, 288, ("pq", "opq"))
    assert plan.pq_bytes == (16, 32, 64, 160, 320, 480) and plan.opq_bytes == (16, 32, 64, 160)
    assert [p.key for p in plan.points() if p.kind == "opq"][-1] == "m160-b8-o160"
    assert plan.adapted["opq"].endswith("capped at 512 dimensions (and at 288, the training vectors its initial PCA "
                                        "needs)")
    # 4096-D (VGG fc7): the Q-2 points cost 512 to 2560 B; the FC points from 52 B (409 dims at 1 bit). 52 and 154 B
    # do not divide 4096: PQ cuts 52 sub-vectors of 78 or 79 dims, 154 of 26 or 27
    plan = plan_grid(4096, 5011, ("pq", "opq"))
    assert plan.pq_bytes == (52, 154, 256, 512) and plan.opq_bytes == (52,)
    assert "1024, 1076, 1229, 1280, 1383, 1434, 1536, 1638, 1792, 1843, 2048, 2304, 2560 B (above" in plan.adapted["pq"]
    # the sizes follow the grid options: Q-2 at h = 2, 4 only and FC at 10 dims x h = 2
    plan = plan_grid(100, 5000, ("pq",), levels=[2, 4], fc_dims=[10], fc_levels=[2])
    assert plan.pq_bytes == (2, 13, 25) and "pq" not in plan.adapted  # Q-2 13, 25 B and FC 2 B: each matched
    # at 4 bits a size of B bytes is 2B sub-quantizers, at 16 bits B / 2: 13 and 25 B cannot be matched
    plan = plan_grid(100, 5000, ("pq",), levels=[2, 4], fc_dims=[10], fc_levels=[2], pq_nbits=4)
    assert plan.pq_bytes == (4, 26, 50)
    plan = plan_grid(100, 1 << 16, ("pq",), levels=[2, 4], fc_dims=[10], fc_levels=[2], pq_nbits=16)
    assert plan.pq_bytes == (1,) and "13, 25 B (not 16-bit codes of at most 100 sub-quantizers)" in plan.adapted["pq"]
    assert plan_grid(8, 1 << 16, ("pq",), levels=[2], fc_dims=[], pq_nbits=16).skipped == {
        "pq": "no Q-2 or FC code size up to 512 B is a whole number of 16-bit codes of at most 8 sub-quantizers"
    }


def test_pq_of_m_not_dividing_n_codes_uneven_sub_vectors():
    """n = 7, M = 3: sub-vectors of 3, 2, 2 dims. Each takes one of two values per row, drawn independently: PQ with
    2 centroids (1 bit) per sub-quantizer reconstructs every row exactly only if its sub-vectors are exactly those
    (zero-padding at the end, [0:3] [3:6] [6:7], would mix groups 2 and 3 and lose some)."""
    rng = np.random.default_rng(0)
    groups = [rng.standard_normal((2, k)).astype(np.float32) for k in (3, 2, 2)]
    x = np.hstack([g[rng.integers(0, 2, 64)] for g in groups])
    rtr, rte, nbytes = stress._product_quantize(x[:48], x[48:], 3, 1, None, x[:48])
    assert nbytes == 1.0  # 3 codes of 1 bit
    np.testing.assert_allclose(rtr, x[:48], atol=1e-6)
    np.testing.assert_allclose(rte, x[48:], atol=1e-6)


def test_budget_experiments_are_planned_at_16_32_b_and_the_paper_point():
    """1280-D, 288 training vectors (the neardup tiles of the README). Anchors: 16, 32 and 1280 / 16 = 80 B (the
    paper's 98.4%); one Q-2 / FC size per other octave: 160, 320 (Q-2 h = 2, 3..4), 480 (Q-2 h = 5..8, nearer 512
    than 640), 800 (Q-2 h = 17..32). 8 bits on each of PCA's 288 axes hold 288 B: 320 B and above are out of reach."""
    plan = plan_grid(1280, 288, ("fcb", "alloc", "pq"))
    assert plan.budget_bytes == (16, 32, 80, 160, 320, 480, 800)
    assert plan.pq_bytes == (16, 32, 80, 160, 320, 480)  # PQ at the same sizes (up to 512 B)
    assert plan.adapted["fcb"] == plan.adapted["alloc"] == (
        "budgets 320, 480, 800 B left out: 8 bits on each of the 288 axes PCA can keep hold 288 B"
    )
    pts = [p for p in plan.points() if p.kind in ("fcb", "alloc")]
    # fcb at 16 B: p = floor(128 / b) dims at 2**b levels, b = 1..8; at 160 B only b >= 5 (p <= 288)
    assert [(p.dims, p.levels) for p in pts if p.kind == "fcb" and p.budget == 16] == [
        (128, 2), (64, 4), (42, 8), (32, 16), (25, 32), (21, 64), (18, 128), (16, 256)]
    assert [p.dims for p in pts if p.kind == "fcb" and p.budget == 160] == [256, 213, 182, 160]
    assert [(p.budget, p.dims, p.key) for p in pts if p.kind == "alloc"][:2] == [
        (16, 288, "b16-p288-centred"), (32, 288, "b32-p288-centred")]
    assert {p.budget for p in pts} == {16, 32, 80, 160}
    assert plan.settings()["budget_bytes"] == [16, 32, 80, 160, 320, 480, 800]
    assert "budget_bytes" not in plan_grid(1280, 288, ("q2",)).settings()  # grids without them are as before
    # 12 training vectors, Q-2 at h = 2 only (160 B), no FC: every budget (16, 32, 80, 160 B) beyond 12 axes x 8 bits
    assert plan_grid(1280, 12, ("alloc",), levels=[2], fc_dims=[]).skipped == {
        "alloc": "PCA keeps 12 axes: no budget of 16, 32, 80, 160 B fits"}


def test_budget_experiments_cost_exactly_their_budget_and_use_the_codec():
    """32-dim features, 300 training vectors; Q-2 sizes 4, 8 B, FC 1, 2, 4 B (SMALL), anchors 2 (32 / 16), 16, 32."""
    r = run(("fcb", "fcbl", "alloc", "allocl"))
    assert r.settings["budget_bytes"] == [1, 2, 4, 8, 16, 32]
    for q in r.points[1:]:
        assert q.bytes_per_vector in (1, 2, 4, 8, 16, 32)
    fcb = points(r, "fcb")
    assert {(q.dims, q.levels) for q in fcb if q.bytes_per_vector == 32} == {(32, 256)}  # only 8 bits x 32 dims fits
    assert len(points(r, "alloc")) == len(points(r, "allocl")) == 6 and all(q.dims == 32 for q in points(r, "alloc"))
    # the alloc point at 4 B is the codec: PCA on every axis, bits by variance summing to 32, evenly spaced levels
    params = codec.fit(XTR, codec.CodecConfig(reduction="pca", dims=32, allocation="variance", budget=4))
    assert params.code_size == 4 and params.bits.sum() == 32
    want = score(*(l2_normalize(codec.decode(params, codec.encode(params, x))) for x in (XTR, XTE)))
    (got,) = points(r, "alloc", bytes_per_vector=4.0)
    assert got.scores["acc"] == want["acc"] and got.scores["map"] == pytest.approx(want["map"], abs=1e-2)


# ---------------------------------------------------------------------------------------------------------
# Tables


def pt(experiment, dims, score, nbytes, levels=None, rep=None):
    return Point(experiment, dims, levels, None, rep, {"map": score}, nbytes, 1 - nbytes / 400)


def test_summary_table_and_table_on_a_hand_made_result():
    r = GridResult(
        layer="fc7", n=100, metric_names=["map"], baseline={"map": 80.0},
        points=[
            pt("identity", 100, 80.0, 400),
            # dr1 means: 100 dims 80, 50 dims 79 (-1.25 %), 10 dims 72 (-10 %)
            pt("dr1", 100, 80.0, 400, rep=0), pt("dr1", 100, 80.0, 400, rep=1),
            pt("dr1", 50, 78.0, 200, rep=0), pt("dr1", 50, 80.0, 200, rep=1),
            pt("dr1", 10, 70.0, 40, rep=0), pt("dr1", 10, 74.0, 40, rep=1),
            # q2: h = 3 and h = 4 cost the same 25 bytes (2 bits x 100 dims); h = 3 is the smaller
            pt("q2", 100, 60.0, 13, levels=2), pt("q2", 100, 79.5, 25, levels=3),
            pt("q2", 100, 79.9, 25, levels=4), pt("q2", 100, 80.0, 38, levels=8),
        ],
        settings={},
    )  # fmt: skip
    t = summary_table(r, "map", budgets=(0.1, 1, 2, 12))
    assert {b: p.dims for b, p in t["dr1"].items()} == {0.1: 100, 1: 100, 2: 50, 12: 10}
    assert t["dr1"][2].rep is None and t["dr1"][2].scores == {"map": 79.0}
    # 0.1 %: >= 79.92 -> only h = 8 (80.0); 1 %: >= 79.2 -> h = 3 (79.5) beats h = 4 (79.9) at equal bytes
    assert {b: p.levels for b, p in t["q2"].items()} == {0.1: 8, 1: 3, 2: 3, 12: 3}
    assert "identity" not in t
    assert summary_table(r, "map", budgets=(1,))["dr1"][1].dims == 100
    worse = GridResult("fc7", 100, ["map"], {"map": 99.0}, r.points, {})
    assert summary_table(worse, "map", budgets=(5,)) == {"dr1": {5: None}, "q2": {5: None}}

    rows = r.table("dr1", "map")
    assert [row["dims"] for row in rows] == [10, 50, 100]
    assert rows[0]["score"] == 72.0 and rows[0]["sd"] == pytest.approx(math.sqrt(8))  # std([70, 74], ddof=1)
    assert rows[1]["sd"] == pytest.approx(math.sqrt(2)) and rows[2]["sd"] == 0.0 and rows[0]["reps"] == 2
    assert rows[0]["bytes_per_vector"] == 40 and rows[0]["compression"] == 0.9
    q2 = r.table("q2", "map")
    assert [(row["levels"], row["score"], row["sd"], row["reps"]) for row in q2[:2]] == [
        (2, 60.0, 0.0, 1),
        (3, 79.5, 0.0, 1),
    ]
