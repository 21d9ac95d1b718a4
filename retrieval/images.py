"""Find image files in a folder tree and decode them into (H, W, 3) uint8 RGB arrays, robustly.

Every bad file (empty, truncated, not an image, decompression bomb, unreadable, too small...) becomes an
`ImageError` with a short reason, or a `Skipped` record in the bulk helpers: one bad file never stops a run.

Path keys: `relative_key` turns a path into a '/'-separated string relative to the indexed folder. A file name
that is not valid UTF-8 becomes a str with lone surrogates (`os.fsdecode`); `os.fsencode(key)` gives back the
exact bytes, which is how the store encodes keys. Use `printable(key)` to show such a key to a person.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import queue
import re
import stat
import struct
import threading
import time
import warnings
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import ConfigError, ImageError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)  # compared lower-case
MIN_SIDE = 8  # px; smaller images carry nothing a CNN can use
MAX_ASPECT_RATIO = 50.0  # long side / short side; beyond this the image is a strip, not a scene
MAX_FILE_BYTES = 1 << 30  # a file is read whole before decoding; an image file this big exceeds the pixel limit anyway

# Pillow plugins allowed to open a file: the formats of IMAGE_EXTENSIONS (the JPEG plugin also opens MPO, the
# multi-picture JPEGs phones write). Limiting them keeps e.g. an EPS renamed .jpg away from Ghostscript.
_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM")
# What Pillow raises on malformed data (Image.open already turns IndexError, TypeError... from a plugin into
# UnidentifiedImageError). Other types are bugs and propagate.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, MemoryError,
                  Image.DecompressionBombError, Image.DecompressionBombWarning)

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file must fail, not decode as half grey
_EXIF_ORIENTATION = 0x0112
_WARNINGS_LOCK = threading.Lock()


@dataclass(frozen=True)
class Skipped:
    """A file left out of an index run. `path` is a `relative_key`; `reason` is short and human-readable."""

    path: str
    reason: str


@dataclass(frozen=True)
class FileStamp:
    """The bytes an image was decoded from: size in bytes, modification time in ns (both from the open file) and
    the blake2b-128 hex digest of exactly those bytes, so a record never pairs one version's pixels with another's."""

    size: int
    mtime_ns: int
    blake2b: str


@dataclass(frozen=True, eq=False)
class JpegBytes:
    """A JPEG file left undecoded for a batched decoder on the model's device (`Encoder.preprocess_jpegs`): its
    bytes and (width, height) in pixels. Its header passed every check a decoded image passes (size, aspect,
    decompression bomb); it is RGB or greyscale and needs no EXIF rotation. Its scan data is not checked yet: a
    batched decoder that fails falls back to `decode_image_bytes`, which reports the file as any other."""

    data: bytes
    size: tuple[int, int]


class _Rejected(Exception):
    """A file we refuse to decode; the message is the reason."""


def relative_key(path: str | bytes | os.PathLike, root: str | bytes | os.PathLike | None = None) -> str:
    """'/'-separated key of `path` relative to `root` (the path as given when it is not under `root`)."""
    p = Path(os.fsdecode(path))
    if root is not None:
        try:
            p = p.relative_to(os.fsdecode(root))
        except ValueError:
            pass  # outside the root: the full path is still a stable key
    return p.as_posix()


def printable(path: str | bytes | os.PathLike) -> str:
    """`path` for messages: bytes that are not UTF-8 shown as \\xNN, not as (unprintable) lone surrogates."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def os_reason(e: OSError) -> str:
    """Short human reason for an OS error on a file (``file not found (deleted?)``, ``permission denied``...)."""
    if isinstance(e, FileNotFoundError):
        return "file not found (deleted?)"
    if isinstance(e, PermissionError):
        return "permission denied"
    if isinstance(e, IsADirectoryError):
        return "is a directory"
    if e.errno == errno.ELOOP:
        return "symlink loop"
    return e.strerror or str(e)


def walk_images(root: str | bytes | os.PathLike) -> tuple[list[Path], list[Skipped]]:
    """All image files under `root` (recursive, symlinks followed), sorted by the bytes of their relative key.

    Returns (images, skipped). A file counts as an image by its extension (case-insensitive); other files are
    ignored silently. Recorded in `skipped`: broken symlinks (whatever their name: the walk cannot tell what
    they pointed to), symlink loops, folders reached a second time (a link to a folder already walked; real
    folders are walked before linked ones, so the real path wins), unreadable folders, folders named like an
    image ('x.jpg', still walked) and image-named entries that are not regular files (a FIFO would block).
    """
    root = Path(os.fsdecode(root))
    try:
        st = os.stat(root)
    except OSError as e:
        raise ImageError(f"{printable(root)}: cannot open folder ({os_reason(e)}); check the path") from e
    if not stat.S_ISDIR(st.st_mode):
        raise ImageError(f"{printable(root)}: not a folder; pass the folder that holds the images")

    images: list[Path] = []
    skipped: list[Skipped] = []
    seen: set[tuple[int, int]] = set()  # (st_dev, st_ino) of the folders walked: cuts cycles and duplicates
    # All real folders are walked before any link to a folder, so a link into the tree is the duplicate; links
    # are taken first-found-first (FIFO) so that among links to one folder the first name (sorted) wins.
    real_dirs: list[Path] = [root]
    linked_dirs: deque[Path] = deque()
    while real_dirs or linked_dirs:
        folder = real_dirs.pop() if real_dirs else linked_dirs.popleft()
        folder_key = relative_key(folder, root)
        try:
            st = os.stat(folder)
            if (st.st_dev, st.st_ino) in seen:
                skipped.append(Skipped(folder_key, "folder already walked (symlink loop or link)"))
                continue
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda entry: os.fsencode(entry.name))
        except OSError as e:
            skipped.append(Skipped(folder_key, os_reason(e)))
            continue
        for entry in entries:
            path = folder / entry.name
            key = relative_key(path, root)
            is_image_name = os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS
            try:
                if entry.is_symlink():
                    try:
                        os.stat(path)
                    except OSError as e:
                        broken = isinstance(e, FileNotFoundError)
                        skipped.append(Skipped(key, "broken symlink" if broken else os_reason(e)))
                        continue
                if entry.is_dir():
                    (linked_dirs if entry.is_symlink() else real_dirs).append(path)
                    if is_image_name:
                        skipped.append(Skipped(key, "is a directory"))
                elif is_image_name:
                    if entry.is_file():
                        images.append(path)
                    else:
                        skipped.append(Skipped(key, "not a regular file"))
            except OSError as e:  # deleted or changed while we walked
                skipped.append(Skipped(key, os_reason(e)))
    images.sort(key=lambda p: os.fsencode(relative_key(p, root)))
    skipped.sort(key=lambda s: os.fsencode(s.path))
    return images, skipped


def _reason(e: BaseException) -> str:
    """Short human reason for a decoding failure."""
    if isinstance(e, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        m = re.search(r"\((\d+) pixels\)", str(e))
        n = m.group(1) if m else "too many"
        return f"decompression bomb ({n} pixels > limit {Image.MAX_IMAGE_PIXELS})"
    if isinstance(e, UnidentifiedImageError):
        return "cannot identify image file (not an image, or an unsupported format)"
    if isinstance(e, MemoryError):
        return "out of memory while decoding"
    if isinstance(e, _Rejected):
        return str(e)
    if isinstance(e, OSError) and e.strerror:  # from the OS (stat, open, read), not from a Pillow decoder
        return os_reason(e)
    msg = str(e)
    if isinstance(e, EOFError) or "truncated" in msg.lower() or "EOF" in msg:
        return "truncated image"
    return f"corrupt or unsupported image ({type(e).__name__}: {msg})"


def _check_size(w: int, h: int, max_pixels: int | None) -> None:
    if max_pixels is not None and w * h > max_pixels:
        raise _Rejected(f"decompression bomb ({w * h} pixels > limit {max_pixels})")
    if max(w, h) > MAX_ASPECT_RATIO * max(min(w, h), 1):
        raise _Rejected(f"extreme aspect ratio ({w}x{h} px, more than {MAX_ASPECT_RATIO:g}:1)")
    if min(w, h) < MIN_SIDE:
        raise _Rejected(f"image too small ({w}x{h} px, need {MIN_SIDE} px or more on each side)")


def _to_rgb(img: Image.Image) -> np.ndarray:
    """Any Pillow mode -> (H, W, 3) uint8 RGB.

    Transparency (RGBA, LA, PA, P or L/RGB with a transparent colour) is composited on white, as viewers do.
    16-bit modes (I;16*) keep their top 8 bits (v >> 8, so 65535 -> 255). I (int32) and F (float32) have no
    fixed range, so they are stretched linearly from their own min..max to 0..255 (a flat image is clipped).
    """
    if img.mode.startswith("I;16"):
        g = (np.asarray(img).astype(np.uint16) >> 8).astype(np.uint8)  # (H, W)
        return np.repeat(g[:, :, None], 3, axis=2)
    if img.mode in ("I", "F"):
        v = np.nan_to_num(np.asarray(img, dtype=np.float64))
        lo, hi = v.min(), v.max()
        v = (v - lo) * (255.0 / (hi - lo)) if hi > lo else np.clip(v, 0, 255)
        return np.repeat(np.rint(v).astype(np.uint8)[:, :, None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        x = np.asarray(img.convert("RGBA")).astype(np.uint16)
        a = x[:, :, 3:]
        # (rgb * a + white * (255 - a)) / 255, rounded; stays below 2**16
        return ((x[:, :, :3] * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)
    return np.array(img if img.mode == "RGB" else img.convert("RGB"))  # a writable copy


@contextmanager
def _bomb_warnings_as_errors() -> Iterator[None]:
    """Pillow only warns between MAX_IMAGE_PIXELS and twice that; we refuse.

    Warning filters are process-wide, so decoder threads take turns changing them (open() only parses a
    header: a short wait). Should a header parse hang in another thread, go on without the filter after 1 s:
    `_check_size` enforces the same limit anyway, the warning is then merely printed.
    """
    if not _WARNINGS_LOCK.acquire(timeout=1.0):
        yield
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        _WARNINGS_LOCK.release()


def _decode(
    data: bytes, max_pixels: int | None, draft_size: tuple[int, int] | None, defer_jpeg: bool = False
) -> np.ndarray | JpegBytes:
    limit = Image.MAX_IMAGE_PIXELS
    if max_pixels is not None:
        limit = max_pixels if limit is None else min(max_pixels, limit)
    with _bomb_warnings_as_errors():
        img = Image.open(io.BytesIO(data), formats=_FORMATS)
    with img:
        _check_size(*img.size, limit)
        # Only plain JPEGs are deferred: MPO's first frame, CMYK and EXIF rotations stay with Pillow, whose
        # handling of them the rest of retr is tested against.
        if (defer_jpeg and img.format == "JPEG" and img.mode in ("RGB", "L")
                and img.getexif().get(_EXIF_ORIENTATION, 1) == 1):
            return JpegBytes(data, img.size)
        if draft_size is not None:
            img.draft("RGB", draft_size)  # JPEG only (no-op elsewhere): decode at 1/2, 1/4 or 1/8 scale
        img.load()  # first frame of an animation; fails here on truncated data
        return _to_rgb(ImageOps.exif_transpose(img))


def _read_file(path: str | bytes | os.PathLike) -> tuple[bytes, os.stat_result]:
    """The whole content of a regular file and its stat, both from one open file."""
    st = os.stat(path)  # before open(): opening a FIFO would block
    if stat.S_ISDIR(st.st_mode):
        raise _Rejected("is a directory")
    if not stat.S_ISREG(st.st_mode):
        raise _Rejected("not a regular file")
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        if st.st_size == 0:
            raise _Rejected("empty file")
        if st.st_size > MAX_FILE_BYTES:
            raise _Rejected(f"file too large ({st.st_size >> 20} MiB > {MAX_FILE_BYTES >> 20} MiB)")
        data = f.read()
    if not data:
        raise _Rejected("empty file")
    return data, st


def read_image_stamped(
    path: str | bytes | os.PathLike,
    max_pixels: int | None = None,
    draft_size: tuple[int, int] | None = None,
    defer_jpeg: bool = False,
) -> tuple[np.ndarray | JpegBytes, FileStamp]:
    """`read_image`, plus the `FileStamp` of the bytes decoded (the file is read once: no race with a writer).
    With `defer_jpeg`, a plain JPEG comes back as `JpegBytes` once its header is checked, not decoded."""
    try:
        data, st = _read_file(path)
        x = _decode(data, max_pixels, draft_size, defer_jpeg)
    except (_Rejected, *_DECODE_ERRORS) as e:
        raise ImageError(f"{printable(path)}: {_reason(e)}") from e
    return x, FileStamp(len(data), st.st_mtime_ns, hashlib.blake2b(data, digest_size=16).hexdigest())


def read_image(
    path: str | bytes | os.PathLike,
    max_pixels: int | None = None,
    draft_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Decode one image file to (H, W, 3) uint8 RGB, EXIF orientation applied.

    max_pixels: refuse images with more pixels (can only lower Pillow's `Image.MAX_IMAGE_PIXELS`, ~89 M).
    draft_size: (w, h); a JPEG is decoded at the smallest 1/2, 1/4 or 1/8 scale still at least this size.
    Raises ImageError('<path>: <reason>') for any bad file.
    """
    return read_image_stamped(path, max_pixels, draft_size)[0]


def decode_image_bytes(
    data: bytes,
    name: str = "<bytes>",
    max_pixels: int | None = None,
    draft_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """`read_image` for an image already in memory (a query upload); `name` is only used in the message."""
    try:
        if not data:
            raise _Rejected("empty file")
        return _decode(data, max_pixels, draft_size)
    except (_Rejected, *_DECODE_ERRORS) as e:
        raise ImageError(f"{printable(name)}: {_reason(e)}") from e


class _Job:
    """One file's decode. `started`/`finished`/`abandoned` are handed over under the pool's lock."""

    def __init__(self, fn: Callable[[], Any]):
        self.fn: Callable[[], Any] | None = fn
        self.done = threading.Event()
        self.started: float | None = None  # time.monotonic() when a worker took it
        self.finished = False
        self.abandoned = False
        self.result: Any = None
        self.error: BaseException | None = None


# Jobs that abandoned workers finished after their time limit, with everything they reference (the transform, so
# an encoder and its model; the result). A thread that outlives its consumer must not drop the last reference to
# them: freeing a torch tensor releases the GIL, and a daemon thread that takes the GIL back once the interpreter is
# finalizing is ended by pthread_exit, whose unwinding through torch's C++ aborts the process ("terminate called
# without an active exception"). They are freed by the next `iter_decoded` consumer, or at exit by the main thread.
_LEFT_BEHIND: list[_Job] = []
_LEFT_BEHIND_LOCK = threading.Lock()


def _free_left_behind() -> None:
    with _LEFT_BEHIND_LOCK:
        jobs = _LEFT_BEHIND[:]
        _LEFT_BEHIND.clear()
    del jobs  # freed here, on the consumer's thread, outside the lock


def _decode_one(
    path: Path,
    root: str | os.PathLike | None,
    transform: Callable[[np.ndarray], Any] | None,
    max_pixels: int | None,
    draft_size: tuple[int, int] | None,
    stamp: bool,
    defer_jpeg: bool,
) -> Any:
    try:
        if stamp or defer_jpeg:
            x, st = read_image_stamped(path, max_pixels=max_pixels, draft_size=draft_size, defer_jpeg=defer_jpeg)
        else:
            x = read_image(path, max_pixels=max_pixels, draft_size=draft_size)
    except ImageError as e:
        return Skipped(relative_key(path, root), str(e).removeprefix(f"{printable(path)}: "))
    x = x if transform is None or isinstance(x, JpegBytes) else transform(x)
    return (x, st) if stamp else x


def batch_prefetch(batch_size: int, workers: int) -> int:
    """Files to keep in flight (`iter_decoded(ahead=...)`) for a consumer that takes ``batch_size`` at a time: more
    than a batch, so that the workers decode the next batch while this one is encoded."""
    return batch_size + batch_size // 2 + workers


def iter_decoded(
    paths: Iterable[str | os.PathLike],
    root: str | os.PathLike | None = None,
    workers: int = 2,
    timeout_s: float | None = 30.0,
    transform: Callable[[np.ndarray], Any] | None = None,
    draft_size: tuple[int, int] | None = None,
    max_pixels: int | None = None,
    stamp: bool = False,
    ahead: int | None = None,
    worker_init: Callable[[], None] | None = None,
    defer_jpeg: bool = False,
) -> Iterator[tuple[int, Path, Any]]:
    """Decode `paths` on `workers` threads; yield (index, path, transform(image) or Skipped) in input order.

    With `stamp`, a decoded file comes as (transform(image), FileStamp of the bytes decoded). With `defer_jpeg`,
    plain JPEGs come as `JpegBytes` (checked, not decoded, not transformed) for a batched decoder on a GPU.

    Pillow releases the GIL while decoding, so threads decode in parallel; `transform` (e.g. resize and
    normalize) runs on the worker too. At most `ahead` files (default 4 * workers) are in flight: a consumer
    that takes batches should pass more than a batch, or the workers idle while it works on one and it then
    waits for most of the next. `worker_init` runs first in every worker thread. A bad file becomes Skipped
    (key relative to `root`); an exception from `transform` is a bug and is raised here. A file still decoding
    `timeout_s` after a worker took it is abandoned as Skipped('decode timed out after N s'): a thread cannot
    be stopped, so it is left to finish on its own and a fresh worker takes its place. Workers are daemon
    threads, not a ThreadPoolExecutor, which joins its threads at exit and would hang on a decode that never
    returns. Exhausting or closing the iterator (`close()`, also on an error) drops the files not started and
    joins the workers, each once its current file is done (or abandoned at its time limit): no worker outlives
    it but the abandoned ones, and none frees the transform or a result (see `_LEFT_BEHIND`). Raises ConfigError
    at once for bad options.
    """
    if workers < 1:
        raise ConfigError(f"workers must be 1 or more, got {workers}")
    if timeout_s is not None and timeout_s <= 0:
        raise ConfigError(f"the decode timeout must be positive, got {timeout_s} s")
    ahead = 4 * workers if ahead is None else ahead
    if ahead < 1:
        raise ConfigError(f"ahead must be 1 or more files, got {ahead}")
    paths = [Path(os.fsdecode(p)) for p in paths]
    decode = partial(_decode_one, root=root, transform=transform, max_pixels=max_pixels,
                     draft_size=draft_size, stamp=stamp, defer_jpeg=defer_jpeg)
    return _iter_decoded(paths, root, workers, timeout_s, decode, ahead, worker_init)


def _iter_decoded(
    paths: list[Path],
    root: str | os.PathLike | None,
    workers: int,
    timeout_s: float | None,
    decode: Callable[[Path], Any],
    ahead: int,
    worker_init: Callable[[], None] | None,
) -> Iterator[tuple[int, Path, Any]]:
    # Closing (or exhausting) the iterator joins every worker it started, except those abandoned with a stuck file:
    # afterwards none of them runs Python or native code (`worker_init`'s torch calls included), and a worker never
    # holds a job it has handed over, so the last reference to the transform (an encoder, a model) and to the results
    # is dropped on the consumer's thread, not on a daemon thread that may still be running at interpreter exit.
    _free_left_behind()
    jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
    lock = threading.Lock()
    stop = threading.Event()
    running: dict[threading.Thread, _Job | None] = {}  # live (not abandoned) workers -> the job each runs; under lock

    def work() -> None:
        me = threading.current_thread()
        if worker_init is not None:
            worker_init()
        while True:
            job = jobs.get()
            if job is None or stop.is_set():
                return
            with lock:
                job.started = time.monotonic()
                running[me] = job
            try:
                job.result = job.fn()
            except BaseException as e:  # handed to the consumer, which raises it
                job.error = e
            with lock:
                job.finished = True
                abandoned = job.abandoned
                if not abandoned:
                    running[me] = None
                    job.fn = None  # the consumer still holds the transform: it is never freed here
            if abandoned:  # a replacement worker already took this thread's place
                with _LEFT_BEHIND_LOCK:  # its reference is gone before a consumer can free the job
                    _LEFT_BEHIND.append(job)
                    job.done.set()
                    del job
                return
            job.done.set()
            del job  # handed over: the consumer frees it and its result

    def start_worker() -> None:
        t = threading.Thread(target=work, name="retr-decode", daemon=True)
        with lock:
            running[t] = None
        t.start()

    def abandon(job: _Job) -> bool:
        """Under the lock: give up on a job past its time limit; False if it finished meanwhile."""
        ran = None if job.started is None else time.monotonic() - job.started
        if ran is None or ran < timeout_s or job.finished:
            return False
        job.abandoned = True
        for t, j in running.items():
            if j is job:
                del running[t]  # not joined on close: it may never return
                break
        return True

    def wait(i: int, job: _Job) -> Any:
        while True:
            if timeout_s is None or job.started is None:
                left = timeout_s  # not started yet: its time has not begun
            else:
                left = max(job.started + timeout_s - time.monotonic(), 0.0)
            if job.done.wait(left):
                break
            with lock:
                gave_up = abandon(job)
            if gave_up:
                start_worker()
                return Skipped(relative_key(paths[i], root), f"decode timed out after {timeout_s:g} s")
        if job.error is not None:
            raise job.error
        return job.result

    def shut_down() -> None:
        """Stop the workers and join them: each finishes the file it decodes (one past its time limit is
        abandoned, as in `wait`), then finds the stop flag or a sentinel and returns."""
        stop.set()
        while True:  # drop the files not started yet: the queue then holds only sentinels
            try:
                jobs.get_nowait()
            except queue.Empty:
                break
        with lock:
            threads = list(running)
        for _ in threads:
            jobs.put(None)
        for t in threads:
            while True:
                with lock:
                    if t not in running:
                        break  # abandoned
                    job = running[t]
                    if job is not None and timeout_s is not None and abandon(job):
                        break
                    left = None
                    if job is not None and job.started is not None and timeout_s is not None:
                        left = max(job.started + timeout_s - time.monotonic(), 0.0) + 0.01
                t.join(left if left is not None else 0.1)
                if not t.is_alive():
                    with lock:
                        running.pop(t, None)
                    break

    for _ in range(workers):
        start_worker()
    pending: deque[tuple[int, _Job]] = deque()
    n_submitted = 0
    try:
        while pending or n_submitted < len(paths):
            while n_submitted < len(paths) and len(pending) < ahead:
                job = _Job(partial(decode, paths[n_submitted]))
                jobs.put(job)
                pending.append((n_submitted, job))
                n_submitted += 1
            i, job = pending.popleft()
            yield i, paths[i], wait(i, job)
    finally:
        shut_down()
        _free_left_behind()


def safe_read(
    path: str | os.PathLike, root: str | os.PathLike | None = None, timeout_s: float | None = 30.0, **kw: Any
) -> np.ndarray | Skipped:
    """One file through `iter_decoded`: the image (H, W, 3) uint8, or Skipped; never raises for a bad file."""
    it = iter_decoded([path], root, workers=1, timeout_s=timeout_s, **kw)
    try:
        return next(it)[2]
    finally:
        it.close()
