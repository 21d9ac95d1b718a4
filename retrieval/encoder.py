"""The encoder: uint8 images in, ``(n, d) float32`` L2-normalised descriptors out.

``EncoderConfig`` (encoder_config.py, torch-free, re-exported here) is what a database records (backbone, weights,
layer, pooling, scales, resizing); ``Encoder`` holds the loaded network for one device. ``Encoder.preprocess`` is a
pure function of one image (it runs in decoding worker threads); ``Encoder.encode_batch`` is a pure function of a batch
of preprocessed tensors, so a cluster engine can map it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torchvision

from .backbones import get_spec, load_backbone, preprocess, preprocess_decoded
from .encoder_config import ENCODER_VERSION, EncoderConfig, _file_sha256  # noqa: F401  (re-exported)
from .errors import ConfigError
from .fusion import fold_batchnorm
from .pooling import Pooling, l2n, multiscale


def crop_box(box, width: int, height: int) -> tuple[int, int, int, int] | None:
    """A bounding box ``(x1, y1, x2, y2)`` in pixels (floats allowed, as in Oxford's gt files) -> integer bounds
    inside a ``width`` x ``height`` image, at least one pixel wide and high; None stays None."""
    if box is None:
        return None
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    x1, y1 = min(max(0, x1), width - 1), min(max(0, y1), height - 1)
    return x1, y1, max(x1 + 1, min(x2, width)), max(y1 + 1, min(y2, height))


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without it is a user error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but no CUDA device is visible; use --device cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device '{device}'; use auto, cpu or cuda") from None


JPEG_DECODES = ("auto", "device", "pillow")


def resolve_jpeg_decode(jpeg_decode: str, device: torch.device) -> bool:
    """Where JPEG files are decoded, decided once per encoder for every image it describes (index, query, eval):
    ``device`` in batches on the model's device (nvJPEG on CUDA), ``pillow`` in the decoding threads, ``auto`` the
    device on CUDA and Pillow elsewhere. Returns True for the device."""
    if jpeg_decode not in JPEG_DECODES:
        raise ConfigError(f"unknown JPEG decoder {jpeg_decode!r}; use one of {', '.join(JPEG_DECODES)}")
    return device.type == "cuda" if jpeg_decode == "auto" else jpeg_decode == "device"


class Encoder:
    """A loaded network on one device. ``encoder(images)`` maps a list of ``(H, W, 3) uint8`` arrays to
    ``(n, d) float32`` L2-normalised descriptors.

    For inference the BatchNorms are folded into their convolutions (``fold=True``, see ``fusion.py``) and the
    network runs channels_last on every device: on the CPU that is ~2.5x the forward speed of EfficientNet-Lite0,
    for descriptors equal to ~1e-6. ``folded`` says how many BatchNorms were folded.
    """

    def __init__(self, config: EncoderConfig, device: str = "auto", seed: int = 0, fold: bool = True,
                 jpeg_decode: str = "auto"):
        self.config = config
        self.device = resolve_device(device)
        self.spec = get_spec(config.backbone)
        self.jpeg_on_device = resolve_jpeg_decode(jpeg_decode, self.device)
        if config.model is not None:
            from .model_file import load_model_file  # only needed with --model

            if _file_sha256(config.model) != config.weights_sha256:
                raise ConfigError(f"model file {config.model} changed since the database was built with it")
            self.model, self.pool, _ = load_model_file(config.model)
        else:
            self.model = load_backbone(config.backbone, weights=config.weights, layer=config.layer, seed=seed)
            self.pool = Pooling(config.pooling, p=config.gem_p) if config.layer == "conv" else None
        self.model.eval().to(self.device)
        if self.pool is not None:
            self.pool.eval().to(self.device)
        self.folded = 0
        if fold:
            side = self.config.max_size or self.spec.input_size
            sample = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(0)).to(self.device)
            self.folded = fold_batchnorm(self.model, sample)
        self.model = self.model.to(memory_format=torch.channels_last)

    @classmethod
    def wrap(cls, model: torch.nn.Module, pool: torch.nn.Module | None, config: EncoderConfig,
             device: str = "auto") -> Encoder:
        """An encoder over a network already in memory (a model being fine-tuned): nothing is loaded or folded,
        so the network's own parameters are used as they are."""
        enc = cls.__new__(cls)
        enc.config = config
        enc.device = resolve_device(device)
        enc.spec = get_spec(config.backbone)
        enc.jpeg_on_device = False
        enc.model, enc.pool, enc.folded = model, pool, 0
        return enc

    @property
    def dim(self) -> int:
        return self.config.dim

    @property
    def draft_size(self) -> tuple[int, int] | None:
        """The JPEG draft size for `images.read_image`: decode large photos at a reduced scale that stays at least
        twice the resize size (None with ``max_size``, whose resize depends on the full image)."""
        if self.config.max_size is not None:
            return None
        return (self.spec.resize_size * 2, self.spec.resize_size * 2)

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """``(H, W, 3) uint8`` -> ``(3, h, w) float32`` normalised, on the CPU. Pure; safe in worker threads."""
        return preprocess(self.spec, image, max_size=self.config.max_size)

    def preprocess_jpegs(self, blobs: list[bytes], crops: list | None = None) -> list[torch.Tensor]:
        """JPEG files' bytes -> ``(3, h, w) float32`` normalised tensors on this encoder's device: one batched
        ``torchvision.io.decode_jpeg`` there (nvJPEG on CUDA, libjpeg on the CPU), each image cut to its crop
        ``(x1, y1, x2, y2)`` in pixels where one is given, then `preprocess_decoded`.
        Raises RuntimeError if any file does not decode (the caller retries them one by one)."""
        data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]  # bytearray: writable memory
        images = torchvision.io.decode_jpeg(data, mode=torchvision.io.ImageReadMode.RGB, device=self.device)
        if crops is not None:
            cut = []
            for im, box in zip(images, crops):
                c = crop_box(box, im.shape[2], im.shape[1])
                cut.append(im if c is None else im[:, c[1]:c[3], c[0]:c[2]])
            images = cut
        return preprocess_decoded(self.spec, images, self.config.max_size)

    @contextmanager
    def decoding_workers(self) -> Iterator[Callable[[], None]]:
        """For threads that run ``preprocess`` beside the forward pass: yields the function each of them runs
        first (``images.iter_decoded(worker_init=...)``), which puts that thread's torch ops on one thread.

        Why: every thread that runs torch ops starts an OpenMP team of its own; with more OpenMP threads than cores
        libgomp stops spinning between parallel regions, and the forward pass on the calling thread behaves unlike
        the bare forward (slower on an idle machine; on a loaded one the other way round). ATen's
        ``set_num_threads`` sets the calling thread's count and also the default that threads started later
        inherit: that default is put back on exit.
        """
        n = torch.get_num_threads()  # also fixes this thread's own count (ATen sets it lazily, per thread)
        try:
            yield functools.partial(torch.set_num_threads, 1)
        finally:
            torch.set_num_threads(n)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.model(x)
        y = self.pool(y) if self.pool is not None else y
        return y.float()

    @torch.inference_mode()
    def encode_batch(self, batch: list[torch.Tensor] | torch.Tensor) -> np.ndarray:
        """Preprocessed ``(3, h, w)`` tensors (on the CPU or this encoder's device) -> ``(n, d) float32``
        L2-normalised descriptors.

        Tensors of one size are stacked into one forward pass; with ``max_size`` sizes differ and each size group
        runs on its own. On CUDA the forward runs in bfloat16 (channels_last); descriptors come back float32.
        """
        if isinstance(batch, torch.Tensor):
            batch = list(batch)
        if not batch:
            return np.zeros((0, self.dim), np.float32)
        out = torch.empty((len(batch), self.dim), dtype=torch.float32)
        groups: dict[tuple, list[int]] = {}
        for i, t in enumerate(batch):
            groups.setdefault(tuple(t.shape), []).append(i)
        cuda = self.device.type == "cuda"
        for idx in groups.values():
            parts = [batch[i] for i in idx]
            if all(t.device == self.device for t in parts):  # e.g. from preprocess_jpegs
                x = torch.stack(parts)
            elif cuda and all(t.device.type == "cpu" for t in parts):
                x = torch.stack(parts).pin_memory().to(self.device, non_blocking=True)
            else:
                x = torch.stack([t.to(self.device) for t in parts])
            x = x.to(memory_format=torch.channels_last)
            with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=cuda):
                if self.config.scales == (1.0,):
                    y = l2n(self._forward(x))
                else:
                    y = multiscale(self._forward, x, self.config.scales)
            out[idx] = y.float().cpu()
        return out.numpy()

    def __call__(self, images: list[np.ndarray]) -> np.ndarray:
        """``[(H, W, 3) uint8]`` -> ``(n, d) float32``."""
        return self.encode_batch([self.preprocess(im) for im in images])

