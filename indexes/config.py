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
