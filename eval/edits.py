"""Copydays-style seeded edits of a photograph, and the colour photographs bundled with scikit-image.

Every edit is a function `(x, rng) -> y` where x is an (H, W, 3) uint8 RGB array, rng a numpy Generator,
and y a new (H', W', 3) uint8 array. All randomness comes from rng, so an edit is reproducible from a seed.
The strengths follow the Copydays "strong" attacks (crops of 10-50 % of the area, JPEG down to quality 10,
rotations, scaling, colour and contrast changes, blur, overlaid text) plus a horizontal flip.
"""

from __future__ import annotations

import io
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont

Edit = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _pil(x: np.ndarray) -> Image.Image:
    return Image.fromarray(x)


def _arr(im: Image.Image) -> np.ndarray:
    return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def crop(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Keep a random window of 50-90 % of the area (Copydays removes 10-50 %), aspect jittered by ±10 %."""
    h, w = x.shape[:2]
    a = rng.uniform(0.5, 0.9)
    # Height and width fractions multiply to a; clipping sh to [a, 1] keeps both fractions <= 1.
    sh = float(np.clip(np.sqrt(a) * np.exp(rng.uniform(-0.1, 0.1)), a, 1.0))
    sw = a / sh
    ch, cw = max(1, round(h * sh)), max(1, round(w * sw))
    y0 = int(rng.integers(0, h - ch + 1))
    x0 = int(rng.integers(0, w - cw + 1))
    return x[y0 : y0 + ch, x0 : x0 + cw].copy()


def rotate(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rotate by ±5-30 degrees about the centre, same size, corners filled black (as Copydays' rotations)."""
    angle = rng.uniform(5.0, 30.0) * rng.choice([-1.0, 1.0])
    return _arr(_pil(x).rotate(angle, resample=Image.BICUBIC, expand=False, fillcolor=(0, 0, 0)))


def rotate90(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rotate by +90 or -90 degrees: (H, W, 3) becomes (W, H, 3)."""
    return np.ascontiguousarray(np.rot90(x, k=int(rng.choice([1, 3]))))


def jpeg(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Re-encode as JPEG at a quality drawn from 10..75 (Copydays' JPEG attacks go from 75 down to 3)."""
    buf = io.BytesIO()
    _pil(x).save(buf, format="JPEG", quality=int(rng.integers(10, 76)))
    buf.seek(0)
    return _arr(Image.open(buf))


def scale(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Downscale both sides by a factor drawn from 0.3-0.8 (Lanczos)."""
    h, w = x.shape[:2]
    f = rng.uniform(0.3, 0.8)
    return _arr(_pil(x).resize((max(1, round(w * f)), max(1, round(h * f))), Image.LANCZOS))


def colour(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Change the saturation (factor 0.3-1.8) then shift each channel by -25..25 grey levels."""
    y = ImageEnhance.Color(_pil(x)).enhance(rng.uniform(0.3, 1.8))
    shift = rng.integers(-25, 26, size=3)
    return np.clip(_arr(y).astype(np.int16) + shift, 0, 255).astype(np.uint8)


def contrast(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Change the contrast (factor 0.5-1.5) then the brightness (factor 0.6-1.4)."""
    y = ImageEnhance.Contrast(_pil(x)).enhance(rng.uniform(0.5, 1.5))
    return _arr(ImageEnhance.Brightness(y).enhance(rng.uniform(0.6, 1.4)))


def blur(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gaussian blur, radius 0.4-1.2 % of the long side (2-6 px on a 512 px photo), at least 0.5 px."""
    r = max(0.5, rng.uniform(0.004, 0.012) * max(x.shape[:2]))
    return _arr(_pil(x).filter(ImageFilter.GaussianBlur(radius=r)))


_WORDS = ("COPYDAYS", "sample", "holiday 2008", "(c) retr", "near duplicate", "STRESS TEST", "caption")


def text(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Overlay a short caption (Pillow's default font, 6-15 % of the height) in a random colour and place."""
    h, w = x.shape[:2]
    im = _pil(x.copy())
    size = max(8, round(rng.uniform(0.06, 0.15) * h))
    # load_default(size) gives a scalable FreeType font when Pillow has FreeType, else the fixed bitmap font.
    font = ImageFont.load_default(size=size)
    words = _WORDS[int(rng.integers(len(_WORDS)))]
    fill = tuple(int(c) for c in rng.integers(0, 256, size=3))
    xy = (int(rng.integers(0, max(1, w // 2))), int(rng.integers(0, max(1, h - size))))
    ImageDraw.Draw(im).text(xy, words, fill=fill, font=font)
    return _arr(im)


def flip(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mirror left-right (rng unused; kept for the common signature)."""
    return np.ascontiguousarray(x[:, ::-1])


EDITS: dict[str, Edit] = {
    "crop": crop,
    "rotate": rotate,
    "rotate90": rotate90,
    "jpeg": jpeg,
    "scale": scale,
    "colour": colour,
    "contrast": contrast,
    "blur": blur,
    "text": text,
    "flip": flip,
}


def make_edits(image: np.ndarray, n: int, seed: int) -> list[tuple[str, np.ndarray]]:
    """n seeded edits of one photo: [(edit_name, (H', W', 3) uint8)], the same for the same image and seed.

    Edit kinds are drawn without repetition (a seeded permutation of EDITS, renewed every len(EDITS)
    edits), so n <= len(EDITS) gives n different kinds.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"make_edits needs an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    names = list(EDITS)
    order: list[str] = []
    while len(order) < n:
        order += [names[i] for i in rng.permutation(len(names))]
    return [(name, EDITS[name](image, rng)) for name in order[:n]]


# Colour photographs shipped inside the scikit-image wheel (no pooch download). Left out: grey-level images,
# drawings (logo, colorwheel), `cat` (the same picture as chelsea) and motorcycle_right (the other half of
# a stereo pair with motorcycle_left: a near duplicate that would make a near-duplicate benchmark ambiguous).
_SKIMAGE_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "hubble_deep_field",
    "immunohistochemistry",
    "motorcycle_left",
    "retina",
    "rocket",
)


def sample_photos() -> dict[str, np.ndarray]:
    """The colour photographs bundled with scikit-image, by name: (H, W, 3) uint8 RGB, 300-1411 px a side."""
    from skimage import data

    photos = {}
    for name in _SKIMAGE_PHOTOS:
        x = data.stereo_motorcycle()[0] if name == "motorcycle_left" else getattr(data, name)()
        photos[name] = np.ascontiguousarray(x[..., :3], dtype=np.uint8)  # drop an alpha channel if present
    return photos
