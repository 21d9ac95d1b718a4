"""bench.search_runs: spread and median of engine-vs-raw ratios over several bench.search JSONs."""

import json

import pytest

from bench import search_runs


def _run(path, entries):
    path.write_text(json.dumps({"engine_vs_raw": [
        {"engine": e, "raw_is": raw, "serving_pct": s, "batch_pct": b} for e, raw, s, b in entries]}))
    return path


def test_summary_groups_by_index_kind_and_counts_the_target(tmp_path):
    a = _run(tmp_path / "a.json", [
        ("ivf-fastscan nlist=40 nprobe=8 + re-rank 100", "refine", 90.0, 80.0),
        ("ivf-fastscan nlist=40 nprobe=8 + re-rank 100", "scan", 10.0, 10.0),  # not against refine: left out
        ("fastscan Q-2 h=4 + re-rank 30", "refine", 100.0, 96.0),
    ])
    b = _run(tmp_path / "b.json", [
        ("ivf-fastscan nlist=40 nprobe=16 + re-rank 100", "refine", 120.0, 95.0),
        ("ivf-fastscan nlist=40 nprobe=32 + re-rank 100", "refine", 96.0, 70.0),
    ])
    s = search_runs.main([str(a), str(b)])
    assert set(s) == {"ivf-fastscan nlist=40", "fastscan Q-2 h=4"}
    assert s["ivf-fastscan nlist=40"]["serving_pct"] == {"n": 3, "min": 90.0, "median": 96.0, "max": 120.0,
                                                         "at_target": 2}
    assert s["ivf-fastscan nlist=40"]["batch_pct"]["median"] == 80.0
    assert s["ivf-fastscan nlist=40"]["batch_pct"]["at_target"] == 1  # 95.0 counts: the target is >= 95 %
    assert s["fastscan Q-2 h=4"]["serving_pct"]["n"] == 1


def test_a_file_that_is_not_a_run_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "x.json").write_text("{}")
    for path in (tmp_path / "missing.json", tmp_path / "x.json"):
        with pytest.raises(SystemExit) as e:
            search_runs.main([str(path)])
        assert e.value.code == 2
        assert "cannot read the runs" in capsys.readouterr().err
