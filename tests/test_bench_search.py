"""bench.search runs end to end on a tiny collection: the JSON has its parts, and raw Faiss on the engine's codes
(IndexRefineFlat over the same fast-scan index, same candidates) finds what the engine finds."""

import json

import pytest

from bench import search


@pytest.mark.slow
def test_bench_search_smoke(tmp_path):
    out = tmp_path / "s.json"
    r = search.main(["--n", "3000", "--d", "32", "--clusters", "50", "--quick", "--serving", "20", "--batch", "50",
                     "--budget", "0.2", "--curve-budget", "0.1", "--skip", "hnsw", "--rerank", "30",
                     "--nprobe", "8", "--curve-nprobe", "2,8", "--curve-rerank", "10,30", "--breakdown-nprobe", "",
                     "--breakdown-queries", "5", "--batch-sizes", "1,4", "--out", str(out),
                     "--plot", str(tmp_path / "c.png")])
    assert json.loads(out.read_text())["rows"] and (tmp_path / "c.png").stat().st_size > 0
    rows = {row["name"]: row for row in r["rows"]}
    assert all(0 <= (row["others_cpu_share"] or 0) <= 1 and isinstance(row["noisy"], bool) for row in rows.values())
    assert all(row["serving_qps_median"] > 0 and row["serving_cpu_us"] > 0 for row in rows.values())
    assert all(0 <= (row["steal_share"] or 0) <= 1 for row in rows.values())
    assert all(isinstance(o["name"], str) and o["cpu_s"] > 0 for row in rows.values() for o in row["group_others"])
    assert isinstance(r["noisy"], bool)
    assert r["serving_threads"] == 1  # the default: one OpenMP thread per served query
    refine = [o for o in r["engine_vs_raw"] if o["raw_is"] == "refine"]
    assert len(refine) == 3  # fastscan re-rank 30, ivf-fastscan nprobe 8 with a flat and an hnsw coarse quantizer
    for o in refine:  # the same candidates re-ranked exactly: equal recall (ties aside)
        assert abs(o["recall_engine"] - o["recall_raw"]) <= 0.01 and o["serving_pct"] > 0
        assert o["serving_median_pct"] > 0 and o["serving_per_cpu_pct"] > 0
    assert rows["fastscan Q-2 h=4 + re-rank 30"]["bytes_per_vector"] < 100
    assert {"fastscan (engine)", "raw IndexRefineFlat(IndexIVFPQFastScan) nlist=76"} <= set(r["curves"])
    for c in r["curves"].values():
        assert all(set(pt) >= {"serving_qps", "serving_qps_median", "batch_qps", "recall"} for pt in c["points"])
    (b,) = r["breakdown"]["breakdown ivf-fastscan nlist=76"]  # 3,000 // 39 lists
    assert set(b["us_per_query"]) >= {"engine_search", "coarse_quantizer", "luts_and_scan", "rerank_sort_ids",
                                      "refiner_rerank"}
    assert [s["batch"] for s in next(iter(r["small_batches"].values()))] == [1, 4]
