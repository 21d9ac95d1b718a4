"""Index configuration: a small frozen dataclass, persisted beside the index it describes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

FASTSCAN_KINDS = ("fastscan", "ivf-fastscan")
KINDS = ("flat", "ivf", "hnsw") + FASTSCAN_KINDS
# levels per dimension a fast-scan index can scan: one dimension per 4-bit sub-quantizer of 16 centroids (fastscan.py);
# here, not in fastscan.py, so that the database spec can decide its default index without importing Faiss
FASTSCAN_MAX_LEVELS = 16
COARSE = ("flat", "hnsw")


class IndexConfigError(ValueError):
    """An index option is invalid (the engine turns it into a one-line user error)."""


def group_size(h: int) -> int:
    """Dimensions per 4-bit fast-scan group for h levels: the largest g <= 4 with h**g <= 16 (h = 1 -> 4,
    h > 16 -> error)."""
    if not 1 <= h <= FASTSCAN_MAX_LEVELS:
        raise IndexConfigError(f"fast-scan indexes need 1 to {FASTSCAN_MAX_LEVELS} levels per dimension, not {h}; "
                               "use index kind flat, ivf or hnsw")
    g = 1
    while g < 4 and h ** (g + 1) <= FASTSCAN_MAX_LEVELS:
        g += 1
    return g


def layout(p: int, h: int) -> tuple[int, int]:
    """(g, M): dimensions per group and number of 4-bit groups (sub-quantizers) for p dimensions of h levels."""
    g = group_size(h)
    return g, -(-p // g)


def fastscan_rerank_bytes(p: int, h: int, n: int) -> int:
    """Memory that a fast-scan index over n vectors (p dimensions, h levels) holds beyond its saved file: its
    re-rank copy (fastscan.FastScanIndex.rerank_bytes): ceil(M / 2) code bytes and one float32 inverse norm per
    vector, and the 8-bit centroid tables, ceil(M / 2) x 256 centroids of 2g float32."""
    g, M = layout(p, h)
    pairs = -(-M // 2)
    return n * (pairs + 4) + pairs * 256 * 2 * g * 4


@dataclass(frozen=True)
class IndexConfig:
    """Which Faiss index to derive from the stored codes. (``kind`` defaults to flat here, for arrays; a database's
    default is decided from its codec by `retr.retrieval.spec.default_index`: fastscan wherever the codec allows.)

    kind: ``flat`` (exact inner product), ``ivf`` (inverted lists, ``nlist`` cells, ``nprobe`` visited per query;
          both chosen from the collection size when None), ``hnsw`` (graph with ``hnsw_m`` links per node), over the
          decoded vectors; or, over the level indices themselves (Faiss 4-bit fast-scan, see fastscan.py),
          ``fastscan`` (exhaustive) and ``ivf-fastscan`` (inverted lists), whose best ``rerank`` candidates per query
          are re-ranked exactly on the normalised decoded vectors.
    coarse: how ivf-fastscan finds a query's nearest lists: ``flat`` (exact, over all nlist centroids) or ``hnsw``
          (a graph over the centroids: a few dozen distances instead of nlist; database vectors are still assigned
          exactly). Left out of `to_dict` when ``flat``, so configurations written before it existed stay equal.
    """

    kind: str = "flat"
    nlist: int | None = None
    nprobe: int | None = None
    hnsw_m: int = 32
    rerank: int = 100
    coarse: str = "flat"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise IndexConfigError(f"unknown index kind '{self.kind}'; choose one of {', '.join(KINDS)}")
        for name in ("nlist", "nprobe", "rerank"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise IndexConfigError(f"index option {name} must be >= 1, got {v}")
        if self.coarse not in COARSE:
            raise IndexConfigError(f"unknown coarse quantizer '{self.coarse}'; choose one of {', '.join(COARSE)}")
        if self.coarse != "flat" and self.kind != "ivf-fastscan":
            raise IndexConfigError(f"coarse={self.coarse} applies to index kind ivf-fastscan only, not {self.kind}")

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["coarse"] == "flat":  # the default before the option existed: saved headers compare equal
            del d["coarse"]
        return d

    def describe(self) -> str:
        """The kind and the parameters that apply to it, e.g. ``ivf (nlist auto, nprobe 8)``."""
        used = {"flat": (), "ivf": ("nlist", "nprobe"), "hnsw": ("hnsw_m",), "fastscan": ("rerank",),
                "ivf-fastscan": ("nlist", "nprobe", "rerank")}[self.kind]
        parts = [f"{k} {'auto' if getattr(self, k) is None else getattr(self, k)}" for k in used]
        if self.coarse != "flat":
            parts.append(f"coarse {self.coarse}")
        return self.kind + (f" ({', '.join(parts)})" if parts else "")

    @classmethod
    def from_dict(cls, d: dict) -> IndexConfig:
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise IndexConfigError(f"unknown index option(s): {', '.join(sorted(unknown))}")
        return cls(**d)
