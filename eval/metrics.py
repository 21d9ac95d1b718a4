"""Evaluation metrics: pure functions over rankings, scores and labels that return numbers or dataclasses.

Benchmark protocols reproduced here (each function names the original it follows):
- Oxford5k / Paris6k: ``oxford_ap`` follows ``compute_ap.cpp`` of the Oxford Buildings benchmark.
- ROxford / RParis: ``compute_ap``, ``compute_map`` and ``revisited_protocols`` follow revisitop's
  ``python/evaluate.py`` and its Easy / Medium / Hard protocols.
- Pascal VOC 2007 classification: ``voc07_ap_11point`` follows ``VOCevalcls.m`` of the VOC2007 devkit,
  ``voc_ap_auc`` the area-under-curve AP of the VOC2010+ devkits (``VOCap.m``).
Plus generic helpers: ``average_precision``, ``recall_at_k``, ``map_at_k``, ``accuracy``,
``mean_per_class_accuracy``.

Conventions shared by every function:
- Values are fractions in [0, 1]; the report layer multiplies by 100 if it wants percentages.
- A query (or class) with no positives has an undefined AP: it is NaN, and every mean skips NaN entries
  (revisitop's rule for queries without positives). A mean over nothing but NaN is NaN.
- Ties in scores are broken by input order (a stable sort of ``-score``), the order MATLAB's ``sort``
  gives the VOC devkit; results are therefore deterministic, though not tie-aware.
- Ranks are 0-based positions in a ranking; ``k`` counts results (P@k looks at the first k).

Legend: n examples, C classes, n_db database images, n_q queries, r 0-based rank, j 0-based index of a
positive among the positives, k a cutoff.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Hashable, Mapping, Sequence

import numpy as np

PROTOCOLS = ("easy", "medium", "hard")


# ---------------------------------------------------------------------------------------------------------
# Oxford5k / Paris6k


def oxford_ap(
    ranked_ids: Sequence[Hashable], positives: Collection[Hashable], junk: Collection[Hashable]
) -> float:
    """AP of one query exactly as the Oxford Buildings ``compute_ap.cpp``: trapezoids under the PR curve.

    ranked_ids: database ids, best match first (may be truncated: positives never ranked add no area).
    positives: ids that count as correct (Oxford's ``good`` ∪ ``ok``); junk: ids removed from the ranking
    (Oxford's ``junk``), they count neither as positive nor as negative. An id in both is junk, as in the
    original, which tests junk first.

    Walking the ranking with junk skipped, after non-junk position i (0-based) with t positives seen,
    recall = t / |positives| and precision = t / (i + 1); each step adds
    (recall - old_recall) * (old_precision + precision) / 2, starting from recall 0 and precision 1.
    Only positives move the recall, so only they add area. Computed in float64 (the original uses float32,
    which differs by about 1e-7). Returns NaN when ``positives`` is empty (the original divides 0 by 0).
    """
    positives = set(positives)
    junk = set(junk)
    if not positives:
        return float("nan")
    n_pos = len(positives)
    ap = 0.0
    old_recall, old_precision = 0.0, 1.0
    found = 0
    i = 0  # position among non-junk results
    for x in ranked_ids:
        if x in junk:
            continue
        if x in positives:
            found += 1
        recall = found / n_pos
        precision = found / (i + 1)
        ap += (recall - old_recall) * (old_precision + precision) / 2.0
        old_recall, old_precision = recall, precision
        i += 1
    return ap


# ---------------------------------------------------------------------------------------------------------
# ROxford / RParis (revisitop)


# eq=False: the arrays make field-wise == ambiguous; compare fields with numpy instead.
@dataclasses.dataclass(frozen=True, eq=False)
class RetrievalScores:
    """Scores of one revisited protocol over all queries.

    map: mean AP over queries that have positives; mp_at: {k: mean precision at k} over the same queries;
    aps: (n_q,) float64 per-query AP, NaN for queries without positives;
    prs: (n_q, len(mp_at)) float64 per-query precision at each k (in ``mp_at`` key order), NaN likewise.
    """

    map: float
    mp_at: dict[int, float]
    aps: np.ndarray
    prs: np.ndarray


def compute_ap(ranks: Sequence[int] | np.ndarray, nres: int) -> float:
    """AP from the ranks of the retrieved positives, as revisitop's ``compute_ap``.

    ranks: (m,) sorted 0-based ranks of the positives found, junk already removed from the ranking
    (m <= nres); nres: number of positives of the query. The j-th positive (0-based) at rank r adds a
    trapezoid of width 1 / nres between precision j / r just before it (1 when r == 0) and
    (j + 1) / (r + 1) at it. Positives never ranked add nothing. Returns NaN when nres == 0.
    """
    r = np.asarray(ranks, dtype=np.float64).reshape(-1)
    if len(r) > nres:
        raise ValueError(f"{len(r)} ranked positives but nres={nres}")
    if nres == 0:
        return float("nan")
    j = np.arange(len(r), dtype=np.float64)
    before = np.divide(j, r, out=np.ones_like(r), where=r > 0)
    at = (j + 1) / (r + 1)
    return float(np.sum((before + at) / 2.0) / nres)


def _ok_of(q: Mapping[str, np.ndarray]) -> np.ndarray:
    if "ok" in q:
        return np.asarray(q["ok"]).reshape(-1)
    # Without 'ok', easy and hard images both count: revisitop's Medium protocol.
    easy = np.asarray(q.get("easy", [])).reshape(-1)
    hard = np.asarray(q.get("hard", [])).reshape(-1)
    return np.concatenate([easy, hard])


def compute_map(
    ranks: np.ndarray, gnd: Sequence[Mapping[str, np.ndarray]], kappas: Sequence[int] = (1, 5, 10)
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """mAP and mean precision at k of a set of rankings, as revisitop's ``compute_map``.

    ranks: (n_db, n_q) int, column i holds database indices sorted by decreasing similarity to query i
    (revisitop's layout; fewer than n_db rows is a truncated ranking). gnd: n_q dicts with int index arrays
    'ok' (positives; when absent, 'easy' ∪ 'hard') and optional 'junk'. kappas: cutoffs k of P@k.

    Junk images are removed from the ranking before scoring. P@k is revisitop's: with pos the 1-based
    junk-free ranks of the positives, k is clipped to kq = min(max(pos), k) and P@k = |pos <= kq| / kq,
    so a query whose positives all come before k is not penalised for having fewer than k of them.
    Queries without positives get NaN and are left out of the means. A query whose positives are never
    ranked (truncated ranking) scores AP 0 and P@k 0 (revisitop would fail on ``max`` of nothing).

    Returns (map, aps (n_q,) float64, pr (len(kappas),) float64, prs (n_q, len(kappas)) float64).
    """
    ranks = np.asarray(ranks)
    if ranks.ndim != 2 or ranks.shape[1] != len(gnd):
        raise ValueError(f"ranks must be (n_db, n_q={len(gnd)}), got shape {ranks.shape}")
    kappas = [int(k) for k in kappas]
    n_q = len(gnd)
    aps = np.full(n_q, np.nan)
    prs = np.full((n_q, len(kappas)), np.nan)
    for i, q in enumerate(gnd):
        ok = _ok_of(q)
        if len(ok) == 0:
            continue
        junk = np.asarray(q.get("junk", [])).reshape(-1)
        pos = np.flatnonzero(np.isin(ranks[:, i], ok))
        junk_pos = np.flatnonzero(np.isin(ranks[:, i], junk))
        # Each positive moves up by the number of junk images ranked strictly before it.
        pos = pos - np.searchsorted(junk_pos, pos, side="left")
        aps[i] = compute_ap(pos, len(ok))
        if len(pos) == 0:
            prs[i] = 0.0
            continue
        pos1 = pos + 1
        for c, k in enumerate(kappas):
            kq = min(int(pos1.max()), k)
            prs[i, c] = np.count_nonzero(pos1 <= kq) / kq
    return _nanmean(aps), aps, _nanmean_rows(prs), prs


def revisited_protocols(
    ranks: np.ndarray, gnd: Sequence[Mapping[str, np.ndarray]], kappas: Sequence[int] = (1, 5, 10)
) -> dict[str, RetrievalScores]:
    """Scores of the ROxford / RParis Easy, Medium and Hard protocols.

    ranks: (n_db, n_q) int as in ``compute_map``; gnd: n_q dicts with int index arrays 'easy', 'hard'
    and 'junk' (revisitop's ground truth). Easy: ok = easy, junk = junk ∪ hard. Medium: ok = easy ∪ hard,
    junk = junk. Hard: ok = hard, junk = junk ∪ easy. Returns {"easy" | "medium" | "hard": RetrievalScores}.
    """

    def part(q: Mapping[str, np.ndarray], key: str) -> np.ndarray:
        return np.asarray(q.get(key, []), dtype=np.int64).reshape(-1)

    def union(q: Mapping[str, np.ndarray], a: str, b: str) -> np.ndarray:
        return np.concatenate([part(q, a), part(q, b)])

    split = {
        "easy": [{"ok": part(q, "easy"), "junk": union(q, "junk", "hard")} for q in gnd],
        "medium": [{"ok": union(q, "easy", "hard"), "junk": part(q, "junk")} for q in gnd],
        "hard": [{"ok": part(q, "hard"), "junk": union(q, "junk", "easy")} for q in gnd],
    }
    out = {}
    for name in PROTOCOLS:
        m, aps, pr, prs = compute_map(ranks, split[name], kappas)
        out[name] = RetrievalScores(
            map=m, mp_at={int(k): float(p) for k, p in zip(kappas, pr)}, aps=aps, prs=prs
        )
    return out


# ---------------------------------------------------------------------------------------------------------
# Pascal VOC classification


def _voc_pr(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Recall and precision after each non-difficult example, best score first; None without positives."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} differ in shape")
    if not np.isin(labels, (-1, 0, 1)).all():
        raise ValueError("labels must be 1 (positive), -1 (negative) or 0 (difficult)")
    # Difficult examples (0) are neither true nor false positives: the devkit's cumulative sums stand
    # still on them, which is the same as leaving them out.
    keep = labels != 0
    scores, labels = scores[keep], labels[keep]
    n_pos = np.count_nonzero(labels > 0)
    if n_pos == 0:
        return None
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(labels[order] > 0)
    seen = np.arange(1, len(order) + 1)
    return tp / n_pos, tp / seen


# The devkit's thresholds ``t = 0:0.1:1`` as MATLAB's colon operator makes them: the first half a + k d, the second
# half b - k d, the middle (a + b) / 2. So t[3] is 3 * 0.1 = 0.30000000000000004, which a recall of exactly 3/10
# does not reach, while t[6] and t[7] are 1 - 0.4 = 0.6 and 1 - 0.30000000000000004 = 0.7, which recalls 6/10 and
# 7/10 do reach (np.arange's k * 0.1 gives 0.6000000000000001 and 0.7000000000000001 there).
VOC07_THRESHOLDS = np.array([k * 0.1 for k in range(5)] + [0.5] + [1.0 - k * 0.1 for k in range(4, -1, -1)])


def voc07_ap_11point(scores: np.ndarray, labels: np.ndarray) -> float:
    """11-point interpolated AP of one class, as ``VOCevalcls.m`` of the VOC2007 devkit.

    scores: (n,) float, higher means more confident; labels: (n,) int in {1 positive, -1 negative,
    0 difficult (ignored)}. AP = mean over t in ``0:0.1:1`` of the highest precision at recall >= t
    (0 where recall never reaches t), with the devkit's thresholds as MATLAB computes them
    (``VOC07_THRESHOLDS``): a recall of exactly 3/10 does not reach its t = 0.30000000000000004.
    Ties: stable order of ``-scores`` (input order among equal scores). Returns NaN without positives
    (the devkit would return 0).
    """
    pr = _voc_pr(scores, labels)
    if pr is None:
        return float("nan")
    rec, prec = pr
    # Sum first, divide once: the devkit's running ap + p/11 only adds rounding error.
    total = 0.0
    for t in VOC07_THRESHOLDS:
        reached = prec[rec >= t]
        total += reached.max() if len(reached) else 0.0
    return float(total / 11)


def voc_ap_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area-under-curve AP of one class, as ``VOCap.m`` of the VOC2010+ devkits.

    Same inputs, difficult handling and tie order as ``voc07_ap_11point``. The precision curve is made
    monotone (each precision replaced by the highest precision at any higher recall), then AP sums
    (recall step) * (envelope precision) at every point where recall changes. NaN without positives.
    """
    pr = _voc_pr(scores, labels)
    if pr is None:
        return float("nan")
    rec, prec = pr
    mrec = np.concatenate([[0.0], rec, [1.0]])
    mpre = np.concatenate([[0.0], prec, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    step = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[step] - mrec[step - 1]) * mpre[step]))


def voc_map(scores: np.ndarray, labels: np.ndarray, method: str = "11point") -> tuple[float, np.ndarray]:
    """Mean AP over classes, VOC style.

    scores: (n, C) float; labels: (n, C) int in {1, -1, 0}; method: "11point" (VOC2007, the paper's
    numbers) or "auc" (VOC2010+). Returns (mAP over classes that have positives, aps (C,) float64 with
    NaN for classes without positives).
    """
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    if scores.ndim != 2 or scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} must both be (n, C)")
    ap_of = {"11point": voc07_ap_11point, "auc": voc_ap_auc}
    if method not in ap_of:
        raise ValueError(f"method must be one of {sorted(ap_of)}, got {method!r}")
    ap = ap_of[method]
    aps = np.array([ap(scores[:, c], labels[:, c]) for c in range(scores.shape[1])], dtype=np.float64)
    return _nanmean(aps), aps


# ---------------------------------------------------------------------------------------------------------
# Classification accuracy


def accuracy(pred: np.ndarray, true: np.ndarray) -> float:
    """Fraction of examples whose predicted label equals the true one. pred, true: (n,) labels, n > 0."""
    pred, true = _same_shape_labels(pred, true)
    return float(np.mean(pred == true))


def mean_per_class_accuracy(pred: np.ndarray, true: np.ndarray) -> float:
    """Mean over the classes present in ``true`` of the fraction of that class predicted correctly.

    pred, true: (n,) labels, n > 0. Classes only ever predicted, never true, do not count.
    """
    pred, true = _same_shape_labels(pred, true)
    classes = np.unique(true)
    return float(np.mean([np.mean(pred[true == c] == c) for c in classes]))


def _same_shape_labels(pred: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred).reshape(-1)
    true = np.asarray(true).reshape(-1)
    if pred.shape != true.shape or len(true) == 0:
        raise ValueError(f"pred {pred.shape} and true {true.shape} must be the same non-empty shape")
    return pred, true


# ---------------------------------------------------------------------------------------------------------
# Generic retrieval helpers


def average_precision(ranked_relevance: np.ndarray, n_relevant: int) -> float:
    """Non-interpolated AP: the mean over all relevant items of the precision at each one's rank.

    ranked_relevance: (m,) bool, True where the result at that rank is relevant (best first, possibly
    truncated); n_relevant: number of relevant items in the whole collection (relevant items not ranked
    contribute precision 0). Returns NaN when n_relevant == 0.
    """
    rel = np.asarray(ranked_relevance, dtype=bool).reshape(-1)
    hits = np.count_nonzero(rel)
    if hits > n_relevant:
        raise ValueError(f"{hits} relevant results ranked but n_relevant={n_relevant}")
    if n_relevant == 0:
        return float("nan")
    ranks1 = np.flatnonzero(rel) + 1
    return float(np.sum(np.arange(1, hits + 1) / ranks1) / n_relevant)


def _hits(
    ranked_ids: np.ndarray, positives: Sequence[Collection[Hashable]], k: int
) -> list[np.ndarray | None]:
    """Per query, (k,) bool marking the positives among the first k results; None without positives."""
    ranked_ids = np.asarray(ranked_ids)
    if ranked_ids.ndim != 2 or len(ranked_ids) != len(positives):
        raise ValueError(f"ranked_ids must be (n_q={len(positives)}, >= k), got shape {ranked_ids.shape}")
    if not 1 <= k <= ranked_ids.shape[1]:
        raise ValueError(f"k={k} must be between 1 and the {ranked_ids.shape[1]} results per query")
    out: list[np.ndarray | None] = []
    for row, pos in zip(ranked_ids[:, :k], positives):
        pos = set(pos)
        out.append(np.array([x in pos for x in row.tolist()], dtype=bool) if pos else None)
    return out


def recall_at_k(ranked_ids: np.ndarray, positives: Sequence[Collection[Hashable]], k: int) -> float:
    """Recall@k as in place recognition: the fraction of queries with at least one positive in the top k.

    ranked_ids: (n_q, m) ids, best first, m >= k; positives: n_q collections of ids. Queries without
    positives are left out (NaN if none has any).
    """
    per_query = [np.nan if h is None else float(h.any()) for h in _hits(ranked_ids, positives, k)]
    return _nanmean(np.array(per_query, dtype=np.float64))


def map_at_k(ranked_ids: np.ndarray, positives: Sequence[Collection[Hashable]], k: int) -> float:
    """Mean AP@k: per query, the sum of precision@i over relevant ranks i <= k over min(|positives|, k).

    ranked_ids: (n_q, m) ids, best first, m >= k; positives: n_q collections of ids. Queries without
    positives are left out (NaN if none has any).
    """
    per_query = []
    for h, pos in zip(_hits(ranked_ids, positives, k), positives):
        if h is None:
            per_query.append(np.nan)
            continue
        ranks1 = np.flatnonzero(h) + 1
        per_query.append(np.sum(np.arange(1, len(ranks1) + 1) / ranks1) / min(len(set(pos)), k))
    return _nanmean(np.array(per_query, dtype=np.float64))


def _nanmean(x: np.ndarray) -> float:
    """Mean of the non-NaN entries; NaN when there are none (without numpy's empty-slice warning)."""
    x = np.asarray(x, dtype=np.float64)
    ok = ~np.isnan(x)
    return float(x[ok].mean()) if ok.any() else float("nan")


def _nanmean_rows(x: np.ndarray) -> np.ndarray:
    """Per column mean over the rows that are not NaN: (n_q, K) -> (K,)."""
    return np.array([_nanmean(x[:, c]) for c in range(x.shape[1])], dtype=np.float64)
