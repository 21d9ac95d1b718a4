"""Engine options beyond the default path: refit, codec reuse, contradictions, symmetric search, IVF."""

import json

import pytest

from retr import indexes
from retr.retrieval import engine
from retr.retrieval.codec import CodecConfig
from retr.retrieval.encoder import EncoderConfig
from retr.retrieval.errors import ConfigError
from conftest import run

ENC = EncoderConfig.create("alexnet", weights="none", pooling="mac")
CODEC = CodecConfig(reduction="pca", dims=64, quantizer="q2", levels=4)


@pytest.fixture
def small(tmp_path):
    from conftest import write_families
    root = tmp_path / "photos"
    write_families(root, 4)  # 28 images
    return root


@pytest.mark.slow
def test_refit_from_kept_features_changes_the_code_size(small, tmp_path):
    db = tmp_path / "a.retr"
    rep = engine.index_folder(small, db, ENC, CODEC, keep_features=True, device="cpu", progress=False)
    assert rep.code_size == 7  # capped at 28 dims (28 images) x 2 bits = 56 bits
    assert engine.info(db).features_kept == 28
    assert "capped at 28" in engine.info(db).codec_note
    rep = engine.index_folder(small, db, codec=CodecConfig(reduction="pca", dims=16, quantizer="q2", levels=16),
                              refit=True, keep_features=True, device="cpu", progress=False)
    assert rep.codec_fitted and rep.code_size == 8  # 16 dims x 4 bits
    assert json.loads(run("info", "--db", db, "--json").output)["code_size"] == 8
    r = run("query", small / "f00" / "orig.png", "--db", db, "-k", 1, "--json")
    assert json.loads(r.output)[0]["results"][0]["path"].endswith("f00/orig.png")


@pytest.mark.slow
def test_refit_without_features_is_refused(small, tmp_path):
    db = tmp_path / "a.retr"
    engine.index_folder(small, db, ENC, CODEC, train_size=10, device="cpu", progress=False)  # 28 >= 10: frozen
    assert engine.info(db).codec_state == "frozen" and engine.info(db).features_kept == 0
    with pytest.raises(ConfigError, match="--keep-features"):
        engine.index_folder(small, db, refit=True, device="cpu", progress=False)


@pytest.mark.slow
def test_codec_from_reuses_the_codec_and_contradictions_are_errors(small, tmp_path):
    a, b = tmp_path / "a.retr", tmp_path / "b.retr"
    engine.index_folder(small, a, ENC, CODEC, device="cpu", progress=False)
    with pytest.raises(ConfigError, match="still provisional"):
        engine.index_folder(small, b, codec_from=a, device="cpu", progress=False)
    engine.index_folder(small, a, freeze=True, device="cpu", progress=False)
    other = tmp_path / "other"
    other.mkdir()
    for p in list((small / "f01").iterdir())[:3]:
        (other / p.name).write_bytes(p.read_bytes())
    rep = engine.index_folder(other, b, codec_from=a, device="cpu", progress=False)
    assert not rep.codec_fitted and rep.total == 3
    assert engine.info(a).codec == engine.info(b).codec and engine.info(b).encoder == engine.info(a).encoder
    r = run("index", small, "--db", a, "--backbone", "resnet18", "--weights", "none")
    assert r.exit_code != 0 and "encoder backbone: the database has 'alexnet', asked 'resnet18'" in r.output
    r = run("index", small, "--db", a, "--dims", "32")
    assert r.exit_code != 0 and "codec dims: the database has 64, asked 32" in r.output


@pytest.mark.slow
def test_symmetric_and_ivf_search_find_the_image_itself(small, tmp_path):
    db = tmp_path / "a.retr"
    r = run("index", small, "--db", db, "--backbone", "alexnet", "--weights", "none", "--pooling", "mac",
            "--index", "ivf", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert engine.info(db).index["config"]["kind"] == "ivf"
    q = small / "f02" / "crop.png"
    for extra in ([], ["--symmetric"]):
        out = json.loads(run("query", q, "--db", db, "-k", 3, "--json", *extra).output)
        assert out[0]["results"][0]["path"] == str(q)


@pytest.mark.slow
def test_index_with_a_compressed_model_file(small, tmp_path):
    import torch

    from retr.retrieval.compress import CompressionConfig
    from retr.retrieval.model_file import ModelConfig, build_model, save_model

    ims = [torch.rand(3, 96, 96, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    model = build_model(ModelConfig(backbone="alexnet", weights="none", netvlad_k=4), ims)
    f = save_model(model, tmp_path / "m.retrm", CompressionConfig(0.01, 8)).path
    db = tmp_path / "m.retr"
    r = run("index", small, "--db", db, "--model", f, "--dims", "16", "--device", "cpu")
    assert r.exit_code == 0, r.output
    info = engine.info(db)
    assert info.encoder["pooling"] == "netvlad" and info.descriptor_dim == 4 * 256 and info.code_size == 4
    q = small / "f03" / "flip.png"
    assert json.loads(run("query", q, "--db", db, "-k", 1, "--json").output)[0]["results"][0]["path"] == str(q)
    f.write_bytes(f.read_bytes() + b"x")  # another file under the same name is noticed
    r = run("query", q, "--db", db)
    assert r.exit_code != 0 and "changed since the database was built" in r.output


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["fastscan", "ivf-fastscan"])
def test_fastscan_index_gives_the_flat_results(small, tmp_path, kind):
    flat, fast = tmp_path / "flat.retr", tmp_path / "fast.retr"
    args = ["--backbone", "alexnet", "--weights", "none", "--pooling", "mac", "--dims", "16", "--device", "cpu"]
    assert run("index", small, "--db", flat, *args, "--freeze").exit_code == 0
    r = run("index", small, "--db", fast, *args, "--index", kind, "--codec-from", flat)
    assert r.exit_code == 0, r.output
    assert engine.info(fast).index["config"]["kind"] == kind
    qs = [small / f"f0{i}" / "crop.png" for i in range(4)]
    want = json.loads(run("query", *qs, "--db", flat, "-k", 5, "--json").output)
    got = json.loads(run("query", *qs, "--db", fast, "-k", 5, "--json").output)
    for w, g in zip(want, got):  # exact re-rank: the same scores (ties may swap equal-score paths)
        assert [r["score"] for r in g["results"]] == pytest.approx([r["score"] for r in w["results"]], abs=1e-5)
        assert g["results"][0]["path"] == w["results"][0]["path"]


def test_fastscan_needs_a_quantizer(small, tmp_path):
    r = run("index", small, "--db", tmp_path / "x.retr", "--backbone", "alexnet", "--weights", "none",
            "--pooling", "mac", "--quantizer", "none", "--index", "fastscan", "--device", "cpu")
    assert r.exit_code != 0 and "scans the quantized codes, but the codec stores float32" in r.output


def test_codec_options_beyond_the_paper_from_the_command_line(small, tmp_path):
    fast = ["--backbone", "alexnet", "--weights", "none", "--pooling", "mac", "--device", "cpu", "--freeze"]
    db = tmp_path / "v.retr"
    r = run("index", small, "--db", db, *fast, "--allocation", "variance", "--budget", 4)
    assert r.exit_code == 0, r.output
    i = engine.info(db)
    assert i.code_size == 4 and i.codec["allocation"] == "variance" and i.codec["budget"] == 4
    assert i.index_config["kind"] == "flat"  # one h per dimension is what fast-scan needs: not here
    db = tmp_path / "l.retr"
    r = run("index", small, "--db", db, *fast, "--dims", 16, "--levels-kind", "lloyd")
    assert r.exit_code == 0, r.output
    i = engine.info(db)
    assert i.code_size == 4 and i.codec["levels_kind"] == "lloyd" and i.index_config["kind"] == "fastscan"
    r = run("query", small / "f00" / "orig.png", "--db", db, "-k", 1, "--json")
    assert json.loads(r.output)[0]["results"][0]["path"].endswith("f00/orig.png")
    r = run("index", small, "--db", tmp_path / "x.retr", *fast, "--allocation", "variance")
    assert r.exit_code == 1 and "needs a budget" in r.output


def test_info_states_the_bytes_each_image_costs(small, tmp_path):
    db = tmp_path / "b.retr"
    fast = ["--backbone", "alexnet", "--weights", "none", "--pooling", "mac", "--device", "cpu", "--freeze"]
    assert run("index", small, "--db", db, *fast, "--dims", 16).exit_code == 0
    b = engine.info(db).bytes_per_image
    assert b["code"] == 4  # 16 dims x 2 bits
    # LMDB pages are 4 KiB and each per-image sub-database of 28 images fits one leaf page
    assert b["lmdb"] == {name: round(4096 / 28, 1) for name in ("codes", "files", "ids")}
    assert b["lmdb_total"] == round(3 * 4096 / 28, 1)
    index_bytes = (db / "index.faiss").stat().st_size  # header included: a little more than Faiss's own bytes
    assert 0 < b["index"] * 28 <= index_bytes
    # the default index is fastscan: once loaded it also holds its re-rank copy (4 code bytes + a norm per vector,
    # and 4 tables of 256 centroids of 4 dims)
    header = indexes.read_header(db / "index.faiss")
    assert header["config"]["kind"] == "fastscan"
    assert b["index_memory"] == round((header["bytes"] + 28 * (4 + 4) + 4 * 256 * 4 * 4) / 28, 1)
    out = run("info", "--db", db).output
    assert "per image    code 4 B; LMDB 439 B on disk (codes 146, files 146, ids 146); index" in out
