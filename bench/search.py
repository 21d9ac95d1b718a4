"""Compressed-domain search benchmark: Q-2 codes scanned by Faiss 4-bit fast-scan, against raw Faiss on the same
codes and Faiss baselines.

    python -m bench.search                              # the issue's size: 1,000,000 x 256 (~10 min on 2 cores)
    python -m bench.search --n 100000 --quick --plot /tmp/c.png --out /tmp/s.json   # development: < 1 min
    python -m bench.search --skip sq,pq,hnsw            # parts can be left out; every option: --help

Data: a seeded synthetic stand-in for PCA-reduced CNN descriptors (no real images): a mixture of `--clusters`
Gaussian clusters whose per-dimension standard deviation decays as (1 + j)^-0.5 (centres and spread alike), rows
L2-normalised; queries are fresh draws from the same mixture. The codec is Q-2 with `--levels` levels per
dimension, no reduction (the data is already "reduced"), fitted on a 100,000-vector sample.

Every index is timed in the same run: serving mode (one query per call on `--serving-threads` Faiss threads, as
many of `--serving` queries as fit in `--budget` seconds per index) and batch mode (on `--threads` Faiss threads,
`--batch` queries in one call, repeated up to `--batch-calls` times while the calls took less than
`--batch-budget` seconds: the median call). The engine's fast-scan rows are timed interleaved with raw Faiss on
the same codes (its inner IndexPQFastScan / IndexIVFPQFastScan called directly for the same candidates, and
IndexRefineFlat over it: the same candidates re-ranked exactly), so `engine_vs_raw` compares them under the same
load. Each row records the share of the machine's CPU that other processes took while it was timed (/proc/stat
minus this process's CPU time; noisy above 10%), its steal share, its CPU time per served query and the busiest
other processes meanwhile. Recall@k is tie-aware: a returned item counts when its exact score is at least the
k-th best exact score, against exact search on the normalised decoded vectors ("vs decoded", the engine's flat
index) and on the float32 vectors ("vs float32"). Bytes per vector is the Faiss serialisation (codes, ids, lists,
graph) divided by n; the memory ratio compares it with IndexFlatIP on float32. Then recall-vs-QPS curves (nprobe,
efSearch, re-rank depth), where an ivf-fastscan query's time goes, and queries answered in small batches.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
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
    """One index measured. Times in seconds, rates in queries per second; others_cpu_share: the share of the
    machine's CPU time that other processes took while this row was timed (None without /proc/stat);
    serving_qps_median: the rate of the median block of serving queries; serving_cpu_us: this process's CPU time per
    serving query (all its threads; with OpenMP's default wait policy a thread that spins after one row's search
    is charged to the next row: compare these with OMP_WAIT_POLICY=PASSIVE); group_others: the busiest other processes
    (kernel threads included) while the row's group was timed, `common.busiest_others`; steal_share: the part of
    others_cpu_share that was steal time (/proc/stat), which no process of this machine shows."""

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
    others_cpu_share: float | None = None
    noisy: bool = False
    batch_calls: int = 1
    serving_qps_median: float = 0.0
    serving_cpu_us: float = 0.0
    steal_share: float | None = None
    group_others: list[dict] = field(default_factory=list)


class Clock:
    """Wall time, this process's CPU time and the machine's busy / total / steal CPU time, summed over timed
    intervals."""

    def __init__(self) -> None:
        self.wall = self.cpu = self.busy = self.total = self.stolen = 0.0
        self.machine = True

    def __enter__(self) -> Clock:
        self._m, self._c, self._w = common.machine_cpu_times(), time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.wall += time.perf_counter() - self._w
        self.cpu += time.process_time() - self._c
        m = common.machine_cpu_times()
        if m is None or self._m is None:
            self.machine = False
        else:
            self.busy += m[0] - self._m[0]
            self.total += m[1] - self._m[1]
            self.stolen += m[2] - self._m[2]

    def others(self) -> float | None:
        """Share of the machine's CPU that went to anything but this process meanwhile (0 to 1)."""
        if not self.machine or self.total <= 0:
            return None
        return max(0.0, self.busy - self.cpu) / self.total

    def steal(self) -> float | None:
        """The part of `others` that was steal: the hypervisor running something else on this machine's CPUs."""
        if not self.machine or self.total <= 0:
            return None
        return self.stolen / self.total


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


NOISY = 0.10  # a row whose others' CPU share exceeds this is marked noisy


@dataclass
class Entry:
    """An index to time: its row's name, Faiss class, bytes per vector and build time, and search(xq) -> (D, I)."""

    name: str
    kind: str
    bytes_per_vector: float
    build_s: float
    code_bytes: float
    search: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@contextmanager
def omp_threads(n: int) -> Iterator[None]:
    """Faiss's OpenMP threads set to n (0: left as they are) for the block, then restored."""
    if n <= 0:
        yield
        return
    saved = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(saved)


def timed_group(entries: list[Entry], xq_s: np.ndarray, xq_b: np.ndarray, budget: float,
                block: int = 10, batch_calls: int = 1, batch_budget: float = 0.0,
                serving_threads: int = 0) -> list[tuple[Row, np.ndarray]]:
    """Time the entries interleaved, so that they see the same machine: serving mode in rounds over blocks of
    `block` queries (entry j takes block (round + j) % blocks in each round, so consecutive entries never search
    the same queries and none profits from another's cache), until every block is done or `budget` seconds per
    entry have passed; then batch mode, all of xq_b in one call, in turn, in up to `batch_calls` rounds while an
    entry's batch calls took less than `batch_budget` seconds (the rate: the median call's). Serving queries run
    on `serving_threads` OpenMP threads (0: as set), batches on the threads as set. Returns rows (recall
    not yet filled) with the first batch results I (len(xq_b), k). Besides the serving rate over all blocks, a
    row has the median block's (`serving_qps_median`): where the two agree, a rate is not the work of a few blocks
    that a passing stall slowed."""
    for e in entries:
        e.search(xq_s[:1])  # warm-up: first-call allocations
    procs = common.processes()
    blocks = max(1, len(xq_s) // block)
    clocks = [Clock() for _ in entries]
    done = [0] * len(entries)
    serve = [0.0] * len(entries)
    serve_cpu = [0.0] * len(entries)
    blocks_s: list[list[float]] = [[] for _ in entries]
    with omp_threads(serving_threads):
        for r in range(blocks):
            for j, e in enumerate(entries):
                b = (r + j) % blocks
                with clocks[j]:
                    t0, c0 = time.perf_counter(), time.process_time()
                    for i in range(b * block, (b + 1) * block):
                        e.search(xq_s[i : i + 1])
                    blocks_s[j].append(time.perf_counter() - t0)
                    serve_cpu[j] += time.process_time() - c0
                    serve[j] += blocks_s[j][-1]
                done[j] += block
            if max(serve) > budget:
                break
    out = []
    calls: list[list[float]] = [[] for _ in entries]
    first: list[np.ndarray | None] = [None] * len(entries)
    for r in range(max(1, batch_calls)):
        for j, e in enumerate(entries):
            if r and sum(calls[j]) >= batch_budget:
                continue
            with clocks[j]:
                t0 = time.perf_counter()
                _, I = e.search(xq_b)
                calls[j].append(time.perf_counter() - t0)
            if first[j] is None:
                first[j] = I
    group_others = common.busiest_others(procs, common.processes())
    for j, e in enumerate(entries):
        I, tb = first[j], float(np.median(calls[j]))
        others = clocks[j].others()
        row = Row(e.name, e.kind, e.code_bytes, e.bytes_per_vector, e.build_s, done[j] / serve[j], done[j],
                  len(xq_b) / tb, 0.0, 0.0, others_cpu_share=others, noisy=others is not None and others > NOISY,
                  batch_calls=len(calls[j]), serving_qps_median=block / float(np.median(blocks_s[j])),
                  serving_cpu_us=1e6 * serve_cpu[j] / done[j],
                  group_others=group_others, steal_share=clocks[j].steal())
        if e.name:
            print(f"  {e.name}: serving {row.serving_qps:.1f} q/s ({done[j]} queries; median block "
                  f"{row.serving_qps_median:.1f}; {row.serving_cpu_us:.0f} us of CPU each), "
                  f"batch {row.batch_qps:.1f} q/s (median of {len(calls[j])} calls), "
                  f"others {_pct(others)} (steal {_pct(row.steal_share)})", flush=True)
        out.append((row, I))
    if entries[0].name and group_others:
        print("    busiest other processes meanwhile: "
              + ", ".join(f"{o['name']} {o['cpu_s']:.2f} s" for o in group_others), flush=True)
    return out


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.0f}%"


def trained(index: faiss.Index, xb: np.ndarray, ntrain: int, seed: int) -> float:
    """Train on a seeded sample (none when ntrain is 0) and add everything; returns the build time."""
    t0 = time.perf_counter()
    if ntrain:
        sample = np.random.default_rng(seed).choice(len(xb), size=min(ntrain, len(xb)), replace=False)
        index.train(xb[np.sort(sample)])
    for i0 in range(0, len(xb), _CHUNK):
        index.add(xb[i0 : i0 + _CHUNK])
    return time.perf_counter() - t0


def faiss_search(index: faiss.Index, k: int, params=None) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    return lambda q: index.search(q, k, params=params)


def engine_search(index, k: int, nprobe: int | None = None) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    return lambda q: indexes.search(index, q, k, nprobe)


def raw_entries(index, refine: faiss.Index, tag: str, k: int, kc: int, nprobe: int | None, build_s: float,
                scan_bytes: float, scan_k: bool) -> list[Entry]:
    """Raw Faiss on the engine's own codes: its inner fast-scan index (positions are the ids here) searched
    directly for the same kc candidates (scan only, no re-rank), and IndexRefineFlat over it (k_factor = kc / k:
    the same candidates re-ranked exactly on the normalised decoded vectors, float32 in memory), with the same
    nprobe; with scan_k, the scan returning k results too."""
    inner = index.inner
    p_ivf = faiss.SearchParametersIVF(nprobe=nprobe) if nprobe else None
    p_ref = faiss.IndexRefineSearchParameters(k_factor=kc / k, base_index_params=p_ivf)
    base = type(inner).__name__ + (f" {tag}" if tag else "")
    cls = type(inner).__name__
    out = [Entry(f"raw {base}, {kc} candidates (scan only)", cls, scan_bytes, build_s, index.code_size,
                 faiss_search(inner, kc, p_ivf)),
           Entry(f"raw IndexRefineFlat({base}), k_factor {kc / k:g}", "IndexRefineFlat",
                 scan_bytes + 4 * inner.d, build_s, index.code_size, faiss_search(refine, k, p_ref))]
    if scan_k:
        out.append(Entry(f"raw {base}, {k} results (scan only)", cls, scan_bytes, build_s, index.code_size,
                         faiss_search(inner, k, p_ivf)))
    return out


def curve_point(search, xq_s: np.ndarray, xq_b: np.ndarray, budget: float, serving_threads: int = 0) -> dict:
    """One point of a recall-vs-QPS curve: serving rate (up to `budget` s), batch rate, others' share; the batch
    results under "I" (recall filled in later)."""
    (row, I), = timed_group([Entry("", "", 0, 0, 0, search)], xq_s, xq_b, budget, serving_threads=serving_threads)
    return {"serving_qps": row.serving_qps, "serving_qps_median": row.serving_qps_median, "batch_qps": row.batch_qps,
            "others_cpu_share": row.others_cpu_share, "I": I}


def breakdown(index, nprobe: int, k: int, xq: np.ndarray, reps: int = 3) -> dict:
    """Where an ivf-fastscan served query's time goes, each piece timed alone on the same queries (one query per
    call, `reps` passes, the fastest pass): the whole engine search; Faiss's search for the candidates (coarse
    quantizer + look-up tables + scan + Faiss's Python wrapper); the coarse quantizer alone; the look-up tables and
    scan alone (search_preassigned with the quantizer's lists); for comparison, the same search followed by Faiss's
    exact re-rank of the candidates through look-up tables (`FastScanIndex.refiner`, what a batch uses; a single
    query is re-ranked by decoding). Microseconds per query; "rerank_sort_ids" = whole - Faiss search (the
    engine's re-rank, cosines, sort and ids), "refiner_rerank" = IndexRefine's search - Faiss search."""
    inner, q = index.inner, index.padded(xq)
    kc = max(k, index.rerank)
    params = faiss.SearchParametersIVF(nprobe=nprobe)
    refine_params = faiss.IndexRefineSearchParameters(k_factor=1.0, base_index_params=params)
    Dq = [None] * len(q)
    Iq = [None] * len(q)
    for i in range(len(q)):
        Dq[i], Iq[i] = inner.quantizer.search(q[i : i + 1], nprobe)
    pieces = {
        "engine_search": lambda i: indexes.search(index, xq[i : i + 1], k, nprobe),
        "faiss_search": lambda i: inner.search(q[i : i + 1], kc, params=params),
        "coarse_quantizer": lambda i: inner.quantizer.search(q[i : i + 1], nprobe),
        "luts_and_scan": lambda i: inner.search_preassigned(q[i : i + 1], kc, Iq[i], Dq[i]),
        "refiner_search": lambda i: index.refiner.search(q[i : i + 1], kc, params=refine_params),
    }
    us = {}
    saved, inner.nprobe = inner.nprobe, nprobe  # Faiss's search_preassigned wrapper checks Iq against it
    for name, f in pieces.items():
        best = np.inf
        for _ in range(reps):
            t0 = time.perf_counter()
            for i in range(len(q)):
                f(i)
            best = min(best, time.perf_counter() - t0)
        us[name] = 1e6 * best / len(q)
    inner.nprobe = saved
    us["rerank_sort_ids"] = us["engine_search"] - us["faiss_search"]
    us["refiner_rerank"] = us["refiner_search"] - us["faiss_search"]
    return {"nprobe": nprobe, "rerank": kc, "queries": len(q), "us_per_query": us}


def run(args: argparse.Namespace) -> dict:
    if args.quick:
        args.serving, args.budget, args.batch = min(args.serving, 100), min(args.budget, 3.0), min(args.batch, 300)
        args.batch_calls = 1
        args.skip = sorted(set(args.skip) | {"sq", "pq"})
        args.curve_budget = min(args.curve_budget, 1.0)
    faiss.omp_set_num_threads(args.threads)
    n, d, k = args.n, args.d, args.k
    print(f"data: {n} x {d} synthetic descriptors (mixture of {args.clusters} Gaussian clusters, per-dimension std "
          f"(1+j)^-0.5, rows L2-normalised), seed {args.seed}; {args.threads} Faiss threads", flush=True)
    t_run = time.perf_counter()
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
    done: list[tuple[Row, np.ndarray]] = []
    pairs: list[tuple[str, str, str]] = []  # (engine row, raw row, what the raw row is)
    curves: dict[str, dict] = {}

    def measure(entries: list[Entry]) -> None:
        done.extend(timed_group(entries, xq_s, xq_b, args.budget, batch_calls=args.batch_calls,
                                serving_threads=args.serving_threads,
                                batch_budget=args.batch_budget))

    def entry(name: str, index, build_s: float, code_bytes: float, search=None) -> Entry:
        inner = index.inner if isinstance(index, indexes.FastScanIndex) else faiss.downcast_index(index)
        return Entry(name, type(inner).__name__, fastscan.memory_bytes(index) / index.ntotal, build_s, code_bytes,
                     search or faiss_search(index, k))

    def curve(name: str, param: str, values: list[int], make_search, ref: str, **extra) -> None:
        points = []
        for v in values:
            pt = curve_point(make_search(v), xq_s, xq_b, args.curve_budget, args.serving_threads)
            points.append({param: v} | pt)
            print(f"  curve {name} {param}={v}: serving {pt['serving_qps']:.1f} q/s, batch {pt['batch_qps']:.1f} q/s",
                  flush=True)
        curves[name] = {"param": param, "recall_vs": ref, "points": points} | extra

    print("indexes:", flush=True)
    for name, x in (("IndexFlatIP float32 (baseline)", xb), ("IndexFlatIP decoded (the engine's flat)", xd)):
        t0 = time.perf_counter()
        index = faiss.IndexFlatIP(d)
        index.add(x)
        measure([entry(name, index, time.perf_counter() - t0, 4 * d)])
        del index
    # exact batch results of the two flat indexes are the ground truths
    kth = {"float": np.sort(np.einsum("mkd,md->mk", xb[done[0][1]], xq_b), axis=1)[:, ::-1][:, k - 1],
           "decoded": np.sort(np.einsum("mkd,md->mk", xd[done[1][1]], xq_b), axis=1)[:, ::-1][:, k - 1]}

    if "sq" not in args.skip:
        for qt, label, cb in ((faiss.ScalarQuantizer.QT_8bit, "SQ8", d), (faiss.ScalarQuantizer.QT_4bit, "SQ4", d / 2)):
            index = faiss.IndexScalarQuantizer(d, qt, faiss.METRIC_INNER_PRODUCT)
            measure([entry(f"IndexScalarQuantizer {label}", index, trained(index, xb, 100_000, args.seed), cb)])
            del index
    m_pq = max(1, d // 4)  # 8-bit sub-quantizers: as many bytes per vector as Q-2 h=4 codes
    if "pq" not in args.skip:
        index = faiss.IndexPQ(d, m_pq, 8, faiss.METRIC_INNER_PRODUCT)
        measure([entry(f"IndexPQ {m_pq}x8 (trained)", index, trained(index, xb, 65_536, args.seed), m_pq)])
        del index
        index = faiss.IndexPQFastScan(d, 2 * m_pq, 4, faiss.METRIC_INNER_PRODUCT)
        measure([entry(f"IndexPQFastScan {2 * m_pq}x4 (trained, no re-rank)", index,
                       trained(index, xb, 65_536, args.seed), m_pq)])
        del index
    if "hnsw" not in args.skip:
        index = faiss.IndexHNSWFlat(d, args.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        bt = trained(index, xb, 0, args.seed)
        index.hnsw.efSearch = args.ef_search
        measure([entry(f"IndexHNSWFlat M={args.hnsw_m} efSearch={args.ef_search}", index, bt, 4 * d)])
        if "curves" not in args.skip:  # one build, every efSearch
            hnsw_bytes = fastscan.memory_bytes(index) / n
            curve(f"IndexHNSWFlat M={args.hnsw_m}", "efSearch", args.curve_ef,
                  lambda ef, index=index: faiss_search(index, k, faiss.SearchParametersHNSW(efSearch=ef)),
                  "float", bytes_per_vector=hnsw_bytes, build_s=bt)
        del index

    ids = np.arange(n, dtype=np.int64)
    refine = None
    if "fastscan" not in args.skip:
        t0 = time.perf_counter()
        index = indexes.build_fastscan(levels, idx, ids, indexes.IndexConfig("fastscan"))
        bt = time.perf_counter() - t0
        scan_bytes = fastscan.memory_bytes(index.inner) / n
        if "raw" not in args.skip:
            refine = faiss.IndexRefineFlat(index.inner, faiss.swig_ptr(index.padded(xd)))
        for j, rr in enumerate(args.rerank):
            index.rerank = rr
            name = f"fastscan Q-2 h={args.levels} + re-rank {rr}"
            group = [entry(name, index, bt, index.code_size, engine_search(index, k))]
            if refine is not None:
                group += raw_entries(index, refine, "", k, max(k, rr), None, bt, scan_bytes, j == 0)
                pairs += [(name, group[1].name, "scan"), (name, group[2].name, "refine")]
            measure(group)
        if "curves" not in args.skip:
            def depth(rr: int, index=index):
                index.rerank = rr
                return engine_search(index, k)

            curve("fastscan (engine)", "rerank", args.curve_rerank, depth, "decoded",
                  bytes_per_vector=fastscan.memory_bytes(index) / n, build_s=bt)
        del index, refine
        refine = None

    if "ivf" not in args.skip:
        ivf_variants = [("flat", args.nlist)] + [("hnsw", nl or args.nlist) for nl in args.hnsw_nlist]
        for coarse, nlist in ivf_variants:
            t0 = time.perf_counter()
            cfgi = indexes.IndexConfig("ivf-fastscan", nlist=nlist, rerank=args.ivf_rerank, coarse=coarse)
            index = indexes.build_fastscan(levels, idx, ids, cfgi)
            bt = time.perf_counter() - t0
            nl = index.inner.nlist
            tag = f"nlist={nl}" + (", hnsw coarse" if coarse == "hnsw" else "")
            print(f"  ivf-fastscan {tag} built in {bt:.1f} s", flush=True)
            scan_bytes = fastscan.memory_bytes(index.inner) / n
            ebytes = fastscan.memory_bytes(index) / n
            if "raw" not in args.skip:
                refine = faiss.IndexRefineFlat(index.inner, faiss.swig_ptr(index.padded(xd)))
            for j, nprobe in enumerate(args.nprobe if coarse == "flat" else args.nprobe[:1]):
                name = f"ivf-fastscan {tag} nprobe={nprobe} + re-rank {args.ivf_rerank}"
                group = [Entry(name, "IndexIVFPQFastScan", ebytes, bt, index.code_size,
                               engine_search(index, k, nprobe))]
                if refine is not None:
                    group += raw_entries(index, refine, f"{tag} nprobe={nprobe}", k, max(k, args.ivf_rerank),
                                         nprobe, bt, scan_bytes, j == 0)
                    pairs += [(name, group[1].name, "scan"), (name, group[2].name, "refine")]
                measure(group)
            if "curves" not in args.skip:
                curve(f"ivf-fastscan {tag} (engine)", "nprobe", args.curve_nprobe,
                      lambda v, index=index: engine_search(index, k, v), "decoded", bytes_per_vector=ebytes,
                      build_s=bt, rerank=args.ivf_rerank)
                if refine is not None and coarse == "flat":
                    kc = max(k, args.ivf_rerank)
                    curve(f"raw IndexRefineFlat(IndexIVFPQFastScan) {tag}", "nprobe", args.curve_nprobe,
                          lambda v, refine=refine: faiss_search(refine, k, faiss.IndexRefineSearchParameters(
                              k_factor=kc / k, base_index_params=faiss.SearchParametersIVF(nprobe=v))), "decoded",
                          bytes_per_vector=scan_bytes + 4 * d, build_s=bt)
                    curve(f"raw IndexIVFPQFastScan {tag}, {k} results (scan only)", "nprobe", args.curve_nprobe,
                          lambda v, index=index: faiss_search(index.inner, k, faiss.SearchParametersIVF(nprobe=v)),
                          "decoded", bytes_per_vector=scan_bytes, build_s=bt)
            if "breakdown" not in args.skip:
                key = f"breakdown ivf-fastscan {tag}"
                with omp_threads(args.serving_threads):  # single queries, as in serving mode
                    curves.setdefault("_breakdowns", {})[key] = [
                        breakdown(index, v, k, xq_s[: args.breakdown_queries])
                        for v in args.nprobe[:1] + args.breakdown_nprobe]
            if "batches" not in args.skip and coarse == "flat":
                curves.setdefault("_small_batches", {})[f"ivf-fastscan {tag} nprobe={args.nprobe[0]}"] = \
                    small_batches(engine_search(index, k, args.nprobe[0]), xq_s, args.batch_sizes)
            del index, refine
            refine = None

    rows = []
    base = done[0][0]
    for r, I in done:
        r.recall_decoded = recall(I, xq_b, xd, kth["decoded"])
        r.recall_float = recall(I, xq_b, xb, kth["float"])
        r.memory_ratio = base.bytes_per_vector / r.bytes_per_vector
        r.serving_x = r.serving_qps / base.serving_qps
        r.batch_x = r.batch_qps / base.batch_qps
        rows.append(r)
    by_name = {r.name: r for r in rows}
    overhead = []
    for eng, raw, what in pairs:
        e, r = by_name[eng], by_name[raw]
        overhead.append({"engine": eng, "raw": raw, "raw_is": what,
                         "serving_pct": 100 * e.serving_qps / r.serving_qps,
                         "serving_median_pct": 100 * e.serving_qps_median / r.serving_qps_median,
                         "serving_per_cpu_pct": 100 * r.serving_cpu_us / e.serving_cpu_us,
                         "batch_pct": 100 * e.batch_qps / r.batch_qps,
                         "recall_engine": e.recall_decoded, "recall_raw": r.recall_decoded,
                         "noisy": e.noisy or r.noisy})
    breakdowns = curves.pop("_breakdowns", {})
    batches = curves.pop("_small_batches", {})
    for c in curves.values():
        for pt in c["points"]:
            I = pt.pop("I")
            pt["recall_decoded"] = recall(I, xq_b, xd, kth["decoded"])
            pt["recall_float"] = recall(I, xq_b, xb, kth["float"])
            pt["recall"] = pt["recall_" + c["recall_vs"]]
        ok = [pt for pt in c["points"] if pt["recall"] >= args.target_recall]
        c["picked"] = min(ok, key=lambda pt: pt[c["param"]]) if ok else None  # the cheapest setting that reaches it
    shares = [r.others_cpu_share for r in rows if r.others_cpu_share is not None]
    result = {
        "command": common.command("search", args.argv),
        "data": {"n": n, "d": d, "clusters": args.clusters, "seed": args.seed,
                 "kind": "synthetic Gaussian mixture, per-dimension std (1+j)^-0.5, rows L2-normalised"},
        "codec": cfg.to_dict() | {"code_size": params.code_size},
        "k": k, "threads": args.threads, "batch_queries": len(xq_b), "serving_queries_max": len(xq_s),
        "serving_budget_s": args.budget, "faiss": faiss.__version__, "machine": common.cpu_model(),
        "cpus": os.cpu_count(), "load_average": os.getloadavg(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "serving_threads": args.serving_threads,
        "wall_s": time.perf_counter() - t_run,
        "others_cpu_share_max": max(shares) if shares else None, "noisy_threshold": NOISY,
        "noisy": any(r.noisy for r in rows), "target_recall": args.target_recall,
        "rows": [asdict(r) for r in rows], "engine_vs_raw": overhead, "curves": curves,
        "breakdown": breakdowns, "small_batches": batches,
    }
    print(table(rows, k))
    print(overhead_table(overhead))
    print(curves_table(curves, args.target_recall))
    for key, bs in breakdowns.items():
        for b in bs:
            print(f"{key} nprobe={b['nprobe']}: " + ", ".join(f"{n} {v:.0f} us" for n, v in b["us_per_query"].items()))
    for key, b in batches.items():
        print(f"{key}, queries per call: " + ", ".join(f"{v['batch']}: {v['qps']:.0f} q/s" for v in b))
    print(f"others' CPU share: max {_pct(result['others_cpu_share_max'])} over the rows; run "
          f"{'NOISY' if result['noisy'] else 'quiet'} (threshold {NOISY:.0%}); wall {result['wall_s']:.0f} s")
    if args.plot:
        plot(curves, args.target_recall, args.plot, n)
    return result


def small_batches(search, xq: np.ndarray, sizes: list[int]) -> list[dict]:
    """Queries per second when `size` concurrent queries are answered in one call (what a batching server does)."""
    out = []
    for size in sizes:
        m = (len(xq) // size) * size
        if m == 0:
            continue
        search(xq[:size])
        with Clock() as c:
            for i0 in range(0, m, size):
                search(xq[i0 : i0 + size])
        out.append({"batch": size, "qps": m / c.wall, "others_cpu_share": c.others()})
    return out


def table(rows: list[Row], k: int) -> str:
    head = (f"{'index':64} {'B/vec':>7} {'mem x':>6} {'build s':>8} {'serve q/s':>10} {'x':>6} {'batch q/s':>10} "
            f"{'x':>6} {'R@' + str(k) + ' dec':>8} {'R@' + str(k) + ' f32':>8} {'others':>6}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.name[:64]:64} {r.bytes_per_vector:7.1f} {r.memory_ratio:6.1f} {r.build_s:8.1f} "
                     f"{r.serving_qps:10.1f} {r.serving_x:6.1f} {r.batch_qps:10.1f} {r.batch_x:6.1f} "
                     f"{r.recall_decoded:8.4f} {r.recall_float:8.4f} {_pct(r.others_cpu_share):>5}"
                     + (" noisy" if r.noisy else ""))
    return "\n".join(lines)


def overhead_table(overhead: list[dict]) -> str:
    if not overhead:
        return ""
    lines = ["engine vs raw Faiss on the same codes (throughput %, recall@k vs decoded):"]
    for o in overhead:
        lines.append(f"  {o['engine'][:52]:52} vs {o['raw_is']:6} serving {o['serving_pct']:6.1f}% (median block "
                     f"{o['serving_median_pct']:6.1f}%, per CPU s {o['serving_per_cpu_pct']:6.1f}%)  batch "
                     f"{o['batch_pct']:6.1f}%  recall {o['recall_engine']:.4f} / {o['recall_raw']:.4f}"
                     + (" noisy" if o["noisy"] else ""))
    return "\n".join(lines)


def curves_table(curves: dict, target: float) -> str:
    lines = [f"recall-vs-QPS curves (picked: the smallest setting with recall >= {target}):"]
    for name, c in curves.items():
        pts = "  ".join(f"{pt[c['param']]}: {pt['recall']:.3f}/{pt['serving_qps']:.0f}" for pt in c["points"])
        pick = c["picked"]
        lines.append(f"  {name} [{c['param']}: recall/serving q/s] {pts}")
        lines.append("    picked: " + ("none reaches the target" if pick is None else
                                        f"{c['param']} {pick[c['param']]}, recall {pick['recall']:.3f}, serving "
                                        f"{pick['serving_qps']:.0f} q/s, batch {pick['batch_qps']:.0f} q/s, "
                                        f"{c['bytes_per_vector']:.1f} B/vector"))
    return "\n".join(lines)


def plot(curves: dict, target: float, path: Path, n: int) -> None:
    """Recall@k against serving QPS, one line per curve, to `path` (PNG, matplotlib's Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for name, c in curves.items():
        pts = sorted(c["points"], key=lambda pt: pt["serving_qps"])
        ax.plot([pt["serving_qps"] for pt in pts], [pt["recall"] for pt in pts], marker="o", ms=3,
                label=f"{name} ({c['bytes_per_vector']:.0f} B/vec, vs {c['recall_vs']})")
    ax.axhline(target, color="grey", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("serving queries per second (one query per call)")
    ax.set_ylabel("recall@10 (vs its own exact search)")
    ax.set_title(f"bench.search: {n:,} vectors, recall against serving rate")
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="database vectors")
    ap.add_argument("--d", type=int, default=256, help="dimensions")
    ap.add_argument("--clusters", type=int, default=10_000)
    ap.add_argument("--levels", type=int, default=4, help="Q-2 levels per dimension")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--serving", type=int, default=1000, help="serving-mode queries at most")
    ap.add_argument("--budget", type=float, default=20.0, help="serving-mode seconds per index at most")
    ap.add_argument("--batch", type=int, default=1000, help="batch-mode queries (per call)")
    ap.add_argument("--batch-calls", type=int, default=5,
                    help="batch calls per index at most, interleaved within a group (the rate: the median call's)")
    ap.add_argument("--batch-budget", type=float, default=3.0,
                    help="no further batch call once an index's calls took this many seconds")
    ap.add_argument("--threads", type=int, default=2, help="Faiss's OpenMP threads for batches")
    ap.add_argument("--serving-threads", type=int, default=1,
                    help="Faiss's OpenMP threads while single queries are timed (0: --threads); a server answers "
                         "concurrent queries on the other cores")
    ap.add_argument("--rerank", type=ints, default=[30, 50, 100], help="exhaustive fast-scan re-rank depths")
    ap.add_argument("--nlist", type=int, default=None, help="ivf-fastscan lists (default ~4 sqrt(n))")
    ap.add_argument("--nprobe", type=ints, default=[40, 16, 32, 64],
                    help="ivf-fastscan nprobe values (the first: the raw k results row, breakdown, batches)")
    ap.add_argument("--ivf-rerank", type=int, default=100)
    ap.add_argument("--hnsw-nlist", type=ints, default=[0],
                    help="ivf-fastscan variants with an HNSW coarse quantizer: their nlist (0: --nlist's; '': none)")
    ap.add_argument("--hnsw-m", type=int, default=32)
    ap.add_argument("--ef-search", type=int, default=64)
    ap.add_argument("--curve-ef", type=ints, default=[16, 24, 32, 48, 64, 96, 128], help="IndexHNSWFlat curve")
    ap.add_argument("--curve-nprobe", type=ints, default=[4, 8, 16, 24, 32, 48, 64, 96, 128], help="ivf curves")
    ap.add_argument("--curve-rerank", type=ints, default=[10, 20, 30, 50, 100, 200], help="fastscan curve")
    ap.add_argument("--curve-budget", type=float, default=3.0, help="serving seconds per curve point at most")
    ap.add_argument("--breakdown-nprobe", type=ints, default=[16], help="more nprobe values to break down")
    ap.add_argument("--breakdown-queries", type=int, default=100)
    ap.add_argument("--batch-sizes", type=ints, default=[1, 2, 4, 8, 16, 32], help="queries per call")
    ap.add_argument("--target-recall", type=float, default=0.95)
    ap.add_argument("--skip", type=lambda s: s.split(","), default=[],
                    help="parts to leave out: sq,pq,hnsw,fastscan,ivf,raw,curves,breakdown,batches")
    ap.add_argument("--quick", action="store_true",
                    help="a development run: fewer queries, shorter budgets, no sq / pq (use with --n 100000)")
    ap.add_argument("--plot", type=Path, default=None, help="draw the recall-vs-QPS curves to this PNG")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("bench/results/search.json"), help="results as JSON")
    return common.main(ap, run, argv)


if __name__ == "__main__":
    main()
