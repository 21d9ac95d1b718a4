"""Benchmark datasets read in their official layouts, plus seeded near-duplicate and synthetic sets.

Two result types:
  RetrievalDataset       database paths, queries (optional bounding box), per-query ground truth
                         as database indices
  ClassificationDataset  train/test paths with (n, C) int8 labels in {1, -1, 0} (VOC semantics: 0 = difficult)

Ground-truth keys by protocol (every value is an int64 array of indices into db_paths):
  ("classic",)                 'ok' (Oxford/Paris: good + ok) and 'junk' (ignored when ranking)
  ("easy", "medium", "hard")   'easy', 'hard', 'junk' as in revisitop's gnd files; the evaluator combines them
  ("neardup",)                 'ok' (the single original of the edited query) and 'junk' (empty)

`query_in_db` is True when each query image is also a database image (Oxford, Paris, Holidays, synthetic).
"""

from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from ..retrieval.errors import DatasetError, ImageError
from .edits import make_edits, sample_photos

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
    "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


@dataclass
class Query:
    """One query image; bbox = (x1, y1, x2, y2) in pixels of the full image, or None: the whole image."""

    path: Path
    bbox: tuple[float, float, float, float] | None
    name: str


@dataclass
class RetrievalDataset:
    """A retrieval benchmark: gnd[i] holds queries[i]'s int64 arrays of indices into db_paths (module doc)."""

    name: str
    root: Path
    db_paths: list[Path]
    queries: list[Query]
    gnd: list[dict[str, np.ndarray]]
    protocols: tuple[str, ...]
    query_in_db: bool


@dataclass
class ClassificationDataset:
    """A classification benchmark: labels (n, C) int8, 1 = present, -1 = absent, 0 = difficult (ignored)."""

    name: str
    classes: list[str]
    train_paths: list[Path]
    train_labels: np.ndarray
    test_paths: list[Path]
    test_labels: np.ndarray
    # "map": mean over classes of the average precision; "accuracy": argmax of single-label sets.
    metric: str


def _idx(values) -> np.ndarray:
    return np.asarray(values, dtype=np.int64).reshape(-1)


def _unique_idx(values: list[int]) -> np.ndarray:
    """_idx of values without repeats, in order of first occurrence."""
    return _idx(list(dict.fromkeys(values)))


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise DatasetError(f"missing {path} ({what})")
    return path


def _walk_images(folder: Path) -> list[Path]:
    """Image files under folder, recursively, sorted by their path relative to folder."""
    found = [
        Path(d) / f
        for d, _, files in os.walk(folder, followlinks=True)
        for f in files
        if f.lower().endswith(IMAGE_EXTENSIONS)
    ]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def _read_lines(path: Path, what: str = "ground-truth file") -> list[str]:
    """The non-blank lines of a text file, stripped."""
    return [line.strip() for line in _need(path, what).read_text().splitlines() if line.strip()]


# ----------------------------------------------------------------------------------------------------
# Oxford 5k / Paris 6k (classic protocol, gt_files)


def _load_gt_files(root: Path, name: str, crop: bool) -> RetrievalDataset:
    jpg, gt = _need(root / "jpg", "image folder"), _need(root / "gt_files", "ground-truth folder")
    # Paris' tarballs extract as jpg/<landmark>/<name>.jpg, Oxford's flat: index every image by its basename.
    db_paths = [p for p in _walk_images(jpg) if p.suffix.lower() == ".jpg"]
    if not db_paths:
        raise DatasetError(f"no .jpg images under {jpg}: extract the {name} image tarball(s) there")
    index = {p.stem: i for i, p in enumerate(db_paths)}

    def lookup(image: str, source: Path) -> int:
        if image not in index:
            raise DatasetError(f"{source} names image {image!r}, which is not under {jpg}")
        return index[image]

    query_files = sorted(gt.glob("*_query.txt"))
    if not query_files:
        raise DatasetError(f"no *_query.txt files in {gt}: extract the {name} ground-truth tarball there")
    queries, gnd = [], []
    for qf in query_files:
        qid = qf.name[: -len("_query.txt")]
        lines = _read_lines(qf)
        fields = lines[0].split() if lines else []
        if len(fields) != 5:
            raise DatasetError(f"{qf} must hold one line 'image x1 y1 x2 y2'; re-extract the ground truth")
        # Oxford prefixes the image name with its collection ("oxc1_all_souls_000013"); Paris does not.
        image = fields[0][len("oxc1_") :] if fields[0].startswith("oxc1_") else fields[0]
        bbox = tuple(float(v) for v in fields[1:5]) if crop else None
        queries.append(Query(path=db_paths[lookup(image, qf)], bbox=bbox, name=qid))
        lists = {}
        for kind in ("good", "ok", "junk"):
            f = gt / f"{qid}_{kind}.txt"
            lists[kind] = [lookup(image, f) for image in _read_lines(f)]
        # compute_ap.cpp reads the lists into std::sets: an image listed twice (all_souls_000091 in
        # all_souls_1_good.txt) is one positive, not two of which only one can be found. First occurrence wins.
        gnd.append({"ok": _unique_idx(lists["good"] + lists["ok"]), "junk": _unique_idx(lists["junk"])})
    return RetrievalDataset(name, root, db_paths, queries, gnd, ("classic",), query_in_db=True)


def load_oxford5k(root: Path | str, crop: bool = True) -> RetrievalDataset:
    """Oxford 5k: root/jpg/*.jpg and root/gt_files/<query>_{query,good,ok,junk}.txt (55 queries).

    crop=True records each query's bounding box so the evaluator crops the query image (standard protocol).
    """
    return _load_gt_files(Path(root), "oxford5k", crop)


def load_paris6k(root: Path | str, crop: bool = True) -> RetrievalDataset:
    """Paris 6k: root/jpg/[<landmark>/]*.jpg and root/gt_files/<query>_{query,good,ok,junk}.txt (55 queries).

    crop=True records each query's bounding box, as for Oxford 5k.
    """
    return _load_gt_files(Path(root), "paris6k", crop)


# ----------------------------------------------------------------------------------------------------
# Revisited Oxford / Paris (revisitop gnd_<name>.pkl)


def load_revisited(root: Path | str, name: str, distractors: Path | str | None = None) -> RetrievalDataset:
    """roxford5k / rparis6k: root/jpg/<imname>.jpg and root/gnd_<name>.pkl (70 queries, protocols E/M/H).

    root may also be the parent folder holding <name>/. distractors: the R1M image folder, walked
    recursively and appended after the main images (ground-truth indices are unchanged).
    """
    if name not in ("roxford5k", "rparis6k"):
        raise DatasetError(f"unknown revisited dataset {name!r}: use roxford5k or rparis6k")
    root = Path(root)
    if not (root / f"gnd_{name}.pkl").exists() and (root / name / f"gnd_{name}.pkl").exists():
        root = root / name
    gnd_file = _need(root / f"gnd_{name}.pkl", "revisitop ground truth, from cmp.felk.cvut.cz/revisitop")
    jpg = _need(root / "jpg", "image folder")
    # pickle is acceptable here: it is the dataset's own distribution format (plain dicts and lists written by
    # the revisitop authors), read from a file the user downloaded, never something retr writes.
    with open(gnd_file, "rb") as f:
        cfg = pickle.load(f)
    db_paths = [jpg / f"{im}.jpg" for im in cfg["imlist"]]
    for p in db_paths[:1] + db_paths[-1:]:  # checking every file would stat 5-6k files on each load
        _need(p, f"image listed in {gnd_file.name}")
    queries, gnd = [], []
    for qname, g in zip(cfg["qimlist"], cfg["gnd"]):
        bbox = tuple(float(v) for v in g["bbx"])
        queries.append(Query(path=_need(jpg / f"{qname}.jpg", "query image"), bbox=bbox, name=qname))
        gnd.append({k: _idx(g[k]) for k in ("easy", "hard", "junk")})
    if distractors is not None:
        distractors = _need(Path(distractors), "R1M distractor folder")
        extra = _walk_images(distractors)
        if not extra:
            raise DatasetError(f"no images under {distractors}: extract the revisitop1m images there")
        db_paths += extra
    return RetrievalDataset(name, root, db_paths, queries, gnd, ("easy", "medium", "hard"), query_in_db=False)


# ----------------------------------------------------------------------------------------------------
# INRIA Holidays


def load_holidays(root: Path | str) -> RetrievalDataset:
    """INRIA Holidays: root/jpg/NNNNMM.jpg (or the .jpg files in root); group = NNNN, query = MM == 00.

    As in the official holidays_map.py, every image (queries included) is in the database and the query's own
    result is ignored: gnd 'ok' = the other images of its group, 'junk' = the query itself.
    """
    root = Path(root)
    folder = root / "jpg" if (root / "jpg").is_dir() else root
    db_paths = sorted(p for p in _need(folder, "image folder").iterdir() if p.suffix.lower() == ".jpg")
    if not db_paths or not all(p.stem.isdigit() for p in db_paths):
        raise DatasetError(
            f"{folder} must hold the Holidays images named like 100000.jpg: extract jpg1/jpg2 there"
        )
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(db_paths):
        groups.setdefault(int(p.stem) // 100, []).append(i)
    queries, gnd = [], []
    for members in groups.values():
        q = next((i for i in members if int(db_paths[i].stem) % 100 == 0), None)
        if q is None:
            raise DatasetError(
                f"group {db_paths[members[0]].stem[:-2]} has no query image ending in 00 in {folder}"
            )
        queries.append(Query(path=db_paths[q], bbox=None, name=db_paths[q].stem))
        gnd.append({"ok": _idx([i for i in members if i != q]), "junk": _idx([q])})
    return RetrievalDataset("holidays", root, db_paths, queries, gnd, ("classic",), query_in_db=True)


# ----------------------------------------------------------------------------------------------------
# Pascal VOC 2007 classification


def load_voc2007(root: Path | str) -> ClassificationDataset:
    """VOC 2007: root = VOCdevkit/VOC2007 (or VOCdevkit); train on trainval, test on test; (n, 20) labels."""
    root = Path(root)
    if not (root / "ImageSets").is_dir() and (root / "VOC2007").is_dir():
        root = root / "VOC2007"
    main, jpeg = root / "ImageSets" / "Main", _need(root / "JPEGImages", "VOC image folder")

    def split(name: str) -> tuple[list[Path], np.ndarray]:
        tar = (
            "VOCtest_06-Nov-2007.tar (a separate download)"
            if name == "test"
            else "VOCtrainval_06-Nov-2007.tar"
        )
        columns = []
        for cls in VOC_CLASSES:
            f = main / f"{cls}_{name}.txt"
            if not f.exists():
                raise DatasetError(f"missing {f}: extract {tar} in the folder that holds VOCdevkit")
            columns.append(dict(line.split() for line in f.read_text().splitlines() if line.strip()))
        ids = sorted(columns[0])
        for cls, column in zip(VOC_CLASSES, columns):
            if column.keys() != columns[0].keys():
                raise DatasetError(
                    f"{main / f'{cls}_{name}.txt'} lists other images than the other classes; re-extract it"
                )
        labels = np.array([[int(column[i]) for column in columns] for i in ids], dtype=np.int8)
        return [jpeg / f"{i}.jpg" for i in ids], labels

    train_paths, train_labels = split("trainval")
    test_paths, test_labels = split("test")
    _need(train_paths[0], "VOC trainval image: extract VOCtrainval_06-Nov-2007.tar")
    _need(test_paths[0], "VOC test image: extract VOCtest_06-Nov-2007.tar")
    return ClassificationDataset(
        "voc2007", list(VOC_CLASSES), train_paths, train_labels, test_paths, test_labels, metric="map"
    )


# ----------------------------------------------------------------------------------------------------
# Class-per-folder sets: MIT Indoor 67, Food-101


def _one_hot(labels: list[int], n_classes: int) -> np.ndarray:
    y = -np.ones((len(labels), n_classes), np.int8)
    y[np.arange(len(labels)), labels] = 1
    return y


def load_image_folder_classification(root: Path | str, name: str, seed: int = 0) -> ClassificationDataset:
    """Images in <images>/<class>/..., <images> = root/Images (MIT-67), root/images (Food-101) or root itself.

    Official splits when present: root/TrainImages.txt + TestImages.txt (MIT-67, "class/file.jpg" lines)
    or root/meta/train.txt + test.txt (Food-101, "class/id" lines without extension). Otherwise a seeded
    80/20 split of each class. Labels are one-hot (n, C) int8 in {1, -1}; metric "accuracy".
    """
    root = Path(root)
    images = next((root / d for d in ("Images", "images") if (root / d).is_dir()), root)
    classes = sorted(d.name for d in _need(images, "image folder").iterdir() if d.is_dir())
    if not classes:
        raise DatasetError(f"no class folders in {images}: expected <class>/<image> sub-folders")
    cls_index = {c: i for i, c in enumerate(classes)}
    official = [
        (root / "TrainImages.txt", root / "TestImages.txt"),
        (root / "meta/train.txt", root / "meta/test.txt"),
    ]
    split_files = next((pair for pair in official if pair[0].exists() or pair[1].exists()), None)
    if split_files is not None:
        out = []
        for f in split_files:
            paths, labels = [], []
            for rel in _read_lines(f, "official split file"):
                p = images / rel if Path(rel).suffix else images / f"{rel}.jpg"
                cls = Path(rel).parts[0]
                if cls not in cls_index:
                    raise DatasetError(f"{f} names class {cls!r}, which has no folder in {images}")
                paths.append(p)
                labels.append(cls_index[cls])
            out.append((paths, labels))
        (train_paths, train_y), (test_paths, test_y) = out
    else:
        rng = np.random.default_rng(seed)
        train_paths, train_y, test_paths, test_y = [], [], [], []
        for c, cls in enumerate(classes):
            files = _walk_images(images / cls)
            perm = rng.permutation(len(files))
            n_train = max(1, round(0.8 * len(files))) if files else 0
            for k, j in enumerate(perm):
                paths, ys = (train_paths, train_y) if k < n_train else (test_paths, test_y)
                paths.append(files[j])
                ys.append(c)
    for paths in (train_paths, test_paths):
        if paths:
            _need(paths[0], "image listed in the split file")
    n = len(classes)
    return ClassificationDataset(
        name, classes, train_paths, _one_hot(train_y, n), test_paths, _one_hot(test_y, n), metric="accuracy"
    )


# ----------------------------------------------------------------------------------------------------
# Near-duplicate set built from any photos (Copydays-style edits)


def _read_photo(path: Path, max_side: int) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")
    except OSError as e:
        raise ImageError(f"cannot decode {path} ({e}); remove it from the photo folder") from None
    im.thumbnail((max_side, max_side), Image.LANCZOS)
    return np.asarray(im, dtype=np.uint8)


def _save_jpeg(x: np.ndarray, path: Path) -> Path:
    Image.fromarray(x).save(path, format="JPEG", quality=95)
    return path


def build_neardup(
    root: Path | str | None,
    out: Path | str,
    edits_per_image: int = 5,
    seed: int = 0,
    distractors: Path | str | None = None,
    max_side: int = 1024,
) -> RetrievalDataset:
    """Near-duplicate benchmark: each photo's seeded edits are queries whose single positive is the photo.

    root: a folder of photos (walked recursively, downscaled to <= max_side px on the long side), or None
    for the scikit-image sample photos. Writes out/db/<i>_<name>.jpg (originals) and
    out/queries/<i>_<j>_<edit>.jpg, JPEG quality 95. distractors: an optional image folder appended to the
    database as is. The same inputs and seed give the same files and dataset.
    """
    out = Path(out)
    if root is None:
        photos = [(name, _downscale(x, max_side)) for name, x in sample_photos().items()]
    else:
        files = _walk_images(_need(Path(root), "photo folder"))
        if not files:
            raise DatasetError(
                f"no images under {root}: give a folder of photos, or none for the sample photos"
            )
        photos = [(p.stem, _read_photo(p, max_side)) for p in files]
    (out / "db").mkdir(parents=True, exist_ok=True)
    (out / "queries").mkdir(parents=True, exist_ok=True)
    db_paths, queries, gnd = [], [], []
    for i, (name, x) in enumerate(photos):
        db_paths.append(_save_jpeg(x, out / "db" / f"{i:05d}_{name}.jpg"))
        # One seed per photo, so adding photos at the end leaves the earlier queries unchanged.
        for j, (edit, y) in enumerate(make_edits(x, edits_per_image, seed=seed * 1_000_003 + i)):
            q = _save_jpeg(y, out / "queries" / f"{i:05d}_{j}_{edit}.jpg")
            queries.append(Query(path=q, bbox=None, name=f"{name}:{edit}"))
            gnd.append({"ok": _idx([i]), "junk": _idx([])})
    if distractors is not None:
        db_paths += _walk_images(_need(Path(distractors), "distractor folder"))
    return RetrievalDataset("neardup", out, db_paths, queries, gnd, ("neardup",), query_in_db=False)


def _downscale(x: np.ndarray, max_side: int) -> np.ndarray:
    if max(x.shape[:2]) <= max_side:
        return x
    im = Image.fromarray(x)
    im.thumbnail((max_side, max_side), Image.LANCZOS)
    return np.asarray(im, dtype=np.uint8)


# ----------------------------------------------------------------------------------------------------
# Synthetic families (no download)


def _family_base(rng: np.random.Generator, size: int) -> np.ndarray:
    """A procedural picture: a two-colour gradient, an oriented stripe texture and 3-6 filled shapes."""
    t = np.linspace(0.0, 1.0, size, dtype=np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * t[None, :] + np.sin(angle) * t[:, None]
    ramp = (ramp - ramp.min()) / (np.ptp(ramp) + 1e-6)
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    x = c0 + ramp[..., None] * (c1 - c0)
    freq, theta = rng.uniform(2, 8), rng.uniform(0, np.pi)
    stripes = np.sin(2 * np.pi * freq * (np.cos(theta) * t[None, :] + np.sin(theta) * t[:, None]))
    x += rng.uniform(10, 40) * stripes[..., None]
    im = Image.fromarray(np.clip(x, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(3, 7))):
        x0, y0 = rng.uniform(-0.1, 0.8, 2) * size
        w, h = rng.uniform(0.15, 0.5, 2) * size
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = int(rng.integers(3))
        if kind == 0:
            draw.ellipse([x0, y0, x0 + w, y0 + h], fill=fill)
        elif kind == 1:
            draw.rectangle([x0, y0, x0 + w, y0 + h], fill=fill)
        else:
            draw.polygon([(x0, y0 + h), (x0 + w / 2, y0), (x0 + w, y0 + h)], fill=fill)
    return np.asarray(im, dtype=np.uint8)


def _family_member(base: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A perturbed copy of base, same size: crop 70-95 % of each side, resize, flip, colour jitter, JPEG."""
    size = base.shape[0]
    s = rng.uniform(0.7, 0.95)
    c = max(1, round(size * s))
    y0, x0 = rng.integers(0, size - c + 1, 2)
    im = Image.fromarray(base[y0 : y0 + c, x0 : x0 + c]).resize((size, size), Image.BILINEAR)
    x = np.asarray(im, dtype=np.float32)
    if rng.random() < 0.5:
        x = x[:, ::-1]
    # A common gain with a little per-channel spread: brightness changes, the family's hues stay recognisable.
    x = x * (rng.uniform(0.85, 1.15) + rng.uniform(-0.05, 0.05, 3)) + rng.uniform(-10, 10, 3)
    buf = io.BytesIO()
    Image.fromarray(np.clip(x, 0, 255).astype(np.uint8)).save(
        buf, format="JPEG", quality=int(rng.integers(50, 91))
    )
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"), dtype=np.uint8)


def _write_families(out: Path, n_families: int, per_family: int, size: int, seed: int) -> list[list[Path]]:
    """Writes out/f<family>_m<member>.png and returns the paths by family; deterministic in all arguments."""
    if n_families < 2 or per_family < 2:
        raise ValueError(f"need >= 2 families of >= 2 members, got {n_families} x {per_family}")
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for f, rng in enumerate(np.random.default_rng(seed).spawn(n_families)):
        base = _family_base(rng, size)
        members = []
        for m in range(per_family):
            p = out / f"f{f:03d}_m{m:02d}.png"
            Image.fromarray(_family_member(base, rng)).save(p)
            members.append(p)
        paths.append(members)
    return paths


def build_synthetic(
    out: Path | str, n_families: int = 10, per_family: int = 6, size: int = 96, seed: int = 0
) -> RetrievalDataset:
    """Synthetic retrieval set: n_families procedural pictures, per_family perturbed copies of each (PNG).

    Database = every member (family-major order); query = member 0 of each family, whose own database entry is
    'junk' (ignored) and whose 'ok' are the family's other members. Protocol ("classic",).
    """
    out = Path(out)
    families = _write_families(out, n_families, per_family, size, seed)
    db_paths = [p for members in families for p in members]
    queries, gnd = [], []
    for f, members in enumerate(families):
        first = f * per_family
        queries.append(Query(path=members[0], bbox=None, name=f"family{f:03d}"))
        gnd.append({"ok": _idx(range(first + 1, first + per_family)), "junk": _idx([first])})
    return RetrievalDataset("synthetic", out, db_paths, queries, gnd, ("classic",), query_in_db=True)


def build_synthetic_classification(
    out: Path | str, n_classes: int = 10, per_class: int = 10, n_train: int = 6, size: int = 96, seed: int = 0
) -> ClassificationDataset:
    """Synthetic classification set: class = family; the first n_train members train, the rest test.

    Labels are one-hot (n, C) int8 in {1, -1}; metric "map" (per-class average precision, as VOC).
    """
    if not 1 <= n_train < per_class:
        raise ValueError(f"n_train must be in [1, per_class), got {n_train} of {per_class}")
    families = _write_families(Path(out), n_classes, per_class, size, seed)
    train = [(p, c) for c, members in enumerate(families) for p in members[:n_train]]
    test = [(p, c) for c, members in enumerate(families) for p in members[n_train:]]
    classes = [f"family{c:03d}" for c in range(n_classes)]
    train_y, test_y = _one_hot([c for _, c in train], n_classes), _one_hot([c for _, c in test], n_classes)
    return ClassificationDataset(
        "synthetic", classes, [p for p, _ in train], train_y, [p for p, _ in test], test_y, metric="map"
    )


# ----------------------------------------------------------------------------------------------------
# Dispatcher

_LOADERS: dict[str, Callable[..., RetrievalDataset | ClassificationDataset]] = {
    "oxford5k": load_oxford5k,
    "paris6k": load_paris6k,
    "roxford5k": lambda root, **kw: load_revisited(root, "roxford5k", **kw),
    "rparis6k": lambda root, **kw: load_revisited(root, "rparis6k", **kw),
    "voc2007": load_voc2007,
    "holidays": load_holidays,
    "mit67": lambda root, **kw: load_image_folder_classification(root, "mit67", **kw),
    "food101": lambda root, **kw: load_image_folder_classification(root, "food101", **kw),
    "neardup": build_neardup,  # root = photo folder or None; out= is required
    "synthetic": build_synthetic,  # root = output folder
    "synthetic-cls": build_synthetic_classification,
}

DATASETS: tuple[str, ...] = tuple(_LOADERS)


# Where each dataset that must be downloaded comes from (the README's table), for the error without --root.
SOURCES = {
    "oxford5k": "the Oxford Buildings page of Oxford VGG: oxbuild_images + gt_files tarballs",
    "paris6k": "the Paris Dataset page of Oxford VGG: paris_1/paris_2 + paris_120310 tarballs",
    "roxford5k": "revisitop (cmp.felk.cvut.cz/revisitop): the Oxford images + gnd_roxford5k.pkl",
    "rparis6k": "revisitop (cmp.felk.cvut.cz/revisitop): the Paris images + gnd_rparis6k.pkl",
    "voc2007": "PASCAL VOC 2007: VOCtrainval_06-Nov-2007.tar + VOCtest_06-Nov-2007.tar",
    "holidays": "the INRIA Holidays page: jpg1 + jpg2 tarballs",
    "mit67": "the MIT Indoor-67 page: indoorCVPR_09.tar + TrainImages.txt / TestImages.txt",
    "food101": "the ETH Food-101 page: food-101.tar.gz",
}


def load_dataset(name: str, root: Path | str | None, **kw) -> RetrievalDataset | ClassificationDataset:
    """Load (or build) the dataset called name from root; kw go to its loader (crop=, distractors=, out=).

    root None is allowed only for the datasets retr can make itself (neardup, synthetic, synthetic-cls).
    """
    if name not in _LOADERS:
        raise DatasetError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    if root is None and name in SOURCES:
        raise DatasetError(
            f"{name} needs --root, the folder of the downloaded dataset in its official layout "
            f"(get it from {SOURCES[name]}; see the README's dataset table)"
        )
    if root is None and name in ("synthetic", "synthetic-cls"):
        raise DatasetError(f"{name} needs root, the folder to write its generated images to")
    return _LOADERS[name](root, **kw)
