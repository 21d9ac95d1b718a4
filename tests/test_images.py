"""retr.retrieval.images: walking folders, decoding every Pillow mode, and turning bad files into reasons."""

import os
import struct
import threading
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retr.retrieval import images
from retr.retrieval.errors import ConfigError, ImageError
from retr.retrieval.images import (
    Skipped,
    decode_image_bytes,
    iter_decoded,
    printable,
    read_image,
    relative_key,
    safe_read,
    walk_images,
)

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def save(path: Path, img: Image.Image, fmt: str | None = None, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, fmt, **kw)
    return path


def rgb(tmp_path: Path, name: str, size=(16, 16), colour=RED) -> Path:
    return save(tmp_path / name, Image.new("RGB", size, colour))


def png_header(w: int, h: int) -> bytes:
    """A PNG that only declares its size: enough for Pillow's open-time checks."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)  # 8-bit greyscale
    idat = zlib.compress(b"")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def reason_of(path, **kw) -> str:
    with pytest.raises(ImageError) as info:
        read_image(path, **kw)
    msg = str(info.value)
    assert msg.startswith(f"{printable(path)}: ") and "\n" not in msg
    return msg.removeprefix(f"{printable(path)}: ")


# ---- modes -------------------------------------------------------------------------------------------------


def _palette(transparent: bool) -> Image.Image:
    img = Image.new("P", (10, 10), 1)
    img.putpalette([0, 255, 0] + list(RED) + [0, 0, 0] * 254)
    if transparent:
        img.info["transparency"] = 1
    return img


def _array(a: np.ndarray) -> Image.Image:
    return Image.fromarray(np.tile(a, (5, 5)))  # 2x2 pattern -> 10x10


@pytest.mark.parametrize(
    "name, make, expected",
    [
        ("l.png", lambda: Image.new("L", (10, 10), 100), [(100, 100, 100)]),
        ("one.png", lambda: _array(np.array([[False, True], [True, False]])), [(0, 0, 0), WHITE]),
        ("la_clear.png", lambda: Image.new("LA", (10, 10), (100, 0)), [WHITE]),
        ("la_opaque.png", lambda: Image.new("LA", (10, 10), (100, 255)), [(100, 100, 100)]),
        ("p.png", lambda: _palette(False), [RED]),
        ("p_transparent.png", lambda: _palette(True), [WHITE]),
        ("p_transparent.gif", lambda: _palette(True), [WHITE]),
        ("rgba_clear.png", lambda: Image.new("RGBA", (10, 10), (255, 0, 0, 0)), [WHITE]),
        ("rgba_opaque.png", lambda: Image.new("RGBA", (10, 10), (255, 0, 0, 255)), [RED]),
        # (0*128 + 255*127 + 127) // 255 = 127 ; (255*128 + 255*127 + 127) // 255 = 255
        ("rgba_half.png", lambda: Image.new("RGBA", (10, 10), (0, 0, 255, 128)), [(127, 127, 255)]),
        ("cmyk_white.tif", lambda: Image.new("CMYK", (10, 10), (0, 0, 0, 0)), [WHITE]),
        ("cmyk_red.tif", lambda: Image.new("CMYK", (10, 10), (0, 255, 255, 0)), [RED]),
        # 16 bit keeps the top byte: 65535 -> 255, 256 -> 1, 255 -> 0
        ("i16.png", lambda: _array(np.array([[65535, 256], [255, 0]], np.uint16)), [(255,) * 3, (1,) * 3]),
        ("i16b.tif", lambda: _array(np.array([[65535, 256], [255, 0]], ">u2")), [(255,) * 3, (1,) * 3]),
        # I and F are stretched from their min..max: I 0..1000 -> 0..255 ; F 0, 0.5, 1 -> 0, 128, 255
        # (127.5 rounds to even)
        ("i32.tif", lambda: _array(np.array([[1000, 0], [0, 0]], np.int32)), [(255,) * 3, (0,) * 3]),
        ("f.tif", lambda: _array(np.array([[1.0, 0.5], [0.0, 0.0]], np.float32)), [(255,) * 3, (128,) * 3]),
        ("rgb.jpg", lambda: Image.new("RGB", (10, 10), (0, 0, 0)), [(0, 0, 0)]),
    ],
)
def test_every_mode_becomes_rgb_uint8(tmp_path, name, make, expected):
    x = read_image(save(tmp_path / name, make()))
    assert x.shape == (10, 10, 3) and x.dtype == np.uint8
    for col, colour in enumerate(expected):  # pixel (0, 0), then (0, 1)
        assert tuple(x[0, col]) == colour


@pytest.mark.parametrize("name", ["a.bmp", "a.ppm", "a.pgm", "a.webp", "a.tiff", "a.gif", "a.JPEG"])
def test_every_listed_format_decodes(tmp_path, name):
    img = Image.new("L" if name.endswith(".pgm") else "RGB", (10, 10), 0)
    save(tmp_path / name, img, **({"lossless": True} if name.endswith(".webp") else {}))
    x = read_image(tmp_path / name)
    assert x.shape == (10, 10, 3) and (x == 0).all()


def test_modes_round_trip_through_bytes(tmp_path):
    path = save(tmp_path / "l.png", Image.new("L", (10, 10), 100))
    x = decode_image_bytes(path.read_bytes(), name="upload.png")
    assert x.shape == (10, 10, 3) and (x == 100).all()


def test_exif_orientation_6_rotates_90_degrees(tmp_path):
    img = Image.new("RGB", (40, 20), RED)  # stored: left half red, right half blue
    img.paste(BLUE, (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": the stored left edge becomes the top
    x = read_image(save(tmp_path / "rot.jpg", img, exif=exif, quality=95))
    assert x.shape == (40, 20, 3)
    assert np.abs(x[5, 10].astype(int) - RED).max() < 10
    assert np.abs(x[35, 10].astype(int) - BLUE).max() < 10


@pytest.mark.parametrize("name, kw", [("anim.gif", {}), ("anim.png", {}), ("pages.tif", {})])
def test_animations_give_their_first_frame(tmp_path, name, kw):
    frames = [Image.new("RGB", (12, 12), c) for c in (RED, BLUE, (0, 255, 0))]
    path = save(tmp_path / name, frames[0], save_all=True, append_images=frames[1:], duration=100)
    with Image.open(path) as img:
        assert getattr(img, "n_frames", 1) == 3
    x = read_image(path)
    assert x.shape == (12, 12, 3) and (x == RED).all()


def test_draft_size_decodes_jpeg_at_a_power_of_two_scale(tmp_path):
    path = rgb(tmp_path, "big.jpg", size=(256, 128))
    assert read_image(path).shape == (128, 256, 3)
    assert read_image(path, draft_size=(64, 32)).shape == (32, 64, 3)  # 1/4
    assert read_image(path, draft_size=(100, 50)).shape == (64, 128, 3)  # 1/2: 1/4 would go below 100x50
    assert read_image(rgb(tmp_path, "big.png", size=(256, 128)), draft_size=(64, 32)).shape == (128, 256, 3)


# ---- walking -----------------------------------------------------------------------------------------------


def keys(paths, root):
    return [relative_key(p, root) for p in paths]


def test_walk_is_recursive_case_insensitive_and_sorted(tmp_path):
    for name in ["b.png", "A.JPG", "sub/deep/y.jpeg", "sub/x.TIFF", "with space 'q\".png", "a.WebP"]:
        rgb(tmp_path, name)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "sub" / "photo.jpg.bak").write_text("not an image")
    found, skipped = walk_images(tmp_path)
    expected = ["A.JPG", "a.WebP", "b.png", "sub/deep/y.jpeg", "sub/x.TIFF", "with space 'q\".png"]
    assert keys(found, tmp_path) == expected  # sorted by bytes: upper case first
    assert skipped == []
    assert all(isinstance(p, Path) and p.is_file() for p in found)


def test_walk_survives_symlink_loops_and_records_them(tmp_path):
    rgb(tmp_path, "sub/a.png")
    os.symlink(tmp_path, tmp_path / "sub" / "up")  # directory cycle
    os.symlink(tmp_path / "sub", tmp_path / "alias")  # a link into the tree, found before the real "sub"
    os.symlink("self.jpg", tmp_path / "self.jpg")  # link to itself
    found, skipped = walk_images(tmp_path)
    assert keys(found, tmp_path) == ["sub/a.png"]  # the real path wins over the alias
    assert skipped == [
        Skipped("alias", "folder already walked (symlink loop or link)"),
        Skipped("self.jpg", "symlink loop"),
        Skipped("sub/up", "folder already walked (symlink loop or link)"),
    ]


def test_walk_follows_links_out_of_the_tree(tmp_path):
    rgb(tmp_path, "elsewhere/e.png")
    (tmp_path / "root").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "root" / "b")
    os.symlink(tmp_path / "elsewhere", tmp_path / "root" / "a")  # two links to one folder: first name wins
    found, skipped = walk_images(tmp_path / "root")
    assert keys(found, tmp_path / "root") == ["a/e.png"]
    assert skipped == [Skipped("b", "folder already walked (symlink loop or link)")]


def test_walk_records_broken_symlinks_directories_and_fifos(tmp_path):
    rgb(tmp_path, "x.jpg/inner.png")  # a folder named like an image: recorded, still walked
    os.symlink(tmp_path / "missing.jpg", tmp_path / "gone.jpg")
    os.mkfifo(tmp_path / "pipe.png")
    found, skipped = walk_images(tmp_path)
    assert keys(found, tmp_path) == ["x.jpg/inner.png"]
    assert skipped == [
        Skipped("gone.jpg", "broken symlink"),
        Skipped("pipe.png", "not a regular file"),
        Skipped("x.jpg", "is a directory"),
    ]
    assert reason_of(tmp_path / "pipe.png") == "not a regular file"  # refused without blocking on open()
    assert reason_of(tmp_path / "x.jpg") == "is a directory"


def test_non_utf8_file_name_is_found_read_and_round_trips(tmp_path):
    raw = b"caf\xe9.png"  # latin-1 e-acute: not valid UTF-8
    with open(os.path.join(os.fsencode(tmp_path), raw), "wb") as f:
        Image.new("L", (10, 10), 100).save(f, "PNG")
    found, skipped = walk_images(tmp_path)
    assert len(found) == 1 and skipped == []
    key = relative_key(found[0], tmp_path)
    assert os.fsencode(key) == raw  # what the store writes
    assert printable(key) == "caf\\xe9.png"
    assert (read_image(found[0]) == 100).all()


def test_walk_rejects_a_missing_root_or_a_file(tmp_path):
    with pytest.raises(ImageError, match="cannot open folder \\(file not found"):
        walk_images(tmp_path / "nope")
    with pytest.raises(ImageError, match="not a folder"):
        walk_images(rgb(tmp_path, "a.png"))


def test_relative_key():
    assert relative_key("/data/photos/a/b.jpg", "/data/photos") == "a/b.jpg"
    assert relative_key(b"/data/photos/a.jpg", b"/data/photos") == "a.jpg"
    assert relative_key("/elsewhere/c.jpg", "/data/photos") == "/elsewhere/c.jpg"
    assert relative_key("d.jpg") == "d.jpg"


# ---- bad files ---------------------------------------------------------------------------------------------


def cut_in_half(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def noise(size=(64, 64)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8))


def test_bad_files_each_give_their_reason(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "random.jpg").write_bytes(np.random.default_rng(0).bytes(5000))
    (tmp_path / "text.jpg").write_text("hello, I am not a picture\n" * 20)
    cut_in_half(save(tmp_path / "cut.jpg", noise()))
    cut_in_half(save(tmp_path / "cut.png", noise()))
    save(tmp_path / "dot.png", Image.new("RGB", (1, 1)))
    save(tmp_path / "strip.png", Image.new("RGB", (10000, 3)))
    save(tmp_path / "wide.png", Image.new("RGB", (1000, 10)))
    assert reason_of(tmp_path / "empty.jpg") == "empty file"
    assert reason_of(tmp_path / "random.jpg").startswith("cannot identify image file")
    assert reason_of(tmp_path / "text.jpg").startswith("cannot identify image file")
    assert reason_of(tmp_path / "cut.jpg") == "truncated image"
    assert reason_of(tmp_path / "cut.png") == "truncated image"
    assert reason_of(tmp_path / "dot.png").startswith("image too small (1x1 px")
    assert reason_of(tmp_path / "strip.png").startswith("extreme aspect ratio (10000x3 px")
    assert reason_of(tmp_path / "wide.png") == "extreme aspect ratio (1000x10 px, more than 50:1)"
    assert reason_of(tmp_path / "missing.jpg") == "file not found (deleted?)"
    with pytest.raises(ImageError, match="^<bytes>: empty file$"):
        decode_image_bytes(b"")


def test_size_limits_are_inclusive(tmp_path):
    assert read_image(save(tmp_path / "min.png", Image.new("RGB", (8, 8)))).shape == (8, 8, 3)
    assert read_image(save(tmp_path / "ratio.png", Image.new("RGB", (400, 8)))).shape == (8, 400, 3)


def test_decompression_bombs_are_refused_quickly(tmp_path):
    t0 = time.perf_counter()
    save(tmp_path / "bomb1.png", Image.new("1", (14000, 14000)))  # 196 M px > 2 x limit: Pillow's error
    (tmp_path / "bomb2.png").write_bytes(png_header(10000, 10000))  # 100 M px: Pillow only warns, we refuse
    limit = Image.MAX_IMAGE_PIXELS
    assert reason_of(tmp_path / "bomb1.png") == f"decompression bomb (196000000 pixels > limit {limit})"
    assert reason_of(tmp_path / "bomb2.png") == f"decompression bomb (100000000 pixels > limit {limit})"
    with pytest.raises(ImageError, match="decompression bomb"):
        decode_image_bytes(png_header(14000, 14000))
    assert reason_of(rgb(tmp_path, "small.png", (64, 64)), max_pixels=1000) == (
        "decompression bomb (4096 pixels > limit 1000)"
    )
    assert time.perf_counter() - t0 < 5


def test_bombs_in_worker_threads_leave_warning_filters_alone(tmp_path):
    before = list(warnings.filters)
    paths = []
    for i in range(12):
        paths.append(tmp_path / f"bomb{i}.png")
        paths[-1].write_bytes(png_header(10000, 10000))
    out = [r for _, _, r in iter_decoded(paths, tmp_path, workers=4)]
    limit = Image.MAX_IMAGE_PIXELS
    assert {r.reason for r in out} == {f"decompression bomb (100000000 pixels > limit {limit})"}
    assert warnings.filters == before


def test_file_deleted_between_listing_and_reading(tmp_path):
    rgb(tmp_path, "a.png")
    found, _ = walk_images(tmp_path)
    found[0].unlink()
    assert reason_of(found[0]) == "file not found (deleted?)"
    assert safe_read(found[0], tmp_path) == Skipped("a.png", "file not found (deleted?)")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file_and_folder(tmp_path):
    path = rgb(tmp_path, "locked.png")
    rgb(tmp_path, "closed/c.png")
    path.chmod(0)
    (tmp_path / "closed").chmod(0)
    try:
        assert reason_of(path) == "permission denied"
        assert walk_images(tmp_path)[1] == [Skipped("closed", "permission denied")]
    finally:
        (tmp_path / "closed").chmod(0o755)


def test_permission_error_becomes_a_reason(tmp_path, monkeypatch):
    path = rgb(tmp_path, "a.png")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(images, "open", denied, raising=False)  # shadows the builtin inside the module
    assert reason_of(path) == "permission denied"


# ---- parallel decoding -------------------------------------------------------------------------------------


def test_iter_decoded_keeps_input_order_and_records_failures(tmp_path):
    paths = [rgb(tmp_path, f"{i}.png", colour=(i, 0, 0)) for i in range(10)]
    (tmp_path / "bad.jpg").write_text("nope")
    paths[3:3] = [tmp_path / "bad.jpg", tmp_path / "missing.png"]
    out = list(iter_decoded(paths, tmp_path, workers=2, transform=lambda x: int(x[0, 0, 0])))
    assert [i for i, _, _ in out] == list(range(12))
    assert [p for _, p, _ in out] == paths
    assert [r for _, _, r in out if not isinstance(r, Skipped)] == list(range(10))
    assert out[3][2].path == "bad.jpg" and out[3][2].reason.startswith("cannot identify image file")
    assert out[4][2] == Skipped("missing.png", "file not found (deleted?)")


def test_iter_decoded_order_holds_when_workers_finish_out_of_order(monkeypatch):
    delays = np.random.default_rng(0).uniform(0, 0.02, 30)

    def slow_read(path, **kw):
        time.sleep(delays[int(Path(path).name)])
        return int(Path(path).name)

    monkeypatch.setattr(images, "read_image", slow_read)
    out = list(iter_decoded([str(i) for i in range(30)], workers=4))
    assert [r for _, _, r in out] == list(range(30))


def test_iter_decoded_abandons_a_stuck_file_and_goes_on(monkeypatch):
    release = threading.Event()

    def read(path, **kw):
        if Path(path).name == "stuck":
            release.wait(30)  # a decoder that never returns (until the test ends)
        return Path(path).name

    monkeypatch.setattr(images, "read_image", read)
    try:
        t0 = time.perf_counter()
        # one worker: the files after the stuck one only get decoded if a fresh worker replaces it
        out = [r for _, _, r in iter_decoded(["a", "stuck", "b", "c"], workers=1, timeout_s=0.2)]
        assert time.perf_counter() - t0 < 2
        assert out == ["a", Skipped("stuck", "decode timed out after 0.2 s"), "b", "c"]
    finally:
        release.set()


def test_iter_decoded_bounds_prefetch_and_stops_when_closed(monkeypatch):
    calls = []
    monkeypatch.setattr(images, "read_image", lambda path, **kw: calls.append(path) or 0)
    it = iter_decoded([str(i) for i in range(100)], workers=2)
    assert next(it)[0] == 0
    it.close()
    time.sleep(0.1)
    assert 1 <= len(calls) <= 8  # 4 x workers in flight at most


def test_iter_decoded_ahead_sets_the_prefetch_and_worker_init_runs_first_in_each_worker(monkeypatch):
    calls, inits = [], []
    monkeypatch.setattr(images, "read_image", lambda path, **kw: calls.append(path) or threading.get_ident())
    it = iter_decoded([str(i) for i in range(100)], workers=3, ahead=20,
                      worker_init=lambda: inits.append(threading.get_ident()))
    first = next(it)[2]
    time.sleep(0.2)
    assert len(calls) == 20  # the files in flight, not 4 x workers = 12
    assert len(inits) == len(set(inits)) == 3 and first in inits  # each worker ran it once, before decoding
    it.close()


def test_iter_decoded_raises_transform_bugs_and_bad_options(tmp_path):
    path = rgb(tmp_path, "a.png")

    def broken(x):
        raise RuntimeError("bug in transform")

    with pytest.raises(RuntimeError, match="bug in transform"):
        list(iter_decoded([path], transform=broken))
    with pytest.raises(ConfigError):
        list(iter_decoded([path], workers=0))
    with pytest.raises(ConfigError):
        list(iter_decoded([path], timeout_s=0))
    with pytest.raises(ConfigError):
        list(iter_decoded([path], ahead=0))


def test_safe_read_returns_the_image_or_a_skip(tmp_path):
    x = safe_read(rgb(tmp_path, "a.png"), draft_size=(8, 8))
    assert isinstance(x, np.ndarray) and x.shape == (16, 16, 3) and (x == RED).all()
    (tmp_path / "b.jpg").write_bytes(b"")
    assert safe_read(tmp_path / "b.jpg", tmp_path) == Skipped("b.jpg", "empty file")
