import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retr.eval.datasets import (
    DATASETS,
    VOC_CLASSES,
    ClassificationDataset,
    RetrievalDataset,
    build_neardup,
    build_synthetic,
    build_synthetic_classification,
    load_dataset,
    load_holidays,
    load_image_folder_classification,
    load_oxford5k,
    load_paris6k,
    load_revisited,
    load_voc2007,
)
from retr.retrieval.errors import DatasetError, ImageError


def _image(path: Path, size: tuple[int, int] = (16, 16), value: int = 0) -> Path:
    """Writes a (h, w) image whose pixels depend on value, as JPEG or PNG by the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    x = np.stack([xx * 7 + value * 37, yy * 11 + value * 53, (xx + yy) * 3 + value * 91], axis=-1) % 256
    Image.fromarray(x.astype(np.uint8)).save(path)
    return path


def _size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file."""
    with Image.open(path) as im:
        return im.size


def _pixels(path: Path, size: tuple[int, int]) -> np.ndarray:
    """The image resized to size with box filtering, float32."""
    with Image.open(path) as im:
        return np.asarray(im.resize(size, Image.BOX), np.float32)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _idx(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def assert_gnd_equal(gnd: dict[str, np.ndarray], **expected: np.ndarray) -> None:
    assert set(gnd) == set(expected)
    for key, value in expected.items():
        assert gnd[key].dtype == np.int64
        np.testing.assert_array_equal(gnd[key], value, err_msg=key)


# ---------------------------------------------------------------------------------------------------
# Oxford 5k / Paris 6k


@pytest.fixture
def oxford(tmp_path: Path) -> Path:
    root = tmp_path / "oxford5k"
    # Sorted basenames give the database order: 0 all_souls_000013, 1 all_souls_000026, 2 ashmolean_000000,
    # 3 christ_church_000179, 4 oxford_001115.
    names = [
        "oxford_001115",
        "all_souls_000026",
        "christ_church_000179",
        "all_souls_000013",
        "ashmolean_000000",
    ]
    for v, name in enumerate(names):
        _image(root / "jpg" / f"{name}.jpg", value=v)
    gt = root / "gt_files"
    _write(gt / "all_souls_1_query.txt", "oxc1_all_souls_000013 136.5 34.1 648.5 955.7\n")
    _write(gt / "all_souls_1_good.txt", "all_souls_000013\nall_souls_000026\n")
    _write(gt / "all_souls_1_ok.txt", "oxford_001115\n")
    _write(gt / "all_souls_1_junk.txt", "ashmolean_000000\n")
    _write(gt / "christ_church_1_query.txt", "oxc1_christ_church_000179 1 2 30 40\n")
    _write(gt / "christ_church_1_good.txt", "christ_church_000179\n")
    _write(gt / "christ_church_1_ok.txt", "")
    _write(gt / "christ_church_1_junk.txt", "")
    return root


def test_oxford_reads_queries_boxes_and_ground_truth(oxford):
    ds = load_oxford5k(oxford)
    assert isinstance(ds, RetrievalDataset)
    assert ds.name == "oxford5k" and ds.root == oxford and ds.protocols == ("classic",) and ds.query_in_db
    assert [p.name for p in ds.db_paths] == [
        "all_souls_000013.jpg",
        "all_souls_000026.jpg",
        "ashmolean_000000.jpg",
        "christ_church_000179.jpg",
        "oxford_001115.jpg",
    ]
    assert [q.name for q in ds.queries] == ["all_souls_1", "christ_church_1"]
    assert ds.queries[0].path == oxford / "jpg" / "all_souls_000013.jpg"
    assert ds.queries[0].bbox == (136.5, 34.1, 648.5, 955.7)
    assert ds.queries[1].bbox == (1.0, 2.0, 30.0, 40.0)
    assert_gnd_equal(ds.gnd[0], ok=_idx(0, 1, 4), junk=_idx(2))  # ok = good + ok
    assert_gnd_equal(ds.gnd[1], ok=_idx(3), junk=_idx())


def test_oxford_images_listed_twice_are_one_positive(oxford):
    """all_souls_000091 is listed twice in Oxford's all_souls_1_good.txt; compute_ap.cpp reads the lists into sets,
    so it is one positive, and a ranking that finds every positive first has AP 1."""
    from retr.eval.metrics import compute_map

    gt = oxford / "gt_files"
    _write(gt / "all_souls_1_good.txt", "all_souls_000026\nall_souls_000013\nall_souls_000026\n")
    _write(gt / "all_souls_1_ok.txt", "oxford_001115\nall_souls_000013\n")  # also across good and ok
    _write(gt / "all_souls_1_junk.txt", "ashmolean_000000\nashmolean_000000\n")
    ds = load_oxford5k(oxford)
    assert_gnd_equal(ds.gnd[0], ok=_idx(1, 0, 4), junk=_idx(2))  # first occurrences, in file order
    ranks = np.array([[1, 0, 4, 2, 3]]).T  # (n_db, n_q): the positives first, the junk image, a negative
    m, aps, _, _ = compute_map(ranks, ds.gnd[:1])
    assert m == 1.0 and aps[0] == 1.0


def test_oxford_without_crop_has_no_boxes(oxford):
    assert [q.bbox for q in load_oxford5k(oxford, crop=False).queries] == [None, None]


def test_oxford_missing_gt_file_is_named(oxford):
    (oxford / "gt_files" / "all_souls_1_ok.txt").unlink()
    with pytest.raises(DatasetError, match="all_souls_1_ok.txt"):
        load_oxford5k(oxford)


def test_oxford_gt_naming_an_absent_image_is_reported(oxford):
    (oxford / "jpg" / "oxford_001115.jpg").unlink()
    with pytest.raises(DatasetError, match="oxford_001115.*not under"):
        load_oxford5k(oxford)


def test_oxford_missing_image_folder_is_named(tmp_path):
    with pytest.raises(DatasetError, match=r"jpg \(image folder\)"):
        load_oxford5k(tmp_path)


def test_paris_nested_landmark_folders_are_indexed_by_basename(tmp_path):
    root = tmp_path / "paris6k"
    _image(root / "jpg" / "general" / "paris_general_000002.jpg", value=1)
    _image(root / "jpg" / "defense" / "paris_defense_000605.jpg", value=2)
    _image(root / "jpg" / "eiffel" / "paris_eiffel_000001.jpg", value=3)
    gt = root / "gt_files"
    _write(gt / "defense_1_query.txt", "paris_defense_000605 10.0 20.5 300.0 400.25\n")
    _write(gt / "defense_1_good.txt", "paris_defense_000605\n")
    _write(gt / "defense_1_ok.txt", "paris_general_000002\n")
    _write(gt / "defense_1_junk.txt", "paris_eiffel_000001\n")
    ds = load_paris6k(root)
    assert [p.relative_to(root / "jpg").as_posix() for p in ds.db_paths] == [
        "defense/paris_defense_000605.jpg",
        "eiffel/paris_eiffel_000001.jpg",
        "general/paris_general_000002.jpg",
    ]
    assert ds.queries[0].path == ds.db_paths[0] and ds.queries[0].bbox == (10.0, 20.5, 300.0, 400.25)
    assert_gnd_equal(ds.gnd[0], ok=_idx(0, 2), junk=_idx(1))


# ---------------------------------------------------------------------------------------------------
# Revisited Oxford / Paris


@pytest.fixture
def roxford(tmp_path: Path) -> Path:
    root = tmp_path / "data" / "roxford5k"
    for v, name in enumerate(["a", "b", "c", "q1", "q2"]):
        _image(root / "jpg" / f"{name}.jpg", value=v)
    cfg = {
        "imlist": ["c", "a", "b"],  # the pkl's order, not sorted, defines the indices
        "qimlist": ["q1", "q2"],
        "gnd": [
            {"bbx": [1.0, 2.0, 13.5, 14.0], "easy": [0], "hard": [2], "junk": []},
            {"bbx": [0, 0, 8, 8], "easy": [], "hard": [0, 1], "junk": [2]},
        ],
    }
    with open(root / "gnd_roxford5k.pkl", "wb") as f:
        pickle.dump(cfg, f)
    return root


def test_revisited_reads_the_official_gnd_pickle(roxford):
    ds = load_revisited(roxford.parent, "roxford5k")  # the parent folder (revisitop's data dir) also works
    assert ds.root == roxford and ds.protocols == ("easy", "medium", "hard") and not ds.query_in_db
    assert [p.name for p in ds.db_paths] == ["c.jpg", "a.jpg", "b.jpg"]
    assert [(q.name, q.path.name, q.bbox) for q in ds.queries] == [
        ("q1", "q1.jpg", (1.0, 2.0, 13.5, 14.0)),
        ("q2", "q2.jpg", (0.0, 0.0, 8.0, 8.0)),
    ]
    assert_gnd_equal(ds.gnd[0], easy=_idx(0), hard=_idx(2), junk=_idx())
    assert_gnd_equal(ds.gnd[1], easy=_idx(), hard=_idx(0, 1), junk=_idx(2))


def test_revisited_appends_distractors_after_the_main_images(roxford, tmp_path):
    r1m = tmp_path / "r1m"
    _image(r1m / "y.png", value=7)
    _image(r1m / "sub" / "x.jpg", value=8)
    (r1m / "notes.txt").write_text("not an image")
    ds = load_revisited(roxford, "roxford5k", distractors=r1m)
    assert [p.relative_to(tmp_path).as_posix() for p in ds.db_paths[3:]] == ["r1m/sub/x.jpg", "r1m/y.png"]
    assert len(ds.db_paths) == 5
    assert_gnd_equal(ds.gnd[1], easy=_idx(), hard=_idx(0, 1), junk=_idx(2))


def test_revisited_missing_pickle_is_named(tmp_path):
    (tmp_path / "jpg").mkdir()
    with pytest.raises(DatasetError, match="gnd_rparis6k.pkl"):
        load_revisited(tmp_path, "rparis6k")


def test_revisited_missing_query_image_is_named(roxford):
    (roxford / "jpg" / "q2.jpg").unlink()
    with pytest.raises(DatasetError, match="q2.jpg"):
        load_revisited(roxford, "roxford5k")


# ---------------------------------------------------------------------------------------------------
# Holidays


def test_holidays_groups_by_the_first_four_digits(tmp_path):
    for v, name in enumerate(["100000", "100001", "100002", "100100", "100101"]):
        _image(tmp_path / "jpg" / f"{name}.jpg", value=v)
    ds = load_holidays(tmp_path)
    assert [q.name for q in ds.queries] == ["100000", "100100"]
    assert [q.path.name for q in ds.queries] == ["100000.jpg", "100100.jpg"]
    assert len(ds.db_paths) == 5 and ds.query_in_db and ds.protocols == ("classic",)
    assert_gnd_equal(ds.gnd[0], ok=_idx(1, 2), junk=_idx(0))  # the query's own entry is ignored
    assert_gnd_equal(ds.gnd[1], ok=_idx(4), junk=_idx(3))


def test_holidays_group_without_query_is_reported(tmp_path):
    _image(tmp_path / "jpg" / "100000.jpg")
    _image(tmp_path / "jpg" / "100201.jpg")
    with pytest.raises(DatasetError, match="group 1002"):
        load_holidays(tmp_path)


# ---------------------------------------------------------------------------------------------------
# VOC 2007


def _voc(tmp_path: Path, with_test: bool = True) -> Path:
    voc = tmp_path / "VOCdevkit" / "VOC2007"
    labels = {
        "trainval": {"000007": {"cat": 1}, "000005": {"dog": 1, "person": 0, "chair": 1}},
        "test": {"000001": {"aeroplane": 1, "tvmonitor": 0}, "000002": {"person": 1}},
    }
    for split, images in labels.items():
        if split == "test" and not with_test:
            continue
        for v, image_id in enumerate(images):
            _image(voc / "JPEGImages" / f"{image_id}.jpg", value=v)
        for cls in VOC_CLASSES:
            # The devkit's own formatting: "<id> -1", "<id>  1", "<id>  0", in id order.
            lines = [f"{i} {images[i].get(cls, -1):2d}" for i in sorted(images)]
            _write(voc / "ImageSets" / "Main" / f"{cls}_{split}.txt", "\n".join(lines) + "\n")
    return voc


def test_voc2007_reads_labels_with_difficult_as_zero(tmp_path):
    voc = _voc(tmp_path)
    ds = load_voc2007(voc.parent)  # VOCdevkit also works
    assert isinstance(ds, ClassificationDataset)
    assert ds.classes == list(VOC_CLASSES) and len(ds.classes) == 20 and ds.metric == "map"
    assert ds.train_paths == [voc / "JPEGImages" / "000005.jpg", voc / "JPEGImages" / "000007.jpg"]
    assert ds.test_paths == [voc / "JPEGImages" / "000001.jpg", voc / "JPEGImages" / "000002.jpg"]
    c = {cls: i for i, cls in enumerate(VOC_CLASSES)}
    expected_train = -np.ones((2, 20), np.int8)
    expected_train[0, [c["dog"], c["chair"]]] = 1
    expected_train[0, c["person"]] = 0
    expected_train[1, c["cat"]] = 1
    expected_test = -np.ones((2, 20), np.int8)
    expected_test[0, c["aeroplane"]] = 1
    expected_test[0, c["tvmonitor"]] = 0
    expected_test[1, c["person"]] = 1
    assert ds.train_labels.dtype == np.int8 and ds.test_labels.dtype == np.int8
    np.testing.assert_array_equal(ds.train_labels, expected_train)
    np.testing.assert_array_equal(ds.test_labels, expected_test)


def test_voc2007_without_the_test_tarball_says_so(tmp_path):
    voc = _voc(tmp_path, with_test=False)
    with pytest.raises(DatasetError, match="aeroplane_test.txt.*VOCtest_06-Nov-2007.tar"):
        load_voc2007(voc)


def test_voc2007_class_files_listing_different_images_are_reported(tmp_path):
    voc = _voc(tmp_path)
    _write(voc / "ImageSets" / "Main" / "sofa_trainval.txt", "000005 -1\n")
    with pytest.raises(DatasetError, match="sofa_trainval.txt"):
        load_voc2007(voc)


# ---------------------------------------------------------------------------------------------------
# MIT-67 / Food-101 style folders


def test_mit67_official_split_files(tmp_path):
    for v, rel in enumerate(["kitchen/a.jpg", "kitchen/b.jpg", "bar/c.jpg", "bar/d.jpg"]):
        _image(tmp_path / "Images" / rel, value=v)
    _write(tmp_path / "TrainImages.txt", "kitchen/a.jpg\nbar/c.jpg\n")
    _write(tmp_path / "TestImages.txt", "bar/d.jpg\nkitchen/b.jpg\n")
    ds = load_dataset("mit67", tmp_path)
    assert ds.name == "mit67" and ds.classes == ["bar", "kitchen"] and ds.metric == "accuracy"
    assert ds.train_paths == [tmp_path / "Images/kitchen/a.jpg", tmp_path / "Images/bar/c.jpg"]
    assert ds.test_paths == [tmp_path / "Images/bar/d.jpg", tmp_path / "Images/kitchen/b.jpg"]
    np.testing.assert_array_equal(ds.train_labels, np.array([[-1, 1], [1, -1]], np.int8))
    np.testing.assert_array_equal(ds.test_labels, np.array([[1, -1], [-1, 1]], np.int8))


def test_food101_split_lines_have_no_extension(tmp_path):
    for v, rel in enumerate(["apple_pie/1.jpg", "apple_pie/2.jpg", "ramen/3.jpg"]):
        _image(tmp_path / "images" / rel, value=v)
    _write(tmp_path / "meta" / "train.txt", "apple_pie/1\nramen/3\n")
    _write(tmp_path / "meta" / "test.txt", "apple_pie/2\n")
    ds = load_dataset("food101", tmp_path)
    assert ds.train_paths == [tmp_path / "images/apple_pie/1.jpg", tmp_path / "images/ramen/3.jpg"]
    assert ds.test_paths == [tmp_path / "images/apple_pie/2.jpg"]
    np.testing.assert_array_equal(ds.test_labels, np.array([[1, -1]], np.int8))


def test_split_file_missing_its_partner_is_named(tmp_path):
    _image(tmp_path / "Images" / "bar" / "c.jpg")
    _write(tmp_path / "TrainImages.txt", "bar/c.jpg\n")
    with pytest.raises(DatasetError, match="TestImages.txt"):
        load_image_folder_classification(tmp_path, "mit67")


def test_folder_without_split_files_gets_a_seeded_80_20_split(tmp_path):
    for cls in ("a", "b"):
        for k in range(5):
            _image(tmp_path / cls / f"{k}.jpg", value=k)
    ds = load_image_folder_classification(tmp_path, "folder", seed=3)
    assert len(ds.train_paths) == 8 and len(ds.test_paths) == 2  # 4 + 1 per class
    assert sorted(ds.train_paths + ds.test_paths) == sorted(tmp_path.glob("*/*.jpg"))
    assert [p.parent.name for p in ds.test_paths] == ["a", "b"]
    np.testing.assert_array_equal(ds.test_labels, np.array([[1, -1], [-1, 1]], np.int8))
    again = load_image_folder_classification(tmp_path, "folder", seed=3)
    assert again.train_paths == ds.train_paths and again.test_paths == ds.test_paths


# ---------------------------------------------------------------------------------------------------
# Dispatcher


def test_unknown_dataset_lists_the_names(tmp_path):
    with pytest.raises(DatasetError, match="choose one of oxford5k, paris6k, roxford5k"):
        load_dataset("oxford105k", tmp_path)
    assert set(DATASETS) >= {
        "oxford5k",
        "paris6k",
        "roxford5k",
        "rparis6k",
        "voc2007",
        "holidays",
        "mit67",
        "food101",
        "neardup",
        "synthetic",
    }


@pytest.mark.parametrize("name", ["oxford5k", "paris6k", "roxford5k", "rparis6k", "voc2007", "holidays", "mit67",
                                  "food101"])
def test_a_downloaded_dataset_without_root_says_where_to_get_it(name):
    with pytest.raises(DatasetError, match=f"^{name} needs --root.*get it from") as e:
        load_dataset(name, None)
    assert "\n" not in str(e.value)


def test_generated_datasets_need_a_folder():
    for name in ("synthetic", "synthetic-cls"):
        with pytest.raises(DatasetError, match=f"^{name} needs root"):
            load_dataset(name, None)


def test_dispatcher_forwards_options(oxford, roxford):
    assert load_dataset("oxford5k", oxford, crop=False).queries[0].bbox is None
    assert load_dataset("roxford5k", roxford).name == "roxford5k"


# ---------------------------------------------------------------------------------------------------
# Near-duplicates


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    _image(root / "b.png", size=(40, 30), value=1)
    _image(root / "a.jpg", size=(30, 40), value=2)
    _image(root / "trip" / "c.jpg", size=(60, 300), value=3)  # long side 300 > max_side
    (root / "readme.txt").write_text("skipped")
    return root


def test_neardup_structure(photos, tmp_path):
    out = tmp_path / "nd"
    ds = build_neardup(photos, out, edits_per_image=4, seed=0, max_side=100)
    assert ds.protocols == ("neardup",) and not ds.query_in_db and ds.root == out
    assert [p.name for p in ds.db_paths] == ["00000_a.jpg", "00001_b.jpg", "00002_c.jpg"]
    assert _size(ds.db_paths[2]) == (100, 20)  # downscaled to max_side on the long side
    assert _size(ds.db_paths[0]) == (40, 30)
    assert len(ds.queries) == 3 * 4 and len(ds.gnd) == 12
    for k, (q, g) in enumerate(zip(ds.queries, ds.gnd)):
        i = k // 4
        assert q.path.parent == out / "queries" and q.path.is_file() and q.bbox is None
        assert q.path.name.startswith(f"{i:05d}_{k % 4}_")
        assert_gnd_equal(g, ok=_idx(i), junk=_idx())  # exactly one positive: the original
    assert len({q.name.split(":")[1] for q in ds.queries[:4]}) == 4  # 4 different edit kinds per photo


def test_neardup_is_deterministic(photos, tmp_path):
    a = build_neardup(photos, tmp_path / "a", edits_per_image=3, seed=1)
    b = build_neardup(photos, tmp_path / "b", edits_per_image=3, seed=1)
    assert [q.name for q in a.queries] == [q.name for q in b.queries]
    for p, r in zip(a.db_paths + [q.path for q in a.queries], b.db_paths + [q.path for q in b.queries]):
        assert p.name == r.name and p.read_bytes() == r.read_bytes()
    c = build_neardup(photos, tmp_path / "c", edits_per_image=3, seed=2)
    assert [q.path.read_bytes() for q in a.queries] != [q.path.read_bytes() for q in c.queries]


def test_neardup_distractors_are_appended(photos, tmp_path):
    _image(tmp_path / "distract" / "z.jpg")
    ds = build_neardup(photos, tmp_path / "nd", edits_per_image=1, distractors=tmp_path / "distract")
    assert ds.db_paths[3:] == [tmp_path / "distract" / "z.jpg"]
    assert_gnd_equal(ds.gnd[2], ok=_idx(2), junk=_idx())


def test_neardup_from_the_sample_photos(tmp_path):
    ds = load_dataset("neardup", None, out=tmp_path / "nd", edits_per_image=1, max_side=64)
    assert len(ds.db_paths) == 8 and len(ds.queries) == 8
    assert ds.db_paths[0].name == "00000_astronaut.jpg"
    assert max(_size(ds.db_paths[0])) == 64


def test_neardup_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images under"):
        build_neardup(tmp_path / "empty", tmp_path / "out")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ImageError, match="broken.jpg"):
        build_neardup(tmp_path / "bad", tmp_path / "out")


# ---------------------------------------------------------------------------------------------------
# Synthetic


def test_synthetic_retrieval_structure(tmp_path):
    ds = build_synthetic(tmp_path / "s", n_families=3, per_family=4, size=32, seed=0)
    assert len(ds.db_paths) == 12 and len(ds.queries) == 3 and ds.query_in_db and ds.protocols == ("classic",)
    assert ds.db_paths[5].name == "f001_m01.png" and _size(ds.db_paths[5]) == (32, 32)
    assert [q.path for q in ds.queries] == [ds.db_paths[0], ds.db_paths[4], ds.db_paths[8]]
    assert_gnd_equal(ds.gnd[1], ok=_idx(5, 6, 7), junk=_idx(4))


def test_synthetic_is_deterministic(tmp_path):
    a = build_synthetic(tmp_path / "a", n_families=2, per_family=3, size=24, seed=7)
    b = load_dataset("synthetic", tmp_path / "b", n_families=2, per_family=3, size=24, seed=7)
    assert [p.read_bytes() for p in a.db_paths] == [p.read_bytes() for p in b.db_paths]
    c = build_synthetic(tmp_path / "c", n_families=2, per_family=3, size=24, seed=8)
    assert [p.read_bytes() for p in a.db_paths] != [p.read_bytes() for p in c.db_paths]


def test_synthetic_family_members_look_alike(tmp_path):
    """A flip-invariant 8x8 thumbnail's nearest neighbour is always of the same family (seed 0, defaults)."""
    ds = build_synthetic(tmp_path)
    x = np.stack([_pixels(p, (8, 8)) for p in ds.db_paths])
    a, b = x.reshape(60, -1), x[:, :, ::-1].reshape(60, -1)
    d = np.minimum(((a[:, None] - a[None]) ** 2).sum(-1), ((a[:, None] - b[None]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    family = np.arange(60) // 6
    np.testing.assert_array_equal(family[d.argmin(1)], family)


def test_synthetic_classification(tmp_path):
    ds = build_synthetic_classification(tmp_path, n_classes=3, per_class=4, n_train=3, size=24, seed=0)
    assert ds.classes == ["family000", "family001", "family002"] and ds.metric == "map"
    assert len(ds.train_paths) == 9 and len(ds.test_paths) == 3
    assert [p.name for p in ds.test_paths] == ["f000_m03.png", "f001_m03.png", "f002_m03.png"]
    np.testing.assert_array_equal(ds.test_labels, 2 * np.eye(3, dtype=np.int8) - 1)
    np.testing.assert_array_equal(ds.train_labels, np.repeat(2 * np.eye(3, dtype=np.int8) - 1, 3, axis=0))
    same = load_dataset("synthetic-cls", tmp_path / "again", n_classes=3, per_class=4, n_train=3, size=24)
    assert [p.read_bytes() for p in same.test_paths] == [p.read_bytes() for p in ds.test_paths]
