"""Encoding throughput benchmark: `retr index` end to end against the bare forward pass of the same backbone.

    python -m bench.encode                          # efficientnet_lite0 (ImageNet weights), batch 32, 256 photos
    python -m bench.encode --backbone resnet50 --batch-size 64 --n-images 512 --rounds 5

Data: `--n-images` seeded JPEG photos of `--image-size` pixels (default 500x375, quality 90), each a random crop
(50-100 % of the largest box of that aspect ratio, half of them mirrored) of one of scikit-image's bundled
colour photographs (`retr.eval.edits.sample_photos`), resized bicubically: real photo content, real JPEG sizes.

Modes, every one measured in the same process on the same photos, in images per second (img/s):

- ``forward`` (the baseline): the backbone alone (`Encoder.model`, no pooling) on one pre-made normalised
  ``(batch, 3, s, s) float32`` tensor, repeated until as many images as the photos went through it (after one
  warm-up batch), under `torch.inference_mode` (s: the backbone's input side, 224 px for efficientnet_lite0).
  It is the network as the engine runs it: BatchNorms folded into the convolutions, channels_last.
- ``forward, unfolded`` (for reference, not a baseline; off with `--no-unfolded`): the same backbone as loaded,
  BatchNorms kept, contiguous (NCHW) tensors: what the engine's folding and memory format gain.
- ``index, fresh db``: `retr.retrieval.engine.index_folder` on the folder into a new database, progress off:
  walk, read + hash + decode + preprocess in `--workers` threads, forward, descriptors staged in LMDB, codec
  fitted, codes written, Faiss index built. Rate = photos / the call's total wall time (model loading included).
- ``index, codec given``: the same with ``codec_from`` a database indexed from the same photos before the rounds
  (the unmeasured warm-up), so each batch goes read -> decode -> preprocess -> forward -> codec -> one LMDB
  transaction: what indexing a large collection does once its codec is fitted.
- ``decode + preprocess``: `images.iter_decoded` with the engine's arguments (`--workers` threads, the
  engine's JPEG draft size, `Encoder.preprocess`, file hashing), no forward: what the readers supply alone.

The index modes also report the engine's per-stage timings (seconds, `IndexReport.timings`): the forward pass, the
writer thread's busy time (codec + LMDB commit, which overlap the next forward) and idle time, ``writer_wait`` (the
forward side waiting for the writer) and ``decode wait`` = encode - forward - writer_wait (the forward pass waiting
for decoded images). ``cpu s/img`` is the process CPU
time (all threads) per image: with every core busy, the end-to-end rate cannot exceed ``forward cpu / (forward cpu
+ decode cpu)`` of the bare forward pass (the "CPU ceiling" printed), however well decoding overlaps the forward.

The machine may be shared and its load vary, so the modes are interleaved for `--rounds` rounds (the order rotated
each round), and each mode records ``others``: the share of the machine's CPU time (/proc/stat, steal included)
that went to other processes while it ran. Reported: the quietest round whole (its rates and within-round ratios),
per mode the median over rounds, and best over best.

OpenMP (torch's CPU threads, libgomp on Linux): the run uses the environment it is given (OMP_WAIT_POLICY and
GOMP_SPINCOUNT are recorded). By default libgomp's threads spin a while between parallel regions, but only a short
while once the process has more OpenMP threads than cores. The engine's decoding workers run torch ops
(`Encoder.preprocess`) on one thread each (`Encoder.decoding_workers`), so they start no OpenMP team of their own
and the forward pass keeps the bare forward's spin policy. With other processes busy, spinning is much slower (the
threads spin on cores the others hold): read ``others`` first, or run with OMP_WAIT_POLICY=PASSIVE.

With CUDA (`torch.cuda.is_available()`; skip with `--no-gpu`) the run adds, in bf16 with channels_last:
``forward`` on the GPU, ``GPU JPEG decode`` (`Encoder.preprocess_jpegs`: `torchvision.io.decode_jpeg` on lists
of `--gpu-batch-size` files with device="cuda", then resize, centre crop and normalise on the GPU, from bytes
already in memory) and ``index, fresh db`` with device="cuda" (the engine's default there: `--gpu-workers` CPU
threads read and check the files, JPEGs are decoded in batches on the GPU by the same `preprocess_jpegs`), on
`--gpu-n-images` photos. The GPU ratio compares the end-to-end rate with the slower of the GPU forward and the GPU
decode.

Results: a table on stdout and `--out` (default bench/results/encode.json) with the machine (CPU model, cores,
load average), versions, threads, OpenMP wait policy, every rate with its baseline from the same round.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np
import PIL
import PIL.features
import torch
import torchvision
from PIL import Image, ImageOps

from bench import common
from retr.eval.edits import sample_photos
from retr.retrieval import engine
from retr.retrieval.encoder import Encoder, EncoderConfig
from retr.retrieval.images import batch_prefetch, iter_decoded

RESULTS = Path(__file__).parent / "results" / "encode.json"


# -- data -----------------------------------------------------------------------------------------------------------
def make_photos(folder: Path, n: int, size: tuple[int, int], seed: int, quality: int = 90) -> list[Path]:
    """Write ``n`` JPEG files ``folder/000000.jpg...`` of ``size = (w, h)`` px: seeded random crops of the
    scikit-image photos (50-100 % of the largest box with aspect w:h, half mirrored), resized bicubically."""
    folder.mkdir(parents=True, exist_ok=True)
    photos = list(sample_photos().values())
    rng = np.random.default_rng(seed)
    w, h = size
    paths = []
    for i in range(n):
        src = Image.fromarray(photos[i % len(photos)])
        W, H = src.size
        bw = min(W, H * w / h) * rng.uniform(0.5, 1.0)
        bh = bw * h / w
        x0, y0 = rng.uniform(0, W - bw), rng.uniform(0, H - bh)
        img = src.resize((w, h), Image.BICUBIC, box=(x0, y0, x0 + bw, y0 + bh))
        if rng.random() < 0.5:
            img = ImageOps.mirror(img)
        paths.append(folder / f"{i:06d}.jpg")
        img.save(paths[-1], quality=quality)
    return paths


def link_subset(paths: list[Path], folder: Path) -> None:
    """Hard links (copies where links fail) of ``paths`` in ``folder``: a smaller folder of the same files."""
    folder.mkdir(parents=True, exist_ok=True)
    for p in paths:
        try:
            os.link(p, folder / p.name)
        except OSError:
            shutil.copyfile(p, folder / p.name)


# -- timing ---------------------------------------------------------------------------------------------------------

def timed(fn: Callable[[], object], sync: Callable[[], None] = lambda: None) -> tuple[float, float, float | None]:
    """Run ``fn`` once: (wall seconds, this process's CPU seconds over all its threads, share of the machine's CPU
    time that went to anything else meanwhile: other processes, or the hypervisor's other guests)."""
    sync()
    m0, w0, c0 = common.machine_cpu_s(), time.perf_counter(), time.process_time()
    fn()
    sync()
    m1, wall, cpu = common.machine_cpu_s(), time.perf_counter() - w0, time.process_time() - c0
    others = None if m0 is None or m1 is None else max(0.0, (m1[0] - m0[0]) - cpu) / max(m1[1] - m0[1], 1e-9)
    return wall, cpu, others


def rate(n: int, t: tuple[float, float, float | None]) -> dict:
    """``n`` images in ``t = timed(...)`` -> img/s, CPU seconds per image, the others' share of the machine."""
    return {"img_s": n / t[0], "cpu_s_per_img": t[1] / n, "wall_s": t[0], "images": n, "others_cpu_share": t[2]}


def forward_rate(enc: Encoder, batch: int, n: int, bf16: bool = False, channels_last: bool = True) -> dict:
    """Bare forward of ``enc.model`` on one pre-made ``(batch, 3, s, s)`` tensor, repeated over ceil(n / batch)
    batches after one warm-up batch; channels_last as the engine's `Encoder.encode_batch` (unless told otherwise),
    on CUDA in bf16 autocast, synchronised."""
    s = enc.spec.input_size
    cuda = enc.device.type == "cuda"
    x = torch.randn(batch, 3, s, s, generator=torch.Generator().manual_seed(0)).to(enc.device)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    reps = -(-n // batch)

    @torch.inference_mode()
    def run(k: int) -> None:
        with torch.autocast(device_type=enc.device.type, dtype=torch.bfloat16, enabled=bf16):
            for _ in range(k):
                enc.model(x)

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    run(1)
    return rate(reps * batch, timed(lambda: run(reps), sync))


def decode_rate(enc: Encoder, paths: list[Path], workers: int, batch: int) -> dict:
    """The engine's reader alone: read + blake2b + Pillow decode (draft) + ``enc.preprocess`` on ``workers``
    threads, results consumed in order and dropped; the engine's draft size, prefetch and worker setup."""

    def run() -> None:
        with enc.decoding_workers() as init:
            for _ in iter_decoded(paths, workers=workers, transform=enc.preprocess, draft_size=enc.draft_size,
                                  stamp=True, ahead=batch_prefetch(batch, workers), worker_init=init):
                pass

    return rate(len(paths), timed(run))


def index_rate(folder: Path, db: Path, n: int, **kw) -> dict:
    """``engine.index_folder(folder, db, progress=False, **kw)``: img/s over the call's total wall time, plus
    the per-stage timings of its IndexReport (seconds): ``forward``; the writer thread's busy time ``store`` =
    ``codec`` + ``commit``, and ``writer idle`` = encode - store (it waited for batches); ``writer_wait``, the time
    the forward side waited for the writer (a full queue, the last commits); ``decode wait`` = encode - forward -
    writer_wait, the time the forward pass waited for decoded images."""
    reports = []
    r = rate(n, timed(lambda: reports.append(engine.index_folder(folder, db, progress=False, **kw))))
    t = dict(reports[0].timings)
    t["decode wait"] = t["encode"] - t["forward"] - t.get("writer_wait", 0.0)
    t["writer idle"] = t["encode"] - t["store"]
    if reports[0].added != n:
        raise RuntimeError(f"indexed {reports[0].added} of {n} photos (skipped: {reports[0].skipped})")
    return r | {"timings_s": t, "streaming_img_s": n / t["encode"]}


# -- GPU decoding ---------------------------------------------------------------------------------------------------
def read_blobs(paths: list[Path]) -> list[bytes]:
    """The bytes of each file."""
    return [p.read_bytes() for p in paths]


def gpu_decode_rate(enc: Encoder, blobs: list[bytes], batch: int) -> dict:
    """`Encoder.preprocess_jpegs` (batched `decode_jpeg` on the GPU, then resize, centre crop and normalise there)
    over ``blobs`` in lists of ``batch`` files, after one warm-up list; synchronised."""

    def run(bs: list[bytes]) -> None:
        for i in range(0, len(bs), batch):
            enc.preprocess_jpegs(bs[i : i + batch])

    run(blobs[:batch])
    return rate(len(blobs), timed(lambda: run(blobs), torch.cuda.synchronize))


# -- the run --------------------------------------------------------------------------------------------------------

def machine(threads: int) -> dict:
    cuda = torch.cuda.is_available()
    return {
        "cpu": common.cpu_model(), "cores": len(os.sched_getaffinity(0)), "torch_threads": threads,
        "torch_interop_threads": torch.get_num_interop_threads(),
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
        "faiss": faiss.__version__, "pillow": PIL.__version__,
        "libjpeg_turbo": PIL.features.check_feature("libjpeg_turbo"),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "gomp_spincount": os.environ.get("GOMP_SPINCOUNT"),
        "load_avg_start": os.getloadavg(),
    }


def run_cpu(args: argparse.Namespace, enc_cfg: EncoderConfig, paths: list[Path], folder: Path, tmp: Path) -> dict:
    enc = Encoder(enc_cfg, device="cpu")
    print(f"  {enc.folded} BatchNorms folded into their convolutions", flush=True)
    n, b, w = len(paths), args.batch_size, args.workers
    common = dict(encoder=enc_cfg, device="cpu", batch_size=b, workers=w)
    # warm-up, not measured: the first index_folder call pays one-time imports and allocator growth; its database
    # lends its codec (frozen, as --codec-from needs) to the "codec given" mode
    engine.index_folder(folder, tmp / "warm.retr", progress=False, freeze=True, **common)
    modes = {
        "forward": lambda r: forward_rate(enc, b, n),
        "index, fresh db": lambda r: index_rate(folder, tmp / f"fresh{r}.retr", n, **common),
        "index, codec given": lambda r: index_rate(folder, tmp / f"given{r}.retr", n, codec_from=tmp / "warm.retr",
                                                   **common),
        "decode + preprocess": lambda r: decode_rate(enc, paths, w, b),
    }
    if not args.no_unfolded:
        plain = Encoder(enc_cfg, device="cpu", fold=False)
        plain.model = plain.model.to(memory_format=torch.contiguous_format)
        modes["forward, unfolded"] = lambda r: forward_rate(plain, b, n, channels_last=False)
    part = {"device": "cpu", "batch_size": b, "workers": w, "images": n, "batchnorms_folded": enc.folded,
            "channels_last": True, "rounds": [interleaved(modes, r) for r in range(args.rounds)]}
    baselines = {"index, fresh db": "forward", "index, codec given": "forward", "forward, unfolded": "forward"}
    return part | summarise(part["rounds"], {k: v for k, v in baselines.items() if k in modes})


def run_gpu(args: argparse.Namespace, enc_cfg: EncoderConfig, paths: list[Path], folder: Path, tmp: Path) -> dict:
    enc = Encoder(enc_cfg, device="cuda")
    n, b, w = len(paths), args.gpu_batch_size, args.gpu_workers
    common = dict(encoder=enc_cfg, device="cuda", batch_size=b, workers=w)
    warm = tmp / "gpu-warm"
    link_subset(paths[:b], warm)
    engine.index_folder(warm, tmp / "gpu-warm.retr", progress=False, **common)
    blobs = read_blobs(paths)
    modes = {
        "forward": lambda r: forward_rate(enc, b, n, bf16=True),
        "GPU JPEG decode": lambda r: gpu_decode_rate(enc, blobs, b),
        "index, fresh db": lambda r: index_rate(folder, tmp / f"gpu-fresh{r}.retr", n, **common),
    }
    part = {"device": "cuda", "batch_size": b, "workers": w, "images": n, "bf16": True, "channels_last": True,
            "rounds": [interleaved(modes, r) for r in range(args.rounds)]}
    return part | summarise(part["rounds"], {"index, fresh db": ("forward", "GPU JPEG decode")})


def interleaved(modes: dict[str, Callable[[int], dict]], r: int) -> dict:
    """Round ``r`` of the modes, in the order rotated by ``r`` (a load that drifts during a round then favours no
    mode in particular); returns ``{mode: result}`` in the modes' own order, plus the 1-minute load average."""
    names = list(modes)
    order = names[r % len(names):] + names[: r % len(names)]
    done = {k: modes[k](r) for k in order}
    print(f"  round {r + 1}: " + ", ".join(f"{k} {done[k]['img_s']:.1f} img/s" for k in names), flush=True)
    return {k: done[k] for k in names} | {"load_avg_1min": os.getloadavg()[0]}


def summarise(rounds: list[dict], baselines: dict[str, str | tuple[str, ...]]) -> dict:
    """Per mode, the median over rounds of every number and the best round (highest img/s); with /proc/stat, also
    the quietest round (others' CPU share lowest) whole. Ratios ``vs_baseline`` of a mode: its img/s over its
    baseline's (over the slowest of several), within each round for the medians and the quietest round, best over
    best for the bests. ``cpu_ceiling`` (when there is a ``decode + preprocess`` mode): forward CPU s/img /
    (forward + decode CPU s/img), from the medians."""
    modes = [k for k, v in rounds[0].items() if isinstance(v, dict)]

    def numbers(d: dict) -> dict:
        return {m: x for m, x in d.items() if isinstance(x, (int, float))}

    def ratio(row: dict, mode: str) -> float:
        base = baselines[mode] if isinstance(baselines[mode], tuple) else (baselines[mode],)
        return row[mode]["img_s"] / min(row[b]["img_s"] for b in base)

    median = {k: {m: statistics.median(r[k][m] for r in rounds) for m in numbers(rounds[0][k])} for k in modes}
    best = {k: numbers(max((r[k] for r in rounds), key=lambda v: v["img_s"])) for k in modes}
    for mode in baselines:
        median[mode]["vs_baseline"] = statistics.median(ratio(r, mode) for r in rounds)
        best[mode]["vs_baseline"] = ratio(best, mode)
    out = {"baselines": {k: list(v) if isinstance(v, tuple) else v for k, v in baselines.items()},
           "median": median, "best": best}
    if all(r[k]["others_cpu_share"] is not None for r in rounds for k in modes):
        # the round in which other processes took the least CPU during its busiest-for-them mode
        i = min(range(len(rounds)), key=lambda i: max(rounds[i][k]["others_cpu_share"] for k in modes))
        quiet = {k: numbers(rounds[i][k]) for k in modes}
        for mode in baselines:
            quiet[mode]["vs_baseline"] = ratio(rounds[i], mode)
        out["quietest"] = {"round": i, "others_cpu_share_max": max(v["others_cpu_share"] for v in quiet.values()),
                           "modes": quiet}
    if "decode + preprocess" in modes:
        f, d = median["forward"]["cpu_s_per_img"], median["decode + preprocess"]["cpu_s_per_img"]
        out["cpu_ceiling"] = f / (f + d)
    return out


def table(res: dict) -> str:
    """Per mode: img/s and others' CPU share in the quietest round (the median round without /proc/stat), the
    median img/s and CPU s/img over rounds; per measured mode its ratio to its baseline in the quietest round, the
    median of the per-round ratios, and best over best."""
    head = (f"{'device':6} {'mode':22} {'img/s':>8} {'others':>7} {'median':>8} {'cpu s/img':>10} "
            f"{'vs baseline':>11} {'median':>7} {'best':>7}  baseline")
    lines = [head, "-" * len(head)]
    for part in res["runs"]:
        quiet = part.get("quietest", {}).get("modes", part["median"])
        for mode, v in part["median"].items():
            q = quiet[mode]
            others = "" if q.get("others_cpu_share") is None else f"{q['others_cpu_share']:7.0%}"
            line = (f"{part['device']:6} {mode:22} {q['img_s']:8.1f} {others:>7} {v['img_s']:8.1f} "
                    f"{v['cpu_s_per_img']:10.4f} ")
            if mode in part["baselines"]:
                base = part["baselines"][mode]
                line += (f"{q['vs_baseline']:11.1%} {v['vs_baseline']:7.1%} {part['best'][mode]['vs_baseline']:7.1%}  "
                         + (base if isinstance(base, str) else "slower of " + ", ".join(base)))
            lines.append(line.rstrip())
        if "cpu_ceiling" in part:
            lines.append(f"{'':6} {'CPU ceiling':22} {'':8} {'':7} {'':8} {'':10} {part['cpu_ceiling']:11.1%}  "
                         "forward CPU / (forward + decode CPU), medians")
        noisy = part.get("quietest", {}).get("others_cpu_share_max", 0.0)
        if noisy > 0.1:
            lines.append(f"{'':6} warning: other processes took up to {noisy:.0%} of the machine's CPU even in the "
                         "quietest round; the rates and ratios are not those of an idle machine")
    lines.append("img/s, others, vs baseline: the quietest round (others = share of the machine's CPU taken by other "
                 "processes meanwhile)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    enc_cfg = EncoderConfig.create(args.backbone, weights=args.weights)
    gpu = torch.cuda.is_available() and not args.no_gpu
    n_all = max(args.n_images, args.gpu_n_images if gpu else 0)
    w, h = args.image_size
    res = {"command": common.command("encode", args.argv),
           "machine": machine(args.threads), "encoder": enc_cfg.to_dict(),
           "photos": {"size_wh": [w, h], "jpeg_quality": 90, "seed": args.seed,
                      "kind": "seeded random crops of scikit-image's colour photos, resized bicubically"},
           "runs": []}
    with tempfile.TemporaryDirectory(prefix="retr-bench-encode-", dir=args.tmp) as d:
        tmp = Path(d)
        t0 = time.perf_counter()
        all_paths = make_photos(tmp / "photos-all", n_all, (w, h), args.seed)
        size = sum(p.stat().st_size for p in all_paths) / n_all
        print(f"photos: {n_all} JPEGs {w}x{h}, {size / 1024:.1f} KiB on average, written in "
              f"{time.perf_counter() - t0:.1f} s; torch threads {args.threads}, decode workers {args.workers}",
              flush=True)
        res["photos"]["mean_bytes"] = size
        cpu_paths = all_paths[: args.n_images]
        link_subset(cpu_paths, tmp / "photos")
        cpu_paths = [tmp / "photos" / p.name for p in cpu_paths]
        print(f"cpu: {enc_cfg.describe()}, batch {args.batch_size}, {args.rounds} rounds", flush=True)
        res["runs"].append(run_cpu(args, enc_cfg, cpu_paths, tmp / "photos", tmp))
        if gpu:
            gpu_paths = all_paths[: args.gpu_n_images]
            link_subset(gpu_paths, tmp / "photos-gpu")
            gpu_paths = [tmp / "photos-gpu" / p.name for p in gpu_paths]
            print(f"cuda: {torch.cuda.get_device_name(0)}, batch {args.gpu_batch_size}, bf16, channels_last",
                  flush=True)
            res["runs"].append(run_gpu(args, enc_cfg, gpu_paths, tmp / "photos-gpu", tmp))
        else:
            res["gpu_note"] = ("no CUDA device visible: the GPU modes (bf16 forward, batched decode_jpeg on the GPU, "
                               "index with device=cuda) were not measured" if not args.no_gpu else "--no-gpu")
    res["machine"]["load_avg_end"] = os.getloadavg()
    print(table(res))
    if "gpu_note" in res:
        print(res["gpu_note"])
    print(f"load average (1, 5, 15 min): {res['machine']['load_avg_start']} at start, "
          f"{res['machine']['load_avg_end']} at end, on {res['machine']['cores']} cores")
    return res


def size_wh(s: str) -> tuple[int, int]:
    w, h = s.lower().split("x")
    return int(w), int(h)


def main(argv: list[str] | None = None) -> dict:
    cores = len(os.sched_getaffinity(0))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--weights", default="imagenet", help="imagenet, none (random) or a state_dict path")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--n-images", type=int, default=256, help="photos for the CPU modes (a multiple of the batch "
                    "size keeps every forward at the same batch size)")
    ap.add_argument("--image-size", type=size_wh, default=(500, 375), help="WxH pixels of the photos")
    ap.add_argument("--workers", type=int, default=2, help="decode threads of the CPU index run (retr's default)")
    ap.add_argument("--threads", type=int, default=cores, help="torch intra-op threads (torch.set_num_threads)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="interleaved repetitions; the quietest round and the medians are reported")
    ap.add_argument("--gpu-batch-size", type=int, default=256)
    ap.add_argument("--gpu-n-images", type=int, default=8192)
    ap.add_argument("--gpu-workers", type=int, default=cores, help="Pillow decode threads of the CUDA index run")
    ap.add_argument("--no-gpu", action="store_true", help="CPU modes only, even with CUDA")
    ap.add_argument("--no-unfolded", action="store_true",
                    help="skip the reference forward with BatchNorms kept and NCHW tensors")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tmp", default=None, help="folder for the photos and databases (default: the system's)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="JSON results")
    return common.main(ap, run, argv)


if __name__ == "__main__":
    main()
