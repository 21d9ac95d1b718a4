"""Describing on Ray: the file list split into shards that Ray actors decode and encode, streamed back in order.

    iter_descriptors(config, sources, ray)  -> Iterator[Described]   the batches `describe.iter_descriptors` yields
    RayConfig(address, actors, threads, shard_batches)               where and how wide

`engine.index_folder(..., ray="local" | ADDRESS)` takes its batches from here instead of
`describe.iter_descriptors`; everything else is unchanged (the driver is the only LMDB writer, commits the batches
in order, fits the codec, records the skipped files, resumes after a crash as without Ray). Ray is imported inside
the functions, never at module import: retr works without it (`pip install -e '.[ray]'`).

**Same batches as a local run, not only the same images.** A descriptor is a function of its image *and* of the
forward pass it ran in: on the CPU, one image alone (a batch of 1) gives other bits than the same image in a batch
of 8 (measured: up to 1.6e-7 for alexnet/resnet18/efficientnet_lite0 with ``--max-size``), and efficientnet_lite0
gives other bits with 1 torch thread than with 2 (up to 5.6e-7); other images of a batch of the same size change
nothing. A change of 1e-7 can move a value across a quantization boundary or the PCA fitted on it, so a database is
the same as a local run's only if every forward pass is. A local run forms its batches from the decodable files in
order, ``batch_size`` at a time, and which files decode is known only once they are decoded (the expensive part),
so a shard cannot simply be encoded on its own: one bad file shifts every later batch boundary. Hence two steps
per shard (consecutive ``shard_batches * batch_size`` files of the list, actor ``k % actors``):

1. ``decode``: the actor runs the one pipeline (`describe.iter_descriptors`: reading, hashing, decoding,
   preprocessing in ``workers`` threads, bad files reported) with the forward pass deferred, keeps the preprocessed
   tensors and returns which files decoded, their stamps and the skipped files (small). Decoding runs ahead:
   ``2 x actors`` shards are in flight.
2. ``encode``: once the shards before it are decoded, the driver knows where the local run's batch boundaries fall
   and sends the shard the files of the batch left open by the shards before it (fewer than ``batch_size``: zero
   when no file before was bad, as shards are whole batches); the actor decodes those again, prepends them to its
   own tensors, runs the forward passes of exactly the local run's batches that end in its shard (and the last,
   partial one at the end of the list) and returns the descriptors.

The driver yields them as `Described` batches equal to the local run's (positions, stamps, skipped files, bits),
in the same order, so the store receives the same transactions. An actor runs torch on ``threads`` threads, by
default as many as a local run in the driver's process (`torch.get_num_threads`), so that even thread-sensitive
kernels give the same bits; CPU actors reserve that many CPUs each. Actors on a cluster with GPUs take one GPU
each (``num_gpus=1``) and run on ``device`` cuda as a local run with CUDA does.

**Faults.** Actors are restarted when their process dies (``max_restarts``) and the calls they had in hand run
again on the new process (``max_task_retries``): a restarted actor holds no tensors, so its ``encode`` decodes its
shard again first (and refuses, naming the file, if a file changed meanwhile). The driver takes each shard's result
once, in order: nothing lost, nothing twice. A killed driver leaves the store as a local run killed at the same
batch would: the next `retr index` resumes from its last committed batch. A file that does not decode is skipped
inside its shard and reported with the batch a local run reports it with.

Limits: with ``--jpeg-decode device`` a JPEG whose header passes but whose scan data fails makes the local run
decode its whole batch with Pillow and run that batch short (`describe._decode_deferred`); a Ray run decodes in
shard-local batches, so around such a file its descriptors can differ from a local run's (by the device/Pillow
resize difference, a grey level). Bit equality on GPUs also assumes that cuDNN picks the same kernels in the actor
as in a local process for the same batch, as it does without benchmark mode.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from .describe import Described
from .encoder_config import EncoderConfig
from .errors import ConfigError, RetrError
from .images import FileStamp, printable

__all__ = ["RayConfig", "RayError", "iter_descriptors", "require_ray", "session", "INSTALL_HINT", "LOCAL"]

LOCAL = "local"
INSTALL_HINT = "pip install -e '.[ray]'"
MAX_SHARD_BATCHES = 16  # batches per shard: a shard's tensors are held in memory between its two steps
# Tests only: seconds each actor waits at the start of each step, so that a process can be killed mid-run; and a
# file where each actor appends "PID STEP SHARD" as it starts a step, so that a test knows whom to kill when.
DELAY_ENV = "RETR_TEST_RAY_DELAY_S"
TRACE_ENV = "RETR_TEST_RAY_TRACE"


class RayError(RetrError):
    """The Ray cluster cannot be reached, or an actor failed more often than it may be restarted."""


@dataclass(frozen=True)
class RayConfig:
    """Where and how wide a Ray run is. ``address``: ``local`` (a one-machine cluster started for the run, or the
    Ray session this process already has) or a cluster's address (``HOST:PORT``, ``ray://HOST:PORT``, ``auto``).
    ``actors``: how many actors describe shards [default: one per GPU of the cluster, else the cluster's CPUs /
    ``threads``]; ``threads``: torch threads per CPU actor [default: those of a local run in this process];
    ``shard_batches``: batches per shard [default: enough shards for 4 per actor, at most 16 batches];
    ``max_restarts``: times an actor's process is restarted after it died."""

    address: str = LOCAL
    actors: int | None = None
    threads: int | None = None
    shard_batches: int | None = None
    max_restarts: int = 4

    def __post_init__(self) -> None:
        for name in ("actors", "threads", "shard_batches"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ConfigError(f"Ray {name.replace('_', ' ')} must be 1 or more, got {v}")
        if not self.address:
            raise ConfigError("empty Ray address: give none (a local cluster) or HOST:PORT")

    @classmethod
    def of(cls, ray: str | RayConfig) -> RayConfig:
        return ray if isinstance(ray, RayConfig) else cls(address=ray)


def require_ray():
    """The ``ray`` module, or a one-line `ConfigError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


@contextmanager
def session(address: str = LOCAL) -> Iterator[object]:
    """The ``ray`` module with a connected session: this process's own if it has one, else a new one (a local
    cluster for ``local``, else the cluster at ``address``), shut down on exit."""
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    import logging

    try:
        ray.init(address=address, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RayError(f"cannot start or reach the Ray cluster {address!r}: {msg}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


# -- the actor --------------------------------------------------------------------------------------------------------
@dataclass
class ShardMeta:
    """What one shard's decoding found: ``ok`` positions (in the shard) of the files that decoded, in order, with
    their ``stamps``; ``skipped`` (position, reason) of the others; ``seconds`` spent."""

    ok: list[int]
    stamps: list[FileStamp | None]
    skipped: list[tuple[int, str]]
    seconds: float = 0.0
    pid: int = 0
    ready_at: float = 0.0  # time.time() when this actor's process had loaded the network


@dataclass
class Encoded:
    """One shard's forward passes: ``x`` one ``(b, d) float32`` array per batch, in order."""

    x: list[np.ndarray]
    forward_s: float = 0.0
    redecoded: int = 0  # files decoded again (the open batch's, or the whole shard after a restart)
    pid: int = 0


class _Deferred:
    """An `Encoder` whose forward pass is deferred: `describe.iter_descriptors` reads, decodes and preprocesses into
    it, and the preprocessed tensors are kept, in order, for forward passes whose batches are decided later."""

    def __init__(self, encoder):
        self._encoder = encoder
        self.kept: list = []

    def __getattr__(self, name):
        return getattr(self._encoder, name)

    def encode_batch(self, batch) -> np.ndarray:
        self.kept.extend(batch)
        return np.zeros((len(batch), self._encoder.dim), np.float32)


class ShardWorker:
    """A Ray actor (``ray.remote(ShardWorker)``): the network loaded once, shards decoded ahead and encoded in the
    batches the driver decides. Runs two calls at a time (decoding the next shard beside a forward pass)."""

    def __init__(self, config: EncoderConfig, device: str, seed: int, jpeg_decode: str, batch_size: int,
                 workers: int, timeout_s: float | None, threads: int | None, delay_s: float = 0.0,
                 trace: str | None = None):
        import torch

        from .encoder import Encoder

        self.threads = threads
        if threads:
            torch.set_num_threads(threads)
        self.encoder = Encoder(config, device=device, seed=seed, jpeg_decode=jpeg_decode)
        self.batch_size, self.workers, self.timeout_s = batch_size, workers, timeout_s
        self.delay_s, self.trace = delay_s, trace
        self.ready_at = time.time()
        self._held: dict[int, list] = {}
        self._lock = threading.Lock()

    def pid(self) -> int:
        return os.getpid()

    def _test_hooks(self, step: str, k: int) -> None:
        if self.trace:
            with open(self.trace, "a") as f:
                f.write(f"{os.getpid()} {step} {k}\n")
        if self.delay_s:
            time.sleep(self.delay_s)

    def _decode(self, paths: Sequence) -> tuple[list, ShardMeta]:
        from .describe import iter_descriptors

        t = time.perf_counter()
        enc = _Deferred(self.encoder)
        ok, stamps, skipped = [], [], []
        for b in iter_descriptors(enc, list(paths), batch_size=self.batch_size, workers=self.workers,
                                  timeout_s=self.timeout_s):
            ok.extend(b.index)
            stamps.extend(b.stamps)
            skipped.extend(b.skipped)
        return enc.kept, ShardMeta(ok, stamps, sorted(skipped), time.perf_counter() - t, os.getpid(), self.ready_at)

    def decode(self, k: int, paths: Sequence) -> ShardMeta:
        """Decode shard ``k`` (its file paths) and keep its tensors for `encode`."""
        self._test_hooks("decode", k)
        tensors, meta = self._decode(paths)
        with self._lock:
            self._held[k] = tensors
        return meta

    def encode(self, k: int, paths: Sequence, ok: list[int], head: Sequence, final: bool) -> Encoded:
        """The forward passes of shard ``k``: the ``head`` files (the open batch of the shards before, decoded
        again here) then the shard's own decoded files (``ok``, as `decode` found them), ``batch_size`` at a time;
        with ``final`` the last partial batch too, else it stays open for the next shard."""
        import torch

        self._test_hooks("encode", k)
        if self.threads:
            torch.set_num_threads(self.threads)  # this call may run on a thread of its own
        redecoded = 0
        with self._lock:
            own = self._held.pop(k, None)
        if own is None:  # a restarted actor: decode the shard again
            own, meta = self._decode(paths)
            redecoded += len(paths)
            _check_same(paths, ok, meta)
        pre: list = []
        if head:
            pre, meta = self._decode(head)
            redecoded += len(head)
            _check_same(head, list(range(len(head))), meta)
        xs = pre + own
        n = len(xs) if final else len(xs) // self.batch_size * self.batch_size
        t = time.perf_counter()
        out = [self.encoder.encode_batch(xs[i:i + self.batch_size]) for i in range(0, n, self.batch_size)]
        return Encoded(out, time.perf_counter() - t, redecoded, os.getpid())


def _check_same(paths: Sequence, ok: list[int], meta: ShardMeta) -> None:
    if meta.ok != ok:
        changed = sorted(set(meta.ok) ^ set(ok))
        raise RayError(f"{printable(os.fsdecode(paths[changed[0]]))} changed while it was being indexed (it "
                       "decoded once and not again, or the other way round); run the same command again")


# -- the driver -------------------------------------------------------------------------------------------------------
@dataclass
class _Pending:
    ref: object
    batches: list[list[int]]  # positions in the source list of each forward pass the call returns
    last: bool = False


@dataclass
class _Plan:
    """How a run is spread: ``actors`` of ``threads`` torch threads (``gpus`` each), shards of ``shard`` files."""

    actors: int
    threads: int | None
    gpus: int
    cpus: int
    shard: int
    device: str
    notes: list[str] = field(default_factory=list)


def _plan(ray, cfg: RayConfig, n: int, batch_size: int, device: str) -> _Plan:
    res = ray.cluster_resources()
    n_gpus, n_cpus = int(res.get("GPU", 0)), max(1, int(res.get("CPU", 1)))
    if device.startswith("cuda") and n_gpus == 0:
        raise ConfigError(f"--device {device} asked for, but the Ray cluster has no GPU; use --device cpu")
    on_gpu = n_gpus > 0 and device != "cpu"
    if on_gpu:
        actors, threads, gpus, cpus = cfg.actors or n_gpus, cfg.threads, 1, 1
        device = "cuda"  # an actor sees only its own GPU
    else:
        import torch

        threads = cfg.threads or torch.get_num_threads()
        actors = cfg.actors or max(1, n_cpus // threads)
        gpus, cpus = 0, min(threads, n_cpus)
    n_batches = max(1, math.ceil(n / batch_size))
    per_shard = cfg.shard_batches or max(1, min(MAX_SHARD_BATCHES, math.ceil(n_batches / (4 * actors))))
    n_shards = math.ceil(n / (per_shard * batch_size))
    return _Plan(min(actors, n_shards), threads, gpus, cpus, per_shard * batch_size, device)


def _get(ray, ref):
    """``ray.get`` with Ray's errors as one-line `RetrError`s (a `RetrError` raised in an actor as itself)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, RetrError):
            raise e.cause from None
        raise
    except ray.exceptions.RayActorError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RayError(f"a Ray actor died and could not be restarted ({first}); the database is intact up to its "
                       "last committed batch: run the same command again") from None


def iter_descriptors(config: EncoderConfig, sources: Sequence, ray: str | RayConfig = LOCAL, *,
                     device: str = "auto", seed: int = 0, jpeg_decode: str = "auto", batch_size: int = 32,
                     workers: int = 2, timeout_s: float | None = 30.0, progress: bool = False,
                     desc: str = "describing", timings: dict | None = None) -> Iterator[Described]:
    """Describe the files ``sources`` on Ray actors: the `Described` batches `describe.iter_descriptors` yields for
    an `Encoder(config, device, seed, jpeg_decode)` on the same files and options, equal and in the same order.

    ``timings``, when given, accumulates ``forward`` and ``decode`` seconds (summed over actors, so they can exceed
    the wall time), ``ray_start`` (session; the actors start in the background), ``actors_ready`` (from the call
    until the first actor had loaded the network) and ``first_batch`` (from the call to the first batch), and counts
    ``redecoded`` (files decoded twice) and ``actor_processes`` (processes that answered: more than the actors when
    one restarted)."""
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be 1 or more, got {batch_size}")
    if any(isinstance(s, np.ndarray) for s in sources):
        raise ConfigError("Ray describes files, not arrays in memory")
    cfg = RayConfig.of(ray)
    sources = list(sources)
    clock = timings if timings is not None else {}
    for k in ("forward", "decode", "ray_start", "actors_ready", "first_batch", "redecoded", "actor_processes"):
        clock.setdefault(k, 0.0)
    if not sources:
        return
    t0, t0_epoch = time.perf_counter(), time.time()
    with session(cfg.address) as rt:
        plan = _plan(rt, cfg, len(sources), batch_size, device)
        hooks = float(os.environ.get(DELAY_ENV) or 0), os.environ.get(TRACE_ENV) or None
        opts = dict(num_cpus=plan.cpus, num_gpus=plan.gpus, max_restarts=cfg.max_restarts, max_task_retries=-1,
                    max_concurrency=2)
        cls = rt.remote(**opts)(ShardWorker)
        pool = [cls.remote(config, plan.device, seed, jpeg_decode, batch_size, workers, timeout_s, plan.threads,
                           *hooks) for _ in range(plan.actors)]
        try:
            clock["ray_start"] += time.perf_counter() - t0
            first = True
            for b in _stream(rt, pool, sources, plan.shard, batch_size, config.dim, progress, desc, clock,
                             t0_epoch):
                if first:
                    clock["first_batch"] += time.perf_counter() - t0
                    first = False
                yield b
        finally:
            for a in pool:
                rt.kill(a)


def _stream(ray, pool: list, sources: list, shard: int, batch_size: int, dim: int, progress: bool, desc: str,
            clock: dict, t0_epoch: float) -> Iterator[Described]:
    """Decode shards ahead, encode each once the batch boundaries before it are known, yield in order."""
    n = len(sources)
    starts = list(range(0, n, shard))
    ahead = 2 * len(pool)
    decoding: dict[int, object] = {}
    encoding: deque[_Pending] = deque()
    stamps: dict[int, FileStamp | None] = {}
    skips: deque[tuple[int, str]] = deque()  # found, not reported yet, by position
    carry: list[int] = []  # positions of the open batch: decoded, not encoded yet
    pids: set[int] = set()
    ready = float("inf")  # when the first actor had loaded the network
    bar = tqdm(total=n, desc=desc, unit="img", disable=not progress)

    def actor(k: int):
        return pool[k % len(pool)]

    def files(k: int) -> list:
        return sources[starts[k]:starts[k] + shard]

    def emit(p: _Pending) -> Iterator[Described]:
        enc: Encoded = _get(ray, p.ref)
        clock["forward"] += enc.forward_s
        clock["redecoded"] += enc.redecoded
        pids.add(enc.pid)
        clock["actor_processes"] = len(pids)
        if len(enc.x) != len(p.batches):
            raise RuntimeError(f"an actor returned {len(enc.x)} batches, expected {len(p.batches)}")
        for j, (at, x) in enumerate(zip(p.batches, enc.x)):
            last_of_all = p.last and j == len(p.batches) - 1
            # a local run reports a skipped file with the first batch that fills after it; its last, partial batch
            # with every skip still unreported
            full = len(at) == batch_size
            gone = []
            while skips and (skips[0][0] < at[-1] or (last_of_all and not full)):
                gone.append(skips.popleft())
            bar.update(len(at) + len(gone))
            yield Described(list(at), x, [stamps.pop(i) for i in at], gone)

    next_decode = 0
    try:
        for k in range(len(starts)):
            while next_decode < len(starts) and next_decode < k + ahead:
                decoding[next_decode] = actor(next_decode).decode.remote(next_decode, files(next_decode))
                next_decode += 1
            meta: ShardMeta = _get(ray, decoding.pop(k))
            clock["decode"] += meta.seconds
            pids.add(meta.pid)
            ready = min(ready, meta.ready_at)
            s0 = starts[k]
            ok = [s0 + i for i in meta.ok]
            stamps.update(zip(ok, meta.stamps))
            skips.extend((s0 + i, r) for i, r in meta.skipped)
            final = k == len(starts) - 1
            run = carry + ok
            m = len(run) if final else len(run) // batch_size * batch_size
            batches = [run[i:i + batch_size] for i in range(0, m, batch_size)]
            ref = actor(k).encode.remote(k, files(k), meta.ok, [sources[i] for i in carry], final)
            encoding.append(_Pending(ref, batches, last=final))
            carry = run[m:]
            while encoding and (len(encoding) > len(pool) or not ray.wait([encoding[0].ref], timeout=0)[1]):
                yield from emit(encoding.popleft())
        while encoding:
            yield from emit(encoding.popleft())
        clock["actors_ready"] += ready - t0_epoch
        if skips:
            bar.update(len(skips))
            yield Described([], np.zeros((0, dim), np.float32), [], list(skips))
    finally:
        bar.close()
