"""`retr demo` with the real default backbone: every edited copy finds its original first."""

import pytest
from click.testing import CliRunner

from retr.cli import main


@pytest.mark.slow
def test_demo_finds_every_original_at_rank_1(tmp_path, capsys):
    r = CliRunner().invoke(main, ["demo", "--out", str(tmp_path / "demo"), "--device", "cpu"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    with capsys.disabled():
        print("\n" + r.output.strip().splitlines()[-2])
    assert "original found at rank 1 for 40/40 edited copies" in r.output
    page = (tmp_path / "demo" / "demo.html").read_text()
    assert page.count("<figure>") == 40 * 6  # each query + its top 5
    summary = "Original found at rank 1 for 40 of 40 edited copies. Database: 8 photos, 2 bytes per image (pca8-q2h4"
    assert summary in page
    assert len(list((tmp_path / "demo" / "photos").iterdir())) == 8
