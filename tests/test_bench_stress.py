"""bench/stress.py at a tiny size: its JSON, the ratios' bootstrap intervals, and the 2-core LinearSVC baseline
giving the same models as the 1-core reference (train_ovr(solver="sklearn"))."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def bench_stress(monkeypatch):
    """The bench.stress module (bench/ is not installed: imported from the checkout), torch's thread count restored
    after (the bench sets it)."""
    monkeypatch.syspath_prepend(str(ROOT))
    import bench.stress

    n = torch.get_num_threads()
    yield bench.stress
    torch.set_num_threads(n)


@pytest.mark.parametrize("backend", ["threading", pytest.param("loky", marks=pytest.mark.slow)])
def test_two_core_baseline_gives_the_reference_models(bench_stress, backend):
    from retr.eval.svm import train_ovr

    xtr, ytr, _, _ = bench_stress.voc_like(0, 120, 10, 24, n_cls=5)
    ref = train_ovr(xtr, ytr, solver="sklearn")
    par = bench_stress.sklearn_parallel(xtr, ytr, n_jobs=2, backend=backend)
    # the same LIBLINEAR calls on the same arrays: equal up to float rounding (identical in practice)
    np.testing.assert_allclose(par.W, ref.W, rtol=0, atol=1e-12)
    np.testing.assert_allclose(par.b, ref.b, rtol=0, atol=1e-12)


def test_single_core_points_cover_every_experiment_first(bench_stress):
    K = bench_stress.Key
    picked = [K("identity", 8)] + [K("dr1", 4, rep=r) for r in range(3)] + [K("q1", 8, levels=h) for h in (2, 3)]
    assert bench_stress.single_points(picked, 3) == {picked[0], picked[1], picked[4]}
    assert bench_stress.single_points(picked, None) == set(picked)
    assert bench_stress.single_points(picked, 0) == set()


def test_ratios_bootstrap_interval_holds_the_estimate(bench_stress):
    R, Row = bench_stress.Run, bench_stress.Row
    rng = np.random.default_rng(1)
    rows = []
    for e, m in (("identity", 1), ("dr1", 6), ("fc", 9)):
        for _ in range(m):
            rows.append(Row(e, e, 8, torch=R(rng.uniform(0.5, 1), 1, 0, 50), sklearn2=R(rng.uniform(2, 20), 1, 0, 50)))
    counts = {"identity": 1, "dr1": 190, "fc": 261, "qb32": 0}
    st = bench_stress.ratios(rows, lambda r: r.sklearn2, lambda r: r.torch, counts, boot=500, seed=0)
    s, g = st["sampled"], st["full_grid_extrapolated"]
    assert st["points"] == 16 and st["one_point_experiments"] == []
    assert s["ratio"] == pytest.approx(s["baseline_s"] / s["solver_s"])
    assert s["ci95"][0] < s["ratio"] < s["ci95"][1] and g["ci95"][0] < g["ratio"] < g["ci95"][1]
    assert g["baseline_s"] == pytest.approx(sum(c * np.mean([r.sklearn2.seconds for r in rows if r.experiment == e])
                                                for e, c in counts.items() if c))
    # an experiment with trainings but no sampled point: no extrapolation
    assert bench_stress.ratios(rows, lambda r: r.sklearn2, lambda r: r.torch, counts | {"q1": 29}, 100, 0)[
        "full_grid_extrapolated"] is None


@pytest.mark.slow
def test_tiny_run_writes_the_json(bench_stress, tmp_path):
    out = tmp_path / "stress.json"
    res = bench_stress.main([
        "--n-train", "200", "--n-test", "200", "--dims", "64", "--configs", "8", "--single", "4", "--boot", "300",
        "--threads", "1", "--backend", "auto", "--out", str(out),
    ])  # fmt: skip
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    assert res["grid"]["configs_timed"] == 8 and res["grid"]["single_core_points"] == 4
    assert res["rows"][0]["label"] == "identity"
    assert {r["experiment"] for r in res["rows"]} == {"identity", "dr1", "dr2", "q1", "q2", "qb64", "fc"}
    for r in res["rows"]:
        assert r["sklearn2"]["seconds"] > 0 and r["torch"]["seconds"] > 0
        assert (r["warm"] is None) == (r["experiment"] in ("identity", "dr1", "dr2"))
    # the 2-core baseline gives the 1-core reference's scores, wherever both ran
    eq = res["sklearn2_equals_sklearn1"]
    assert eq["points"] == 4 and eq["max_abs_score_difference"] <= 1e-9 and eq["max_abs_map_difference"] <= 1e-9
    assert sum(r["sklearn1"] is not None for r in res["rows"]) == 4
    assert res["sklearn2_backend"]["chosen"] in ("threading", "loky")
    assert set(res["sklearn2_backend"]["seconds"]) == {"threading", "loky"}
    for name in ("sklearn2_vs_torch_chained", "sklearn2_vs_torch_cold"):
        st = res["ratios"][name]
        for est in (st["sampled"], st["full_grid_extrapolated"]):
            lo, hi = est["ci95"]
            assert lo <= est["ratio"] * (1 + 1e-12) and est["ratio"] <= hi * (1 + 1e-12)
    assert res["ratios"]["sklearn1_vs_sklearn2"]["points"] == 4
    one = res["ratios"]["sklearn1_vs_torch_chained"]  # on 4 points: the identity, dr1, dr2, q1
    assert one["full_grid_extrapolated"] is None and one["one_point_experiments"] == ["dr1", "dr2", "q1"]
    assert 0 <= res["max_abs_dmap"] < 1
    m = res["machine"]
    assert m["noisy"] in (True, False) and 0 <= m["others_share"] <= 1 and "load_avg_end" in m
