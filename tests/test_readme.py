"""The README's Python API snippet runs as written (on a small folder of photos made here)."""

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

README = Path(__file__).resolve().parents[1] / "README.md"


def python_api_snippet() -> str:
    text = README.read_text()
    section = text[text.index("## Python API"):]
    start = section.index("```python") + len("```python")
    return section[start:section.index("```", start)]


@pytest.mark.slow
def test_the_python_api_snippet_runs(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    (tmp_path / "photos").mkdir()
    for i in range(5):
        Image.fromarray((rng.random((96, 128, 3)) * 255).astype(np.uint8)).save(tmp_path / "photos" / f"{i}.jpg")
    Image.open(tmp_path / "photos" / "2.jpg").save(tmp_path / "query.jpg")
    code = python_api_snippet()
    # the last line runs the whole stress grid (minutes); the same call with one experiment checks its signature
    assert 'evaluate("synthetic", None, "reports/synthetic")' in code
    code = code.replace('evaluate("synthetic", None, "reports/synthetic")',
                        'evaluate("synthetic", None, "reports/synthetic", experiments=("q2",), levels=(2, 4), '
                        'progress=False)')
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the README's own code
    assert scope["rep"].total == 5 and scope["codes"].shape == (1000, 16) and scope["y"].shape == (1000, 64)
    assert scope["D"].shape == (1, 5) and os.path.exists(tmp_path / "reports" / "synthetic" / "report.html")
