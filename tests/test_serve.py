"""`retr serve`: every route and every error through the ASGI app (TestClient), the same answers as `retr query
--json`, batching of concurrent queries, and queries while `retr index` writes the database.

py-lmdb opens a database once per process: expected answers are computed before an app opens the database, apps
that run at the same time serve copies, and the writer during indexing is a subprocess.
"""

import io
import json
import logging
import os
import re
import shutil
import struct
import subprocess
import sys
import threading
import time
import warnings
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from conftest import run, write_families
from retr.retrieval.engine import Engine
from retr.retrieval.store import TXN_DELAY_ENV, FileRecord, Store
from retr.serve import ServeOptions, create_app

with warnings.catch_warnings():  # starlette asks for httpx2; httpx (the [test] extra) still works
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

FAST = ["--backbone", "alexnet", "--weights", "none", "--pooling", "mac", "--device", "cpu", "--batch-size", "8"]
QUERIES = ["f01/crop.png", "f03/jpeg.jpg"]
CPU = ServeOptions(device="cpu", reload_s=0, decode_workers=1)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def png_bytes(im: Image.Image, fmt: str = "PNG") -> bytes:
    b = io.BytesIO()
    im.save(b, fmt)
    return b.getvalue()


def bomb_png(w: int = 40000, h: int = 40000) -> bytes:
    """A PNG header that claims w x h pixels (a decompression bomb), with an empty image."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def relative(cli_answer: dict, root: Path) -> list[tuple]:
    return [(m["rank"], os.path.relpath(m["path"], root), m["id"]) for m in cli_answer["results"]]


def served(answer: dict) -> list[tuple]:
    return [(m["rank"], m["path"], m["id"]) for m in answer["results"]]


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, one_torch_thread):
    """4 families x 7 images indexed with alexnet (random weights), and what `retr query --json` answers."""
    tmp = tmp_path_factory.mktemp("serve")
    root, db = tmp / "photos", tmp / "photos.retr"
    write_families(root, 4)
    r = run("index", root, "--db", db, *FAST)
    assert r.exit_code == 0, r.output
    cli = {}
    for q in QUERIES:
        r = run("query", root / q, "--db", db, "-k", "5", "--json", "--device", "cpu")
        assert r.exit_code == 0, r.output
        cli[q] = json.loads(r.output)[0]
    with Engine(db, device="cpu") as eng:
        vec = eng.encoder([np.asarray(Image.open(root / "f02/orig.png").convert("RGB"))])[0]
        D, I = eng.search_vectors(vec[None], k=5)
        by_vector = list(zip(D[0].tolist(), I[0].tolist(), eng.store.paths(I[0])))
        ids = {p: i for p, (i, _) in eng.store.files().items()}
        count, code_size = eng.store.count(), eng.params.code_size
    return SimpleNamespace(tmp=tmp, root=root, db=db, cli=cli, vec=vec, by_vector=by_vector, ids=ids, count=count,
                           code_size=code_size)


@pytest.fixture(scope="module")
def client(indexed):
    with TestClient(create_app([indexed.db], options=CPU)) as c:
        yield c


def copy_db(indexed, name: str) -> Path:
    dst = indexed.tmp / name
    if not dst.exists():
        shutil.copytree(indexed.db, dst, ignore=shutil.ignore_patterns("lock.mdb", "writer.lock"))
    return dst


# -- answers -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("q", QUERIES)
def test_upload_answers_as_retr_query_json(client, indexed, q):
    data = (indexed.root / q).read_bytes()
    r = client.post("/search", files={"image": (Path(q).name, data, "application/octet-stream")}, data={"k": "5"})
    assert r.status_code == 200, r.text
    got, want = r.json(), indexed.cli[q]
    assert served(got) == relative(want, indexed.root)
    assert np.allclose([m["score"] for m in got["results"]], [m["score"] for m in want["results"]], atol=2e-6)
    assert got["results"][0]["path"] == q and got["query"] == Path(q).name and got["count"] == indexed.count


def test_query_by_id_describes_the_indexed_file(client, indexed):
    q = QUERIES[0]
    r = client.post("/search", json={"id": indexed.ids[q], "k": 5})
    assert r.status_code == 200, r.text
    assert served(r.json()) == relative(indexed.cli[q], indexed.root)
    assert r.json()["query"] == f"id:{indexed.ids[q]}"


def test_query_by_vector_is_engine_search_vectors(client, indexed):
    r = client.post("/search", json={"vector": indexed.vec.tolist(), "k": 5})
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert [(m["id"], m["path"]) for m in res] == [(i, p) for _, i, p in indexed.by_vector]
    assert np.allclose([m["score"] for m in res], [d for d, _, _ in indexed.by_vector], atol=2e-6)


def test_k_larger_than_the_database_returns_everything_once(client, indexed):
    res = client.post("/search", json={"vector": indexed.vec.tolist(), "k": 1000}).json()["results"]
    assert len(res) == indexed.count and len({m["id"] for m in res}) == indexed.count
    assert [m["rank"] for m in res] == list(range(1, indexed.count + 1))


# -- the other routes -------------------------------------------------------------------------------------------------
def test_info_health_openapi_page(client, indexed):
    info = client.get("/info").json()
    assert info["count"] == indexed.count and info["bytes_per_vector"] == indexed.code_size
    assert info["encoder"]["backbone"] == "alexnet" and info["index_config"]["kind"] == "fastscan"
    assert info["skipped"] == {} and info["databases"] == ["photos"] and "root" not in info
    assert client.get("/health").json() == {"status": "ok", "databases": {"photos": {"ready": True}}}
    schema = client.get("/openapi.json").json()
    assert {"/search", "/images/{id}", "/images/{id}/thumb", "/info", "/health"} <= set(schema["paths"])
    body = schema["paths"]["/search"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(body)
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for name in ("index.html", "app.js", "style.css", "favicon.svg"):
        r = client.get(f"/static/{name}")
        assert r.status_code == 200, name
        assert not re.search(r"(https?:)?//[\w.-]+\.\w+/", r.text.replace("http://www.w3.org/2000/svg", "")), name


def test_images_and_thumbnails_of_indexed_ids_only(client, indexed):
    i = indexed.ids["f02/orig.png"]
    r = client.get(f"/images/{i}")
    assert r.status_code == 200 and r.content == (indexed.root / "f02/orig.png").read_bytes()
    assert r.headers["content-type"] == "image/png" and r.headers["x-content-type-options"] == "nosniff"
    t = client.get(f"/images/{i}/thumb")
    assert t.status_code == 200 and t.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(t.content)).size) <= 256
    for bad in ("999999", "-1", "abc", "..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "1.5"):
        r = client.get(f"/images/{bad}")
        assert r.status_code in (404, 422), (bad, r.status_code)
        assert set(r.json()) == {"error"}, bad
    assert client.get("/images/1", params={"db": "../../etc"}).status_code == 404
    assert client.get("/images/1/../../../etc/passwd").status_code == 404


# -- errors: refused in one line of JSON, and the server goes on ------------------------------------------------------
def test_bad_queries_are_refused_and_the_server_goes_on(client, indexed):
    good = (indexed.root / "f00/orig.png").read_bytes()
    cases = [  # (request kwargs, status, words in the error)
        (dict(files={"image": ("a.png", b"not an image at all", "image/png")}), 400, "cannot identify"),
        (dict(files={"image": ("t.png", good[: len(good) // 2], "image/png")}), 400, "truncated"),
        (dict(files={"image": ("t.jpg", png_bytes(Image.open(indexed.root / "f00/orig.png"), "JPEG")[:900],
                               "image/jpeg")}), 400, "truncated"),
        (dict(files={"image": ("bomb.png", bomb_png(), "image/png")}), 400, "decompression bomb"),
        (dict(files={"image": ("e.png", b"", "image/png")}), 400, "empty"),
        (dict(files={"other": ("a.png", good, "image/png")}), 422, "image"),
        (dict(files={"image": ("a.png", good, "image/png")}, data={"k": "0"}), 422, "k"),
        (dict(files={"image": ("a.png", good, "image/png")}, data={"colour": "red"}), 422, "colour"),
        (dict(json={"id": 0, "nprobe": 4}), 400, "inverted lists"),
        (dict(json={"id": 0, "vector": [1.0]}), 422, "exactly one"),
        (dict(json={}), 422, "exactly one"),
        (dict(json={"id": 10**6}), 404, "no image with id"),
        (dict(json={"vector": [0.5, 0.5]}), 400, "finite numbers"),
        (dict(content=json.dumps({"vector": [1.0] * (len(indexed.vec) - 1) + [1e999]}).encode(),
              headers={"content-type": "application/json"}), 400, "non-finite"),
        (dict(json={"id": 0, "k": 10**6}), 422, "k"),
        (dict(content=b"{not json", headers={"content-type": "application/json"}), 400, "JSON"),
        (dict(content=b"hello", headers={"content-type": "text/plain"}), 415, "multipart"),
        (dict(json={"id": 0}, params={"db": "nope"}), 404, "no database named"),
    ]
    for kw, status, words in cases:
        r = client.post("/search", **kw)
        assert r.status_code == status, (kw, r.status_code, r.text)
        body = r.json()
        assert set(body) == {"error"} and words in body["error"], (kw, body)
        assert "\n" not in body["error"] and "Traceback" not in r.text
    r = client.post("/search", files={"image": ("ok.png", good, "image/png")}, data={"k": "1"})
    assert r.status_code == 200 and r.json()["results"][0]["path"] == "f00/orig.png"


def test_a_bug_is_a_json_500_without_traceback_and_the_server_goes_on(client, indexed, monkeypatch, caplog):
    svc = client.app.state.service

    def broken(*a, **kw):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(svc, "info", broken)
    with caplog.at_level(logging.ERROR, logger="retr.serve"):
        r = client.get("/info")
    assert r.status_code == 500 and r.json() == {"error": "internal error (the server's log has the details)"}
    assert "secret" not in r.text and "Traceback" not in r.text
    assert any("secret internals" in (rec.exc_text or "") or rec.exc_info for rec in caplog.records)
    monkeypatch.undo()
    assert client.get("/info").status_code == 200


def test_uploads_are_capped(indexed):
    db = copy_db(indexed, "capped.retr")
    good = (indexed.root / "f00/orig.png").read_bytes()
    with TestClient(create_app([db], max_upload=len(good) + 1000, options=CPU)) as c:
        r = c.post("/search", files={"image": ("big.png", good + b"\0" * 5000, "image/png")})
        assert r.status_code == 413 and "limit" in r.json()["error"]

        def chunks():  # no Content-Length: counted while read
            yield b"--x\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\n"
            for _ in range(10):
                yield good[:1000] * 2
        r = c.post("/search", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"})
        assert r.status_code == 413, r.text
        r = c.post("/search", files={"image": ("ok.png", good, "image/png")}, data={"k": "1"})
        assert r.status_code == 200 and r.json()["results"][0]["path"] == "f00/orig.png"


def test_token_on_every_route_but_health_and_the_page(indexed):
    db = copy_db(indexed, "locked.retr")
    with TestClient(create_app([db], token="s3cret", options=CPU)) as c:
        assert c.get("/health").status_code == 200
        assert c.get("/").status_code == 200 and c.get("/static/app.js").status_code == 200
        calls = [("get", "/info", {}), ("get", "/openapi.json", {}), ("get", "/images/0", {}),
                 ("get", "/images/0/thumb", {}), ("post", "/search", {"json": {"id": 0}})]
        for method, path, kw in calls:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"},
                            {"Authorization": "Basic s3cret"}):
                r = getattr(c, method)(path, headers=headers, **kw)
                assert r.status_code == 401, (path, headers)
                assert "token" in r.json()["error"] and r.headers["www-authenticate"] == "Bearer"
            r = getattr(c, method)(path, headers={"Authorization": "Bearer s3cret"}, **kw)
            assert r.status_code == 200, (path, r.text)


def test_one_log_line_per_request_and_cors_off_by_default(client, caplog):
    with caplog.at_level(logging.INFO, logger="retr.serve.access"):
        client.get("/health")
        client.get("/images/999999")
        r = client.get("/info", headers={"Origin": "https://elsewhere.example"})
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "retr.serve.access"]
    assert len(lines) == 3 and '"GET /health" 200' in lines[0] and '"GET /images/999999" 404' in lines[1]
    assert "access-control-allow-origin" not in r.headers


def test_cors_when_asked(indexed):
    db = copy_db(indexed, "cors.retr")
    app = create_app([db], options=CPU, cors_origins=("http://localhost:3000",))
    with TestClient(app) as c:
        r = c.options("/search", headers={"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST",
                                          "Access-Control-Request-Headers": "authorization"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://localhost:3000"
        r = c.get("/info", headers={"Origin": "https://elsewhere.example"})
        assert "access-control-allow-origin" not in r.headers


def test_a_missing_database_is_one_line(tmp_path):
    r = run("serve", "--db", tmp_path / "none.retr", "--port", "1")
    assert r.exit_code == 1 and r.output.startswith("Error: database") and len(r.output.strip().splitlines()) == 1


def test_a_database_being_indexed_is_a_503_until_complete(indexed):
    """A file stored with its descriptor but no code yet (retr index between a batch and the codec's fit): the server
    starts, says it is not ready, answers 503, and serves once the state is complete again."""
    db = copy_db(indexed, "unfinished.retr")
    with Store(db, write=True) as s:
        [i] = s.add([FileRecord("f00/late.png", 1, 1, "x")], features=np.zeros((1, len(indexed.vec)), np.float32))
    with TestClient(create_app([db], options=ServeOptions(device="cpu", reload_s=0.05, decode_workers=1))) as c:
        assert c.get("/health").json()["databases"] == {"unfinished": {"ready": False}}
        for call in (lambda: c.get("/info"), lambda: c.post("/search", json={"id": 0})):
            r = call()
            assert r.status_code == 503 and "no complete state yet" in r.json()["error"]
        code = f"from retr.retrieval.store import Store\nwith Store({str(db)!r}, write=True) as s: s.delete([{i}])"
        subprocess.run([sys.executable, "-c", code], check=True, timeout=120)  # another process: the writer
        t_end = time.monotonic() + 20
        while c.get("/health").json()["databases"]["unfinished"]["ready"] is False and time.monotonic() < t_end:
            time.sleep(0.05)
        assert c.post("/search", json={"id": 0, "k": 1}).json()["results"][0]["id"] == 0


# -- batching ---------------------------------------------------------------------------------------------------------
def test_batcher_waits_only_for_announced_items_and_isolates_failures():
    from retr.serve.batcher import Batcher, Failure

    sizes = []

    def fn(items):
        sizes.append(len(items))
        return [Failure(ValueError(f"bad {x}")) if x < 0 else 2 * x for x in items]

    b = Batcher(fn, max_batch=8, max_wait_s=2.0)
    try:
        t = time.monotonic()
        assert b.submit(1).result(5) == 2 and time.monotonic() - t < 1.0  # nothing announced: no wait
        ticket = b.announce()
        first = b.submit(3)
        time.sleep(0.2)
        bad = b.submit(-1, b.announce())
        late = b.submit(4, ticket)  # the announced item arrives: the batch stops waiting
        assert first.result(5) == 6 and late.result(5) == 8
        with pytest.raises(ValueError, match="bad -1"):
            bad.result(5)
        assert sizes == [1, 3]
    finally:
        b.close()
    with pytest.raises(RuntimeError, match="closed"):
        b.submit(1).result(1)


def test_concurrent_image_queries_share_forward_passes(indexed):
    db = copy_db(indexed, "batched.retr")
    names = [f"f{f:02d}/{v}.png" for f in range(4) for v in ("orig", "flip")]
    with TestClient(create_app([db], options=ServeOptions(device="cpu", reload_s=0, max_wait_ms=200))) as c:
        alone = {n: c.post("/search", files={"image": (n, (indexed.root / n).read_bytes())}, data={"k": "3"}).json()
                 for n in names}
        svc = c.app.state.service
        before = (svc._encode.batches, svc._encode.items)
        together, start = {}, threading.Barrier(len(names))

        def ask(n):
            start.wait()
            together[n] = c.post("/search", files={"image": (n, (indexed.root / n).read_bytes())},
                                 data={"k": "3"}).json()
        threads = [threading.Thread(target=ask, args=(n,)) for n in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        batches, items = svc._encode.batches - before[0], svc._encode.items - before[1]
    assert items == len(names) and batches < len(names), (batches, items)
    for n in names:
        assert served(together[n]) == served(alone[n]), n
        assert np.allclose([m["score"] for m in together[n]["results"]], [m["score"] for m in alone[n]["results"]],
                           atol=1e-5)


def test_the_forward_keeps_the_servers_torch_threads(indexed, monkeypatch):
    # ATen sets each thread's torch count lazily, at its first torch call, from one process-wide default: without
    # reading its count first, the forward thread took the decoding threads' 1 (the network ran on one core)
    import torch

    from retr.serve import service as S

    seen, encode = [], S.Service._encode_batch
    monkeypatch.setattr(S.Service, "_encode_batch",
                        staticmethod(lambda items: seen.append(torch.get_num_threads()) or encode(items)))
    saved = torch.get_num_threads()
    torch.set_num_threads(2)  # the server's count (one per core on a 2-core machine); the decoders take 1 each
    try:
        db = copy_db(indexed, "threads.retr")
        with TestClient(create_app([db], options=ServeOptions(device="cpu", reload_s=0, decode_workers=2))) as c:
            for n in ("f00/orig.png", "f01/flip.png", "f02/orig.png"):
                assert c.post("/search", files={"image": (n, (indexed.root / n).read_bytes())}).status_code == 200
    finally:
        torch.set_num_threads(saved)
    assert seen == [2, 2, 2]


# -- while `retr index` writes ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_queries_while_retr_index_writes_see_one_complete_state(tmp_path):
    """The codec is provisional (fewer images than --train-size): the writer stores descriptors batch by batch,
    refits, drops every code and codes again. The server must answer all along, from the state before (14 images)
    until the state after (28) is complete, then from that one, never from a state in between."""
    root, db = tmp_path / "photos", tmp_path / "p.retr"
    fams = write_families(root, 4)
    later = tmp_path / "later"
    later.mkdir()
    for f in ("f02", "f03"):
        shutil.move(root / f, later / f)
    assert run("index", root, "--db", db, *FAST, "--batch-size", "4").exit_code == 0
    with Engine(db, device="cpu") as eng:
        vec = eng.encoder([np.asarray(Image.open(fams["f00"][0]).convert("RGB"))])[0].tolist()
    for f in ("f02", "f03"):
        shutil.move(later / f, root / f)

    app = create_app([db], options=ServeOptions(device="cpu", reload_s=0.05, decode_workers=1))
    code = "import torch; torch.set_num_threads(1); from retr.cli import main; main(prog_name='retr')"
    with TestClient(app) as c:
        writer = subprocess.Popen([sys.executable, "-c", code, "index", str(root), "--db", str(db), *FAST,
                                   "--batch-size", "4"], env={**os.environ, TXN_DELAY_ENV: "0.15"},
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        answers, t_end = [], None
        try:
            while t_end is None or time.monotonic() < t_end:
                if t_end is None and writer.poll() is not None:
                    t_end = time.monotonic() + 3  # the server moves to the final state within its poll interval
                r = c.post("/search", json={"vector": vec, "k": 100})
                assert r.status_code == 200, r.text
                answers.append(r.json())
                if t_end is None:
                    assert c.post("/search", json={"id": 0, "k": 2}).status_code == 200
            out, err = writer.communicate()
            assert writer.returncode == 0, err
        finally:
            if writer.poll() is None:
                writer.kill()
        served_db = c.app.state.service.databases["p"]
        final_gen = served_db.store.generation()  # (the server's own store: py-lmdb opens a database once)
        assert served_db.generation == final_gen
    counts = [a["count"] for a in answers]
    gens = [a["generation"] for a in answers]
    assert set(counts) == {14, 28}, sorted(set(counts))
    assert gens == sorted(gens) and counts == sorted(counts)  # moved once, forward, never back
    for a in answers:
        ids = [m["id"] for m in a["results"]]
        assert len(ids) == a["count"] == len(set(ids)), a["count"]  # every image of the state, once
        assert all((root / m["path"]).is_file() for m in a["results"])
        assert {m["path"].split("/")[0] for m in a["results"]} == ({"f00", "f01"} if a["count"] == 14 else
                                                                   {"f00", "f01", "f02", "f03"})
    assert answers[-1]["count"] == 28 and answers[-1]["generation"] == final_gen
    r = run("query", fams["f00"][0], "--db", db, "-k", "100", "--json", "--device", "cpu")
    assert served(answers[-1]) == relative(json.loads(r.output)[0], root)
