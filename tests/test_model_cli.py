"""`retr model` keeps the engine's contract (issue "One engine, one contract"): neardup trains on one's own photos,
a missing dataset root is a one-line error, --device auto and the default backbone mean what they mean in `retr
index`, --prune is a weight threshold, the table is computed apart from its drawing, and importing the command module
loads no torch."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from retr.cli import main
from retr.eval import model_table as mt
from retr.eval.datasets import build_synthetic
from retr.retrieval.backbones import DEFAULT_BACKBONE, get_spec
from retr.retrieval.model_file import ModelConfig, build_model, load_model_file, read_model_file, save_model

SIZE = 64  # EfficientNet-Lite0's conv map of a 64-pixel image is 2 x 2 cells


def _photos(folder: Path, n: int) -> Path:
    """n seeded 96-pixel 'photos' (gradient + stripes), PNG."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    t = np.linspace(0, 1, 96, dtype=np.float32)
    for i in range(n):
        x = rng.uniform(0, 255, 3) * t[None, :, None] + rng.uniform(0, 255, 3) * t[:, None, None]
        x = x + 40 * np.sin(2 * np.pi * rng.uniform(2, 8) * t)[None, :, None]
        Image.fromarray(np.clip(x, 0, 255).astype(np.uint8)).save(folder / f"p{i}.png")
    return folder


def _invoke(*args):
    return CliRunner().invoke(main, ["model", *map(str, args)])


FAST = ["--weights", "none", "--clusters", "2", "--image-size", SIZE, "--device", "cpu"]


# --- 1. neardup: NetVLAD from one's own photos; a dataset without its root -------------------------------------------


def test_compress_on_own_photos_neardup(tmp_path):
    photos = _photos(tmp_path / "photos", 3)
    res = _invoke("compress", "--train-on", "neardup", "--root", photos, *FAST, "--out", tmp_path / "mine.retrm")
    assert res.exit_code == 0, res.output
    # the edited copies are written beside --out; the default backbone is the one of `retr index`
    images = tmp_path / "mine-neardup-images"
    assert len(list((images / "db").iterdir())) == 3 and len(list((images / "queries").iterdir())) == 15
    f = read_model_file(tmp_path / "mine.retrm")
    assert f.config.backbone == DEFAULT_BACKBONE and f.config.pooling == "netvlad"


@pytest.mark.slow
def test_fine_tune_on_own_photos_neardup(tmp_path):
    photos = _photos(tmp_path / "photos", 2)
    res = _invoke("compress", "--train-on", "neardup", "--root", photos, *FAST, "--epochs", "1", "--lr", "1e-4",
                  "--out", tmp_path / "mine.retrm")
    assert res.exit_code == 0, res.output
    assert "mAP on neardup" in res.output and (tmp_path / "mine.loss.png").exists()


def test_table_evaluates_on_own_photos_neardup(small_lite0, tmp_path):
    base = save_model(small_lite0, tmp_path / "base.retrm").path
    photos = _photos(tmp_path / "photos", 2)
    out = tmp_path / "table"
    res = _invoke("table", "--from", base, "--eval-on", "neardup", "--eval-root", photos, "--settings", "8:0.01",
                  "--whiten-dims", "0", "--image-size", SIZE, "--device", "cpu", "--out", out)
    assert res.exit_code == 0, res.output
    assert "| 8 bits quantization | 0.01 |" in res.output
    assert len(list((out / "eval-neardup-images" / "queries").iterdir())) == 10


@pytest.mark.parametrize("command", ["compress", "table"])
def test_dataset_without_root_is_a_one_line_error(command, tmp_path):
    res = _invoke(command, "--train-on", "oxford5k", "--weights", "none", "--out", tmp_path / "x")
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    assert "Traceback" not in res.output
    assert res.output.startswith("Error: ") and res.output.count("\n") == 1


# --- 2. the table: computed, then drawn ---------------------------------------------------------------------------


def test_importing_the_table_module_imports_no_matplotlib():
    code = "import sys, retr.eval.model_table; print('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def test_drawing_a_table_needs_only_its_rows(tmp_path):
    rows = [{"Method": "m (base model)", "Threshold for pruning": 0.0, "Percentage of parameters pruned": 0.0,
             "Drop in mAP (s)": 0.0, "Memory usage (MB)": 2.0, "mAP (s)": 80.0, "bits": None, "file": "a"},
            {"Method": "8 bits quantization", "Threshold for pruning": 0.01, "Percentage of parameters pruned": 40.0,
             "Drop in mAP (s)": 1.5, "Memory usage (MB)": 0.5, "mAP (s)": 78.5, "bits": 8, "file": "b"}]
    t = mt.ModelTable(rows, ["s"], {"s": 8})
    files = mt.write_model_table(t, tmp_path)
    assert files["csv"].read_text().splitlines()[2] == \
        "8 bits quantization,0.010000,40.000000,1.500000,0.500000,78.500000"
    assert "| 8 bits quantization | 0.01 | 40.00 | 1.5% | 0.50 | 78.50 |" in files["md"].read_text()
    assert files["png"].stat().st_size > 1000


# --- 3. --device auto = CUDA when present, as in `retr index` / `retr eval` ----------------------------------------


def test_table_hands_device_auto_to_the_library(monkeypatch, tmp_path):
    seen = {}

    class Made:
        training = None

        class file:
            @staticmethod
            def build():
                return "model"

    def make_model(out, config, compression, **kw):
        seen["make_model"] = kw["device"]
        return Made()

    def compute_model_table(base, datasets, out, settings, **kw):
        seen["table"] = kw["device"]
        return mt.ModelTable([], list(datasets), {d: None for d in datasets})

    monkeypatch.setattr(mt, "make_model", make_model)
    monkeypatch.setattr(mt, "compute_model_table", compute_model_table)
    monkeypatch.setattr(mt, "load_retrieval_set", lambda name, root, images: object())
    monkeypatch.setattr(mt, "write_model_table", lambda t, out: {})
    res = _invoke("table", "--eval-on", "synthetic", "--out", tmp_path / "t")
    assert res.exit_code == 0, res.output
    assert seen == {"make_model": "auto", "table": "auto"}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_table_with_device_auto_runs_on_cuda(small_lite0, tmp_path):
    ds = build_synthetic(tmp_path / "syn", n_families=3, per_family=2, size=64, seed=3)
    kw = dict(image_size=SIZE, whiten_dims=None)
    cpu = mt.compute_model_table(small_lite0, {"s": ds}, tmp_path / "cpu", ((8, 0.01),), device="cpu", **kw)
    gpu = mt.compute_model_table(small_lite0, {"s": ds}, tmp_path / "gpu", ((8, 0.01),), device="auto", **kw)
    assert next(small_lite0.parameters()).device.type == "cpu"  # the model is handed back where it was
    for a, b in zip(cpu.rows, gpu.rows):
        assert a["mAP (s)"] == pytest.approx(b["mAP (s)"], abs=1.0)


# --- 4. the default backbone ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_lite0(tmp_path_factory):
    """The default backbone (random weights) + NetVLAD K=2, initialised on 6 synthetic images."""
    ds = build_synthetic(tmp_path_factory.mktemp("syn"), n_families=3, per_family=2, size=64, seed=0)
    return build_model(ModelConfig(weights="none", netvlad_k=2), mt.training_images(ds, DEFAULT_BACKBONE, SIZE))


def test_netvlad_on_the_default_backbone(small_lite0, tmp_path):
    assert ModelConfig().backbone == DEFAULT_BACKBONE == small_lite0.config.backbone
    channels = get_spec(DEFAULT_BACKBONE).layers["conv"]
    x = torch.rand(3, 3, SIZE, SIZE)
    with torch.no_grad():
        y = small_lite0(x)
    assert small_lite0.dim == 2 * channels and y.shape == (3, 2 * channels)
    torch.testing.assert_close(y.norm(dim=1), torch.ones(3))
    # its batch-norm statistics are stored: the float32 file gives the same descriptors
    path = save_model(small_lite0, tmp_path / "m.retrm").path
    backbone, pool, d = load_model_file(path)
    with torch.no_grad():
        torch.testing.assert_close(pool(backbone(x)), y, atol=1e-5, rtol=0)


# --- 5. --prune is a weight threshold; 6. importing the command module loads no torch ------------------------------


def test_prune_help_says_threshold():
    res = _invoke("compress", "--help")
    assert res.exit_code == 0
    text = " ".join(res.output.split())
    assert "--prune THRESHOLD Zero the weights with |w| below THRESHOLD (the paper's 'threshold for pruning')." in text
    assert f"[default: {DEFAULT_BACKBONE}]" in text and "alexnet" in text


_HELP_WITHOUT_TORCH = """
import sys
from retr.cli import main
for args in (["model", "--help"], ["model", "compress", "--help"], ["model", "table", "--help"]):
    try:
        main(args)
    except SystemExit:
        pass
print(sorted(m for m in ("torch", "torchvision", "matplotlib", "retr.eval.model_table") if m in sys.modules))
"""


def test_model_help_imports_no_torch():
    out = subprocess.run([sys.executable, "-c", _HELP_WITHOUT_TORCH], capture_output=True, text=True,
                         check=True).stdout
    assert "Compressed descriptor networks" in out and "--prune THRESHOLD" in out and "--eval-on" in out
    assert out.strip().splitlines()[-1] == "[]"
