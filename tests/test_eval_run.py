"""`retr eval` end to end: generated data and small datasets in official layouts -> CSV, JSON, PNG, HTML."""

import json
import pickle

import numpy as np
import pytest

from retr.eval.datasets import VOC_CLASSES
from conftest import family_base, run

FAST = ["--backbone", "alexnet", "--weights", "none", "--pooling", "mac", "--device", "cpu", "--grid-levels", "2,4",
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


def _oxford_like(root, prefix):
    """Oxford/Paris classic layout: jpg/ + gt_files with one query per landmark (2 landmarks x 4 images)."""
    rng = np.random.default_rng(2)
    for lm in ("a", "b"):
        for k in range(4):
            _write(root / "jpg" / f"{prefix}{lm}_00000{k}.jpg", family_base(rng, 96))
        gt = root / "gt_files"
        gt.mkdir(parents=True, exist_ok=True)
        (gt / f"{lm}_1_query.txt").write_text(f"oxc1_{prefix}{lm}_000000 5 5 80 80\n")
        (gt / f"{lm}_1_good.txt").write_text(f"{prefix}{lm}_000001\n{prefix}{lm}_000002\n")
        (gt / f"{lm}_1_ok.txt").write_text(f"{prefix}{lm}_000003\n")
        (gt / f"{lm}_1_junk.txt").write_text("")


def _holidays(root):
    rng = np.random.default_rng(3)
    for g in (1000, 1001, 1002):
        for k in range(3):
            _write(root / "jpg" / f"{g}{k:02d}.jpg", family_base(rng, 96))


def _mit67(root):
    rng = np.random.default_rng(4)
    train, test = [], []
    for cls in ("bar", "kitchen"):
        for k in range(6):
            rel = f"{cls}/{k}.jpg"
            _write(root / "Images" / rel, family_base(rng, 64))
            (train if k < 4 else test).append(rel)
    (root / "TrainImages.txt").write_text("\n".join(train) + "\n")
    (root / "TestImages.txt").write_text("\n".join(test) + "\n")


def _food101(root):
    rng = np.random.default_rng(5)
    train, test = [], []
    for cls in ("apple_pie", "ramen"):
        for k in range(6):
            _write(root / "images" / cls / f"{k}.jpg", family_base(rng, 64))
            (train if k < 4 else test).append(f"{cls}/{k}")
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "train.txt").write_text("\n".join(train) + "\n")
    (root / "meta" / "test.txt").write_text("\n".join(test) + "\n")


LAYOUTS = {"oxford5k": lambda r: _oxford_like(r, ""), "paris6k": lambda r: _oxford_like(r, "paris_"),
           "holidays": _holidays, "mit67": _mit67, "food101": _food101}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_each_official_layout_gives_a_report(tmp_path, name):
    root = tmp_path / name
    LAYOUTS[name](root)
    out = tmp_path / "rep"
    r = run("eval", name, "--root", root, "--out", out, *FAST, "--experiments", "q1,q2", "--solver", "sklearn")
    assert r.exit_code == 0, r.output
    res = assert_report(out, 2)["result"]
    metric = "accuracy" if name in ("mit67", "food101") else "map"
    assert list(res["baseline"]) == [metric] and 0 <= res["baseline"][metric] <= 100
    assert {p["experiment"] for p in res["points"]} >= {"q1", "q2"}


@pytest.mark.slow
def test_codec_learnt_on_another_dataset(tmp_path):
    """--fit-on paris6k: the grid's transforms are fitted on Paris's database, evaluated on Oxford."""
    _oxford_like(tmp_path / "oxford", "")
    _oxford_like(tmp_path / "paris", "paris_")
    out = tmp_path / "rep"
    r = run("eval", "oxford5k", "--root", tmp_path / "oxford", "--out", out, *FAST, "--experiments", "q2,dr2",
            "--fit-on", "paris6k", "--fit-on-root", tmp_path / "paris")
    assert r.exit_code == 0, r.output
    doc = assert_report(out, 2)
    assert doc["result"]["settings"]["fit_on"] == "other" and doc["manifest"]["codec_from"] == "paris6k"
    r = run("eval", "oxford5k", "--root", tmp_path / "oxford", "--out", tmp_path / "rep2", *FAST,
            "--fit-on", "voc2007", "--fit-on-root", tmp_path / "nope")
    assert r.exit_code != 0 and "Traceback" not in r.output


@pytest.mark.slow
def test_neardup_on_a_folder_of_photos(tmp_path):
    rng = np.random.default_rng(6)
    for k in range(4):
        _write(tmp_path / "photos" / f"p{k}.jpg", family_base(rng, 128))
    out = tmp_path / "rep"
    r = run("eval", "neardup", "--root", tmp_path / "photos", "--out", out, *FAST, "--experiments", "q2")
    assert r.exit_code == 0, r.output
    res = assert_report(out, 1)["result"]
    assert set(res["baseline"]) == {"map", "recall@1"}
