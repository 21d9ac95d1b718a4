"""Shared fixtures: folders of generated images, written to tmp_path."""

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image, ImageDraw

from retr.cli import main


def run(*args):
    """``retr ARGS...`` in-process (each argument str()-ed); returns click's Result."""
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread: on a busy 2-core machine two threads are many times slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def family_base(rng: np.random.Generator, size: int = 160) -> Image.Image:
    """A random scene: a colour gradient with a few filled shapes, distinct for each seed."""
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0, 1, size)[None, :, None]
    img = (c0 * (1 - t) + c1 * t) * np.ones((size, 1, 1))
    im = Image.fromarray(img.astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(6):
        x0, y0 = rng.integers(0, size - 40, 2)
        w, h = rng.integers(15, 60, 2)
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x0 + w, y0 + h], fill=fill)
    return im


def variants(im: Image.Image, rng: np.random.Generator) -> dict[str, Image.Image]:
    """Near-duplicates of one scene: crop, flip, colour shift, JPEG re-compression, scale, brightness."""
    w, h = im.size
    a = np.asarray(im).astype(np.int16)
    out = {
        "orig": im,
        "crop": im.crop((int(0.1 * w), int(0.08 * h), int(0.92 * w), int(0.95 * h))),
        "flip": im.transpose(Image.FLIP_LEFT_RIGHT),
        "colour": Image.fromarray(np.clip(a + rng.integers(-25, 26, 3), 0, 255).astype(np.uint8)),
        "small": im.resize((w // 2, h // 2)),
        "bright": Image.fromarray(np.clip(a * 1.15 + 10, 0, 255).astype(np.uint8)),
    }
    return out


def write_families(root: Path, n_families: int, seed: int = 0) -> dict[str, list[Path]]:
    """``n_families`` x 7 images (6 variants + one JPEG re-compression at quality 30) under ``root/fNN/``."""
    rng = np.random.default_rng(seed)
    fams = {}
    for f in range(n_families):
        d = root / f"f{f:02d}"
        d.mkdir(parents=True)
        paths = []
        for name, im in variants(family_base(rng), rng).items():
            p = d / f"{name}.png"
            im.save(p)
            paths.append(p)
        p = d / "jpeg.jpg"
        im.save(p, quality=30)
        paths.append(p)
        fams[f"f{f:02d}"] = paths
    return fams


def indexed_families(root: Path, n_families: int = 3) -> tuple[Path, Path]:
    """``n_families`` x 7 images under ``root/photos`` indexed into ``root/d.retr`` with random AlexNet + MAC on the
    CPU (fast); returns (root, database)."""
    write_families(root / "photos", n_families)
    d = root / "d.retr"
    r = run("index", root / "photos", "--db", d, "--backbone", "alexnet", "--weights", "none", "--pooling", "mac",
            "--device", "cpu", "--batch-size", "8")
    assert r.exit_code == 0, r.output
    return root, d


@pytest.fixture
def families(tmp_path):
    """10 families x 7 near-duplicates = 70 small images in tmp_path/photos."""
    root = tmp_path / "photos"
    return root, write_families(root, 10)
