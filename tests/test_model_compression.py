"""NetVLAD, pruning, weight quantization, the .retrm file, fine-tuning and `retr model` (issue 7)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from retr.cli import main
from retr.eval import metrics
from retr.eval.datasets import build_synthetic
from retr.eval.model_table import compute_model_table, training_images, write_model_table
from retr.retrieval.compress import (
    CompressedTensor,
    CompressionConfig,
    PruneReport,
    assign_codes,
    kmeans_codebook,
    pack_codes,
    prune_,
    quantize_values,
    unpack_codes,
)
from retr.retrieval.errors import ConfigError, WeightsUnavailable
from retr.retrieval.codec import CodecConfig, fit
from retr.retrieval.model_file import (
    ModelConfig,
    build_model,
    expected_tensor_bytes,
    load_model_file,
    read_model_file,
    save_model,
    store_whitening,
    used_backbone_parameters,
    write_model_file,
)

from retr.retrieval.pooling import NetVLAD, init_netvlad
from retr.retrieval.train import TrainConfig, describe_paths, mine_tuples, train, triplet_loss

SIZE = 64  # AlexNet's conv map of a 64-pixel image is 3 x 3 cells: fast on a CPU


# --- NetVLAD ---------------------------------------------------------------------------------------------------


def test_netvlad_hand_computed():
    # Centres e1, e2; cells (0.8, 0.6) (nearest e1) and (0.6, 0.8) (nearest e2); alpha 1000: hard assignment.
    pool = NetVLAD(dim=2, k=2)
    pool.set_centroids(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), alpha=1000.0)
    x = torch.tensor([[0.8, 0.6], [0.6, 0.8]]).T.reshape(1, 2, 1, 2)
    # v1 = (0.8 - 1, 0.6) ~ (-1, 3), v2 = (0.6, 0.8 - 1) ~ (3, -1); intra-normalised, then the whole L2-normalised
    expected = torch.tensor([-1.0, 3.0, 3.0, -1.0]) / math.sqrt(20)
    torch.testing.assert_close(pool(x)[0], expected, atol=1e-6, rtol=0)


def test_netvlad_shape_and_normalisation():
    torch.manual_seed(0)
    pool = NetVLAD(dim=16, k=5)
    pool.set_centroids(torch.nn.functional.normalize(torch.randn(5, 16), dim=1), alpha=10.0)
    y = pool(torch.randn(3, 16, 4, 6).abs())
    assert y.shape == (3, 80)
    torch.testing.assert_close(y.norm(dim=1), torch.ones(3))
    # intra-normalisation: each of the K blocks of C values has the same norm, 1 / sqrt(K)
    torch.testing.assert_close(y.reshape(3, 5, 16).norm(dim=2), torch.full((3, 5), 1 / math.sqrt(5)))
    assert pool.output_dim == 80


def test_init_netvlad_kmeans_on_local_descriptors():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 8, 3)  # a stand-in backbone: (n, 3, H, W) -> (n, 8, H - 2, W - 2)
    images = [torch.randn(3, 10, 10) for _ in range(4)]
    pool = init_netvlad(conv, images, k=4, per_image=20)
    assert (pool.k, pool.dim, pool.output_dim) == (4, 8, 32)
    assert pool.alpha > 0
    c = pool.centroids.detach()
    torch.testing.assert_close(pool.assign.weight[:, :, 0, 0], 2 * pool.alpha * c)
    torch.testing.assert_close(pool.assign.bias, -pool.alpha * (c * c).sum(1))
    with pytest.raises(ConfigError, match="at least 200 local descriptors"):
        init_netvlad(conv, images, k=200, per_image=20)


# --- pruning and quantization ----------------------------------------------------------------------------------


def test_prune_removes_exactly_the_weights_under_the_threshold():
    w = torch.tensor([[0.1, -0.005, 0.02], [0.0, -0.3, 0.009]])
    b = torch.tensor([0.001, -0.002])  # 1-D: never pruned
    before = w.clone()
    rep = prune_({"w": w, "b": b}, 0.01)
    small = before.abs() < 0.01
    assert torch.equal(w[small], torch.zeros(3)) and torch.equal(w[~small], before[~small])
    assert torch.equal(b, torch.tensor([0.001, -0.002]))
    assert [(s.name, s.n, s.pruned) for s in rep.layers] == [("w", 6, 3)]
    assert rep.percent == 50.0


@pytest.mark.parametrize("bits", range(2, 9))
def test_linear_quantization_error_at_most_half_a_step(bits):
    w = np.random.default_rng(bits).normal(0, 0.05, 5000).astype(np.float32)
    codes, cb = quantize_values(w, bits, "linear")
    step = (w.max() - w.min()) / ((1 << bits) - 1)
    assert cb.shape == (1 << bits,) and codes.max() < (1 << bits)
    assert np.abs(cb[codes] - w).max() <= step / 2 * (1 + 1e-5)
    assert cb[0] == w.min() and abs(cb[-1] - w.max()) < 1e-7
    # k-means starts from the linear codebook and Lloyd steps never increase the squared error
    kc = kmeans_codebook(w, bits)
    assert np.mean((kc[assign_codes(w, kc)] - w) ** 2) <= np.mean((cb[codes] - w) ** 2) + 1e-12


def test_code_packing_round_trips():
    codes = np.random.default_rng(0).integers(0, 32, 1001).astype(np.uint8)
    data = pack_codes(codes, 5)
    assert data.shape == (math.ceil(1001 * 5 / 8),)
    assert np.array_equal(unpack_codes(data, 1001, 5), codes)
    assert pack_codes(np.array([1, 2, 3, 0], np.uint8), 2).tolist() == [0x39]  # codec.pack_bits' bit order


def test_compression_config_validates():
    with pytest.raises(ConfigError, match="weight bits"):
        CompressionConfig(0.01, 9)
    with pytest.raises(ConfigError, match="threshold"):
        CompressionConfig(-1.0, 8)
    with pytest.raises(ConfigError, match="codebook"):
        CompressionConfig(0.0, 8, "lloyd")


# --- the .retrm file -------------------------------------------------------------------------------------------


def test_file_size_is_kept_weights_times_bits_plus_index(tmp_path):
    w = np.array([[0.5, -0.001, 0.2, 0.003, -0.4], [0.0, 0.1, -0.002, 0.3, 0.6], [-0.7, 0.004, 0.8, 0.005, 0.9]],
                 np.float32)
    keep = np.abs(w.reshape(-1)) >= 0.01  # 9 of 15 kept
    codes, cb = quantize_values(w.reshape(-1)[keep], 5)
    tensors = {"w": CompressedTensor("w", (3, 5), mask=keep, bits=5, codes=codes, codebook=cb),
               "b": CompressedTensor("b", (3,), dense=np.array([1, 2, 3], np.float32))}
    path = write_model_file(tmp_path / "m.retrm", ModelConfig(), CompressionConfig(0.01, 5), tensors, PruneReport(()))
    blob = path.read_bytes()
    hlen = int.from_bytes(blob[8:12], "little")
    # mask: ceil(15 / 8) = 2 bytes; codes: ceil(9 * 5 / 8) = 6 bytes; codebook: 32 * 4 = 128; bias 3 * 4 = 12
    assert expected_tensor_bytes(15, 9, 5, True) == 2 + 6 + 128
    assert len(blob) == 8 + 4 + hlen + 2 + 6 + 128 + 12
    back = read_model_file(path)
    assert np.array_equal(back.tensors["w"].decode(), tensors["w"].decode())
    assert np.array_equal(back.tensors["b"].decode(), [1, 2, 3])


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    """AlexNet (random weights) + NetVLAD K=4 initialised on 6 synthetic images; a batch of 3 inputs."""
    ds = build_synthetic(tmp_path_factory.mktemp("syn"), n_families=3, per_family=2, size=64, seed=0)
    ims = training_images(ds, "alexnet", SIZE)
    model = build_model(ModelConfig(backbone="alexnet", weights="none", netvlad_k=4), ims)
    return model, torch.stack(ims[:3])


def test_loaded_model_gives_the_descriptors_of_the_compressed_model(small_model, tmp_path):
    base, x = small_model
    with torch.no_grad():
        d_base = base(x)
    path = tmp_path / "m.retrm"
    model = read_model_file(save_model(base, tmp_path / "base.retrm").path).build()  # a float32 copy
    f = save_model(model, path, CompressionConfig(0.01, 5, "kmeans"))
    with torch.no_grad():
        d_mem = model(x)
        backbone, pool, d = load_model_file(path)
        d_file = pool(backbone(x))
    assert d == 4 * 256 and d_file.shape == (3, 1024)
    assert torch.equal(d_file, d_mem)  # bit for bit
    assert not torch.equal(d_mem, d_base)  # compression did change the network
    assert f.prune.pruned > 0
    # exact size: header + for each stored tensor, its mask, codes and codebook (or dense bytes)
    hlen = int.from_bytes(path.read_bytes()[8:12], "little")
    expected = 12 + hlen
    for name, t in base.stored_state().items():
        if t.dim() >= 2:
            kept = int((t.abs() >= 0.01).sum())
            expected += expected_tensor_bytes(t.numel(), kept, 5, kept < t.numel())
        else:
            expected += t.numel() * t.element_size()
    assert f.file_bytes == path.stat().st_size == expected


def test_stored_state_is_what_the_conv_layer_uses(small_model):
    model, _ = small_model
    assert used_backbone_parameters("alexnet", "conv") == {
        f"features.{i}.{p}" for i in (0, 3, 6, 8, 10) for p in ("weight", "bias")}
    names = list(model.stored_state())
    assert names[-3:] == ["pool.centroids", "pool.assign.weight", "pool.assign.bias"]
    assert sum(t.numel() for t in model.stored_state().values()) == 2469696 + 4 * 256 * 2 + 4


def test_corrupt_or_foreign_files_are_refused(small_model, tmp_path):
    path = save_model(small_model[0], tmp_path / "m.retrm").path
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 1
    (tmp_path / "bad.retrm").write_bytes(bytes(blob))
    with pytest.raises(WeightsUnavailable, match="corrupt"):
        read_model_file(tmp_path / "bad.retrm")
    (tmp_path / "x.retrm").write_bytes(b"not a model")
    with pytest.raises(WeightsUnavailable, match="not a retr model file"):
        read_model_file(tmp_path / "x.retrm")


# A .retrm written by retr before files could hold a whitening (model file version 1): one dense 2 x 2 tensor.
OLD_FILE = (
    b'RETRMODL\xf1\x01\x00\x00{"format":"retr-model","version":1,"model":{"backbone":"alexnet","layer":"conv",'
    b'"weights":"imagenet","pooling":"netvlad","netvlad_k":2,"netvlad_alpha":100.0,"gem_p":3.0,"version":1},'
    b'"compression":{"threshold":0.0,"bits":null,"codebook":"linear"},"prune":{"n":0,"pruned":0,"percent":0.0,'
    b'"layers":[]},"dim":512,"tensors":[{"name":"pool.centroids","shape":[2,2],"dtype":"float32","kind":"dense"}],'
    b'"payload_bytes":16,"payload_sha256":"ad73b9acd6e4a74b2f5bb5386658ce3bb146cd040a1867646ab3b973fb6632b1"}'
    b"\x00\x00\x80?\x00\x00\x00@\x00\x00@@\x00\x00\x80@"
)


def test_whitening_is_stored_in_the_file_and_counted(tmp_path):
    """NetVLAD K = 2 on AlexNet's 256 channels: 512-dim descriptors; a whitening of 3 axes is mean (512) + components
    (3 x 512) + variances (3) + the codec's lo / hi (3 + 3) float32, plus its header: all in the file's size."""
    cfg = ModelConfig(backbone="alexnet", netvlad_k=2)
    tensors = {"pool.centroids": CompressedTensor("pool.centroids", (2, 2),
                                                  dense=np.array([[1, 2], [3, 4]], np.float32))}
    old = tmp_path / "old.retrm"
    old.write_bytes(OLD_FILE)
    f1 = read_model_file(old)  # version 1 still loads: no whitening
    assert f1.whitening is None and f1.whitening_bytes == 0 and f1.header["version"] == 1
    assert np.array_equal(f1.tensors["pool.centroids"].decode(), [[1, 2], [3, 4]])
    # without a whitening the file is written as before, byte for byte (older retr read it)
    assert write_model_file(tmp_path / "v1.retrm", cfg, CompressionConfig(), tensors, PruneReport(())).read_bytes() \
        == OLD_FILE
    x = np.random.default_rng(0).standard_normal((20, 512)).astype(np.float32)
    w = fit(x, CodecConfig(reduction="pca", dims=3, whiten=True, quantizer="none"))
    blob = w.to_bytes()
    path = write_model_file(tmp_path / "w.retrm", cfg, CompressionConfig(), tensors, PruneReport(()), w)
    f2 = read_model_file(path)
    hlen = int.from_bytes(path.read_bytes()[8:12], "little")
    assert len(blob) == 12 + int.from_bytes(blob[8:12], "little") + 4 * (512 + 3 * 512 + 3 + 3 + 3)
    assert f2.file_bytes == 12 + hlen + 16 + len(blob) and f2.whitening_bytes == len(blob)
    assert f2.header["version"] == 2 and f2.header["whitening"] == {"bytes": len(blob), "dims": 3, "n_train": 20}
    assert f2.whitening.fingerprint() == w.fingerprint()
    assert np.array_equal(f2.whitening.components, w.components)
    # attached to / removed from an existing file: the network's stored tensors are kept as they are
    f3 = store_whitening(old, w)
    assert f3.file_bytes == f2.file_bytes and f3.whitening.fingerprint() == w.fingerprint()
    assert store_whitening(old, None).path.read_bytes() == OLD_FILE
    with pytest.raises(ConfigError, match="PCA-whitening without quantizer of its 512-dim"):
        write_model_file(tmp_path / "bad.retrm", cfg, CompressionConfig(), tensors, PruneReport(()),
                         fit(x, CodecConfig(reduction="pca", dims=3, quantizer="none")))
    blob2 = bytearray(path.read_bytes())
    blob2[-1] ^= 1  # the checksum covers the whitening too
    (tmp_path / "bad.retrm").write_bytes(bytes(blob2))
    with pytest.raises(WeightsUnavailable, match="corrupt"):
        read_model_file(tmp_path / "bad.retrm")


# --- fine-tuning -------------------------------------------------------------------------------------------------


def test_triplet_loss_hand_computed():
    q = torch.tensor([1.0, 0.0])
    p = torch.tensor([[0.0, 1.0]])  # |q - p|^2 = 2
    n = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])  # |q - n|^2 = 0, 4
    # 1/2 max(0, 0.1 + 2 - 0) = 1.05 ; 1/2 max(0, 0.1 + 2 - 4) = 0 ; mean = 0.525
    assert float(triplet_loss(q, p, n, 0.1)) == pytest.approx(0.525)


def test_mine_tuples_hardest_negatives():
    xdb = np.eye(4, dtype=np.float32)
    xq = np.array([[0.9, 0.1, 0.3, 0.2]], np.float32)
    gnd = [{"ok": np.array([0, 1]), "junk": np.array([3])}]
    [(i, pos, neg)] = mine_tuples(xq, xdb, gnd, positives=5, negatives=1)
    assert i == 0 and pos.tolist() == [0, 1] and neg.tolist() == [2]


def _map(model, ds):
    xdb = describe_paths(model, ds.db_paths, None, SIZE)
    xq = describe_paths(model, [q.path for q in ds.queries], None, SIZE)
    return metrics.compute_map(np.argsort(-(xq @ xdb.T), axis=1, kind="stable").T, ds.gnd)[0]


@pytest.mark.slow
def test_fine_tuning_lowers_the_loss_and_raises_map(tmp_path):
    ds = build_synthetic(tmp_path / "syn", n_families=6, per_family=4, size=64, seed=0)
    model = build_model(ModelConfig(backbone="alexnet", weights="none", netvlad_k=8),
                        training_images(ds, "alexnet", SIZE))
    before = _map(model, ds)
    cfg = TrainConfig(epochs=4, lr=1e-4, image_size=SIZE, positives=3, negatives=3, queries_per_step=2)
    r = train(model, ds, cfg, device="cpu", progress=False)
    after = _map(model, ds)
    print(f"\ntriplet loss by epoch {r.epoch_loss}; synthetic mAP {before:.3f} -> {after:.3f}")
    assert r.epoch_loss[-1] < r.epoch_loss[0]
    assert after > before


@pytest.mark.slow
def test_training_resumes_from_its_checkpoint(tmp_path):
    ds = build_synthetic(tmp_path / "syn", n_families=3, per_family=3, size=64, seed=1)
    ims = training_images(ds, "alexnet", SIZE)
    cfg = TrainConfig(epochs=2, lr=1e-4, l1=1e-6, image_size=SIZE, positives=1, negatives=1, queries_per_step=2)
    straight = build_model(ModelConfig(backbone="alexnet", weights="none", netvlad_k=2), ims)
    r1 = train(straight, ds, cfg, device="cpu", progress=False)
    resumed = build_model(ModelConfig(backbone="alexnet", weights="none", netvlad_k=2), ims)
    ckpt = tmp_path / "ckpt.npz"
    train(resumed, ds, TrainConfig(**{**cfg.to_dict(), "epochs": 1}), device="cpu", checkpoint=ckpt, progress=False)
    r2 = train(resumed, ds, cfg, device="cpu", checkpoint=ckpt, progress=False)
    assert r2.epochs_run == 1 and r2.epoch_loss == r1.epoch_loss
    for (k, a), b in zip(straight.stored_state().items(), resumed.stored_state().values()):
        assert torch.equal(a, b), k
    with pytest.raises(ConfigError, match="other training options"):
        train(resumed, ds, TrainConfig(**{**cfg.to_dict(), "lr": 1e-3}), device="cpu", checkpoint=ckpt,
              progress=False)


# --- the table and the CLI -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_model_table_and_cli(small_model, tmp_path):
    ds = build_synthetic(tmp_path / "syn", n_families=3, per_family=3, size=64, seed=2)
    t = compute_model_table(small_model[0], {"synthetic": ds}, tmp_path / "table", ((8, 0.01), (5, 0.05)),
                            image_size=SIZE, whiten_dims=None, device="cpu")
    assert sorted(p.name for p in (tmp_path / "table").iterdir()) == ["models"]  # computing draws nothing
    files = write_model_table(t, tmp_path / "table")
    assert sorted(files) == ["csv", "json", "md", "png"] and all(p.exists() for p in files.values())
    assert [r["Method"] for r in t.rows][1:] == ["8 bits quantization", "5 bits quantization"]
    base, r8, r5 = t.rows
    assert base["Drop in mAP (synthetic)"] == 0 and base["Percentage of parameters pruned"] == 0
    assert base["Memory usage (MB)"] > r8["Memory usage (MB)"] > r5["Memory usage (MB)"]
    assert r5["Percentage of parameters pruned"] > r8["Percentage of parameters pruned"] > 0
    header = (tmp_path / "table" / "model_table.csv").read_text().splitlines()[0]
    assert header.startswith("Method,Threshold for pruning,Percentage of parameters pruned,"
                             "Drop in mAP (synthetic),Memory usage (MB)")
    assert json.loads((tmp_path / "table" / "model_table.json").read_text())["rows"][2]["bits"] == 5
    assert (tmp_path / "table" / "model_table.png").stat().st_size > 1000
    res = CliRunner().invoke(main, ["model", "info", r8["file"]])
    assert res.exit_code == 0, res.output
    assert "8 bits (linear codebooks)" in res.output and "features.0.weight" in res.output
    res = CliRunner().invoke(main, ["model", "compress", "--from", r8["file"], "--prune", "0.05", "--weight-bits",
                                    "4", "--out", str(tmp_path / "c.retrm")])
    assert res.exit_code == 0, res.output
    assert read_model_file(tmp_path / "c.retrm").compression == CompressionConfig(0.05, 4)
    res = CliRunner().invoke(main, ["model", "info", str(tmp_path / "nope.retrm")])
    assert res.exit_code == 1 and "cannot read model file" in res.output


@pytest.mark.slow
def test_model_table_stores_and_counts_its_whitening(small_model, tmp_path):
    """With whitening, every row's file holds the PCA-whitening learnt on its descriptors of the database, its size
    counts it, and the mAP is the one of that whitening read back (what retrieval_map learns on the fly)."""
    from retr.eval.model_table import html_section, markdown, retrieval_map

    ds = build_synthetic(tmp_path / "syn", n_families=3, per_family=3, size=64, seed=2)
    t = compute_model_table(small_model[0], {"synthetic": ds}, tmp_path / "table", ((8, 0.01),), image_size=SIZE,
                            whiten_dims=256, device="cpu")
    assert t.whiten_dims == {"synthetic": 1}  # whitening_dims(256, 9 database images) = 9 // 8
    for row in t.rows:
        f = read_model_file(row["file"])
        assert f.whitening is not None and f.whitening.dims == 1 and f.whitening.n_train == 9
        assert row["Memory usage (MB)"] == f.file_bytes / 1e6 == Path(row["file"]).stat().st_size / 1e6
        assert row["Of which whitening (MB)"] == f.whitening_bytes / 1e6 > 4 * (2 * 1024) / 1e6
        assert row["mAP (synthetic)"] == pytest.approx(retrieval_map(f.build(), ds, SIZE, 256, "cpu"), abs=1e-9)
    assert t.rows[0]["Method"] == "alexnet + NetVLAD + whitening (base model)"
    assert t.stored == ("alexnet conv layers + NetVLAD (K = 4) + PCA-whitening 1 x 1024 float32, learnt on "
                        "synthetic's database")
    md = markdown(t)
    assert md.splitlines()[0].endswith("| mAP (synthetic) | Of which whitening (MB) |")
    assert md.splitlines()[-1] == t.note and "not the whole classification network ACPR 2017 count (AlexNet: " \
        "248.6 MB), so absolute MB are not comparable with their table" in t.note
    assert "Memory usage = size of the .retrm file, 10^6 bytes: the descriptor network (alexnet conv" in t.note
    assert "248.6 MB" in html_section(t)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fine_tuning_step_on_cuda_matches_cpu_descriptors(small_model, tmp_path):
    path = save_model(small_model[0], tmp_path / "m.retrm", CompressionConfig(0.01, 8)).path
    ds = build_synthetic(tmp_path / "syn", n_families=3, per_family=2, size=64, seed=3)
    cpu, gpu = read_model_file(path).build(), read_model_file(path).build().cuda()
    a = describe_paths(cpu, ds.db_paths, None, SIZE, "cpu")
    b = describe_paths(gpu, ds.db_paths, None, SIZE, "cuda")
    np.testing.assert_allclose(a, b, atol=1e-3)
    r = train(gpu, ds, TrainConfig(epochs=1, lr=1e-4, image_size=SIZE, positives=1, negatives=1), device="cuda",
              progress=False)
    assert len(r.step_loss) > 0 and next(r.model.parameters()).device.type == "cpu"
