"""JPEGs decoded in batches on the model's device (nvJPEG on CUDA; here torchvision's CPU decoder, the same code
path): the same pixels after preprocessing as Pillow's path, the same files indexed and skipped, the same
descriptors."""

import io

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from skimage import data as skdata

from retr.cli import main
from retr.retrieval import engine
from retr.retrieval.backbones import get_spec, preprocess, preprocess_decoded
from retr.retrieval.codec import CodecConfig
from retr.retrieval.encoder import EncoderConfig
from retr.retrieval.images import JpegBytes, iter_decoded
from retr.retrieval.store import Store

PHOTOS = {"coffee": skdata.coffee(), "chelsea": skdata.chelsea(), "astronaut": skdata.astronaut()}


def jpeg_bytes(image: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("max_size", [None, 150])
def test_preprocess_decoded_matches_preprocess_to_a_grey_level(max_size):
    """The device path resizes in float32 (as torchvision does for uint8 on CUDA); the CPU uint8 path in fixed
    point, rounding after each separable pass: ~15% of the values differ by one level; bicubic's overshoot,
    clipped after each pass on the CPU, makes a few in 10,000 differ by more (up to 7 measured)."""
    for spec in (get_spec("resnet18"), get_spec("efficientnet_lite0")):  # bilinear and bicubic
        blobs = [jpeg_bytes(x) for x in PHOTOS.values()]
        pillow = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs]
        decoded = torchvision.io.decode_jpeg([torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs],
                                             mode=torchvision.io.ImageReadMode.RGB)
        for d, p in zip(decoded, pillow):  # libjpeg on both sides: the same pixels
            assert np.array_equal(d.permute(1, 2, 0).numpy(), p)
        got = preprocess_decoded(spec, decoded, max_size)
        std = torch.tensor(spec.std)[:, None, None]
        for g, p in zip(got, pillow):
            want = preprocess(spec, p, max_size)
            assert g.shape == want.shape and g.dtype == torch.float32
            grey_levels = ((g - want) * std * 255).abs()
            assert grey_levels.mean() < 0.25
            assert (grey_levels > 1.5).float().mean() < 1e-3
            if spec.interpolation == "bilinear":
                assert grey_levels.max() <= 1.0 + 1e-3


def test_iter_decoded_defers_plain_jpegs_only(tmp_path):
    photo = PHOTOS["coffee"]
    (tmp_path / "plain.jpg").write_bytes(jpeg_bytes(photo))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: Pillow applies it
    (tmp_path / "rotated.jpg").write_bytes(jpeg_bytes(photo, exif=exif))
    Image.fromarray(photo).convert("CMYK").save(tmp_path / "cmyk.jpg", "JPEG")
    Image.fromarray(photo).save(tmp_path / "lossless.png")
    paths = sorted(tmp_path.iterdir())
    out = {p.name: r for _, p, r in iter_decoded(paths, tmp_path, defer_jpeg=True)}
    assert isinstance(out["plain.jpg"], JpegBytes) and out["plain.jpg"].size == (600, 400)
    assert out["plain.jpg"].data == (tmp_path / "plain.jpg").read_bytes()
    assert out["rotated.jpg"].shape == (600, 400, 3)  # decoded, EXIF rotation applied
    assert out["cmyk.jpg"].shape == out["lossless.png"].shape == (400, 600, 3)


@pytest.mark.slow
def test_index_with_jpegs_on_device_matches_pillow(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, x in PHOTOS.items():
        (folder / f"{name}.jpg").write_bytes(jpeg_bytes(x))
    Image.fromarray(PHOTOS["coffee"][::-1]).save(folder / "flipped.png")
    exif = Image.Exif()
    exif[0x0112] = 3
    (folder / "rotated.jpg").write_bytes(jpeg_bytes(PHOTOS["chelsea"], exif=exif))
    whole = jpeg_bytes(PHOTOS["astronaut"])
    (folder / "cut.jpg").write_bytes(whole[: len(whole) // 2])  # header fine, scan data cut: fails in the batch
    enc = EncoderConfig.create("resnet18", weights="none")
    raw = CodecConfig(reduction="none", quantizer="none")  # codes = the float32 descriptors

    def index(name, on_device):
        db = tmp_path / name
        rep = engine.index_folder(folder, db, enc, raw, device="cpu", batch_size=4, progress=False,
                                  jpeg_decode="device" if on_device else "pillow")
        with Store(db) as s:
            paths = {i: rel for rel, (i, _) in s.files().items()}
            rows = {paths[int(i)]: r for ids, block in s.iter_arrays("codes", 512, "<f4") for i, r in zip(ids, block)}
        return rep, rows

    pillow, want = index("pillow.retr", False)
    device, got = index("device.retr", True)
    assert set(got) == set(want) == {"coffee.jpg", "chelsea.jpg", "astronaut.jpg", "flipped.png", "rotated.jpg"}
    assert device.skipped == pillow.skipped == {"cut.jpg": "truncated image"}
    assert "device_decode" in device.timings and "device_decode" not in pillow.timings
    for k in want:
        assert float(got[k] @ want[k]) > 0.999  # unit vectors: cosine
    # a query goes the way its engine's encoder decodes: the same path as indexing
    with engine.Engine(tmp_path / "device.retr", device="cpu", jpeg_decode="device") as eng:
        assert eng.encoder.jpeg_on_device
        (r,) = eng.search([folder / "coffee.jpg"], k=1)
        assert r.results[0].path.endswith("coffee.jpg") and r.results[0].score == pytest.approx(1.0, abs=1e-5)


def test_cli_jpeg_decode_option(tmp_path, monkeypatch):
    from click.testing import CliRunner

    seen = []

    def index_folder(*args, **kw):  # what the command asks of the library; stop there
        seen.append(kw["jpeg_decode"])
        raise SystemExit(0)

    monkeypatch.setattr(engine, "index_folder", index_folder)
    for choice in ("auto", "device", "pillow"):
        args = ["index", str(tmp_path), "--db", str(tmp_path / "x.retr"), "--jpeg-decode", choice]
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 0, r.output
    assert seen == ["auto", "device", "pillow"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_jpegs_decoded_on_cuda_match_the_cpu_decoder():
    """nvJPEG against libjpeg through the same code, and a batch mixing CPU (Pillow) and CUDA tensors."""
    from retr.retrieval.encoder import Encoder

    blobs = [jpeg_bytes(x) for x in PHOTOS.values()]
    cfg = EncoderConfig.create("resnet18", weights="none")
    gpu, cpu = Encoder(cfg, device="cuda"), Encoder(cfg, device="cpu")
    on_gpu, on_cpu = gpu.preprocess_jpegs(blobs), cpu.preprocess_jpegs(blobs)
    assert all(t.device.type == "cuda" for t in on_gpu)
    std = torch.tensor(get_spec("resnet18").std)[:, None, None]
    for g, c in zip(on_gpu, on_cpu):
        assert ((g.cpu() - c) * std * 255).abs().mean() < 0.5  # IDCTs differ by a level here and there
    mixed = gpu.encode_batch([on_gpu[0], cpu.preprocess(PHOTOS["chelsea"])])
    want = cpu.encode_batch([on_cpu[0], cpu.preprocess(PHOTOS["chelsea"])])
    assert (mixed * want).sum(1).min() > 0.99  # bf16 on the GPU
