"""`retr serve` under load on loopback, beside the same work done in-process in the same run. Stops by itself.

    python -m bench.serve                                   # 1,000,000 vectors for (a); 9 minutes on 2 busy cores
    python -m bench.serve --n 200000 --seconds 5 --out b.json

(a) **Vector queries** (``POST /search {"vector": [...], "k": 10}``) on a database of ``--n`` synthetic descriptors
    of the default encoder (1,280-D, a mixture of Gaussian clusters with a decaying spectrum, as `bench.search`),
    coded by the default codec (PCA 256, Q-2 h = 4: 64 bytes per vector) and searched by the exact `fastscan` index.
    The database is written through the store like any other (spec, frozen codec, codes, index file); its file
    records point at no image. In-process baseline: `Engine.search_vectors`, one query per call, on the same
    queries, before and after the server's turn.
(b) **Image queries** (``POST /search`` with a JPEG upload) on the bundled photos (`retr demo`'s collection, its
    edited copies as queries) indexed with the default backbone (EfficientNet-Lite0, ImageNet weights). In-process
    baseline: the encoder's forward pass of one preprocessed image plus the search (`Engine.search_vectors`); also
    decode + preprocess alone, and the forward pass of 8 images in one batch.

For each part `retr serve` runs as a subprocess (as users start it); a client process keeps 1, 8 and 32
connections busy (``--clients``), each sending its next request when the previous answer arrived, for
``--warmup`` + ``--seconds`` seconds; requests per second and client-side latency percentiles count the
``--seconds`` after the warm-up. Server and client share the machine, the in-process baseline has it alone: the
machine's load (load average, busy share of all cores from /proc/stat during each phase) and the CPU seconds of the
server and the client are recorded with every figure. The in-process baselines run with the threading `retr serve`
sets for itself: ``OMP_WAIT_POLICY=PASSIVE`` (unless set) and NumPy's BLAS on one thread. ``--max-minutes`` bounds
the run: a level that would start after it is skipped and recorded as such.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench import common

K = 10
_CHUNK = 50_000


# -- the load: a client process with one connection per simulated client ----------------------------------------------
def _client_thread(port: int, bodies: list[bytes], ctype: str, start: float, t0: float, t1: float, out: list,
                   errors: list, offset: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    i = offset
    try:
        while time.perf_counter() < start:
            time.sleep(0.001)
        while True:
            now = time.perf_counter()
            if now >= t1:
                break
            body = bodies[i % len(bodies)]
            i += 1
            try:
                conn.request("POST", "/search", body, {"Content-Type": ctype, "Content-Length": str(len(body))})
                r = conn.getresponse()
                r.read()
                ok = r.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            end = time.perf_counter()
            if t0 <= end < t1:
                (out if ok else errors).append(end - now)
    finally:
        conn.close()


def _load(port: int, bodies: list[bytes], ctype: str, clients: int, warmup: float, seconds: float, q) -> None:
    """Run in a process of its own: ``clients`` threads for ``warmup`` + ``seconds`` s; puts the latencies."""
    start = time.perf_counter() + 0.2
    t0, t1 = start + warmup, start + warmup + seconds
    lat: list[float] = []
    errors: list[float] = []
    cpu0 = time.process_time()
    threads = [threading.Thread(target=_client_thread, args=(port, bodies, ctype, start, t0, t1, lat, errors,
                                                             j * 7919))
               for j in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    q.put({"latencies": lat, "errors": len(errors), "client_cpu_s": time.process_time() - cpu0})


def _proc_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (its threads included), from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            v = f.read().rsplit(")", 1)[1].split()
        return (int(v[11]) + int(v[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _busy(m0, m1) -> float | None:
    if m0 is None or m1 is None or m1[1] == m0[1]:
        return None
    return round((m1[0] - m0[0]) / (m1[1] - m0[1]), 3)


def _stats(lat: list[float], seconds: float) -> dict:
    a = np.sort(np.asarray(lat)) * 1000 if lat else np.zeros(1)
    return {"requests": len(lat), "rps": round(len(lat) / seconds, 2), "p50_ms": round(float(np.percentile(a, 50)), 2),
            "p99_ms": round(float(np.percentile(a, 99)), 2), "mean_ms": round(float(a.mean()), 2)}


class Server:
    """`retr serve` in a subprocess on a free loopback port."""

    def __init__(self, db: Path, threads: int, log: Path, extra: tuple[str, ...] = ()):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        code = (f"import torch; torch.set_num_threads({threads}); from retr.cli import main; "
                "main(prog_name='retr')")
        self._log = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, "-c", code, "serve", "--db", str(db), "--port", str(self.port),
                                      "--device", "cpu", *extra], stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        t_end = time.monotonic() + 300
        while time.monotonic() < t_end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"retr serve exited with {self.proc.returncode}; see {log}")
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                c.request("GET", "/health")
                if c.getresponse().status == 200:
                    c.close()
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("retr serve did not start within 5 minutes")

    def cpu_s(self) -> float | None:
        return _proc_cpu_s(self.proc.pid)

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def load_levels(server: Server, bodies: list[bytes], ctype: str, args, deadline: float) -> list[dict]:
    rows = []
    ctx = mp.get_context("spawn")
    for c in args.clients:
        if time.monotonic() + args.warmup + args.seconds > deadline:
            rows.append({"clients": c, "skipped": f"--max-minutes {args.max_minutes} reached"})
            continue
        q = ctx.Queue()
        m0, s0, la0 = common.machine_cpu_s(), server.cpu_s(), os.getloadavg()[0]
        p = ctx.Process(target=_load, args=(server.port, bodies, ctype, c, args.warmup, args.seconds, q))
        p.start()
        res = q.get(timeout=args.warmup + args.seconds + 600)
        p.join()
        m1, s1 = common.machine_cpu_s(), server.cpu_s()
        row = {"clients": c, **_stats(res["latencies"], args.seconds), "errors": res["errors"],
               "server_cpu_s": None if s0 is None else round(s1 - s0, 2), "client_cpu_s": round(res["client_cpu_s"], 2),
               "machine_busy": _busy(m0, m1), "load_avg_1min": la0}
        rows.append(row)
        print(f"  {c:3d} clients: {row['rps']:8.1f} req/s  p50 {row['p50_ms']:7.2f} ms  p99 {row['p99_ms']:7.2f} ms  "
              f"errors {row['errors']}  machine busy {row['machine_busy']}", flush=True)
    return rows


def timed_loop(fn, items: list, seconds: float) -> dict:
    """Call ``fn(item)`` over ``items`` (cycled) for ``seconds``; rate and latency percentiles."""
    lat = []
    m0 = common.machine_cpu_s()
    t_end = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < t_end or i < 3:
        t = time.perf_counter()
        fn(items[i % len(items)])
        lat.append(time.perf_counter() - t)
        i += 1
    total = sum(lat)
    a = np.asarray(lat) * 1000
    return {"calls": i, "per_s": round(i / total, 2), "p50_ms": round(float(np.median(a)), 3),
            "p99_ms": round(float(np.percentile(a, 99)), 3), "machine_busy": _busy(m0, common.machine_cpu_s())}


# -- (a) vector queries on a large fast-scan database -----------------------------------------------------------------
def _mixture(d: int, clusters: int, seed: int, draws_seed: int | None = None):
    """``draw(m) -> (m, d)`` float32 L2-normalised rows of a Gaussian mixture with a decaying spectrum (centres from
    ``seed``; which centre and the noise from ``draws_seed``, default ``seed``)."""
    rng = np.random.default_rng(seed)
    s = (1.0 + np.arange(d, dtype=np.float32)) ** -0.5
    centres = rng.standard_normal((clusters, d), dtype=np.float32) * s
    spread = 0.5 * s
    if draws_seed is not None:
        rng = np.random.default_rng(draws_seed)

    def draw(m: int) -> np.ndarray:
        c = rng.integers(0, clusters, m)
        x = centres[c] + rng.standard_normal((m, d), dtype=np.float32) * spread
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x

    return draw


def build_vector_db(db: Path, n: int, seed: int = 0) -> dict:
    """A database of ``n`` synthetic default-encoder descriptors under the default codec and a fastscan index."""
    from retr.indexes import IndexConfig
    from retr.retrieval import codec as codec_mod
    from retr.retrieval.codec import CodecConfig
    from retr.retrieval.database import refresh_index, write_spec
    from retr.retrieval.encoder_config import EncoderConfig
    from retr.retrieval.spec import FROZEN, DatabaseSpec
    from retr.retrieval.store import FileRecord, Store

    t0 = time.perf_counter()
    enc = EncoderConfig()
    spec = DatabaseSpec(encoder=enc, codec=CodecConfig(reduction="pca", dims=256, quantizer="q2", levels=4),
                        index=IndexConfig(kind="fastscan"), train_size=min(n, 20_000), codec_state=FROZEN)
    draw = _mixture(enc.dim, 10_000, seed)
    params = codec_mod.fit(draw(min(n, 20_000)), spec.codec)
    with Store(db, write=True, create=True) as s:
        write_spec(s, spec, params, clear_codes=True)
        s.put_meta({"root": os.fsencode(str(db.parent / "no-images"))})
        for i0 in range(0, n, _CHUNK):
            m = min(_CHUNK, n - i0)
            codes = codec_mod.encode(params, draw(m))
            s.add([FileRecord(f"v/{i:07d}.jpg", 0, 0, "") for i in range(i0, i0 + m)], codes=codes)
        t_store = time.perf_counter() - t0
        refresh_index(s, params, spec.index)
    return {"n": n, "code_size": params.code_size, "build_s": round(time.perf_counter() - t0, 1),
            "store_s": round(t_store, 1)}


def part_vectors(args, work: Path, deadline: float) -> dict:
    from retr.retrieval.engine import Engine

    db = work / f"vectors-{args.n}.retr"
    built = None
    if not (db / "index.faiss").is_file():
        shutil.rmtree(db, ignore_errors=True)
        print(f"(a) building {args.n:,} vectors into {db} ...", flush=True)
        built = build_vector_db(db, args.n)
        print(f"    built in {built['build_s']} s", flush=True)
    queries = _mixture(1280, 10_000, 0, draws_seed=1)(256)  # the database's clusters, fresh draws
    bodies = [json.dumps({"vector": [float(f"{v:.7g}") for v in x], "k": K}).encode() for x in queries]

    def in_process() -> dict:
        with Engine(db, device="cpu") as eng:
            eng.search_vectors(queries[:1], k=K)
            one = timed_loop(lambda x: eng.search_vectors(x[None], k=K), list(queries), args.seconds)
            batch8 = timed_loop(lambda i: eng.search_vectors(queries[i:i + 8], k=K), list(range(0, 248, 8)),
                                min(args.seconds, 3))
            batch8["queries_per_s"] = round(8 * batch8["per_s"], 2)
            return {"one_query_per_call": one, "eight_queries_per_call": batch8}

    print("(a) in-process Engine.search_vectors ...", flush=True)
    before = in_process()
    print(f"    {before['one_query_per_call']['per_s']} queries/s (1 per call)", flush=True)
    server = Server(db, args.threads, work / "serve-a.log", tuple(args.server_args.split()))
    try:
        rows = load_levels(server, bodies, "application/json", args, deadline)
    finally:
        server.close()
    after = in_process()
    print(f"    after: {after['one_query_per_call']['per_s']} queries/s (1 per call)", flush=True)
    base = (before["one_query_per_call"]["per_s"] + after["one_query_per_call"]["per_s"]) / 2
    for r in rows:
        if "rps" in r:
            r["vs_in_process"] = round(r["rps"] / base, 3)
    eight = next((r for r in rows if r.get("clients") == 8 and "rps" in r), None)
    return {"database": {"n": args.n, "code_size": 64, "index": "fastscan", "encoder_dim": 1280,
                         "built": built}, "k": K, "in_process_before": before, "in_process_after": after,
            "in_process_queries_per_s": round(base, 2), "server": rows,
            "target": "at 8 clients >= 70% of the in-process rate",
            "met": None if eight is None else eight["vs_in_process"] >= 0.7}


# -- (b) image queries with the default backbone ----------------------------------------------------------------------
def _multipart(name: str, data: bytes, k: int) -> tuple[bytes, str]:
    b = "----retrbench7d1f"
    body = (f"--{b}\r\nContent-Disposition: form-data; name=\"k\"\r\n\r\n{k}\r\n"
            f"--{b}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{b}--\r\n".encode()
    return body, f"multipart/form-data; boundary={b}"


def part_photos(args, work: Path, deadline: float) -> dict:
    from retr.eval.demo import write_collection
    from retr.retrieval import engine
    from retr.retrieval.engine import Engine
    from retr.retrieval.images import decode_image_bytes

    photos, queries_dir, db = work / "photos", work / "queries", work / "photos.retr"
    if not (db / "index.faiss").is_file():
        shutil.rmtree(db, ignore_errors=True)
        _, copies = write_collection(photos, queries_dir)
        engine.index_folder(photos, db, device="cpu", progress=False)
    files = sorted(queries_dir.glob("*.jpg"))
    blobs = [(f.name, f.read_bytes()) for f in files]
    parts = [_multipart(n, b, K) for n, b in blobs]
    bodies, ctype = [p[0] for p in parts], parts[0][1]

    def in_process() -> dict:
        with Engine(db, device="cpu") as eng:
            enc = eng.encoder
            tensors = [enc.preprocess(decode_image_bytes(b, n, None, enc.draft_size)) for n, b in blobs]
            xs = [enc.encode_batch([t]) for t in tensors[:2]]  # warm up
            dec = timed_loop(lambda nb: enc.preprocess(decode_image_bytes(nb[1], nb[0], None, enc.draft_size)),
                             blobs, min(args.seconds, 3))
            fwd = timed_loop(lambda t: enc.encode_batch([t]), tensors, args.seconds)
            xs = enc.encode_batch(tensors)
            srch = timed_loop(lambda x: eng.search_vectors(x[None], k=K), list(xs), min(args.seconds, 2))
            fwd8 = timed_loop(lambda i: enc.encode_batch(tensors[i:i + 8]), list(range(0, len(tensors) - 7, 8)),
                              args.seconds)
            fwd8["images_per_s"] = round(8 * fwd8["per_s"], 2)
            return {"decode_preprocess": dec, "forward_1": fwd, "search": srch, "forward_8": fwd8,
                    "forward_plus_search_ms": round(fwd["p50_ms"] + srch["p50_ms"], 3)}

    print("(b) in-process forward and search ...", flush=True)
    before = in_process()
    print(f"    forward + search {before['forward_plus_search_ms']} ms; forward of 8 in one batch: "
          f"{before['forward_8']['images_per_s']} images/s", flush=True)
    server = Server(db, args.threads, work / "serve-b.log", tuple(args.server_args.split()))
    try:
        rows = load_levels(server, bodies, ctype, args, deadline)
    finally:
        server.close()
    after = in_process()
    ref = (before["forward_plus_search_ms"] + after["forward_plus_search_ms"]) / 2
    by_c = {r["clients"]: r for r in rows if "rps" in r}
    out = {"database": {"photos": len(list(photos.glob("*.jpg"))), "queries": len(files),
                        "upload_bytes_mean": int(np.mean([len(b) for _, b in blobs])),
                        "backbone": "efficientnet_lite0"}, "k": K, "in_process_before": before,
           "in_process_after": after, "forward_plus_search_ms": round(ref, 3), "server": rows,
           "targets": "p50 at 1 client <= 1.5 x (one-image forward + search); at 8 clients >= 2x the 1-client "
                      "throughput"}
    if 1 in by_c:
        out["p50_1_client_vs_forward_plus_search"] = round(by_c[1]["p50_ms"] / ref, 3)
        out["met_latency"] = out["p50_1_client_vs_forward_plus_search"] <= 1.5
    if 1 in by_c and 8 in by_c:
        out["throughput_8_vs_1"] = round(by_c[8]["rps"] / by_c[1]["rps"], 3)
        out["met_batching"] = out["throughput_8_vs_1"] >= 2
    f1, f8 = (before["forward_1"]["p50_ms"] + after["forward_1"]["p50_ms"]) / 2, \
        (before["forward_8"]["p50_ms"] + after["forward_8"]["p50_ms"]) / 16
    out["forward_batch8_gain_in_process"] = round(f1 / f8, 3)  # the most batching can give on this machine
    return out


def run(args: argparse.Namespace) -> dict:
    # the in-process baselines run with the threading `retr serve` sets for itself (cli/serve.py): OpenMP threads
    # that sleep between parallel regions, NumPy's BLAS on one thread; set before torch and Faiss load OpenMP
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")
    torch.set_num_threads(args.threads)
    deadline = time.monotonic() + 60 * args.max_minutes
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="retr-bench-serve-"))
    work.mkdir(parents=True, exist_ok=True)
    m0 = common.machine_cpu_s()
    res = {"command": common.command("serve", args.argv),
           "machine": {"cpu": common.cpu_model(), "cores": len(os.sched_getaffinity(0)), "threads": args.threads,
                       "omp_wait_policy": os.environ["OMP_WAIT_POLICY"], "numpy_blas_threads": 1,
                       "python": platform.python_version(), "torch": torch.__version__,
                       "load_avg_start": os.getloadavg()},
           "clients": args.clients, "warmup_s": args.warmup, "seconds": args.seconds}
    try:
        if "a" in args.parts:
            res["vectors"] = part_vectors(args, work, deadline)
        if "b" in args.parts:
            res["images"] = part_photos(args, work, deadline)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    res["machine"]["load_avg_end"] = os.getloadavg()
    res["machine"]["busy_share_whole_run"] = _busy(m0, common.machine_cpu_s())
    print(f"load average (1, 5, 15 min): {res['machine']['load_avg_start']} at start, "
          f"{res['machine']['load_avg_end']} at end, on {res['machine']['cores']} cores")
    return res


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="vectors in the database of part (a)")
    ap.add_argument("--parts", default="ab", help="a: vector queries, b: image queries")
    ap.add_argument("--clients", type=lambda s: [int(v) for v in s.split(",")], default=[1, 8, 32])
    ap.add_argument("--seconds", type=float, default=8.0, help="measured seconds per level")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds per level before measuring")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch / Faiss threads")
    ap.add_argument("--max-minutes", type=float, default=15.0, help="no level starts after this")
    ap.add_argument("--server-args", default="", help="more options for `retr serve`, e.g. '--batch-wait-ms 20'")
    ap.add_argument("--work", default=None, help="folder for the databases, kept (reused by a later run)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/serve.json"))
    return common.main(ap, run, argv)


if __name__ == "__main__":
    main()
