"""retr eval on data smaller than the paper's grid: every experiment asked for is in the report or named with its
reason; the feature cache is keyed by the descriptor pipeline's version; a dataset without --root is one line."""

import json

import pytest
from conftest import run

from retr.eval.run import PIPELINE_VERSION, evaluate
from retr.eval.stress import PAPER_EXPERIMENTS
from retr.retrieval.encoder import EncoderConfig
from retr.retrieval.errors import DatasetError

FAST = EncoderConfig.create("alexnet", "none", pooling="mac")  # random weights: no download, 256 dims


@pytest.mark.slow
def test_neardup_defaults_report_dr2_and_say_what_is_left_out(tmp_path, capsys):
    """The bundled photos give 8 database images: PCA keeps at most 8 of the 256 dims, below every DR-2 size of
    the paper (12..256), so DR-2 wrote nothing at all. It now takes the steps of 8, and says so."""
    out = tmp_path / "rep"
    r = evaluate("neardup", None, out, FAST, PAPER_EXPERIMENTS + ("pq",), features_cache=tmp_path / "feats",
                 device="cpu", reps=1, levels=(2, 4), progress=True)  # fmt: skip
    dr2 = (out / "dr-2_alexnet_neardup_map.csv").read_text().splitlines()
    assert [row.split(",")[1] for row in dr2[1:]] == ["1", "2", "3", "4", "5", "6", "7", "8"]
    assert r.grid.skipped == {"pq": "8-bit codes train 256 centroids per sub-quantizer, from >= 256 training "
                                    "vectors; there are 8"}  # fmt: skip
    assert set(r.grid.settings["adapted"]) == {"dr2", "fc"}
    err = capsys.readouterr().err
    assert "stress conv: pq skipped: 8-bit codes" in err and "stress conv: dr2: PCA keeps at most 8 dimensions" in err
    page = (out / "report.html").read_text()
    assert "<li><b>PQ not run</b>" in page and "<li><b>DR-2</b>: PCA keeps at most 8 dimensions" in page
    assert "8 training (database) vectors, 40 test (query) vectors" in page
    manifest = json.loads((out / "results.json").read_text())["manifest"]
    assert {"git_commit", "weights_sha256"} <= set(manifest) and manifest["weights_sha256"] is None  # random weights
    # the cached descriptors carry the pipeline's version in their name
    names = sorted(p.name for p in (tmp_path / "feats").glob("*.npy"))
    assert len(names) == 2 and all(f"-v{PIPELINE_VERSION}-" in n for n in names)


@pytest.mark.parametrize("dataset", ["oxford5k", "voc2007"])
def test_a_dataset_to_download_without_root_is_one_line(tmp_path, dataset):
    with pytest.raises(DatasetError, match=f"^{dataset} needs --root") as e:
        evaluate(dataset, None, tmp_path / "rep", FAST, progress=False)
    assert "\n" not in str(e.value)


def test_cli_without_root_is_one_line(tmp_path):
    r = run("eval", "oxford5k", "--out", tmp_path / "rep")
    assert r.exit_code == 1 and "Traceback" not in r.output
    (line,) = r.output.strip().splitlines()
    assert "oxford5k needs --root" in line and "get it from" in line
