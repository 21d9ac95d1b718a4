"""The everyday contract: one database spec resolved by one rule, presets, one descriptor pipeline, one meaning per
option name, and one-line errors for what a user can get wrong (issue "One engine, one contract")."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import run, write_families
from retr.indexes.config import IndexConfig
from retr.retrieval import engine
from retr.retrieval.codec import CodecConfig
from retr.retrieval.encoder_config import EncoderConfig
from retr.retrieval.errors import ConfigError
from retr.retrieval.presets import PRESETS
from retr.retrieval.spec import FROZEN, PROVISIONAL, DatabaseSpec, SpecRequest, resolve

FAST = ["--backbone", "alexnet", "--weights", "none", "--pooling", "mac", "--device", "cpu", "--batch-size", "8"]


# -- the spec and its one rule ---------------------------------------------------------------------------------------
def test_resolve_takes_the_database_then_the_request_then_the_defaults():
    assert resolve(None) == DatabaseSpec()
    asked = resolve(None, SpecRequest(encoder={"backbone": "alexnet", "weights": "none"}, codec={"dims": 32}))
    assert asked.encoder.backbone == "alexnet" and asked.encoder.pooling == "gem" and asked.codec.dims == 32
    assert asked.codec.levels == 4 and asked.index.kind == "fastscan" and asked.codec_state == PROVISIONAL
    stored = asked.replace(index=IndexConfig(kind="fastscan", rerank=50))
    # nothing asked: what the database holds, index included
    assert resolve(stored, SpecRequest()) == stored
    # asking again for what it holds is no contradiction
    assert resolve(stored, SpecRequest(encoder={"weights": "none"}, codec={"dims": 32})) == stored


def test_the_default_index_scans_the_codes_wherever_the_codec_allows():
    # with one h <= 16: fast-scan over the codes themselves (code_size + ids in memory, not 4 p bytes)
    assert resolve(None).index == IndexConfig(kind="fastscan")
    assert resolve(None, SpecRequest(codec={"quantizer": "q1", "levels": 16})).index.kind == "fastscan"
    # codes fast-scan cannot scan: the decoded vectors in a flat index
    for codec in ({"levels": 32}, {"quantizer": "none"}, {"allocation": "variance", "budget": 16}):
        assert resolve(None, SpecRequest(codec=codec)).index.kind == "flat", codec
    assert resolve(None, SpecRequest(preset="paper-fc7")).index.kind == "flat"  # h = 32
    assert resolve(None, SpecRequest(preset="default", codec={"levels": 32})).index.kind == "flat"
    # asked parameters apply to the default kind; an asked kind wins
    assert resolve(None, SpecRequest(index={"rerank": 50})).index == IndexConfig(kind="fastscan", rerank=50)
    assert resolve(None, SpecRequest(index={"kind": "hnsw"})).index.kind == "hnsw"
    # a database built before the default changed keeps its flat index
    old = resolve(None).replace(index=IndexConfig(kind="flat"))
    assert resolve(old, SpecRequest()).index.kind == "flat"
    # refitting to a codec fast-scan cannot scan moves an index nobody asked for back to flat
    assert resolve(resolve(None), SpecRequest(codec={"levels": 32}), refit=True).index.kind == "flat"
    with pytest.raises(ConfigError, match="--index fastscan scans the quantized codes, but --levels 32 is above"):
        resolve(None, SpecRequest(codec={"levels": 32}, index={"kind": "fastscan"}))


def test_a_contradiction_names_both_values():
    stored = resolve(None, SpecRequest(encoder={"backbone": "alexnet", "weights": "none"}))
    with pytest.raises(ConfigError, match="encoder backbone: the database has 'alexnet', asked 'vgg16'"):
        resolve(stored, SpecRequest(encoder={"backbone": "vgg16"}))
    with pytest.raises(ConfigError, match="codec levels: the database has 4, asked 8"):
        resolve(stored, SpecRequest(codec={"levels": 8}))
    # a database that holds no image pins nothing (a failed first run)
    assert resolve(stored, SpecRequest(encoder={"backbone": "vgg16"}), holds_images=False).encoder.backbone == "vgg16"
    # --refit replaces the codec, not the encoder
    assert resolve(stored, SpecRequest(codec={"levels": 8}), refit=True).codec.levels == 8


def test_the_index_is_derived_and_follows_what_is_asked():
    stored = DatabaseSpec(index=IndexConfig(kind="ivf", nlist=50, nprobe=4))
    assert resolve(stored, SpecRequest(index={"nprobe": 9})).index == IndexConfig(kind="ivf", nlist=50, nprobe=9)
    assert resolve(stored, SpecRequest(index={"kind": "hnsw"})).index == IndexConfig(kind="hnsw")


def test_a_frozen_codec_refuses_another_train_size():
    stored = DatabaseSpec(codec_state=FROZEN, train_size=100)
    with pytest.raises(ConfigError, match="frozen"):
        resolve(stored, SpecRequest(train_size=50))
    assert resolve(stored.replace(codec_state=PROVISIONAL), SpecRequest(train_size=50)).train_size == 50


def test_one_level_is_refused_with_its_reason():
    with pytest.raises(ConfigError, match="0 bits per dimension"):
        resolve(None, SpecRequest(codec={"levels": 1}))


def test_the_spec_round_trips_through_json():
    spec = DatabaseSpec(encoder=EncoderConfig.create("alexnet", "none", "fc7"),
                        codec=CodecConfig(dims=16, levels=8), index=IndexConfig(kind="hnsw", hnsw_m=8),
                        train_size=5, codec_state=FROZEN)
    assert DatabaseSpec.from_bytes(spec.to_bytes()) == spec
    with pytest.raises(ConfigError, match="newer than this retr"):
        DatabaseSpec.from_dict(dict(spec.to_dict(), version=99))


# -- presets ---------------------------------------------------------------------------------------------------------
def test_presets_and_their_bytes_per_vector():
    assert {n: p.bytes_per_vector() for n, p in PRESETS.items()} == {
        "default": 64, "compact16": 16, "paper-fc7": 256, "netvlad": 64}
    fc7 = PRESETS["paper-fc7"].spec()
    assert (fc7.encoder.backbone, fc7.encoder.layer, fc7.encoder.dim) == ("vgg16", "fc7", 4096)
    assert 1 - 256 / (4 * 4096) == pytest.approx(0.984, abs=5e-4)  # the paper's 98.4% compression point
    assert resolve(None, SpecRequest(preset="default")) == DatabaseSpec()
    with pytest.raises(ConfigError, match="--model"):
        resolve(None, SpecRequest(preset="netvlad"))
    with pytest.raises(ConfigError, match="unknown preset 'tiny'"):
        resolve(None, SpecRequest(preset="tiny"))
    out = run("presets").output
    assert "compact16    16 B" in out and "paper-fc7   256 B" in out


# -- the engine keeps the contract ------------------------------------------------------------------------------------
@pytest.fixture
def photos(tmp_path):
    root = tmp_path / "photos"
    write_families(root, 3)  # 21 images
    return root


@pytest.mark.slow
def test_the_index_kind_and_parameters_are_remembered(photos, tmp_path):
    db = tmp_path / "a.retr"
    assert run("index", photos, "--db", db, *FAST, "--index", "fastscan", "--rerank", "20").exit_code == 0
    r = run("index", photos, "--db", db)  # a plain re-run
    assert r.exit_code == 0, r.output
    info = engine.info(db)
    assert info.index["config"]["kind"] == "fastscan" and info.index_config["rerank"] == 20
    assert "fastscan (rerank 20)" in run("info", "--db", db).output


@pytest.mark.slow
def test_a_failed_first_run_pins_nothing(photos, tmp_path):
    db = tmp_path / "a.retr"
    bad = tmp_path / "weights.pt"
    bad.write_bytes(b"not a state dict")
    r = run("index", photos, "--db", db, "--backbone", "alexnet", "--weights", bad, "--device", "cpu")
    assert r.exit_code == 1 and "Traceback" not in r.output
    r = run("index", photos, "--db", db, *FAST)  # another encoder: the empty database takes it
    assert r.exit_code == 0, r.output
    assert engine.info(db).encoder["weights"] == "none" and engine.info(db).count == 21


@pytest.mark.slow
def test_the_codec_is_provisional_until_the_collection_is_large_enough(tmp_path):
    """The tiny-codec trap: a first run on 4 images must not leave a 4-dim codec behind."""
    root = tmp_path / "photos"
    fams = write_families(root / "a", 1)  # 7 images
    db = tmp_path / "a.retr"
    one = run("index", root, "--db", db, *FAST, "--dims", "16", "--train-size", "20", "--json")
    rep = json.loads(one.output)
    assert rep["codec_state"] == "provisional" and rep["code_size"] == 2  # capped at 7 dims x 2 bits
    assert "provisional" in run("info", "--db", db).output
    write_families(root / "b", 2, seed=1)  # 14 more: 21 >= 20, the codec is frozen
    rep = json.loads(run("index", root, "--db", db, "--json").output)
    assert rep["codec_fitted"] and rep["codec_state"] == "frozen" and rep["code_size"] == 4  # 16 dims x 2 bits
    info = engine.info(db)
    assert info.features_kept == 0 and info.codec_note is None and info.codec_label == "pca16-q2h4"
    copy = tmp_path / "copy.png"
    copy.write_bytes(fams["f00"][0].read_bytes())
    res = json.loads(run("query", copy, "--db", db, "-k", 1, "--json").output)
    assert res[0]["results"][0]["path"].endswith("a/f00/orig.png")
    rep = json.loads(run("index", root, "--db", db, "--json").output)  # nothing new: nothing refitted
    assert not rep["codec_fitted"]


@pytest.mark.slow
def test_skipped_files_are_remembered_and_retried_only_when_changed(photos, tmp_path):
    db = tmp_path / "a.retr"
    bad = photos / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really")
    assert run("index", photos, "--db", db, *FAST).exit_code == 0
    rep = engine.index_folder(photos, db, progress=False)
    assert rep.skipped_unchanged == 1 and "broken.jpg" in rep.skipped
    assert "encode" not in rep.timings  # nothing to describe: the network was not even loaded
    rep = engine.index_folder(photos, db, retry_skipped=True, progress=False)
    assert rep.skipped_unchanged == 0 and "encode" in rep.timings
    Image.new("RGB", (64, 64), (200, 10, 10)).save(bad, format="JPEG")  # it changed, and now decodes
    rep = engine.index_folder(photos, db, progress=False)
    assert rep.added == 1 and not rep.skipped


@pytest.mark.slow
def test_deleted_files_are_reported_until_forgotten(photos, tmp_path):
    db = tmp_path / "a.retr"
    assert run("index", photos, "--db", db, *FAST).exit_code == 0
    (photos / "f00" / "orig.png").unlink()
    r = run("index", photos, "--db", db)
    assert r.exit_code == 0 and "1 indexed file no longer in the folder" in r.output
    assert "--forget-deleted" in run("check", "--db", db).output
    rep = engine.index_folder(photos, db, forget_deleted=True, progress=False)
    assert rep.removed == 1 and rep.missing == 0 and rep.total == 20


@pytest.mark.slow
def test_user_errors_are_one_line(photos, tmp_path):
    db = tmp_path / "a.retr"
    assert run("index", photos, "--db", db, *FAST).exit_code == 0
    q = photos / "f01" / "crop.png"
    for k in ("0", "-3"):
        r = run("query", q, "--db", db, "-k", k)
        assert r.exit_code == 2 and "-k" in r.output  # a usage error, before any work
    r = run("query", q, "--db", db, "--nprobe", "5")
    assert r.exit_code == 1 and "has none" in r.output and "Traceback" not in r.output
    r = run("index", photos, "--db", tmp_path / "b.retr", *FAST, "--levels", "1", "--dims", "8")
    assert r.exit_code == 1 and "0 bits per dimension" in r.output
    r = run("index", photos, "--db", tmp_path / "c.retr", *FAST, "--workers", "0")
    assert r.exit_code == 2 and "encoding" not in r.output
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"nope")
    r = run("query", q, broken, "--db", db, "-k", 1, "--json")
    assert r.exit_code == 1
    out = json.loads(r.output[:r.output.rindex("]") + 1])
    assert out[0]["results"][0]["path"] == str(q) and "error" in out[1]
    with pytest.raises(ConfigError, match="-k must be 1 or more"):
        engine.search(db, [q], k=0)


# -- one descriptor pipeline ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_index_query_and_eval_describe_an_image_identically(photos, tmp_path):
    from retr.eval.run import compute_features
    from retr.retrieval.encoder import Encoder
    from retr.retrieval.store import Store

    db = tmp_path / "a.retr"
    assert run("index", photos, "--db", db, *FAST, "--keep-features", "--freeze").exit_code == 0
    paths = sorted(photos.rglob("*.*"))
    with Store(db) as s:
        ids, stored = s.read_all("features", 256, "<f4")
    enc = Encoder(EncoderConfig.create("alexnet", "none", pooling="mac"), device="cpu")
    x = compute_features(enc, paths, batch_size=8, progress=False)
    by_path = {p.relative_to(photos).as_posix(): x[k] for k, p in enumerate(paths)}
    with Store(db) as s:
        files = s.files()
    for rel, (i, _) in files.items():
        np.testing.assert_array_equal(stored[list(ids).index(i)], by_path[rel])
    with engine.Engine(db, device="cpu") as eng:
        got = eng.search([paths[0]], k=1)[0]
        direct = eng.search_vectors(by_path[paths[0].relative_to(photos).as_posix()][None], k=1)
    assert got.results[0].score == pytest.approx(float(direct[0][0, 0]), abs=1e-6)


# -- one name, one meaning; start-up ----------------------------------------------------------------------------------
def test_eval_lists_agree_with_their_sources():
    from retr.cli.eval import DATASET_NAMES, DEFAULT_EXPERIMENTS
    from retr.eval.datasets import DATASETS
    from retr.eval.stress import PAPER_EXPERIMENTS

    assert tuple(DATASET_NAMES) == tuple(DATASETS)
    assert DEFAULT_EXPERIMENTS == ",".join(PAPER_EXPERIMENTS)


def test_shared_options_mean_the_same_on_every_command():
    from retr.cli import main

    def opts(*path):
        cmd = main
        for p in path:
            cmd = cmd.commands[p]
        return {o.name: o for o in cmd.params}

    index, evaluate, compress = opts("index"), opts("eval"), opts("model", "compress")
    for name in ("backbone", "weights", "layer", "pooling", "device"):
        assert index[name].help == evaluate[name].help, name
        assert index[name].default == evaluate[name].default, name
    assert index["backbone"].default == compress["backbone"].default
    assert index["device"].help == compress["device"].help
    assert "prune" not in index and "codec_from" not in evaluate and "keep" not in index
    assert "dr2" not in index["reduction"].type.choices


@pytest.mark.parametrize("args", [["--help"], ["info", "--db", "DB"]])
def test_help_and_info_do_not_import_torch_or_faiss(tmp_path, args):
    code = ("import sys\nfrom retr.cli import main\n"
            "try:\n    main([a.replace('DB', sys.argv[1]) for a in sys.argv[2:]])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'faiss', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "none.retr"), *args], capture_output=True,
                         text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr


def test_ivf_visits_every_list_of_a_small_collection():
    from retr.indexes import default_nlist, default_nprobe

    assert default_nlist(300) == 7 and default_nprobe(7) == 7  # 300 images: an exhaustive search, not 1 of 7 lists
    assert default_nprobe(64) == 8 and default_nprobe(4000) == 500


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_eval_ranks_through_the_index_users_get(kind):
    from retr.eval.run import ranking
    from retr.indexes.vectors import l2n

    rng = np.random.default_rng(0)
    xdb = l2n(rng.standard_normal((200, 16)))
    xq = l2n(xdb[:5] + 0.05 * rng.standard_normal((5, 16)))
    flat, approx = ranking(xdb, xq), ranking(xdb, xq, kind)
    assert flat.shape == approx.shape == (200, 5)
    for j in range(5):  # every database position once, and the same nearest neighbours on easy queries
        assert sorted(approx[:, j]) == list(range(200))
        assert approx[0, j] == flat[0, j] == j
