"""The one descriptor pipeline: images (files or arrays) in, ``(n, d) float32`` descriptors out.

Indexing, querying, ``retr eval`` and fine-tuning all describe images here, so an image becomes the same
descriptor whichever command asks. The stages overlap: worker threads read, check and decode files (Pillow) and
preprocess them while the forward pass runs on the previous batch; JPEGs are decoded on the encoder's device
instead when the encoder says so (`Encoder.jpeg_on_device`, decided once per encoder). A file that cannot be
decoded is reported with its reason, never raised: the caller decides whether that is an error (a benchmark image)
or a skip (a folder being indexed, one query among many).

    iter_descriptors(encoder, sources) -> Iterator[Described]    batches, in input order, for streaming writers
    describe(encoder, sources)         -> Descriptions           everything at once
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from .encoder import Encoder, crop_box
from .errors import ImageError
from .images import FileStamp, JpegBytes, Skipped, batch_prefetch, decode_image_bytes, iter_decoded, printable

@dataclass
class Described:
    """One batch: ``index`` positions in the input, ``x (b, d) float32`` L2-normalised descriptors, and for files
    ``stamps`` (size, mtime, hash of the bytes decoded; None for arrays). ``skipped``: ``(position, reason)`` of the
    inputs that could not be described since the previous batch."""

    index: list[int]
    x: np.ndarray
    stamps: list[FileStamp | None]
    skipped: list[tuple[int, str]] = field(default_factory=list)


@dataclass
class Descriptions:
    """``x (n, d) float32`` (zero rows where skipped), ``ok (n,) bool``, ``skipped {position: reason}``."""

    x: np.ndarray
    ok: np.ndarray
    skipped: dict[int, str]
    stamps: list[FileStamp | None]


def _crop_array(image: np.ndarray, box) -> np.ndarray:
    c = crop_box(box, image.shape[1], image.shape[0])
    return image if c is None else image[c[1]:c[3], c[0]:c[2]]


def iter_descriptors(encoder: Encoder, sources: Sequence, *, crops: Sequence | None = None, batch_size: int = 32,
                     workers: int = 2, timeout_s: float | None = 30.0, progress: bool = False,
                     desc: str = "describing", timings: dict | None = None) -> Iterator[Described]:
    """Describe ``sources`` (paths, or ``(H, W, 3) uint8`` arrays) in batches of ``batch_size``, in input order.

    ``timings``, when given, accumulates seconds spent in the ``forward`` pass and, for JPEGs decoded on the
    device, in ``device_decode``.
    ``crops``: a bounding box ``(x1, y1, x2, y2)`` in pixels or None per source (Oxford's query regions), applied
    to the decoded image before preprocessing. Every forward pass sees the same batch whatever happened before
    (decodable inputs in order, ``batch_size`` at a time), so descriptors do not depend on where a run resumed.
    """
    crops = list(crops) if crops is not None else [None] * len(sources)
    if len(crops) != len(sources):
        raise ValueError(f"{len(crops)} crops for {len(sources)} sources")
    files = [i for i, s in enumerate(sources) if not isinstance(s, np.ndarray)]
    defer = encoder.jpeg_on_device
    bar = tqdm(total=len(sources), desc=desc, unit="img", disable=not progress)
    batch: list[tuple[int, object, FileStamp | None]] = []  # (position, tensor or JpegBytes, stamp)
    skipped: list[tuple[int, str]] = []

    def transform_at(i: int):
        box = crops[i]
        return lambda img: encoder.preprocess(_crop_array(img, box))

    clock = timings if timings is not None else {}
    clock.setdefault("forward", 0.0)

    def flush() -> Described | None:
        n = len(batch)
        if defer:
            t = time.perf_counter()
            _decode_deferred(encoder, sources, crops, batch, skipped)
            clock["device_decode"] = clock.get("device_decode", 0.0) + time.perf_counter() - t
        bar.update(n - len(batch))
        if not batch:
            return None
        t = time.perf_counter()
        x = encoder.encode_batch([b[1] for b in batch])
        clock["forward"] += time.perf_counter() - t
        out = Described([b[0] for b in batch], x, [b[2] for b in batch], list(skipped))
        bar.update(len(batch))
        batch.clear()
        skipped.clear()
        return out

    def decoded() -> Iterator[tuple[int, object]]:
        """(position, (tensor or JpegBytes, stamp) or Skipped), in input order."""
        arrays = iter(i for i in range(len(sources)) if isinstance(sources[i], np.ndarray))
        nxt = next(arrays, None)
        if not files:
            while nxt is not None:
                yield nxt, (encoder.preprocess(_crop_array(sources[nxt], crops[nxt])), None)
                nxt = next(arrays, None)
            return
        # one transform per file would need a crop per file: files with crops get theirs by position
        with_crop = any(crops[i] is not None for i in files)
        items = iter_decoded([sources[i] for i in files], workers=workers, timeout_s=timeout_s,
                             transform=None if with_crop else encoder.preprocess,
                             draft_size=None if with_crop else encoder.draft_size, stamp=True,
                             ahead=batch_prefetch(batch_size, workers), worker_init=worker_init,
                             defer_jpeg=defer)
        try:
            for j, _, result in items:
                i = files[j]
                while nxt is not None and nxt < i:
                    yield nxt, (encoder.preprocess(_crop_array(sources[nxt], crops[nxt])), None)
                    nxt = next(arrays, None)
                if with_crop and not isinstance(result, Skipped) and not isinstance(result[0], JpegBytes):
                    result = (transform_at(i)(result[0]), result[1])
                yield i, result
            while nxt is not None:
                yield nxt, (encoder.preprocess(_crop_array(sources[nxt], crops[nxt])), None)
                nxt = next(arrays, None)
        finally:
            items.close()  # stop the decoding threads now, also when the consumer stops early or fails

    try:
        with encoder.decoding_workers() as worker_init:
            items = decoded()
            try:
                for i, result in items:
                    if isinstance(result, Skipped):
                        skipped.append((i, result.reason))
                        bar.update(1)
                        continue
                    batch.append((i, result[0], result[1]))
                    if len(batch) == batch_size:
                        out = flush()
                        if out is not None:
                            yield out
                out = flush()
                if out is not None:
                    yield out
                elif skipped:
                    yield Described([], np.zeros((0, encoder.dim), np.float32), [], list(skipped))
            finally:
                # the decoding threads are joined here, on this thread and before `decoding_workers` restores the
                # torch thread count, also when the consumer stops early or fails (images.iter_decoded)
                items.close()
    finally:
        bar.close()  # end the progress line before any error is printed


def _decode_deferred(encoder: Encoder, sources, crops, batch: list, skipped: list) -> None:
    """Replace the `JpegBytes` in ``batch`` by tensors decoded on the encoder's device, in one call; if that call
    fails (a corrupt scan fails the whole call), file by file through Pillow, whose reason names a bad file."""
    at = [k for k, b in enumerate(batch) if isinstance(b[1], JpegBytes)]
    if not at:
        return
    try:
        decoded: list = encoder.preprocess_jpegs([batch[k][1].data for k in at], [crops[batch[k][0]] for k in at])
    except RuntimeError:
        decoded = []
        for k in at:
            i = batch[k][0]
            try:
                img = decode_image_bytes(batch[k][1].data, os.fsdecode(sources[i]))
                decoded.append(encoder.preprocess(_crop_array(img, crops[i])))
            except ImageError as e:
                decoded.append(Skipped("", str(e).removeprefix(f"{printable(os.fsdecode(sources[i]))}: ")))
    for k, x in zip(at, decoded):
        batch[k] = (batch[k][0], x, batch[k][2])
    skipped.extend((b[0], b[1].reason) for b in batch if isinstance(b[1], Skipped))
    batch[:] = [b for b in batch if not isinstance(b[1], Skipped)]


def describe(encoder: Encoder, sources: Sequence, *, crops: Sequence | None = None, batch_size: int = 32,
             workers: int = 2, timeout_s: float | None = 30.0, progress: bool = False,
             desc: str = "describing") -> Descriptions:
    """All descriptors of ``sources`` at once: ``x (n, d) float32`` in input order (zero rows where skipped)."""
    n = len(sources)
    x = np.zeros((n, encoder.dim), np.float32)
    ok = np.zeros(n, bool)
    stamps: list[FileStamp | None] = [None] * n
    skipped: dict[int, str] = {}
    for b in iter_descriptors(encoder, sources, crops=crops, batch_size=batch_size, workers=workers,
                              timeout_s=timeout_s, progress=progress, desc=desc):
        skipped.update(b.skipped)
        if b.index:
            x[b.index] = b.x
            ok[b.index] = True
            for i, st in zip(b.index, b.stamps):
                stamps[i] = st
    return Descriptions(x, ok, skipped, stamps)
