"""Issue 5, bad input: every kind of broken file in a folder is skipped with its reason, every good or convertible
image is indexed, and user errors (bad query, not a database, newer format, read-only) are one line each."""

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import lmdb
import numpy as np
import pytest
from PIL import Image

from retr.retrieval import describe as describe_mod, engine, store as store_mod
from retr.retrieval.database import read_params
from retr.retrieval.errors import DatabaseError
from retr.retrieval.images import printable
from retr.retrieval.store import FORMAT_VERSION, Store
from conftest import run

FAST = ["--backbone", "alexnet", "--weights", "none", "--pooling", "mac", "--dims", "8", "--device", "cpu",
        "--max-size", "64", "--batch-size", "4", "--freeze"]
NON_UTF8 = os.fsdecode(b"caf\xe9 \xff.png")  # not valid UTF-8: a str with lone surrogates
AS_ROOT = os.geteuid() == 0


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def one_line_error(r) -> str:
    """The output of a failed command: exactly one line, no traceback."""
    assert r.exit_code == 1, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in r.output, r.output
    return lines[0]


def scene(seed: int, size=(48, 40)) -> Image.Image:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)  # blocks: survives JPEG and palette conversion
    return Image.fromarray(np.kron(x, np.ones((size[1] // 4, size[0] // 4, 1), np.uint8)))


def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    b = io.BytesIO()
    img.save(b, fmt, **kw)
    return b.getvalue()


def make_folder(root: Path) -> tuple[set[str], dict[str, str]]:
    """Write every bad file of issue 5 and a few good images; returns (keys to be indexed, {key: reason keyword})."""
    root.mkdir()
    good: set[str] = set()
    for i in range(6):
        scene(i).save(root / f"good{i}.png")
        good.add(f"good{i}.png")
    (root / "sub").mkdir()
    scene(10).save(root / "sub" / "g.jpg", quality=95)
    good.add("sub/g.jpg")

    # convertible modes: indexed after conversion to RGB
    g = np.asarray(scene(11).convert("L"))
    Image.fromarray(g.astype(np.uint16) * 257).save(root / "sixteen.png")  # mode I;16
    assert Image.open(root / "sixteen.png").mode == "I;16"
    scene(12).convert("CMYK").save(root / "cmyk.jpg")
    scene(13).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(root / "palette.png")
    scene(14).convert("L").save(root / "gray.png")
    rgba = scene(15).convert("RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.linspace(0, 255, 48, dtype=np.uint8), (40, 1))))
    rgba.save(root / "alpha.png")
    frames = [scene(16).convert("P", palette=Image.Palette.ADAPTIVE, colors=16), scene(17).convert("P")]
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(root / "anim.gif").n_frames == 2
    Image.open(root / "anim.gif").convert("RGB").save(root / "anim_frame0.png")  # what the GIF must index as
    scene(18).save(root / "with space.png")
    scene(19).save(root / "quo'te\"s.png")
    scene(20).save(os.fsencode(root) + b"/caf\xe9 \xff.png")
    good |= {"sixteen.png", "cmyk.jpg", "palette.png", "gray.png", "alpha.png", "anim.gif", "anim_frame0.png",
             "with space.png", "quo'te\"s.png", NON_UTF8}

    bad: dict[str, str] = {}
    (root / "empty.jpg").write_bytes(b"")
    bad["empty.jpg"] = "empty file"
    jpg, png = encoded(scene(21), "JPEG"), encoded(scene(22), "PNG")
    (root / "truncated.jpg").write_bytes(jpg[: len(jpg) // 2])
    (root / "truncated.png").write_bytes(png[: len(png) // 2])
    bad["truncated.jpg"] = bad["truncated.png"] = "truncated image"
    (root / "random.jpg").write_bytes(np.random.default_rng(0).bytes(3000))
    (root / "text.jpg").write_text("this is not a photo\n")
    bad["random.jpg"] = bad["text.jpg"] = "cannot identify image file"
    Image.new("1", (14000, 14000)).save(root / "bomb.png")  # 196 M pixels in 24 kB
    bad["bomb.png"] = "decompression bomb (196000000 pixels"
    Image.new("RGB", (1, 1), (9, 9, 9)).save(root / "one_pixel.png")
    bad["one_pixel.png"] = "image too small (1x1 px"
    Image.new("RGB", (10000, 3), (9, 9, 9)).save(root / "strip.png")
    bad["strip.png"] = "extreme aspect ratio (10000x3 px"
    (root / "broken.jpg").symlink_to(root / "nowhere.jpg")
    bad["broken.jpg"] = "broken symlink"
    (root / "loop.jpg").symlink_to(root / "loop.jpg")
    bad["loop.jpg"] = "symlink loop"
    (root / "dir.jpg").mkdir()
    bad["dir.jpg"] = "is a directory"
    for name in ("deleted_after_walk.png", "deleted_before_read.png"):
        scene(23).save(root / name)
        bad[name] = "file not found (deleted?)"
    if not AS_ROOT:  # root reads any file; test_read_only_database covers permissions under root
        scene(24).save(root / "locked.png")
        (root / "locked.png").chmod(0)
        bad["locked.png"] = "permission denied"
    return good, bad


def index_bad_folder(tmp: Path, monkeypatch: pytest.MonkeyPatch):
    """``make_folder`` in ``tmp``, indexed once with two files deleted mid-run; (root, db, good, bad, report)."""
    root = tmp / "photos"
    good, bad = make_folder(root)
    real_walk, real_decode = engine.walk_images, describe_mod.iter_decoded

    def walk_then_delete(folder):
        out = real_walk(folder)
        (root / "deleted_after_walk.png").unlink(missing_ok=True)  # listed, gone before indexing looks at it
        return out

    def delete_then_decode(paths, **kw):
        (root / "deleted_before_read.png").unlink(missing_ok=True)  # listed and stat'ed, gone before it is read
        return real_decode(paths, **kw)

    monkeypatch.setattr(engine, "walk_images", walk_then_delete)
    monkeypatch.setattr(describe_mod, "iter_decoded", delete_then_decode)
    db = tmp / "photos.retr"
    r = run("index", root, "--db", db, *FAST, "--json")
    assert r.exit_code == 0, r.output
    return root, db, good, bad, json.loads(r.output)


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """One indexed folder shared by the tests that only read it."""
    with pytest.MonkeyPatch.context() as mp:
        yield index_bad_folder(tmp_path_factory.mktemp("bad"), mp)


def test_every_bad_file_is_skipped_with_its_reason_and_every_good_one_indexed(indexed):
    root, db, good, bad, report = indexed
    with Store(db) as s:
        assert set(s.files()) == good
        assert s.count("codes") == len(good) and s.count("features") == 0
    assert (report["total"], report["added"], len(report["skipped"])) == (len(good), len(good), len(bad))

    info = json.loads(run("info", "--db", db, "--json").output)
    assert info["count"] == len(good)
    assert set(info["skipped"]) == set(bad)
    for key, keyword in bad.items():
        assert info["skipped"][key].startswith(keyword), (key, info["skipped"][key])
    assert "walked" not in json.dumps(info["skipped"])  # dir.jpg is walked as a folder without complaint

    r = run("info", "--db", db)
    assert r.exit_code == 0, r.output
    assert f"skipped      {len(bad)} files" in r.output
    for key, keyword in bad.items():
        assert f"  {key}: {keyword}" in r.output


def test_convertible_images_and_the_first_gif_frame_are_indexed(indexed):
    root, db, good, _, _ = indexed
    with Store(db) as s:
        files = s.files()
        params = read_params(s)
        ids, codes = s.read_all("codes", params.code_size, "u1")
    code = dict(zip(ids.tolist(), codes))
    # the GIF is indexed as its first frame: same pixels as anim_frame0.png, so the same code
    np.testing.assert_array_equal(code[files["anim.gif"][0]], code[files["anim_frame0.png"][0]])
    # each record holds the size and hash of the very bytes that were decoded
    rec = files["sixteen.png"][1]
    assert rec.size == (root / "sixteen.png").stat().st_size and len(rec.blake2b) == 32


def test_odd_names_are_stored_exactly_and_printed_safely(indexed):
    root, db, _, _, _ = indexed
    r = run("query", root / "with space.png", root / NON_UTF8, "--db", db, "-k", 1)
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert [ln.split("  ")[-1] for ln in lines] == [f"# {root}/with space.png", f"{root}/with space.png",
                                                   f"# {root}/caf\\xe9 \\xff.png", f"{root}/caf\\xe9 \\xff.png"]
    out = json.loads(run("query", root / "quo'te\"s.png", "--db", db, "-k", 1, "--json").output)
    assert out[0]["results"][0]["path"] == f"{root}/quo'te\"s.png"
    # the store keeps the exact bytes of the name
    with Store(db) as s:
        assert os.fsencode(NON_UTF8) in {os.fsencode(p) for p in s.files()}
    assert printable(NON_UTF8) == "caf\\xe9 \\xff.png"


def test_rerun_keeps_everything_and_retries_only_the_bad_files(tmp_path, monkeypatch):
    root, db, good, bad, _ = index_bad_folder(tmp_path, monkeypatch)
    for name in ("deleted_after_walk.png", "deleted_before_read.png"):
        del bad[name]  # really gone now: no longer listed
    (root / "empty.jpg").write_bytes(encoded(scene(30), "JPEG"))  # fixed since the last run
    del bad["empty.jpg"]
    rep = engine.index_folder(root, db, device="cpu", progress=False)
    assert (rep.added, rep.unchanged, rep.total) == (1, len(good), len(good) + 1)
    assert set(rep.skipped) == set(bad)


def test_a_bad_query_image_is_one_line(indexed, tmp_path):
    _, db, _, _, _ = indexed
    (tmp_path / "q.jpg").write_text("not an image")
    line = one_line_error(run("query", tmp_path / "q.jpg", "--db", db))
    assert line == f"Error: {tmp_path}/q.jpg: cannot identify image file (not an image, or an unsupported format)"
    line = one_line_error(run("query", tmp_path / "missing.jpg", "--db", db))
    assert line.endswith("missing.jpg: file not found (deleted?)")
    line = one_line_error(run("query", tmp_path, "--db", db))
    assert line == f"Error: {tmp_path}: is a directory"


def test_database_errors_are_one_line(tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("x")
    (tmp_path / "file.retr").write_text("x")
    (tmp_path / "photos").mkdir()
    scene(0).save(tmp_path / "photos" / "a.png")
    for db in ("plain", "file.retr"):
        line = one_line_error(run("info", "--db", tmp_path / db))
        assert line == f"Error: {tmp_path / db} is not a retr database (no data.mdb inside)"
        one_line_error(run("check", "--db", tmp_path / db))
    assert "does not exist" in one_line_error(run("info", "--db", tmp_path / "none.retr"))
    # indexing must not turn a file or someone's folder into a database
    line = one_line_error(run("index", tmp_path / "photos", "--db", tmp_path / "file.retr", *FAST))
    assert line == f"Error: {tmp_path / 'file.retr'} is a file, not a retr database; choose another --db"
    line = one_line_error(run("index", tmp_path / "photos", "--db", tmp_path / "plain", *FAST))
    assert "already holds other files and is not a retr database" in line
    assert sorted(os.listdir(tmp_path / "plain")) == ["notes.txt"]
    (tmp_path / "garbage.retr").mkdir()
    (tmp_path / "garbage.retr" / "data.mdb").write_bytes(b"\0" * 8192)
    assert "is not a readable retr database" in one_line_error(run("info", "--db", tmp_path / "garbage.retr"))

    with Store(tmp_path / "new.retr", write=True, create=True) as s:
        s.put_meta({"format_version": str(FORMAT_VERSION + 1).encode()})
    for cmd in (["info"], ["check"], ["query", tmp_path / "photos" / "a.png"]):
        line = one_line_error(run(*cmd, "--db", tmp_path / "new.retr"))
        assert line == (f"Error: database {tmp_path / 'new.retr'} has format version {FORMAT_VERSION + 1}, newer "
                        f"than this retr understands ({FORMAT_VERSION}): upgrade retr")
    line = one_line_error(run("index", tmp_path / "photos", "--db", tmp_path / "new.retr", *FAST))
    assert "newer than this retr" in line
    with pytest.raises(DatabaseError, match="newer than"):  # not "being written": the refused one unlocked
        Store(tmp_path / "new.retr", write=True)


def test_read_only_paths_through_lmdb_errors(tmp_path, monkeypatch):
    """What a read-only folder does to LMDB, simulated (root ignores permissions): a reader that cannot use the
    lock file reads without it; a writer gets one line that says read-only."""
    db = tmp_path / "x.retr"
    with Store(db, write=True, create=True) as s:
        s.put_meta({"root": b"/photos"})
    real_open = lmdb.open
    calls = []

    def no_lock_file(path, **kw):
        calls.append(kw["lock"])
        if kw["lock"]:
            raise lmdb.ReadonlyError(f"{path}/lock.mdb: Permission denied")
        return real_open(path, **kw)

    monkeypatch.setattr(store_mod.lmdb, "open", no_lock_file)
    with Store(db) as s:
        assert s.get_meta("root") == b"/photos"
    assert calls == [True, False]
    with pytest.raises(DatabaseError) as e:
        Store(db, write=True)
    assert str(e.value).startswith(f"database {db} is read-only (") and "\n" not in str(e.value)
    monkeypatch.setattr(store_mod.lmdb, "open", real_open)

    def denied(path, flags, mode=0o777):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(store_mod.os, "open", denied)
    with pytest.raises(DatabaseError, match=r"is read-only \(Permission denied\): cannot write to it"):
        Store(db, write=True)


def _without_root_powers() -> list[str] | None:
    """A command prefix under which permissions apply: nothing when not root; as root, setpriv dropping the
    capabilities that bypass file permissions. None when that is not possible here."""
    if not AS_ROOT:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    return [setpriv, "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search", "--"]


_READ_ONLY_SCRIPT = r"""
import json, os, sys, torch
torch.set_num_threads(1)
from click.testing import CliRunner
from retr.cli import main
photos, db, q = sys.argv[1:4]
out = {}
def run(name, *args):
    r = CliRunner().invoke(main, list(args), catch_exceptions=False)
    out[name] = [r.exit_code, r.output]
run("index", "index", photos, "--db", db, "--json", *sys.argv[4:])
os.chmod(os.path.join(photos, "locked.png"), 0o644)  # let the test clean up
for f in os.listdir(db):
    os.chmod(os.path.join(db, f), 0o444)
os.chmod(db, 0o555)
run("info", "info", "--db", db, "--json")
run("query", "query", q, "--db", db, "-k", "1")
run("check", "check", "--db", db)
run("reindex", "index", photos, "--db", db)
os.chmod(db, 0o755)
print(json.dumps(out))
"""


@pytest.mark.slow
def test_unreadable_file_and_read_only_database(tmp_path):
    """For real, in a subprocess where permissions apply: an unreadable file is skipped as 'permission denied';
    a database in a read-only folder can be read, queried and checked, and refuses a write in one line."""
    prefix = _without_root_powers()
    if prefix is None:
        pytest.skip("running as root without setpriv: permissions cannot be enforced")
    work = Path(tempfile.mkdtemp())
    try:
        photos = work / "photos"
        photos.mkdir()
        for i in range(10):
            scene(i).save(photos / f"{i}.png")
        scene(99).save(photos / "locked.png")
        (photos / "locked.png").chmod(0)
        db = work / "ro.retr"
        r = subprocess.run(prefix + [sys.executable, "-c", _READ_ONLY_SCRIPT, str(photos), str(db),
                                     str(photos / "3.png"), *FAST], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout.splitlines()[-1])
    finally:
        for p in (work / "photos" / "locked.png", work / "ro.retr"):
            if p.exists():
                p.chmod(0o755)
        shutil.rmtree(work)
    code, text = out["index"]
    assert code == 0, text
    assert json.loads(text)["skipped"] == {"locked.png": "permission denied"}
    code, text = out["info"]
    assert code == 0 and json.loads(text)["count"] == 10, text
    code, text = out["query"]
    assert code == 0 and text.splitlines()[1].endswith(f"  {photos}/3.png"), text
    code, text = out["check"]
    assert code == 0 and text.strip() == f"{db}: healthy (10 images)", text
    code, text = out["reindex"]
    assert code == 1 and text.strip().splitlines() == [
        f"Error: database {db} is read-only (Permission denied): cannot write to it; index into a --db you can "
        "write"], text
