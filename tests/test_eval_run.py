"""`retr eval` end to end: generated data and small datasets in official layouts -> CSV, JSON, PNG, HTML."""

import json
import pickle

import numpy as np
import pytest

from retr.eval.datasets import VOC_CLASSES
from conftest import family_base, run

FAST = ["--backbone", "alexnet", "--weights", "none", "--pooling", "mac", "--device", "cpu", "--levels", "2,4",
        "--reps", "2"]


def assert_report(out, n_csv_min):
    assert len(list(out.glob("*.csv"))) >= n_csv_min
    pngs = list(out.glob("*.png"))
    assert pngs and (out / "report.html").read_text().count("data:image/png;base64,") == len(pngs)
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return json.loads((out / "results.json").read_text())


@pytest.mark.slow
def test_synthetic_writes_every_report_file_and_resumes(tmp_path):
    out = tmp_path / "rep"
    r = run("eval", "synthetic", "--out", out, *FAST, "--experiments", "dr1,dr2,q1,q2,qb,fc")
    assert r.exit_code == 0, r.output
    doc = assert_report(out, 7)
    res = doc["result"]
    assert res["n"] == 256 and res["baseline"]["map"] > 0
    fc = [p for p in res["points"] if p["experiment"] == "fc"]
    bits = {h: int(np.ceil(np.log2(h))) for h in range(2, 31)}
    assert fc and all(p["bytes_per_vector"] == -(-p["dims"] * bits[p["levels"]] // 8) for p in fc)
    assert doc["manifest"]["dataset"] == "synthetic" and doc["manifest"]["encoder"]["backbone"] == "alexnet"
    header = (out / "dr-1_alexnet_synthetic.csv").read_text().splitlines()[0]
    assert header == "Dimensions,mAP,SD mAP,Bytes per vector,Compression (%)"
    n_cached = len(list((out / "cache").rglob("*.json")))
    r = run("eval", "synthetic", "--out", out, *FAST, "--experiments", "dr1,dr2,q1,q2,qb,fc")
    assert r.exit_code == 0 and len(list((out / "cache").rglob("*.json"))) == n_cached  # nothing recomputed


def _write(path, im):
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, quality=90)


@pytest.mark.slow
def test_revisited_layout_with_a_real_pickle(tmp_path):
    root = tmp_path / "roxford5k"
    rng = np.random.default_rng(0)
    names = [f"img{i}" for i in range(12)]
    for n in names + ["q0", "q1"]:
        _write(root / "jpg" / f"{n}.jpg", family_base(rng, 96))
    gnd = [{"bbx": [0.0, 0.0, 80.0, 80.0], "easy": [0, 1], "hard": [2], "junk": [3]},
           {"bbx": [10.0, 5.0, 90.0, 90.0], "easy": [4], "hard": [5, 6], "junk": []}]
    with open(root / "gnd_roxford5k.pkl", "wb") as f:
        pickle.dump({"imlist": names, "qimlist": ["q0", "q1"], "gnd": gnd}, f)
    out = tmp_path / "rep"
    r = run("eval", "roxford5k", "--root", root, "--out", out, *FAST, "--experiments", "q2,fc",
            "--features-cache", tmp_path / "feats")
    assert r.exit_code == 0, r.output
    res = assert_report(out, 2)["result"]
    assert set(res["baseline"]) == {"easy", "medium", "hard"}
    assert len(list((tmp_path / "feats").glob("*.npy"))) == 2  # database and (cropped) queries


@pytest.mark.slow
def test_voc2007_layout_svm(tmp_path):
    voc = tmp_path / "VOCdevkit" / "VOC2007"
    rng = np.random.default_rng(1)
    for split in ("trainval", "test"):
        ids = [f"{split[:2]}{i:04d}" for i in range(40)]
        for i in ids:
            _write(voc / "JPEGImages" / f"{i}.jpg", family_base(rng, 64))
        for c, cls in enumerate(VOC_CLASSES):
            lines = [f"{i} {1 if k % 20 == c else (0 if k % 20 == (c + 1) % 20 else -1):2d}" for k, i in enumerate(ids)]
            (voc / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
            (voc / "ImageSets" / "Main" / f"{cls}_{split}.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "rep"
    r = run("eval", "voc2007", "--root", voc, "--out", out, *FAST, "--experiments", "q2", "--solver", "sklearn")
    assert r.exit_code == 0, r.output
    res = assert_report(out, 1)["result"]
    assert list(res["baseline"]) == ["map"] and 0 <= res["baseline"]["map"] <= 100


def test_missing_root_is_one_line(tmp_path):
    r = run("eval", "roxford5k", "--root", tmp_path / "nope", "--out", tmp_path / "rep", *FAST)
    assert r.exit_code != 0
    assert len(r.output.strip().splitlines()) == 1 and r.output.startswith("Error:")
    r = run("eval", "oxford5k", "--root", tmp_path, "--out", tmp_path / "rep", *FAST)
    assert r.exit_code != 0 and "Traceback" not in r.output


@pytest.mark.slow
def test_model_experiment_writes_the_paper_table(tmp_path):
    out = tmp_path / "rep"
    r = run("eval", "synthetic", "--out", out, *FAST, "--experiments", "model")
    assert r.exit_code == 0, r.output
    rows = (out / "model_table.csv").read_text().splitlines()
    assert rows[0].startswith("Method,Threshold for pruning,Percentage of parameters pruned,Drop in mAP (synthetic),"
                              "Memory usage (MB)")
    assert len(rows) == 1 + 7  # the base model and the paper's six (bits, threshold) settings
    assert "Memory usage (MB)" in (out / "report.html").read_text()
