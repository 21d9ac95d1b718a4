import numpy as np
import pytest

from retr.eval.edits import EDITS, make_edits, sample_photos


@pytest.fixture
def photo() -> np.ndarray:
    """(48, 64, 3) uint8: a colour gradient with seeded noise, so every edit visibly changes something."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:64]
    x = np.stack([xx * 4, yy * 5, (xx + yy) * 2], axis=-1) + rng.integers(0, 20, (48, 64, 3))
    return np.clip(x, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("name", sorted(EDITS))
def test_every_edit_returns_a_valid_rgb_image(name, photo):
    before = photo.copy()
    y = EDITS[name](photo, np.random.default_rng(1))
    assert y.dtype == np.uint8 and y.ndim == 3 and y.shape[2] == 3 and y.flags.c_contiguous
    assert not (y.shape == photo.shape and np.array_equal(y, photo)), "the edit changed nothing"
    np.testing.assert_array_equal(photo, before)  # the input is never modified in place


def test_crop_keeps_50_to_90_percent_of_the_area(photo):
    for seed in range(20):
        y = EDITS["crop"](photo, np.random.default_rng(seed))
        h, w = y.shape[:2]
        assert h <= 48 and w <= 64
        # Rounding each side to whole pixels moves the area fraction by at most ~(1/48 + 1/64).
        assert 0.5 - 0.04 <= h * w / (48 * 64) <= 0.9 + 0.04
        # The crop is a window of the original: find it by its top-left pixel row.
        hits = [
            (i, j)
            for i in range(48 - h + 1)
            for j in range(64 - w + 1)
            if np.array_equal(photo[i : i + h, j : j + w], y)
        ]
        assert hits


def test_rotate90_swaps_height_and_width(photo):
    y = EDITS["rotate90"](photo, np.random.default_rng(0))
    assert y.shape == (64, 48, 3)
    assert any(np.array_equal(y, np.rot90(photo, k)) for k in (1, 3))


def test_flip_mirrors_left_right(photo):
    np.testing.assert_array_equal(EDITS["flip"](photo, np.random.default_rng(0)), photo[:, ::-1])


def test_scale_shrinks_both_sides_by_0_3_to_0_8(photo):
    for seed in range(10):
        h, w = EDITS["scale"](photo, np.random.default_rng(seed)).shape[:2]
        assert round(48 * 0.3) <= h <= round(48 * 0.8) and round(64 * 0.3) <= w <= round(64 * 0.8)
        assert abs(h / 48 - w / 64) < 0.05  # same factor on both sides


@pytest.mark.parametrize("name", ["rotate", "jpeg", "colour", "contrast", "blur", "text"])
def test_photometric_edits_keep_the_shape(name, photo):
    assert EDITS[name](photo, np.random.default_rng(3)).shape == photo.shape


def test_jpeg_stays_close_to_the_original(photo):
    y = EDITS["jpeg"](photo, np.random.default_rng(0))
    assert 0 < np.abs(y.astype(int) - photo).mean() < 20


def test_make_edits_is_deterministic_for_a_seed(photo):
    a, b = make_edits(photo, 7, seed=5), make_edits(photo, 7, seed=5)
    assert [n for n, _ in a] == [n for n, _ in b]
    for (_, x), (_, y) in zip(a, b):
        np.testing.assert_array_equal(x, y)
    c = make_edits(photo, 7, seed=6)
    assert [n for n, _ in a] != [n for n, _ in c] or any(
        x.shape != y.shape or not np.array_equal(x, y) for (_, x), (_, y) in zip(a, c)
    )


def test_make_edits_covers_every_kind_before_repeating(photo):
    names = [n for n, _ in make_edits(photo, len(EDITS) + 2, seed=0)]
    assert len(names) == len(EDITS) + 2
    assert sorted(names[: len(EDITS)]) == sorted(EDITS)
    assert make_edits(photo, 0, seed=0) == []


def test_make_edits_rejects_a_grey_image():
    with pytest.raises(ValueError, match="uint8"):
        make_edits(np.zeros((8, 8), np.uint8), 1, seed=0)


def test_sample_photos_are_bundled_colour_photographs():
    photos = sample_photos()
    assert set(photos) == {
        "astronaut",
        "chelsea",
        "coffee",
        "hubble_deep_field",
        "immunohistochemistry",
        "motorcycle_left",
        "retina",
        "rocket",
    }
    assert photos["astronaut"].shape == (512, 512, 3) and photos["chelsea"].shape == (300, 451, 3)
    for x in photos.values():
        assert x.dtype == np.uint8 and x.ndim == 3 and x.shape[2] == 3 and min(x.shape[:2]) >= 300
        assert x.std(axis=(0, 1)).min() > 5  # real pictures, not flat
