"""Scale-out benchmark: describing on Ray (`retr index --ray`) against the local pipeline, and `retr merge`.

    python -m bench.scale                              # 256 photos, efficientnet_lite0, batch 32, 3 rounds
    python -m bench.scale --n-images 128 --rounds 2 --merge-codes 100000

Data: `--n-images` seeded JPEG photos of `--image-size` pixels (bench/encode's `make_photos`: crops of the
scikit-image photographs, quality 90). One Ray session (a local cluster of all the machine's CPUs) is started
before the rounds and not counted (`ray_init_s` says what it cost); each Ray run starts its own actors, which is
counted.

Modes, interleaved for `--rounds` rounds (the order rotated each round), all on the CPU:

- ``local``: the engine's pipeline in this process (`describe.iter_descriptors`: `--workers` decoding threads,
  torch on its default threads);
- ``ray 2x1``: `distributed.iter_descriptors` with 2 actors of 1 torch thread each (the issue's "2 actors on 2
  cores"), `--workers` decoding threads each;
- ``ray default``: `RayConfig()` as `retr index --ray` uses it: torch threads per actor = a local run's (so that
  descriptors are bit for bit a local run's), actors = CPUs / threads (on 2 cores: 1 actor of 2 threads).

Each mode is measured twice:

- ``stream``: the descriptor stream alone (what `--ray` replaces): ``loaded_s``, the seconds until the network is
  loaded (local: `Encoder(...)`; Ray: until the first actor's process had started and loaded it), and
  ``warm_img_s`` = photos / the seconds after that: the rate a long run approaches, start-up left out (no image is
  decoded before, so none is counted for free);
- ``index``: `engine.index_folder` into a fresh database with a codec given (``codec_from``, as a large collection
  is indexed once its codec is frozen), end to end: ``img_s`` = photos / the call's wall time, start-up included.

``overhead`` = 1 - rate / local rate of the same round (positive: slower than local). ``warm_cpu_s_per_img``: CPU
seconds of this benchmark's process tree (Ray's processes included: raylet, GCS, actors) per image over the warm
window, and ``cpu_overhead`` = its ratio to local's - 1: what Ray costs in CPU, which a loaded machine changes
less than the rates. ``others_cpu_share``: the share of the machine's CPU time (/proc/stat, steal included) that went
to processes outside that tree in the window: read it before the rates (with other processes busy, a mode with
more runnable threads takes a larger share of the cores, and can look faster than it is).

Merge: `--merge-shards` databases of `--merge-codes` images in all, synthetic (random 64-byte codes and file
records, one codec fitted on random 1,280-D descriptors: PCA 256, Q-2 h = 4), merged by `shards.merge` into a new
database; ``copy_codes_s`` = images / the copy's seconds (codes, records, skipped files), ``codes_s`` with the flat
index built over the merged codes too.

Results: a table on stdout and `--out` (default bench/results/scale.json) with the machine and every rate.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from bench import common
from bench.encode import make_photos
from retr.indexes.config import IndexConfig
from retr.retrieval import codec as codec_mod
from retr.retrieval import describe, distributed, engine, shards
from retr.retrieval.codec import CodecConfig
from retr.retrieval.database import write_spec
from retr.retrieval.encoder import Encoder, EncoderConfig
from retr.retrieval.images import walk_images
from retr.retrieval.spec import FROZEN, DatabaseSpec
from retr.retrieval.store import FileRecord, Store

RESULTS = Path(__file__).parent / "results" / "scale.json"


# -- the machine ------------------------------------------------------------------------------------------------------
def tree_cpu(pid: int | None = None) -> dict[int, float]:
    """{pid: CPU seconds (user + system)} of ``pid`` (default: this process) and every process below it."""
    pid = os.getpid() if pid is None else pid
    hz = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                v = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(v[1]), []).append(int(d))
        cpu[int(d)] = (int(v[11]) + int(v[12])) / hz
    out, todo = {}, [pid]
    while todo:
        p = todo.pop()
        out[p] = cpu.get(p, 0.0)
        todo.extend(children.get(p, []))
    return out


class Sampler:
    """Samples (time, this process tree's CPU seconds, the machine's busy and total CPU seconds) every ``period`` s
    in a thread, so that CPU use can be read over any window of a run (`window`). A process's CPU time counts as
    last seen: Ray's raylet reaps its killed workers without adding their times to its own, so a process that ends
    loses at most one period of its CPU time."""

    def __init__(self, period: float = 0.2):
        self.period, self.samples = period, []
        self._seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        m = common.machine_cpu_s() or (0.0, 0.0)
        self._seen.update(tree_cpu())
        self.samples.append((time.perf_counter(), sum(self._seen.values()), m[0], m[1]))

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.sample()

    def __enter__(self) -> Sampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def at(self, t: float) -> np.ndarray:
        """(tree CPU, machine busy, machine total) at time ``t``, interpolated between samples."""
        ts = np.array([x[0] for x in self.samples])
        return np.array([np.interp(t, ts, [x[k] for x in self.samples]) for k in (1, 2, 3)])

    def window(self, t0: float, t1: float, n: int) -> dict:
        """Between ``t0`` and ``t1``: CPU seconds of this process tree per image (``n``), and the share of the
        machine's CPU time that went to other processes."""
        tree, busy, total = self.at(t1) - self.at(t0)
        return {"cpu_s_per_img": tree / n, "others_cpu_share": max(0.0, busy - tree) / max(total, 1e-9)}


def timed(fn) -> tuple[object, float, float]:
    """Run ``fn``: (its value, wall seconds, share of the machine's CPU time that went to processes outside this
    process tree meanwhile)."""
    with Sampler() as sampler:
        t0 = time.perf_counter()
        value = fn()
        t1 = time.perf_counter()
    return value, t1 - t0, sampler.window(t0, t1, 1)["others_cpu_share"]


# -- encoding ----------------------------------------------------------------------------------------------------------
def stream(make, n: int) -> dict:
    """Consume the batches of ``make() -> (iterator, timings)``: ``warm_img_s`` = n / the seconds from when the
    network was loaded (``timings["loaded"]``, seconds into the call) to the last batch, with the CPU seconds per
    image of this process tree (Ray's processes included) and the others' share of the machine in that window;
    ``first_s`` the seconds to the first batch."""
    with Sampler() as sampler:
        t0 = time.perf_counter()
        it, timings = make()
        first = None
        count = 0
        for b in it:
            count += len(b.index)
            if first is None:
                first = time.perf_counter() - t0
        t1 = time.perf_counter()
    if count != n:
        raise RuntimeError(f"described {count} of {n} photos")
    loaded = timings["loaded"]
    warm = sampler.window(t0 + loaded, t1, n)
    return {"first_s": first, "loaded_s": loaded, "warm_img_s": n / (t1 - t0 - loaded),
            "warm_cpu_s_per_img": warm["cpu_s_per_img"], "others_cpu_share": warm["others_cpu_share"],
            "wall_s": t1 - t0, "img_s": n / (t1 - t0), "timings_s": {k: v for k, v in timings.items() if k != "loaded"}}


def index(folder: Path, db: Path, n: int, **kw) -> dict:
    rep, wall, others = timed(lambda: engine.index_folder(folder, db, progress=False, **kw))
    if rep.added != n:
        raise RuntimeError(f"indexed {rep.added} of {n} photos (skipped: {rep.skipped})")
    return {"img_s": n / wall, "wall_s": wall, "others_cpu_share": others, "timings_s": rep.timings}


def encoding(args, tmp: Path) -> dict:
    import ray

    folder = tmp / "photos"
    make_photos(folder, args.n_images, args.image_size, seed=0)
    paths, _ = walk_images(folder)
    cfg = EncoderConfig.create(args.backbone, args.weights)
    codec_db = tmp / "codec.retr"  # a frozen codec, lent to every index run
    engine.index_folder(folder, codec_db, cfg, CodecConfig(), device="cpu", freeze=True, progress=False,
                        batch_size=args.batch_size, workers=args.workers)
    t = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    ray_init = time.perf_counter() - t
    modes = {"local": None, "ray 2x1": distributed.RayConfig(actors=2, threads=1),
             "ray default": distributed.RayConfig()}
    run_kw = dict(batch_size=args.batch_size, workers=args.workers)
    rounds = []
    try:
        for r in range(args.rounds):
            names = list(modes)
            names = names[r % len(names):] + names[:r % len(names)]
            out = {}
            for name in names:
                cfg_ray = modes[name]
                if cfg_ray is None:
                    def make():
                        t = time.perf_counter()
                        enc = Encoder(cfg, device="cpu")
                        timings = {"loaded": time.perf_counter() - t}
                        return describe.iter_descriptors(enc, paths, timings=timings, **run_kw), timings
                else:
                    def make(c=cfg_ray):
                        timings: dict = {}
                        it = distributed.iter_descriptors(cfg, paths, c, device="cpu", timings=timings, **run_kw)

                        def batches():
                            yield from it
                            timings["loaded"] = timings["actors_ready"]  # the first actor had loaded the network
                        return batches(), timings
                s = stream(make, len(paths))
                db = tmp / f"r{r}-{name.replace(' ', '-')}.retr"
                i = index(folder, db, len(paths), codec_from=codec_db, device="cpu", ray=cfg_ray, **run_kw)
                shutil.rmtree(db)
                out[name] = {"stream": s, "index": i}
                print(f"round {r}  {name:12s} stream: loaded {s['loaded_s']:5.1f} s, warm {s['warm_img_s']:6.1f} "
                      f"img/s, {s['warm_cpu_s_per_img']:.3f} CPU s/img; index: {i['img_s']:6.1f} img/s end to end "
                      f"(others {s['others_cpu_share']:.0%}, {i['others_cpu_share'] or 0:.0%})", flush=True)
            for name in modes:
                for part, key in (("stream", "warm_img_s"), ("index", "img_s")):
                    out[name][part]["overhead"] = 1 - out[name][part][key] / out["local"][part][key]
                out[name]["stream"]["cpu_overhead"] = (out[name]["stream"]["warm_cpu_s_per_img"]
                                                       / out["local"]["stream"]["warm_cpu_s_per_img"] - 1)
            rounds.append(out)
    finally:
        ray.shutdown()
    summary = {name: {f"{part}_{key}_median": statistics.median(r[name][part][key] for r in rounds)
                      for part, key in (("stream", "warm_img_s"), ("stream", "loaded_s"), ("index", "img_s"),
                                        ("stream", "others_cpu_share"), ("stream", "warm_cpu_s_per_img"),
                                        ("stream", "cpu_overhead"))}
               for name in modes}
    for name in modes:
        for part in ("stream", "index"):
            summary[name][f"{part}_overhead_median"] = statistics.median(r[name][part]["overhead"] for r in rounds)
    return {"photos": len(paths), "image_size": list(args.image_size), "backbone": args.backbone,
            "weights": args.weights, "batch_size": args.batch_size, "workers": args.workers,
            "ray_init_s": ray_init, "rounds": rounds, "median": summary}


# -- merging -----------------------------------------------------------------------------------------------------------
def make_shard(db: Path, spec: DatabaseSpec, params, root: str, n: int, first: int, seed: int) -> None:
    """A database of ``n`` synthetic images (random codes, records of files that need not exist) under ``root``."""
    rng = np.random.default_rng(seed)
    with Store(db, write=True, create=True) as s:
        write_spec(s, spec, params)
        s.put_meta({"root": os.fsencode(root)})
        for j in range(0, n, 65536):
            m = min(65536, n - j)
            codes = rng.integers(0, 256, (m, params.code_size), dtype=np.uint8)
            recs = [FileRecord(f"{(first + j + i) // 1000:04d}/{first + j + i:09d}.jpg", 100_000, 0, "0" * 32)
                    for i in range(m)]
            s.add(recs, codes=codes)


def merging(args, tmp: Path) -> dict:
    x = np.random.default_rng(0).standard_normal((2000, 1280)).astype(np.float32)
    params = codec_mod.fit(x, CodecConfig(dims=256, levels=4))
    # the flat index the recorded figures were built with (fast-scan has been the default since 2 December 2026)
    spec = DatabaseSpec(codec=params.config, index=IndexConfig("flat"), codec_state=FROZEN)
    per = args.merge_codes // args.merge_shards
    dbs = []
    for k in range(args.merge_shards):
        dbs.append(tmp / f"shard{k}.retr")
        make_shard(dbs[-1], spec, params, f"/data/shard{k}", per, k * per, seed=k)
    out = tmp / "merged.retr"
    rep, wall, others = timed(lambda: shards.merge(dbs, out))
    return {"shards": args.merge_shards, "codes": rep.count, "code_size": rep.code_size, "seconds": rep.seconds,
            "timings_s": rep.timings, "copy_codes_s": rep.count / rep.timings["copy"], "codes_s": rep.codes_per_s,
            "others_cpu_share": others, "disk_bytes": sum(f.stat().st_size for f in out.iterdir())}


def run(args: argparse.Namespace) -> dict:
    import ray

    tmp = Path(tempfile.mkdtemp(prefix="retr-bench-scale-"))
    try:
        result = {"command": common.command("scale", args.argv),
                  "machine": {"cpu": common.cpu_model(), "cores": os.cpu_count(), "load_avg": os.getloadavg(),
                              "python": platform.python_version(), "torch": torch.__version__,
                              "ray": ray.__version__, "torch_threads": torch.get_num_threads()}}
        if not args.no_encoding:
            result["encoding"] = encoding(args, tmp)
        if args.merge_codes:
            result["merge"] = merging(args, tmp)
        result["machine"]["load_avg_after"] = os.getloadavg()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if "merge" in result:
        m = result["merge"]
        print(f"merge: {m['codes']:,} codes of {m['code_size']} B from {m['shards']} shards: copy "
              f"{m['copy_codes_s']:,.0f} codes/s, with the index {m['codes_s']:,.0f} codes/s")
    if "encoding" in result:
        for name, s in result["encoding"]["median"].items():
            print(f"{name:12s} warm {s['stream_warm_img_s_median']:6.1f} img/s (overhead "
                  f"{s['stream_overhead_median']:+.0%}), network loaded after {s['stream_loaded_s_median']:.1f} s; "
                  f"index {s['index_img_s_median']:6.1f} img/s end to end (overhead {s['index_overhead_median']:+.0%})"
                  f"; CPU {s['stream_warm_cpu_s_per_img_median']:.3f} s/img (overhead "
                  f"{s['stream_cpu_overhead_median']:+.0%}); others took {s['stream_others_cpu_share_median']:.0%} "
                  "of the machine")
    return result


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-images", type=int, default=256)
    ap.add_argument("--image-size", type=lambda s: tuple(int(v) for v in s.split("x")), default=(500, 375))
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--weights", default="imagenet")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--merge-codes", type=int, default=200_000, help="images in all the shards (0: no merge)")
    ap.add_argument("--merge-shards", type=int, default=2)
    ap.add_argument("--no-encoding", action="store_true", help="only the merge")
    ap.add_argument("--out", type=Path, default=RESULTS)
    return common.main(ap, run, argv)


if __name__ == "__main__":
    main()
