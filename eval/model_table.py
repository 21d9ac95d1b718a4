"""Compressing the network itself: build / fine-tune / compress a descriptor model, and the seed paper's table.

    make_model(...) -> MadeModel                 `retr model compress`: a `.retrm` from a backbone (+ NetVLAD
                                                 initialised and optionally fine-tuned on a dataset) or another file
    compute_model_table(base, datasets, out) -> ModelTable   "Compressing Deep Neural Networks for Recognizing
                                                 Places" (Saha et al., ACPR 2017), its results table: for the base
                                                 model and each (bits, threshold) pair, % of parameters pruned, drop
                                                 in mAP on each dataset, memory usage (MB); writes only the models
    write_model_table(table, out) -> files       drawing: CSV, JSON, markdown, PNG (write_csv, write_json,
                                                 write_markdown, plot_map_vs_memory); html_section for report pages
    model_table(...)                             both, for `retr eval --experiments model`

Only the drawing functions import matplotlib (inside them).

mAP is measured as in the paper: descriptors of the model *loaded back from its file*, PCA-whitened, L2-normalised,
ranked by inner product, scored with `metrics.compute_map`. The whitening (`codec` with whiten=True and no
quantizer) is part of the model: learnt on the database descriptors of the table's first dataset, stored in each
row's `.retrm` and counted in its size, then applied to every dataset. "Drop in mAP" is the base model's mAP minus
the compressed model's, in mAP points (0-100 scale). Memory usage is the `.retrm` file's size in MB (10**6 bytes):
the descriptor network (the backbone's layers up to the descriptor + NetVLAD) and its whitening, not the whole
classification network ACPR count (AlexNet: 248.6 MB), so absolute MB are not comparable with their table.
"""

from __future__ import annotations

import csv
import html
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..indexes.vectors import l2n
from ..retrieval.backbones import get_spec, preprocess
from ..retrieval.codec import CodecConfig, CodecParams, fit, reduce
from ..retrieval.compress import PAPER_SETTINGS, CompressionConfig
from ..retrieval.encoder import resolve_device
from ..retrieval.errors import ConfigError
from ..retrieval.images import read_image
from ..retrieval.model_file import (DescriptorNet, ModelConfig, ModelFile, build_model, read_model_file, save_model,
                                    store_whitening)
from ..retrieval.train import TrainConfig, TrainResult, describe_paths, train
from ..retrieval.fileio import atomic_write
from . import metrics
from .datasets import RetrievalDataset, load_dataset

WHITENING_COLUMN = "Of which whitening (MB)"
# What the counted file is, against what ACPR 2017 count (their Table: AlexNet, 248.6 MB for the base model).
ACPR_NOTE = ("not the whole classification network ACPR 2017 count (AlexNet: 248.6 MB), so absolute MB are not "
             "comparable with their table; the counting rule itself (kept weights x bits + pruning index + codebooks) "
             "reproduces 5 of their 6 AlexNet rows within 0.6 MB")


def retrieval_map(model: DescriptorNet, ds: RetrievalDataset, image_size: int = 224, whiten_dims: int | None = 256,
                  device: str = "auto", whitening: CodecParams | None = None) -> float:
    """mAP (0-100) of `model` on `ds`: descriptors, PCA-whitening, ranking.

    whitening: the one to apply (a model file's); without it, one is learnt on the database with at most
    `whitening_dims(whiten_dims, n_db)` axes (a small database cannot estimate more), or none when whiten_dims is
    None. device: as everywhere in retr (`encoder.resolve_device`: auto = CUDA when present); the model runs there
    and is moved back to where it was."""
    xdb, xq = describe_set(model, ds, image_size, device)
    if whitening is None and whiten_dims is not None:
        whitening = learn_whitening(xdb, whiten_dims)
    return ranked_map(xdb, xq, ds, whitening)


def describe_set(model: DescriptorNet, ds: RetrievalDataset, image_size: int = 224,
                 device: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """(database, query) descriptors of `ds`, (n_db, d) and (n_q, d) float32, the model run on `device`."""
    dev = resolve_device(device)
    home = next(model.parameters()).device
    model.to(dev)
    try:
        xdb = describe_paths(model, ds.db_paths, None, image_size, str(dev))
        xq = describe_paths(model, [q.path for q in ds.queries], [q.bbox for q in ds.queries], image_size, str(dev))
    finally:
        model.to(home)
    return xdb, xq


def learn_whitening(xdb: np.ndarray, whiten_dims: int) -> CodecParams:
    """The PCA-whitening of descriptors xdb (n_db, d): `whitening_dims(whiten_dims, n_db)` axes, float32."""
    return fit(xdb, CodecConfig(reduction="pca", dims=whitening_dims(whiten_dims, len(xdb)), whiten=True,
                                quantizer="none"))


def ranked_map(xdb: np.ndarray, xq: np.ndarray, ds: RetrievalDataset, whitening: CodecParams | None) -> float:
    """mAP (0-100) of ranking xdb for each of xq by inner product, after `whitening` (if any) and L2 normalisation."""
    if whitening is not None:
        xdb, xq = l2n(reduce(whitening, xdb)), l2n(reduce(whitening, xq))
    ranks = np.argsort(-(xq @ xdb.T), axis=1, kind="stable").T
    return 100.0 * metrics.compute_map(ranks, ds.gnd)[0]


def whitening_dims(requested: int, n_db: int) -> int:
    """PCA-whitening axes used: min(requested, max(1, n_db // 8)). Whitening divides each axis by its standard
    deviation, so the poorly estimated low-variance axes of a PCA fitted on few vectors (p close to n_db) get the
    weight of the best ones and swamp the ranking (on the 60-image synthetic set: mAP 100 with 8 axes, 12 with 59)."""
    return min(requested, max(1, n_db // 8))


def load_retrieval_set(name: str, root: str | os.PathLike | None, images: str | os.PathLike) -> RetrievalDataset:
    """Retrieval dataset `name` (of `eval.datasets`) read from `root`, to train or measure a model on.

    The generated sets write their images under `images`, as `retr eval` does: synthetic when root is None, and
    neardup always (its database = the photos under root, or the sample photos when None; its queries = edited
    copies). A set without its root raises `DatasetError` from `load_dataset`; a classification set, ConfigError."""
    kw = {}
    if name == "synthetic" and root is None:
        root = images
    if name == "neardup":
        kw["out"] = Path(images)
    ds = load_dataset(name, root, **kw)
    if not isinstance(ds, RetrievalDataset):
        raise ConfigError(f"{name} is a classification set: use a retrieval set (ground truth by query)")
    return ds


def training_images(ds: RetrievalDataset, backbone: str, image_size: int, limit: int = 500,
                    seed: int = 0) -> list:
    """Preprocessed (3, h, w) tensors of up to `limit` database images (a seeded sample), for NetVLAD's k-means."""
    idx = np.arange(len(ds.db_paths))
    if len(idx) > limit:
        idx = np.sort(np.random.default_rng(seed).choice(idx, size=limit, replace=False))
    spec = get_spec(backbone)
    return [preprocess(spec, read_image(ds.db_paths[i]), max_size=image_size) for i in idx]


def training_images_dir(out: str | os.PathLike, dataset: str) -> Path:
    """Where `make_model(out, train_on=dataset)` writes the images of a generated dataset: beside `out`."""
    out = Path(out)
    return out.parent / f"{out.stem}-{dataset}-images"


@dataclass
class MadeModel:
    """What `make_model` wrote: the file, the training curve (None without training), mAP before / after
    training on the training set (0-100, None without training)."""

    file: ModelFile
    training: TrainResult | None = None
    map_before: float | None = None
    map_after: float | None = None


def make_model(out: str | os.PathLike, config: ModelConfig | None = None, compression: CompressionConfig =
               CompressionConfig(), *, source: str | os.PathLike | None = None, train_on: str | None = None,
               root: str | os.PathLike | None = None, train_config: TrainConfig | None = None,
               checkpoint: str | os.PathLike | None = None, device: str = "auto", seed: int = 0,
               progress: bool = True) -> MadeModel:
    """Write a compressed model file `out`.

    The model: read from `source` (a `.retrm`, e.g. a fine-tuned float32 one), or built from `config` with NetVLAD
    centres from k-means on `train_on`'s images (a dataset name of `eval.datasets`, read from `root`; the
    generated sets, synthetic and neardup, write their images to `<out's stem>-<train_on>-images/` beside `out`:
    `load_retrieval_set`). With `train_config`, it is first fine-tuned on `train_on` (resumable through
    `checkpoint`) and its mAP measured before and after. Then pruned and quantized. device: auto = CUDA when
    present (`encoder.resolve_device`), for fine-tuning and measuring.
    """
    out = Path(out)
    ds = None
    if train_on is not None:
        ds = load_retrieval_set(train_on, root, training_images_dir(out, train_on))
    size = (train_config or TrainConfig()).image_size
    if source is not None:
        model = read_model_file(source).build()
    else:
        config = config or ModelConfig()
        ims = training_images(ds, config.backbone, size, seed=seed) if ds is not None else None
        model = build_model(config, ims, seed=seed)
    training = map_before = map_after = None
    if train_config is not None:
        if ds is None:
            raise ConfigError("fine-tuning needs a dataset: pass --train-on")
        map_before = retrieval_map(model, ds, size, None, device)
        training = train(model, ds, train_config, device=device, checkpoint=checkpoint, progress=progress)
        map_after = retrieval_map(model, ds, size, None, device)
    return MadeModel(save_model(model, out, compression), training, map_before, map_after)


@dataclass
class ModelTable:
    """The table's rows, computed by `compute_model_table`: one dict per row with the CSV's columns (`columns`),
    the keys `mAP (<name>)` of each dataset, `bits` (None for the base model) and `file` (its .retrm); the datasets'
    names; the PCA-whitening axes used on each (None: no whitening); what each file holds, in words (`stored`);
    and, once drawn, the files written (name -> path)."""

    rows: list[dict]
    datasets: list[str]
    whiten_dims: dict[str, int | None] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    stored: str = ""

    @property
    def columns(self) -> list[str]:
        return (["Method", "Threshold for pruning", "Percentage of parameters pruned"]
                + [f"Drop in mAP ({d})" for d in self.datasets] + ["Memory usage (MB)"]
                + [f"mAP ({d})" for d in self.datasets] + [WHITENING_COLUMN] * self.counts_whitening)

    @property
    def counts_whitening(self) -> bool:
        """Whether the rows say how much of each file is whitening (every table computed since files store it)."""
        return any(WHITENING_COLUMN in r for r in self.rows)

    @property
    def note(self) -> str:
        """One line under the table: what "Memory usage" counts, and why it is not ACPR's MB."""
        held = f"the descriptor network ({self.stored})" if self.stored else "the descriptor network"
        return f"Memory usage = size of the .retrm file, 10^6 bytes: {held}; {ACPR_NOTE}."


def compute_model_table(base: DescriptorNet, datasets: dict[str, RetrievalDataset], out: str | os.PathLike,
                        settings: tuple[tuple[int, float], ...] = PAPER_SETTINGS, *, codebook: str = "linear",
                        image_size: int = 224, whiten_dims: int | None = 256, device: str = "auto",
                        method: str | None = None) -> ModelTable:
    """The paper's table for `base` on `datasets` (column label -> dataset): the rows, nothing drawn (module doc).

    base: the (fine-tuned) float32 model, left unchanged; each row's model is written to out/models/*.retrm and
    loaded back before it is measured (its size on disk is the row's memory usage). With whiten_dims, each row's
    PCA-whitening (at most `whitening_dims(whiten_dims, n_db)` axes) is learnt on its own descriptors of the first
    dataset's database, stored in its file (counted in its memory usage, and in "Of which whitening (MB)") and
    applied to every dataset as read back from the file. method: the base row's name (default e.g. "alexnet +
    NetVLAD + whitening"). device: auto = CUDA when present (`encoder.resolve_device`).
    """
    models = Path(out) / "models"
    # No pruning and float32 weights store the values as they are: `base` is not modified.
    base_file = save_model(base, models / "base.retrm", CompressionConfig())
    c = base.config
    pool = "NetVLAD" if c.pooling == "netvlad" else (c.pooling or c.layer).upper()
    name = method or f"{c.backbone} + {pool}" + (" + whitening" if whiten_dims else "") + " (base model)"
    first = next(iter(datasets))
    rows = []
    base_maps = {}
    for bits, t in ((None, 0.0), *settings):
        if bits is None:
            mf = base_file
        else:
            mf = save_model(base_file.build(), models / f"b{bits}_t{t:g}.retrm", CompressionConfig(t, bits, codebook))
        x = {d: describe_set(mf.build(), ds, image_size, device) for d, ds in datasets.items()}
        if whiten_dims is not None:
            # the whitening is part of the model: stored in its file and counted, then read back from it
            mf = store_whitening(mf.path, learn_whitening(x[first][0], whiten_dims))
        maps = {d: ranked_map(*x[d], ds, mf.whitening) for d, ds in datasets.items()}
        if bits is None:
            base_maps, base_whitening = maps, mf.whitening
        row = {"Method": name if bits is None else f"{bits} bits quantization", "Threshold for pruning": t,
               "Percentage of parameters pruned": mf.prune.percent, "Memory usage (MB)": mf.megabytes,
               WHITENING_COLUMN: mf.whitening_bytes / 1e6, "bits": bits, "file": str(mf.path)}
        for d in datasets:
            row[f"Drop in mAP ({d})"] = base_maps[d] - maps[d]
            row[f"mAP ({d})"] = maps[d]
        rows.append(row)
    stored = f"{c.backbone} conv layers" if c.layer == "conv" else f"{c.backbone} layers up to {c.layer}"
    if c.pooling:
        stored += f" + {pool}" + (f" (K = {c.netvlad_k})" if c.pooling == "netvlad" else "")
    if base_whitening is not None:
        w = base_whitening
        stored += f" + PCA-whitening {w.dims} x {w.input_dim} float32, learnt on {first}'s database"
    return ModelTable(rows, list(datasets), {d: None if base_whitening is None else base_whitening.dims
                                             for d in datasets}, stored=stored)


def model_table(base: DescriptorNet, datasets: dict[str, RetrievalDataset], out: str | os.PathLike,
                settings: tuple[tuple[int, float], ...] = PAPER_SETTINGS, **kw) -> ModelTable:
    """`compute_model_table` then `write_model_table` into `out` (the table's `files` set): what `retr eval
    --experiments model` writes beside its report."""
    table = compute_model_table(base, datasets, out, settings, **kw)
    table.files = write_model_table(table, out)
    return table


# --- drawing: text, files and plots of a computed table ----------------------------------------------------------


def _fmt(v) -> str:
    return f"{v:.6f}" if isinstance(v, float) else str(v)


def table_text(table: ModelTable) -> tuple[list[str], list[list[str]]]:
    """Header and rows as display strings: percentages with 2 decimals, drops with 1, MB with 2."""
    rows = []
    for r in table.rows:
        line = [r["Method"], f"{r['Threshold for pruning']:g}", f"{r['Percentage of parameters pruned']:.2f}"]
        line += [f"{r[f'Drop in mAP ({d})']:.1f}%" for d in table.datasets]
        line += [f"{r['Memory usage (MB)']:.2f}"] + [f"{r[f'mAP ({d})']:.2f}" for d in table.datasets]
        rows.append(line + ([f"{r[WHITENING_COLUMN]:.2f}"] if table.counts_whitening else []))
    return table.columns, rows


def markdown(table: ModelTable) -> str:
    """The table in markdown, then its note (`ModelTable.note`) on one line."""
    header, rows = table_text(table)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + f"\n\n{table.note}\n"


def html_section(table: ModelTable, png: Path | None = None) -> str:
    """An HTML <section> with the table (and the plot embedded as a data URI when given), for report pages."""
    import base64

    header, rows = table_text(table)
    th = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in r) + "</tr>" for r in rows)
    img = ""
    if png is not None and png.exists():
        img = f'<img alt="mAP vs memory" src="data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()}">'
    return (f"<section><h2>Compressed network: mAP vs memory</h2><table><tr>{th}</tr>{trs}</table>{img}"
            "<p>Drop in mAP in mAP points against the base model.</p>"
            f"<p>{html.escape(table.note)}</p></section>")


def _atomic_text(path: Path, text: str) -> Path:
    return atomic_write(path, text.encode())


def write_csv(table: ModelTable, path: str | os.PathLike) -> Path:
    """The table's columns, reals as %.6f."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(table.columns)
    for r in table.rows:
        w.writerow([_fmt(r[c]) for c in table.columns])
    return _atomic_text(Path(path), buf.getvalue())


def write_json(table: ModelTable, path: str | os.PathLike) -> Path:
    """{"version": 1, "datasets", "whiten_dims", "stored", "note", "rows"}: every key of every row, full precision."""
    return _atomic_text(Path(path), json.dumps({"version": 1, "datasets": table.datasets,
                                                "whiten_dims": table.whiten_dims, "stored": table.stored,
                                                "note": table.note, "rows": table.rows}, indent=1))


def write_markdown(table: ModelTable, path: str | os.PathLike) -> Path:
    return _atomic_text(Path(path), markdown(table))


def plot_map_vs_memory(table: ModelTable, png: str | os.PathLike) -> Path:
    """mAP against memory usage (MB), one point per row and dataset, labelled with its bits and threshold."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4))
    ax = fig.subplots()
    for d in table.datasets:
        mb = [r["Memory usage (MB)"] for r in table.rows]
        m = [r[f"mAP ({d})"] for r in table.rows]
        ax.plot(mb, m, "o", label=d)
        for r, x, y in zip(table.rows, mb, m):
            label = "base" if r["bits"] is None else f"{r['bits']}b t={r['Threshold for pruning']:g}"
            ax.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("memory usage (MB)")
    ax.set_ylabel("mAP")
    ax.set_title("compressed network: mAP vs memory")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    return png


def write_model_table(table: ModelTable, out: str | os.PathLike) -> dict[str, Path]:
    """out/model_table.csv, .json, .md and .png (mAP vs MB); returns name -> path."""
    out = Path(out)
    return {"csv": write_csv(table, out / "model_table.csv"),
            "json": write_json(table, out / "model_table.json"),
            "md": write_markdown(table, out / "model_table.md"),
            "png": plot_map_vs_memory(table, out / "model_table.png")}


def write_loss_curve(training: TrainResult, png: str | os.PathLike) -> Path:
    """The fine-tuning loss curve as a PNG: the triplet loss of every step, and the mean of each epoch."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 3.5))
    ax = fig.subplots()
    steps = np.arange(1, len(training.step_loss) + 1)
    ax.plot(steps, training.step_loss, lw=0.8, alpha=0.5, label="step")
    per_epoch = len(training.step_loss) / max(1, len(training.epoch_loss))
    ax.plot(per_epoch * np.arange(1, len(training.epoch_loss) + 1), training.epoch_loss, "o-", label="epoch mean")
    ax.set_xlabel("step")
    ax.set_ylabel("triplet loss")
    ax.set_title("fine-tuning")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png = Path(png)
    fig.savefig(png, dpi=110)
    return png
