"""Compressed-domain search: per-dimension scalar codes scanned as Faiss 4-bit fast-scan product-quantizer codes.

A Q-1 / Q-2 code with h levels per dimension is a product quantizer in disguise: g dimensions together take h**g
values, the Cartesian product of their levels. With h**g <= 16 a group is one 4-bit sub-quantizer of Faiss's
fast-scan PQ (SIMD look-up tables): h = 2 -> g = 4, h = 3 or 4 -> g = 2, 5 <= h <= 16 -> g = 1 (h = 1 -> g = 4, all
constant). The 4-bit code of a group is the mixed-radix number of its level indices, so the mapping is lossless:
fast-scan reconstruction equals the codec's decoding exactly. Unused centroids (h**g < 16) repeat centroid 0, which
never widens the quantized look-up tables; when g does not divide p the last group is padded with dimensions whose
only level is 0 (queries are padded with zeros to match).

The scan ranks by the inner product with the un-normalised decoded vectors through 8-bit look-up tables; the
engine's score is the cosine with the L2-normalised decoded vectors. So each query takes max(k, rerank) candidates
from the scan and re-ranks them exactly, in Faiss's C++ (`IndexRefine`): a second, plain copy of the codes, two 4-bit
groups per byte (an 8-bit PQ whose 256 centroids are the pairs of the 16: still lossless), gives each candidate's
exact inner product, which the vector's stored inverse norm turns into its cosine. Results equal exact search on the
normalised decoded vectors (to float rounding) whenever the true top k are among the candidates; the candidates of
the un-normalised scan differ a little from the true ones, which the re-rank depth absorbs (bench/README.md).

Legend: p dimensions, h levels per dimension, g dimensions per group, M = ceil(p / g) groups (sub-quantizers),
d = M * g >= p padded dimensions, n database vectors, m queries, levels (p, h) float32 reconstruction table,
idx (n, p) uint8 level indices, xq (m, p) float32 queries, D (m, k) scores, I (m, k) ids.
"""

from __future__ import annotations

import ctypes
import functools

import faiss
import numpy as np

from .build import default_nlist
from .vectors import l2n
from .config import FASTSCAN_MAX_LEVELS, IndexConfig, IndexConfigError, fastscan_rerank_bytes, group_size, layout

KSUB = FASTSCAN_MAX_LEVELS  # centroids per 4-bit sub-quantizer
_CHUNK = 1 << 16  # rows decoded at a time while building, to bound memory
_QCHUNK = 16384  # queries searched at a time: their candidates take m * rerank * 12 bytes
_TRAIN_PER_LIST = 40  # k-means points per inverted list (Faiss warns below 39)
_KMEANS_ITER = 10


def centroids(levels: np.ndarray) -> np.ndarray:
    """Sub-quantizer centroids (M, 16, g) float32 from the levels table (p, h) float32.

    Centroid c of group m is (levels[m*g + t, digit_t(c)] for t < g), digit t of c in base h, dimension m*g first
    (least significant). Centroids c >= h**g repeat centroid 0; padded dimensions are 0.
    """
    levels = np.asarray(levels, np.float32)
    p, h = levels.shape
    g, M = layout(p, h)
    table = np.zeros((M * g, h), np.float32)
    table[:p] = levels
    c = np.arange(KSUB)
    digits = (c[:, None] // h ** np.arange(g)[None, :]) % h  # (16, g)
    digits[c >= h**g] = 0
    groups = table.reshape(M, g, h)
    return groups[:, np.arange(g)[None, :], digits].astype(np.float32)  # (M, 16, g)


def codes(idx: np.ndarray, h: int) -> np.ndarray:
    """Level indices (n, p) in [0, h) -> fast-scan PQ codes (n, ceil(M/2)) uint8, Faiss's nbits = 4 layout:
    sub-quantizer m in bits [4m, 4m + 4), i.e. byte m // 2, low nibble for even m."""
    idx = np.asarray(idx)
    n, p = idx.shape
    g, M = layout(p, h)
    if idx.size and int(idx.max()) >= h:
        raise ValueError(f"level indices must lie in [0, {h})")
    pad = np.zeros((n, 2 * (-(-M // 2)) * g), np.uint8)  # an even number of groups, so nibbles pair up
    pad[:, :p] = idx
    c4 = (pad.reshape(n, -1, g).astype(np.uint16) * (h ** np.arange(g, dtype=np.uint16))).sum(axis=2)
    c4 = c4.astype(np.uint8)
    return c4[:, 0::2] | (c4[:, 1::2] << 4)


def decode(levels: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Level indices (n, p) -> values (n, p) float32 from the levels table (p, h): the codec's decoding."""
    levels = np.asarray(levels, np.float32)
    return levels[np.arange(levels.shape[0]), np.asarray(idx)]




def _pad(x: np.ndarray, d: int) -> np.ndarray:
    x = np.asarray(x, np.float32)
    if x.shape[1] > d:
        raise ValueError(f"vectors have {x.shape[1]} dimensions, the index {d}")
    out = np.zeros((len(x), d), np.float32)
    out[:, : x.shape[1]] = x
    return out


def _set_centroids(index: faiss.Index, cents: np.ndarray) -> None:
    faiss.copy_array_to_vector(np.ascontiguousarray(cents, np.float32).ravel(), index.pq.centroids)


@functools.lru_cache
def _lanes(bbs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where Faiss's fast-scan layout keeps 4-bit codes, read off Faiss's own CodePacker (one probe per slot).

    Within a block of bbs vectors, code m of lane v (vector v % bbs) lies in byte lane_byte[v] + m * step, at bit
    shift[v] (0 or 4): (bbs,) int64, an int (bbs / 2) and (bbs,) uint8. Faiss's pq4 packing is laid out like this
    (a vector's codes at a constant stride, one shift per vector); anything else is refused."""
    packer = faiss.IndexPQFastScan(2, 2, 4, faiss.METRIC_INNER_PRODUCT, bbs).get_CodePacker()
    byte, shift = np.zeros((bbs, 2), np.int64), np.zeros((bbs, 2), np.uint8)
    for v in range(bbs):
        for s in range(2):
            block = np.zeros((1, packer.block_size), np.uint8)
            packer.pack_1(np.array([0xF << (4 * s)], np.uint8), v, block)
            (at,) = np.flatnonzero(block)
            byte[v, s], shift[v, s] = at, 0 if block[0, at] == 0x0F else 4
    # one more probe: sub-quantizer 2 of lane 0 must lie 2 steps after sub-quantizer 0
    packer4 = faiss.IndexPQFastScan(4, 4, 4, faiss.METRIC_INNER_PRODUCT, bbs).get_CodePacker()
    block = np.zeros((1, packer4.block_size), np.uint8)
    packer4.pack_1(np.array([0x00, 0x0F], np.uint8), 0, block)
    step = int(byte[0, 1] - byte[0, 0])
    if ((byte[:, 1] - byte[:, 0] != step).any() or (shift[:, 1] != shift[:, 0]).any()
            or np.flatnonzero(block).tolist() != [byte[0, 0] + 2 * step]):
        raise RuntimeError(f"unexpected Faiss fast-scan code layout (bbs {bbs}): this Faiss is not supported")
    return byte[:, 0], step, shift[:, 0]


def _span(arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """One uint8 view over the address range holding every array (Faiss-owned buffers, none copied) and each
    array's offset in it (int64): the inverted lists read as one array, so one gather reads candidates of many
    lists. Only the arrays' own bytes are ever read through the view."""
    at = np.array([a.ctypes.data for a in arrays], np.int64)
    base, end = int(at.min()), int(max(a.ctypes.data + a.nbytes for a in arrays))
    return np.frombuffer((ctypes.c_uint8 * (end - base)).from_address(base), np.uint8), at - base


class FastScanIndex:
    """A fast-scan index over level indices, with exact re-ranking; what `build_fastscan` returns.

    index: ``faiss.IndexIDMap`` over an ``IndexPQFastScan`` (kind fastscan) or an ``IndexIVFPQFastScan`` with
        ``by_residual = False`` and a direct map (kind ivf-fastscan), of padded dimension M * g >= p; the inner
        index numbers vectors 0..n-1 (their positions) and the id map turns positions into the caller's ids.
        Persist it with save_index / load_index; the re-rank copy below is derived from it when it is wrapped.
    rerank: candidates re-ranked exactly per query (at least k are).
    refiner: the ``faiss.IndexRefine`` (inner index + re-rank copy) that `candidates` searches.
    p: dimension of the vectors searched (queries are (m, p); the padded dimensions are zero).

    The re-rank runs in Faiss's C++: ``IndexRefine(inner, pairs)`` takes the scan's candidates and scores each by
    its exact inner product through ``pairs``, an ``IndexPQ`` of ceil(M / 2) 8-bit sub-quantizers holding the same
    codes two groups per byte (sub-quantizer j = groups 2j, 2j + 1; its centroid b is the concatenation of their
    centroids b & 15 and b >> 4, so decoding stays exact). The cosine is that inner product times the vector's
    inverse norm (n,) float32. Re-ranked in NumPy from the fast-scan blocks instead, a served query spent a quarter
    of its time there (1M vectors, IVF: 121 of 475 us); this copy costs ceil(M / 2) + 4 bytes per vector of memory
    (`rerank_bytes`) and is rebuilt from the fast-scan blocks whenever the index is loaded (in time
    linear in n), so the index file holds the codes once.

    A single query (what a server answers) is re-ranked by decoding instead: its candidates' codes are gathered
    from ``pairs``, decoded (a gather of the copy's centroid rows, `_decoded`) and multiplied with the query by
    Faiss's inner-product kernel. ``IndexRefine`` reads all of the copy's centroids (256 KiB at 64 sub-quantizers)
    to fill its look-up table, which after a scan of 1M vectors probably come from beyond the caches; decoding 100
    candidates reads only the ones they use (at 1M vectors this took ivf-fastscan's serving rate from 79-87 % to
    91-102 % of raw Faiss's, bench/README.md). In a batch the centroids stay cached, the tables cost less than
    decoding, and Faiss re-ranks the queries on its threads. The two paths' scores agree to float rounding (their
    sums run in different orders), so a query's ranking is the same alone and in a batch but for cosines within
    1e-6 of each other.
    """

    def __init__(self, index: faiss.Index, rerank: int, p: int):
        self.index = index
        self.rerank = rerank
        self.p = p
        self.inner = inner = faiss.downcast_index(index.index)
        self.ivf = isinstance(inner, faiss.IndexIVFFastScan)
        self._n, self._M, self._bbs = n, M, bbs = int(index.ntotal), int(inner.M), int(inner.bbs)
        self.centroids = faiss.vector_to_array(inner.pq.centroids).reshape(M, KSUB, inner.d // M)
        self._d = int(inner.d)  # padded dimension (a Python int: no Faiss attribute read per query)
        self._lane_byte, step, self._shift = _lanes(bbs)
        self._block = bbs * inner.M2 // 2  # bytes per block of bbs vectors
        self._params: dict[int | None, tuple] = {}
        # views of Faiss-owned memory (no copy), valid while the index is not modified
        self._ids = faiss.rev_swig_ptr(index.id_map.data(), n) if n else np.zeros(0, np.int64)
        if self.ivf:
            # read_index leaves IndexIVFPQFastScan.fine_quantizer unset (Faiss 1.15.1); Faiss's decoding needs it
            inner.fine_quantizer = inner.pq
            self._where = faiss.rev_swig_ptr(inner.direct_map.array.data(), n) if n else np.zeros(0, np.int64)
            invl, lists = inner.invlists, []
            for l in range(inner.nlist):
                size = -(-invl.list_size(l) // bbs) * self._block
                lists.append(faiss.rev_swig_ptr(invl.get_codes(l), size) if size else None)
            full = [a for a in lists if a is not None]
            self._codes, starts = _span(full) if full else (np.zeros(0, np.uint8), np.zeros(0, np.int64))
            self._list_at = np.zeros(len(lists), np.int64)  # offset of each list's blocks in self._codes
            self._list_at[[a is not None for a in lists]] = starts
        else:
            self._codes = faiss.rev_swig_ptr(inner.codes.get(), inner.codes.size()) if n else np.zeros(0, np.uint8)
        # row r of this view is the M bytes from byte r at the codes' stride: a vector's codes are one row, so a
        # fancy index by first bytes gathers them without an (n, M) index array (never np.take it: that copies)
        rows = max(0, len(self._codes) - step * (M - 1))
        self._code_rows = np.lib.stride_tricks.as_strided(self._codes, shape=(rows, M), strides=(1, step),
                                                          writeable=False)
        self._build_refine()

    def _build_refine(self) -> None:
        """The re-rank copy: ``pairs`` (IndexPQ, two groups per byte) filled from the fast-scan blocks, the inverse
        norms, and the ``IndexRefine`` that searches through both (see the class docstring)."""
        inner, M, d = self.inner, self._M, int(self.inner.d)
        M8 = -(-M // 2)
        g = d // M
        cents = self.centroids if M % 2 == 0 else np.concatenate([self.centroids, np.zeros((1, KSUB, g), np.float32)])
        b = np.arange(256)
        pair_cents = np.concatenate([cents[0::2][:, b & 15], cents[1::2][:, b >> 4]], axis=2)  # (M8, 256, 2g)
        self._pairs = pairs = faiss.IndexPQ(2 * g * M8, M8, 8, faiss.METRIC_INNER_PRODUCT)
        faiss.copy_array_to_vector(np.ascontiguousarray(pair_cents, np.float32).ravel(), pairs.pq.centroids)
        pairs.is_trained = True
        norm2 = (self.centroids**2).sum(axis=2).ravel()  # (M * 16,): |centroid|^2 of each sub-quantizer
        moff = np.arange(M) * KSUB
        self._inv_norm = np.empty(self._n, np.float32)
        for i0 in range(0, self._n, _CHUNK):
            c = self.codes4(np.arange(i0, min(self._n, i0 + _CHUNK), dtype=np.int64))
            if M % 2:
                c = np.hstack([c, np.zeros((len(c), 1), np.uint8)])
            pairs.add_sa_codes(np.ascontiguousarray(c[:, 0::2] | (c[:, 1::2] << 4)))
            n2 = norm2.take(np.add(c[:, :M], moff, dtype=np.intp)).sum(axis=1)
            self._inv_norm[i0 : i0 + len(c)] = 1.0 / np.sqrt(np.maximum(n2, 1e-24))
        self._refine_index = pairs
        if pairs.d != d:  # an odd number of groups: the last byte's high nibble is a zero group
            self._remap = faiss.RemapDimensionsTransform(d, int(pairs.d), False)  # pads queries with zeros
            self._refine_index = faiss.IndexPreTransform(self._remap, pairs)
        self.refiner = faiss.IndexRefine(inner, self._refine_index)
        self.refiner.own_fields = self.refiner.own_refine_index = False  # Python owns both
        # for `_decoded_inner_products`: a view of the copy's codes (Faiss-owned memory, valid while `pairs` is not
        # modified) and its dimension (d + g with an odd number of groups: queries get zeros in the last group)
        self._pair_codes = (faiss.rev_swig_ptr(pairs.codes.data(), self._n * M8).reshape(self._n, M8) if self._n
                            else np.zeros((0, M8), np.uint8))
        self._pairs_d = int(pairs.d)
        # the copy's centroids as one table (M8 * 256, 2g), again a view of Faiss's memory: row j * 256 + b is
        # centroid b of sub-quantizer j, so a candidate's decoded vector is the rows at its codes + _pair_rows
        self._pair_table = faiss.rev_swig_ptr(pairs.pq.centroids.data(), M8 * 256 * 2 * g).reshape(M8 * 256, 2 * g)
        self._pair_rows = np.arange(M8, dtype=np.intp) * 256

    @property
    def ntotal(self) -> int:
        return self._n

    @property
    def d(self) -> int:
        return self.p

    @property
    def kind(self) -> str:
        return "ivf-fastscan" if self.ivf else "fastscan"

    @property
    def code_size(self) -> int:
        """Bytes per vector of the fast-scan codes (ids and inverted-list bookkeeping not counted)."""
        return int(self.inner.code_size)

    @property
    def rerank_bytes(self) -> int:
        """Bytes of memory the re-rank copy takes beyond the saved index: codes two groups per byte, their 8-bit
        centroid tables, one float32 inverse norm per vector."""
        return int(self._pairs.sa_code_size() * self._n + self._pairs.pq.centroids.size() * 4 + self._inv_norm.nbytes)

    def codes4(self, positions: np.ndarray) -> np.ndarray:
        """4-bit codes (len(positions), M) uint8 of the vectors at these positions (0 <= position < n), read from
        the fast-scan blocks."""
        positions = np.asarray(positions, np.int64)
        if self.ivf:
            where = self._where.take(positions)  # list number << 32 | offset in the list
            v = where & 0xFFFFFFFF
            start = self._list_at.take(where >> 32)
        else:
            v, start = positions, 0
        lane = v % self._bbs
        start = start + v // self._bbs * self._block + self._lane_byte.take(lane)  # (len,) first code's byte
        raw = self._code_rows[start]
        raw >>= self._shift.take(lane)[:, None]
        raw &= 15
        return raw

    def reconstruct(self, positions: np.ndarray) -> np.ndarray:
        """Decoded, un-normalised vectors (len(positions), p) float32 at these positions: the codec's decoding."""
        c = self.codes4(positions)
        return self.centroids[np.arange(self._M), c].reshape(len(c), -1)[:, : self.p]

    def to_gpu(self) -> faiss.Index:
        """GPUs have no 4-bit fast-scan: an exact flat index (``IndexIDMap`` over ``IndexFlatIP``, moved to all GPUs)
        over the normalised decoded vectors, the ranking that the re-ranked fast-scan search approximates."""
        cpu = faiss.IndexIDMap(faiss.IndexFlatIP(self.p))
        for i0 in range(0, self.ntotal, _CHUNK):
            pos = np.arange(i0, min(self.ntotal, i0 + _CHUNK), dtype=np.int64)
            cpu.add_with_ids(l2n(self.reconstruct(pos)), np.ascontiguousarray(self._ids[pos]))
        return faiss.index_cpu_to_all_gpus(cpu)

    def search(self, xq: np.ndarray, k: int, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """k best by cosine with the decoded vectors: ``D (m, k) float32`` descending, ``I (m, k) int64`` ids
        (-1 and -inf where fewer than k were found). xq (m, p) float32, L2-normalised; nprobe: lists visited by
        this search (ivf-fastscan; the index's own setting when None)."""
        xq = np.asarray(xq, np.float32)
        if xq.ndim != 2 or xq.shape[1] != self.p:
            raise ValueError(f"queries must be (m, {self.p}), got {xq.shape}")
        m = len(xq)
        kc = min(max(k, self.rerank), self._n)
        if kc == 0 or m == 0:
            return np.full((m, k), -np.inf, np.float32), np.full((m, k), -1, np.int64)
        if m == 1 and k <= kc:
            return self._serve(self.padded(xq), k, kc, nprobe)
        D = np.empty((m, k), np.float32)
        I = np.empty((m, k), np.int64)
        for q0 in range(0, m, _QCHUNK):
            q = self.padded(xq[q0 : q0 + _QCHUNK])
            D[q0 : q0 + _QCHUNK], I[q0 : q0 + _QCHUNK] = self.top(*self.candidates(q, kc, nprobe), k)
        return D, I

    def _serve(self, q: np.ndarray, k: int, kc: int, nprobe: int | None) -> tuple[np.ndarray, np.ndarray]:
        """`search` of one padded query q (1, d), k <= kc: `candidates` then `top` in as few NumPy calls as it
        takes: a served IVF query lasts a few hundred microseconds, and after Faiss's scan each NumPy call runs on
        cold caches (a few microseconds each at 1M vectors), so the general path's two dozen calls showed. The
        candidates are re-ranked by decoding them (see the class docstring)."""
        D = np.empty((1, kc), np.float32)
        P = np.empty((1, kc), np.int64)
        ptr = faiss.swig_ptr
        self.inner.search_c(1, ptr(q), kc, ptr(D), ptr(P), self._search_params(nprobe)[0])
        p = P[0]
        s = self._decoded_inner_products(q, p, D[0])
        if p[-1] < 0:  # fewer candidates than asked, or none (a blind query): the general path
            return self.top(*self._cosines(q, D, P), k)
        s *= self._inv_norm.take(p)
        o = np.argsort(-s, kind="stable")[:k]
        return s.take(o)[None], self._ids.take(p.take(o))[None]

    def _decoded_inner_products(self, q: np.ndarray, p: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Exact inner products out (kc,) float32 (overwritten, returned) of one padded query q (1, d) with the
        decoded vectors at positions p (kc,) int64 (a -1 scores the last vector, which `_cosines` discards)."""
        kc, dr, ptr = len(p), self._pairs_d, faiss.swig_ptr
        if q.shape[1] != dr:
            q = _pad(q, dr)
        x = self._decoded(p)  # named: a pointer from swig_ptr does not keep its array alive
        faiss.fvec_inner_products_ny(ptr(out), ptr(q), ptr(x), dr, kc)
        return out

    def _decoded(self, p: np.ndarray) -> np.ndarray:
        """The re-rank copy's vectors at positions p (kc,) int64, decoded: (kc, M8 * 2g) float32, contiguous, the
        same floats as ``pairs.sa_decode`` (a -1 decodes the last vector). One NumPy gather of centroid rows: Faiss's
        decoding copies them one sub-quantizer at a time (6,400 copies of 16 bytes for 100 candidates), which took
        longer than the gather on a served query."""
        rows = np.add(self._pair_codes.take(p, axis=0), self._pair_rows, dtype=np.intp)
        return self._pair_table.take(rows, axis=0).reshape(len(p), -1)

    def padded(self, xq: np.ndarray) -> np.ndarray:
        """Queries (m, p) -> (m, d) contiguous float32, zeros in the padded dimensions: what `scan` and
        `candidates` take."""
        d = self._d
        return _pad(xq, d) if d != xq.shape[1] else np.ascontiguousarray(xq, np.float32)

    def _search_params(self, nprobe: int | None) -> tuple:
        """(scan parameters, re-rank parameters) for this nprobe (None: the index's own), made once each."""
        if nprobe not in self._params:
            scan = faiss.SearchParametersIVF(nprobe=int(nprobe)) if nprobe is not None and self.ivf else None
            # k_factor 1: IndexRefine re-scores exactly the candidates it is asked for (the cosine re-orders them)
            refine = faiss.IndexRefineSearchParameters(k_factor=1.0)
            if scan is not None:
                refine.base_index_params = scan  # the tuple keeps `scan` alive as long as `refine` points to it
            self._params[nprobe] = (scan, refine)
        return self._params[nprobe]

    def scan(self, q: np.ndarray, kc: int, nprobe: int | None = None) -> np.ndarray:
        """Candidate positions (m, kc) int64 of padded queries q (m, d) float32 from the fast-scan alone (Faiss,
        no re-rank), -1 at the end of a row where fewer were found."""
        _, P = self.inner.search(q, kc, params=self._search_params(nprobe)[0])
        return P

    def candidates(self, q: np.ndarray, kc: int, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The scan's kc candidates of padded queries q (m, d) float32, re-ranked exactly: cosines S (m, kc)
        float32 (-inf where fewer were found) and positions P (m, kc) int64 (-1 there), in Faiss's inner-product
        order (`top` sorts by cosine)."""
        return self._cosines(q, *self._refine(q, kc, nprobe))

    def _refine(self, q: np.ndarray, kc: int, nprobe: int | None) -> tuple[np.ndarray, np.ndarray]:
        """Faiss's scan and exact re-rank of padded queries q (m, d): inner products D (m, kc) float32 with the
        decoded vectors and positions P (m, kc) int64 (-1 at the end of a row where fewer were found)."""
        m = len(q)
        D = np.empty((m, kc), np.float32)
        P = np.empty((m, kc), np.int64)
        # Faiss's own search wrapper, minus its argument checks (q is padded and contiguous by construction)
        self.refiner.search_c(m, faiss.swig_ptr(q), kc, faiss.swig_ptr(D), faiss.swig_ptr(P),
                              self._search_params(nprobe)[1])
        return D, P

    def _cosines(self, q: np.ndarray, D: np.ndarray, P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`candidates` from `_refine`'s inner products D and positions P (both (m, kc), P changed in place for the
        queries Faiss found nothing for)."""
        if P[:, -1].min() >= 0:
            return D * self._inv_norm.take(P), P
        miss = P < 0
        D[miss] = 0  # Faiss's filler scores (-FLT_MAX) for missing candidates: -inf below, not an overflow
        S = D * self._inv_norm.take(np.maximum(P, 0))
        S[miss] = -np.inf
        blind = P[:, 0] < 0
        if blind.any():
            # a query whose look-up tables are constant (a zero query, h = 1) makes Faiss's 8-bit table
            # quantization divide by zero and return nothing: rank those exactly over every vector instead
            S[blind], P[blind] = self._exact(q[blind], P.shape[1])
        return S, P

    def top(self, S: np.ndarray, P: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The best k of candidates at positions P (m, kc) (-1: none) with cosines S (m, kc): scores D (m, k)
        float32 descending and ids I (m, k) int64 (-inf / -1 where fewer than k)."""
        m, kc = S.shape
        o = np.argsort(-S, axis=1, kind="stable")[:, :k]
        o += np.arange(m)[:, None] * kc
        D, pos = S.take(o), P.take(o)
        I = self._ids.take(pos)
        if pos[:, -1].min() < 0:  # a missing candidate sorts last (-inf)
            I[pos < 0] = -1
        if o.shape[-1] < k:  # k > n: pad as Faiss does
            D = np.hstack([D, np.full((m, k - o.shape[-1]), -np.inf, np.float32)])
            I = np.hstack([I, np.full((m, k - o.shape[-1]), -1, np.int64)])
        return D, I

    def _exact(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Cosines (m', k) float32 and positions (m', k) int64 of the best k over all vectors, by decoding them;
        q (m', d) padded queries."""
        best_s = np.full((len(q), 0), -np.inf, np.float32)
        best_p = np.zeros((len(q), 0), np.int64)
        for i0 in range(0, self._n, _CHUNK):
            pos = np.arange(i0, min(self._n, i0 + _CHUNK), dtype=np.int64)
            s = np.hstack([best_s, q[:, : self.p] @ l2n(self.reconstruct(pos)).T])
            p = np.hstack([best_p, np.broadcast_to(pos, (len(q), len(pos)))])
            keep = np.argsort(-s, axis=1, kind="stable")[:, :k]
            best_s, best_p = np.take_along_axis(s, keep, 1), np.take_along_axis(p, keep, 1)
        return best_s, best_p


def default_fastscan_nprobe(nlist: int) -> int:
    """Inverted lists visited per query by ivf-fastscan: nlist / 100, at least 8 (40 of 4,000 lists at 1M vectors:
    recall@10 about 0.96 with re-rank 100 on bench/search.py's data; see bench/README.md)."""
    return int(min(nlist, max(8, round(nlist / 100))))


HNSW_COARSE_M = 32  # links per centroid of an hnsw coarse quantizer
HNSW_COARSE_EF = 64  # its efSearch (Faiss searches with max(efSearch, nprobe))


def hnsw_coarse(centroids: np.ndarray) -> faiss.IndexHNSWFlat:
    """An HNSW graph over the IVF centroids (nlist, d) float32, inner product: ivf-fastscan's ``coarse="hnsw"``."""
    q = faiss.IndexHNSWFlat(centroids.shape[1], HNSW_COARSE_M, faiss.METRIC_INNER_PRODUCT)
    q.hnsw.efConstruction = 80
    q.hnsw.efSearch = HNSW_COARSE_EF
    q.add(np.ascontiguousarray(centroids, np.float32))
    return q


def build_fastscan(levels: np.ndarray, idx: np.ndarray, ids: np.ndarray, config: IndexConfig) -> FastScanIndex:
    """Index level indices ``idx (n, p)`` (uint8, values < h) with the levels table ``levels (p, h) float32`` under
    the ids ``ids (n,) int64``, as ``config.kind`` fastscan (exhaustive) or ivf-fastscan (inverted lists over the
    normalised decoded vectors: ``config.nlist`` cells, default ~4 sqrt(n); ``config.nprobe`` visited, default
    `default_fastscan_nprobe`; queries find their lists through
    ``config.coarse``). Codes are added as computed here, never re-encoded by Faiss."""
    levels = np.ascontiguousarray(levels, np.float32)
    idx = np.asarray(idx)
    ids = np.ascontiguousarray(ids, np.int64)
    p, h = levels.shape
    n = len(idx)
    if idx.ndim != 2 or idx.shape[1] != p or len(ids) != n:
        raise ValueError(f"idx must be (n, {p}) and ids (n,), got {idx.shape} and {ids.shape}")
    g, M = layout(p, h)
    d = M * g
    cents = centroids(levels)
    pos = np.arange(n, dtype=np.int64)
    if config.kind == "fastscan":
        inner = faiss.IndexPQFastScan(d, M, 4, faiss.METRIC_INNER_PRODUCT)
        _set_centroids(inner, cents)
        inner.is_trained = True
        wrapper = faiss.IndexIDMap(inner)
        if n:
            # IndexFastScan has no add_sa_codes: load the codes into a flat IndexPQ, convert it (which packs them
            # into SIMD blocks), then merge into the empty index that the id map wraps
            pq = faiss.IndexPQ(d, M, 4, faiss.METRIC_INNER_PRODUCT)
            _set_centroids(pq, cents)
            pq.is_trained = True
            for i0 in range(0, n, _CHUNK):
                pq.add_sa_codes(codes(idx[i0 : i0 + _CHUNK], h))
            inner.merge_from(faiss.IndexPQFastScan(pq))
    elif config.kind == "ivf-fastscan":
        nlist = config.nlist or default_nlist(n)
        if n < nlist:
            raise IndexConfigError(f"ivf-fastscan with {nlist} lists needs at least {nlist} vectors, got {n}; "
                                   "lower nlist or use index kind fastscan")
        quantizer = faiss.IndexFlatIP(d)
        rng = np.random.default_rng(0)
        sample = np.sort(rng.choice(n, size=min(n, _TRAIN_PER_LIST * nlist), replace=False))
        km = faiss.Kmeans(d, nlist, niter=_KMEANS_ITER, spherical=True, seed=1234,
                          max_points_per_centroid=_TRAIN_PER_LIST + 1, min_points_per_centroid=1)
        km.train(_pad(l2n(decode(levels, idx[sample])), d))
        quantizer.add(km.centroids)
        ivfpq = faiss.IndexIVFPQ(quantizer, d, nlist, M, 4, faiss.METRIC_INNER_PRODUCT)
        ivfpq.by_residual = False  # residual codes would no longer be the lossless level codes
        _set_centroids(ivfpq, cents)
        ivfpq.is_trained = True
        cbytes = ivfpq.coarse_code_size()
        for i0 in range(0, n, _CHUNK):
            part = idx[i0 : i0 + _CHUNK]
            lists = quantizer.assign(_pad(decode(levels, part), d), 1)[:, 0]
            coarse = ((lists[:, None] >> (8 * np.arange(cbytes))) & 255).astype(np.uint8)
            ivfpq.add_sa_codes(np.hstack([coarse, codes(part, h)]), pos[i0 : i0 + _CHUNK])
        if config.coarse == "hnsw":
            quantizer = hnsw_coarse(km.centroids)  # searched by queries; the vectors were assigned exactly above
        inner = faiss.IndexIVFPQFastScan(quantizer, d, nlist, M, 4, faiss.METRIC_INNER_PRODUCT)
        inner.by_residual = False
        _set_centroids(inner, cents)
        inner.is_trained = True
        inner.nprobe = config.nprobe or default_fastscan_nprobe(nlist)
        wrapper = faiss.IndexIDMap(inner)
        # the conversion packs the flat codes into fast-scan blocks; add_sa_codes cannot (it expects packed blocks)
        inner.merge_from(faiss.IndexIVFPQFastScan(ivfpq), 0)
        inner.make_direct_map()  # positions -> (list, offset), to decode candidates
    else:
        raise IndexConfigError(f"index kind {config.kind!r} is not a fast-scan kind; use build_index")
    faiss.copy_array_to_vector(ids, wrapper.id_map)
    wrapper.ntotal = n
    _zero_padding(inner)
    return FastScanIndex(wrapper, config.rerank, p)


def _zero_padding(inner: faiss.Index) -> None:
    """Zero the lanes after the last vector of each partly filled block, which Faiss's 4-bit packing leaves
    uninitialised: an index built twice from the same codes then serialises to the same bytes (the index file's
    checksum is reproducible). Searches never read those lanes, so results are unchanged."""
    bbs, M = int(inner.bbs), int(inner.M2)
    block = bbs * M // 2
    lane_byte, step, shift = _lanes(bbs)

    def clear(buf: np.ndarray, count: int) -> None:
        pad = np.arange(count, -(-count // bbs) * bbs)
        if len(pad):
            lane = pad % bbs
            at = (pad // bbs * block + lane_byte[lane])[:, None] + step * np.arange(M)
            keep = (~(np.uint8(15) << shift[lane])).astype(np.uint8)  # the nibble of the other lane survives
            np.bitwise_and.at(buf, at.ravel(), np.repeat(keep, M))

    if isinstance(inner, faiss.IndexIVFFastScan):
        for lst in range(inner.nlist):
            size = inner.invlists.list_size(lst)
            if size % bbs:
                clear(faiss.rev_swig_ptr(inner.invlists.get_codes(lst), -(-size // bbs) * block), size)
    elif inner.ntotal % bbs:
        clear(faiss.rev_swig_ptr(inner.codes.get(), inner.codes.size()), int(inner.ntotal))


def memory_bytes(index: faiss.Index | FastScanIndex) -> int:
    """Bytes of the index as Faiss serialises it (codes, ids, lists, graph), plus a FastScanIndex's re-rank copy:
    a proxy for its memory."""
    if isinstance(index, FastScanIndex):
        return int(faiss.serialize_index(index.index).size) + index.rerank_bytes
    return int(faiss.serialize_index(index).size)


__all__ = ["FastScanIndex", "build_fastscan", "centroids", "codes", "decode", "default_fastscan_nprobe",
           "fastscan_rerank_bytes", "group_size", "hnsw_coarse", "layout", "memory_bytes"]
