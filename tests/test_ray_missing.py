"""Without Ray installed, `retr index --ray` says in one line how to install it (Ray is an extra: `[ray]`)."""

import sys

from conftest import run

from retr.retrieval import distributed


def test_ray_not_installed(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as without the package
    (tmp_path / "photos").mkdir()
    r = run("index", tmp_path / "photos", "--db", tmp_path / "p.retr", "--ray")
    assert r.exit_code == 1
    assert r.output.strip().splitlines() == [f"Error: --ray needs Ray, which is not installed: "
                                             f"{distributed.INSTALL_HINT}"]
    assert not (tmp_path / "p.retr").exists()  # refused before anything was written


def test_ray_option_value(tmp_path, monkeypatch):
    """`--ray` alone is a local cluster, `--ray ADDRESS` a given one (what reaches the library)."""
    from retr.retrieval import engine

    seen = []
    monkeypatch.setattr(engine, "index_folder", lambda *a, **kw: seen.append(kw["ray"]) or 1 / 0)
    for args, want in ([["--ray"], "local"], [["--ray", "10.0.0.1:6379"], "10.0.0.1:6379"], [[], None]):
        try:
            run("index", tmp_path, "--db", tmp_path / "x.retr", *args)
        except ZeroDivisionError:
            pass
        assert seen.pop() == want
