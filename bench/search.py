"""Compressed-domain search benchmark: Q-2 codes scanned by Faiss 4-bit fast-scan against Faiss baselines.

    python -m bench.search                         # the issue's size: 1,000,000 x 256, about 10 minutes on 2 cores
    python -m bench.search --n 100000 --out b.json # smaller, with the results as JSON

Data: a seeded synthetic stand-in for PCA-reduced CNN descriptors (no real images): a mixture of `--clusters`
Gaussian clusters whose per-dimension standard deviation decays as (1 + j)^-0.5 (centres and spread alike), rows
L2-normalised; queries are fresh draws from the same mixture. The codec is Q-2 with `--levels` levels per
dimension, no reduction (the data is already "reduced"), fitted on a 100,000-vector sample.

Every index is timed in the same run with `--threads` Faiss threads: serving mode (one query per call, as many
of `--serving` queries as fit in `--budget` seconds per index) and batch mode (`--batch` queries in one call).
Recall@k is tie-aware: a returned item counts when its exact score is at least the k-th best exact score, against
exact search on the normalised decoded vectors ("vs decoded", the engine's flat index) and on the float32 vectors
("vs float32"). Bytes per vector is the Faiss serialisation (codes, ids, lists, graph) divided by n; the memory ratio
compares it with IndexFlatIP on float32.
"""

from __future__ import annotations

import argparse
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np

from bench import common
from retr import indexes
from retr.indexes import fastscan
from retr.indexes.vectors import l2n
from retr.retrieval import codec

_CHUNK = 100_000


@dataclass
class Row:
    """One index measured. Times in seconds, rates in queries per second."""

    name: str
    faiss: str
    code_bytes: float
    bytes_per_vector: float
    build_s: float
    serving_qps: float
    serving_queries: int
    batch_qps: float
    recall_decoded: float
    recall_float: float
    memory_ratio: float = 0.0
    serving_x: float = 0.0
    batch_x: float = 0.0


def synthetic(n: int, d: int, clusters: int, nq: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """xb (n, d) and xq (nq, d) float32, L2-normalised rows of a Gaussian mixture with a decaying spectrum."""
    rng = np.random.default_rng(seed)
    s = (1.0 + np.arange(d, dtype=np.float32)) ** -0.5
    centres = rng.standard_normal((clusters, d), dtype=np.float32) * s
    spread = 0.5 * s

    def draw(m: int) -> np.ndarray:
        x = np.empty((m, d), np.float32)
        for i0 in range(0, m, _CHUNK):
            c = rng.integers(0, clusters, min(_CHUNK, m - i0))
            x[i0 : i0 + len(c)] = centres[c] + rng.standard_normal((len(c), d), dtype=np.float32) * spread
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x

    return draw(n), draw(nq)




def recall(I: np.ndarray, xq: np.ndarray, ref: np.ndarray, kth: np.ndarray) -> float:
    """Tie-aware recall@k of ids I (m, k) (positions in ref): share of returned items whose exact score under the
    reference vectors ref (n, d) reaches the k-th best exact score kth (m,)."""
    ok = I >= 0
    s = np.einsum("mkd,md->mk", ref[np.maximum(I, 0)], xq)
    return float(((s >= kth[:, None] - 1e-6) & ok).sum() / I.size)


def serving(search, xq: np.ndarray, budget: float) -> tuple[float, int]:
    """Queries per second answering one query per call, until all are done or `budget` seconds have passed."""
    search(xq[:1])  # warm-up: first-call allocations
    t0 = time.perf_counter()
    done = 0
    while done < len(xq) and (done < 5 or time.perf_counter() - t0 < budget):
        search(xq[done : done + 1])
        done += 1
    return done / (time.perf_counter() - t0), done


def measure(name: str, kind: str, index, search, build_s: float, code_bytes: float, xq_s: np.ndarray,
            xq_b: np.ndarray, budget: float) -> tuple[Row, np.ndarray, np.ndarray]:
    """Time `search(xq) -> (D, I)` in both modes; recall is filled in later, once the ground truths exist."""
    qps_s, done = serving(search, xq_s, budget)
    t0 = time.perf_counter()
    D, I = search(xq_b)
    qps_b = len(xq_b) / (time.perf_counter() - t0)
    row = Row(name, kind, code_bytes, fastscan.memory_bytes(index) / index.ntotal, build_s, qps_s, done, qps_b,
              0.0, 0.0)
    print(f"  {name}: build {build_s:.1f} s, serving {qps_s:.1f} q/s ({done} queries), batch {qps_b:.1f} q/s",
          flush=True)
    return row, D, I


def trained(index: faiss.Index, xb: np.ndarray, ntrain: int, seed: int) -> float:
    """Train on a seeded sample (none when ntrain is 0) and add everything; returns the build time."""
    t0 = time.perf_counter()
    if ntrain:
        sample = np.random.default_rng(seed).choice(len(xb), size=min(ntrain, len(xb)), replace=False)
        index.train(xb[np.sort(sample)])
    for i0 in range(0, len(xb), _CHUNK):
        index.add(xb[i0 : i0 + _CHUNK])
    return time.perf_counter() - t0


def run(args: argparse.Namespace) -> dict:
    faiss.omp_set_num_threads(args.threads)
    n, d, k = args.n, args.d, args.k
    print(f"data: {n} x {d} synthetic descriptors (mixture of {args.clusters} Gaussian clusters, per-dimension std "
          f"(1+j)^-0.5, rows L2-normalised), seed {args.seed}; {args.threads} Faiss threads", flush=True)
    t0 = time.perf_counter()
    xb, xq = synthetic(n, d, args.clusters, max(args.batch, args.serving), args.seed)
    print(f"  generated in {time.perf_counter() - t0:.1f} s", flush=True)

    cfg = codec.CodecConfig(reduction="none", quantizer="q2", levels=args.levels)
    sample = np.random.default_rng(args.seed + 1).choice(n, size=min(n, 100_000), replace=False)
    params = codec.fit(xb[np.sort(sample)], cfg)
    bits = (args.levels - 1).bit_length()
    t0 = time.perf_counter()
    idx = np.empty((n, d), np.uint8)
    for i0 in range(0, n, _CHUNK):
        idx[i0 : i0 + _CHUNK] = codec.unpack_bits(codec.encode(params, xb[i0 : i0 + _CHUNK]), d, bits)
    levels = codec.levels(params)
    xd = np.empty((n, d), np.float32)  # what the engine's flat index holds
    for i0 in range(0, n, _CHUNK):
        xd[i0 : i0 + _CHUNK] = l2n(fastscan.decode(levels, idx[i0 : i0 + _CHUNK]))
    print(f"codec: {cfg.short_name()}, {params.code_size} bytes per vector, encoded in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)

    xq_s, xq_b = xq[: args.serving], xq[: args.batch]
    done: list[tuple[Row, np.ndarray, np.ndarray]] = []

    def add(name: str, index, build_s: float, code_bytes: float, search=None) -> None:
        inner = index.inner if isinstance(index, indexes.FastScanIndex) else faiss.downcast_index(index)
        search = search or (lambda q: index.search(q, k))
        done.append(measure(name, type(inner).__name__, index, search, build_s, code_bytes, xq_s, xq_b, args.budget))

    print("indexes:", flush=True)
    for name, x in (("IndexFlatIP float32 (baseline)", xb), ("IndexFlatIP decoded (the engine's flat)", xd)):
        t0 = time.perf_counter()
        index = faiss.IndexFlatIP(d)
        index.add(x)
        add(name, index, time.perf_counter() - t0, 4 * d)
        del index
    # exact batch results of the two flat indexes are the ground truths
    kth = {"float": done[0][1][:, k - 1], "decoded": done[1][1][:, k - 1]}

    if "sq" not in args.skip:
        for qt, label, cb in ((faiss.ScalarQuantizer.QT_8bit, "SQ8", d), (faiss.ScalarQuantizer.QT_4bit, "SQ4", d / 2)):
            index = faiss.IndexScalarQuantizer(d, qt, faiss.METRIC_INNER_PRODUCT)
            add(f"IndexScalarQuantizer {label}", index, trained(index, xb, 100_000, args.seed), cb)
            del index
    m_pq = max(1, d // 4)  # 8-bit sub-quantizers: as many bytes per vector as Q-2 h=4 codes
    if "pq" not in args.skip:
        index = faiss.IndexPQ(d, m_pq, 8, faiss.METRIC_INNER_PRODUCT)
        add(f"IndexPQ {m_pq}x8 (trained)", index, trained(index, xb, 65_536, args.seed), m_pq)
        del index
        index = faiss.IndexPQFastScan(d, 2 * m_pq, 4, faiss.METRIC_INNER_PRODUCT)
        add(f"IndexPQFastScan {2 * m_pq}x4 (trained, no re-rank)", index, trained(index, xb, 65_536, args.seed),
            m_pq)
        del index
    if "hnsw" not in args.skip:
        index = faiss.IndexHNSWFlat(d, args.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = args.ef_search
        add(f"IndexHNSWFlat M={args.hnsw_m} efSearch={args.ef_search}", index, trained(index, xb, 0, args.seed),
            4 * d)
        del index

    ids = np.arange(n, dtype=np.int64)
    for rr in args.rerank:
        t0 = time.perf_counter()
        index = indexes.build_fastscan(levels, idx, ids, indexes.IndexConfig("fastscan", rerank=rr))
        add(f"fastscan Q-2 h={args.levels} + re-rank {rr}", index, time.perf_counter() - t0, index.code_size,
            lambda q, index=index: indexes.search(index, q, k))
        del index
    if "ivf" not in args.skip:
        t0 = time.perf_counter()
        cfgi = indexes.IndexConfig("ivf-fastscan", nlist=args.nlist, rerank=args.ivf_rerank)
        index = indexes.build_fastscan(levels, idx, ids, cfgi)
        bt = time.perf_counter() - t0
        for nprobe in args.nprobe:
            add(f"ivf-fastscan nlist={index.inner.nlist} nprobe={nprobe} + re-rank {args.ivf_rerank}", index, bt,
                index.code_size, lambda q, index=index, nprobe=nprobe: indexes.search(index, q, k, nprobe))
        del index

    rows = []
    base = done[0][0]
    for r, _, I in done:
        r.recall_decoded = recall(I, xq_b, xd, kth["decoded"])
        r.recall_float = recall(I, xq_b, xb, kth["float"])
        r.memory_ratio = base.bytes_per_vector / r.bytes_per_vector
        r.serving_x = r.serving_qps / base.serving_qps
        r.batch_x = r.batch_qps / base.batch_qps
        rows.append(r)
    result = {
        "command": common.command("search", args.argv),
        "data": {"n": n, "d": d, "clusters": args.clusters, "seed": args.seed,
                 "kind": "synthetic Gaussian mixture, per-dimension std (1+j)^-0.5, rows L2-normalised"},
        "codec": cfg.to_dict() | {"code_size": params.code_size},
        "k": k, "threads": args.threads, "batch_queries": len(xq_b), "serving_queries_max": len(xq_s),
        "serving_budget_s": args.budget, "faiss": faiss.__version__,
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "rows": [asdict(r) for r in rows],
    }
    print(table(rows, k))
    return result


def table(rows: list[Row], k: int) -> str:
    head = (f"{'index':58} {'B/vec':>7} {'mem x':>6} {'build s':>8} {'serve q/s':>10} {'x':>6} {'batch q/s':>10} "
            f"{'x':>6} {'R@' + str(k) + ' dec':>8} {'R@' + str(k) + ' f32':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.name[:58]:58} {r.bytes_per_vector:7.1f} {r.memory_ratio:6.1f} {r.build_s:8.1f} "
                     f"{r.serving_qps:10.1f} {r.serving_x:6.1f} {r.batch_qps:10.1f} {r.batch_x:6.1f} "
                     f"{r.recall_decoded:8.4f} {r.recall_float:8.4f}")
    return "\n".join(lines)


def ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="database vectors")
    ap.add_argument("--d", type=int, default=256, help="dimensions")
    ap.add_argument("--clusters", type=int, default=10_000)
    ap.add_argument("--levels", type=int, default=4, help="Q-2 levels per dimension")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--serving", type=int, default=200, help="serving-mode queries at most")
    ap.add_argument("--budget", type=float, default=20.0, help="serving-mode seconds per index at most")
    ap.add_argument("--batch", type=int, default=1000, help="batch-mode queries (one call)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rerank", type=ints, default=[30, 50, 100], help="exhaustive fast-scan re-rank depths")
    ap.add_argument("--nlist", type=int, default=None, help="ivf-fastscan lists (default ~4 sqrt(n))")
    ap.add_argument("--nprobe", type=ints, default=[16, 32, 40, 48, 64],
                    help="ivf-fastscan nprobe values")
    ap.add_argument("--ivf-rerank", type=int, default=100)
    ap.add_argument("--hnsw-m", type=int, default=32)
    ap.add_argument("--ef-search", type=int, default=64)
    ap.add_argument("--skip", type=lambda s: s.split(","), default=[], help="baselines to leave out: sq,pq,hnsw,ivf")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("bench/results/search.json"), help="results as JSON")
    return common.main(ap, run, argv)


if __name__ == "__main__":
    main()
