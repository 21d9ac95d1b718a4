"""The LMDB store: batches are atomic, ids are stable, errors are one line."""

import numpy as np
import pytest

from retr.retrieval.errors import DatabaseError
from retr.retrieval.store import FORMAT_VERSION, FileRecord, Store


def rec(name, size=10):
    return FileRecord(name, size, 123, "ab" * 16)


def test_add_read_roundtrip(tmp_path):
    db = tmp_path / "x.retr"
    codes = np.arange(3 * 16, dtype=np.uint8).reshape(3, 16)
    with Store(db, write=True, create=True) as s:
        ids = s.add([rec("a.jpg"), rec("sub/b.png"), rec("c.jpg")], codes=codes)
        assert ids == [0, 1, 2]
        assert s.add([rec("d.jpg")], codes=codes[:1]) == [3]
    with Store(db) as s:
        got_ids, got = s.read_all("codes", 16, "u1")
        assert got_ids.tolist() == [0, 1, 2, 3]
        np.testing.assert_array_equal(got[:3], codes)
        assert s.paths([1, 3]) == ["sub/b.png", "d.jpg"]
        assert set(s.files()) == {"a.jpg", "sub/b.png", "c.jpg", "d.jpg"}
        assert int(s.get_meta("format_version")) == FORMAT_VERSION
        assert s.count("codes") == 4


def test_replace_and_delete(tmp_path):
    with Store(tmp_path / "x.retr", write=True, create=True) as s:
        s.add([rec("a.jpg"), rec("b.jpg")], codes=np.zeros((2, 4), np.uint8))
        # a changed file: its old id goes, a new one comes, in one transaction
        assert s.add([rec("a.jpg", size=99)], codes=np.ones((1, 4), np.uint8), replace_ids=[0]) == [2]
        files = s.files()
        assert files["a.jpg"][0] == 2 and files["a.jpg"][1].size == 99
        s.delete([1])
        assert set(s.files()) == {"a.jpg"} and s.count("codes") == 1


def test_generation_counts_commits(tmp_path):
    with Store(tmp_path / "x.retr", write=True, create=True) as s:
        g = s.generation()
        s.add([rec("a.jpg")], codes=np.zeros((1, 2), np.uint8))
        s.set_skipped({"bad.jpg": "empty file"})
        assert s.generation() == g + 2
        assert s.skipped() == {"bad.jpg": "empty file"}


def test_non_utf8_path_roundtrip(tmp_path):
    name = b"caf\xe9 'x'.jpg".decode("utf-8", "surrogateescape")
    with Store(tmp_path / "x.retr", write=True, create=True) as s:
        s.add([rec(name)], codes=np.zeros((1, 2), np.uint8))
        assert list(s.files()) == [name]


def test_features_float32_exact(tmp_path):
    x = np.random.default_rng(0).standard_normal((5, 7)).astype(np.float32)
    with Store(tmp_path / "x.retr", write=True, create=True) as s:
        s.add([rec(f"{i}.jpg") for i in range(5)], features=x)
        _, got = next(s.iter_arrays("features", 7, "<f4", ids=[4, 0]))
        np.testing.assert_array_equal(got, x[[4, 0]])


def test_map_grows_by_itself(tmp_path, monkeypatch):
    import retr.retrieval.store as st
    monkeypatch.setattr(st, "_INITIAL_MAP_SIZE", 1 << 16)
    with Store(tmp_path / "x.retr", write=True, create=True) as s:
        s.add([rec(f"{i}.jpg") for i in range(200)], codes=np.zeros((200, 1024), np.uint8))
        assert s.count("codes") == 200


def test_errors_are_one_line(tmp_path):
    with pytest.raises(DatabaseError, match="does not exist"):
        Store(tmp_path / "nope.retr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(DatabaseError, match="not a retr database"):
        Store(tmp_path / "plain")
    with Store(tmp_path / "x.retr", write=True, create=True) as s:
        s.put_meta({"format_version": str(FORMAT_VERSION + 1).encode()})
    with pytest.raises(DatabaseError, match="newer than this retr"):
        Store(tmp_path / "x.retr")


def test_second_writer_refused(tmp_path):
    with Store(tmp_path / "x.retr", write=True, create=True):
        with pytest.raises(DatabaseError, match="another process"):
            Store(tmp_path / "x.retr", write=True)
    with Store(tmp_path / "x.retr", write=True):  # released on close
        pass
