"""Fine-tuning a descriptor network with the triplet loss plus an L1 penalty on its weights (Saha et al., ACPR 2017).

    J = mean over tuples of 1/2 max(0, m + |q - p|^2 - |q - n|^2)  +  lambda * sum |W|

q, p, n are the (d,) unit descriptors of a query, a positive (same place / family) and a negative; W runs over the
compressible weights the descriptor uses (`compress.is_compressible`: convolutions, NetVLAD), so the L1 term drives
weights towards 0 before pruning. Tuples come from a retrieval dataset with ground truth: each query, its positives
('ok', the most similar first, at most `positives`), and its `negatives` hardest negatives, mined at the start of
each epoch as the current model's nearest database images that are neither positive nor junk.

The network stays in eval mode (batch-norm statistics frozen: tuples are too small to re-estimate them; AlexNet and
VGG have no batch norm, and their dropout sits in the unused classifier). Checkpoints (`.npz`, no pickle, written
atomically after each epoch) hold the stored tensors, the optimiser state and the loss curve; `train(...,
checkpoint=path)` resumes from one and gives the same weights as an uninterrupted run.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .backbones import preprocess
from .compress import is_compressible
from .encoder import crop_box, resolve_device
from .fileio import atomic_write
from .errors import ConfigError, ImageError
from .images import read_image
from .model_file import DescriptorNet

TRAIN_VERSION = 1
CHECKPOINT_VERSION = 1


class _Query(Protocol):
    path: Path
    bbox: tuple[float, float, float, float] | None


class TupleSource(Protocol):
    """What training reads from a dataset: `eval.datasets.RetrievalDataset` has these fields."""

    db_paths: list[Path]
    queries: Sequence[_Query]
    gnd: list[dict[str, np.ndarray]]


@dataclass(frozen=True)
class TrainConfig:
    """epochs: passes over the queries; lr: learning rate of `optimizer` (adam or sgd with `momentum`);
    margin: m of the triplet loss (squared distances of unit vectors, in [0, 4]); l1: lambda of the L1 term;
    positives / negatives: per query; queries_per_step: queries whose tuples make one step;
    image_size: images resized so their longer side has this many pixels (no crop); seed: order of the queries."""

    epochs: int = 5
    lr: float = 1e-5
    optimizer: str = "adam"
    momentum: float = 0.9
    margin: float = 0.1
    l1: float = 0.0
    positives: int = 5
    negatives: int = 5
    queries_per_step: int = 4
    image_size: int = 224
    seed: int = 0
    version: int = TRAIN_VERSION

    def __post_init__(self) -> None:
        for name in ("epochs", "positives", "negatives", "queries_per_step", "image_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "epochs" else 1):
                raise ConfigError(f"training {name} must be a positive integer, got {v!r}")
        if self.optimizer not in ("adam", "sgd"):
            raise ConfigError(f"unknown optimizer {self.optimizer!r}: choose adam or sgd")
        if not self.lr > 0 or self.margin < 0 or self.l1 < 0:
            raise ConfigError("training needs lr > 0, margin >= 0 and l1 >= 0")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown training option(s): {', '.join(sorted(unknown))}")
        return cls(**d)


@dataclass
class TrainResult:
    """The fine-tuned model (on the CPU, eval mode) and its loss curve.

    epoch_loss / epoch_l1: per epoch, the mean triplet loss and the mean L1 term (lambda * sum |W|) over its steps;
    step_loss: the triplet loss of every step, in order (all epochs, resumed ones included).
    """

    model: DescriptorNet
    epoch_loss: list[float]
    epoch_l1: list[float]
    step_loss: list[float]
    epochs_run: int


def triplet_loss(q: torch.Tensor, p: torch.Tensor, n: torch.Tensor, margin: float) -> torch.Tensor:
    """Mean over every (positive, negative) pair of 1/2 max(0, m + |q - p|^2 - |q - n|^2).

    q (d,), p (P, d), n (N, d) -> scalar."""
    dp = ((p - q) ** 2).sum(dim=1)  # (P,)
    dn = ((n - q) ** 2).sum(dim=1)  # (N,)
    return 0.5 * torch.relu(margin + dp[:, None] - dn[None, :]).mean()


def l1_norm(model: DescriptorNet) -> torch.Tensor:
    """sum |W| over the compressible tensors the descriptor depends on (a scalar that carries gradients)."""
    ws = [t for t in model.stored_state().values() if t.requires_grad and is_compressible(t)]
    return torch.stack([w.abs().sum() for w in ws]).sum()


def _image(model: DescriptorNet, path: Path, bbox, size: int) -> torch.Tensor:
    x = read_image(path)
    c = crop_box(bbox, x.shape[1], x.shape[0])  # the pipeline's crop rule (describe.py)
    if c is not None:
        x = x[c[1]:c[3], c[0]:c[2]]
    return preprocess(model.backbone.spec, x, max_size=size)


def _describe(model: DescriptorNet, images: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """(n, d) descriptors of preprocessed images (each size group in one forward), with gradients if enabled."""
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(images):
        groups.setdefault(tuple(t.shape), []).append(i)
    out: list[torch.Tensor | None] = [None] * len(images)
    for idx in groups.values():
        y = model(torch.stack([images[i] for i in idx]).to(device))
        for j, i in enumerate(idx):
            out[i] = y[j]
    return torch.stack(out)


def describe_paths(model: DescriptorNet, paths: list[Path], bboxes: list | None = None, image_size: int = 224,
                   device: str = "cpu", batch_size: int = 32) -> np.ndarray:
    """(n, d) float32 descriptors of image files with `model` (no gradients), images resized as in training
    (longer side ``image_size``), through the engine's one descriptor pipeline (`describe.describe`) so a model
    is measured on the descriptors `retr index` and `retr query` would compute with it."""
    from .describe import describe
    from .encoder import Encoder
    from .encoder_config import EncoderConfig

    c = model.config
    config = EncoderConfig(backbone=c.backbone, weights="model", layer=c.layer, pooling=c.pooling, gem_p=c.gem_p,
                           max_size=image_size, model="<in memory>", model_dim=model.dim)
    got = describe(Encoder.wrap(model.backbone, model.pool, config, device), paths, crops=bboxes,
                   batch_size=batch_size)
    if got.skipped:
        i, reason = next(iter(sorted(got.skipped.items())))
        raise ImageError(f"{paths[i]}: {reason}")
    return got.x


def mine_tuples(xq: np.ndarray, xdb: np.ndarray, gnd: list[dict[str, np.ndarray]], positives: int,
                negatives: int) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """For each query with positives: (query index, positive db indices, hard negative db indices).

    xq (n_q, d), xdb (n_db, d) unit rows; positives: the query's 'ok' ordered by decreasing similarity, the first
    `positives`; negatives: the `negatives` most similar db images outside 'ok' and 'junk'."""
    s = xq @ xdb.T
    out = []
    for i, g in enumerate(gnd):
        ok = np.asarray(g.get("ok", []), np.int64)
        if len(ok) == 0:
            continue
        bad = np.zeros(xdb.shape[0], bool)
        bad[ok] = True
        bad[np.asarray(g.get("junk", []), np.int64)] = True
        cand = np.flatnonzero(~bad)
        if len(cand) == 0:
            continue
        pos = ok[np.argsort(-s[i, ok], kind="stable")[:positives]]
        neg = cand[np.argsort(-s[i, cand], kind="stable")[:negatives]]
        out.append((i, pos, neg))
    return out


# --- checkpoints -------------------------------------------------------------------------------------------------


def _save_checkpoint(path: Path, model: DescriptorNet, opt: torch.optim.Optimizer, config: TrainConfig,
                     epoch: int, curves: dict[str, list[float]]) -> None:
    arrays: dict[str, np.ndarray] = {f"model/{k}": v.detach().cpu().numpy() for k, v in model.stored_state().items()}
    sd = opt.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for i, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                arrays[f"opt/{i}/{k}"] = v.detach().cpu().numpy()
            else:
                scalars.setdefault(str(i), {})[k] = v
    meta = {"format": "retr-train-checkpoint", "version": CHECKPOINT_VERSION, "train": config.to_dict(),
            "model": model.config.to_dict(), "epoch": epoch, "curves": curves,
            "param_groups": sd["param_groups"], "opt_scalars": scalars}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    atomic_write(path, lambda f: np.savez(f, **arrays))


def _load_checkpoint(path: Path, model: DescriptorNet, opt: torch.optim.Optimizer,
                     config: TrainConfig) -> tuple[int, dict[str, list[float]]]:
    """Restore model and optimiser from `path`; returns (epochs done, loss curves)."""
    try:
        z = np.load(path, allow_pickle=False)
        meta = json.loads(z["meta"].tobytes())
    except Exception as e:  # zip, key and JSON errors alike mean an unusable file
        raise ConfigError(f"cannot read checkpoint {path} ({type(e).__name__}): delete it to start over") from None
    if meta.get("format") != "retr-train-checkpoint" or meta.get("version", 0) > CHECKPOINT_VERSION:
        raise ConfigError(f"{path} is not a retr training checkpoint of a known version: delete it to start over")
    if meta["model"] != model.config.to_dict():
        raise ConfigError(f"checkpoint {path} is of another model ({meta['model']['backbone']}, "
                          f"{meta['model']['pooling']}): use another --checkpoint or delete it")
    if replace(TrainConfig.from_dict(meta["train"]), epochs=config.epochs) != config:
        raise ConfigError(f"checkpoint {path} was made with other training options (only --epochs may change): "
                          "use the same options or delete it")
    with torch.no_grad():
        for k, t in model.stored_state().items():
            t.copy_(torch.from_numpy(z[f"model/{k}"]))
    state: dict[int, dict[str, Any]] = {}
    for key in z.files:
        if key.startswith("opt/"):
            _, i, name = key.split("/", 2)
            state.setdefault(int(i), {})[name] = torch.from_numpy(z[key].copy())
    for i, sc in meta["opt_scalars"].items():
        state.setdefault(int(i), {}).update(sc)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return int(meta["epoch"]), meta["curves"]


# --- the loop ---------------------------------------------------------------------------------------------------


def train(model: DescriptorNet, data: TupleSource, config: TrainConfig = TrainConfig(), device: str = "auto",
          checkpoint: str | os.PathLike | None = None, progress: bool = True) -> TrainResult:
    """Fine-tune `model` in place on the tuples of `data` (module doc) for `config.epochs` epochs in total.

    With `checkpoint`: resume from it when it exists (its model and options must match; only epochs may grow),
    and save it after each epoch. Returns the model (moved to the CPU) and the loss curve.
    """
    dev = resolve_device(device)
    model.to(dev).eval()
    params = [t for t in model.stored_state().values() if isinstance(t, torch.nn.Parameter)]
    if config.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=config.lr)
    else:
        opt = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum)
    curves: dict[str, list[float]] = {"epoch_loss": [], "epoch_l1": [], "step_loss": []}
    start = 0
    ckpt = Path(checkpoint) if checkpoint else None
    if ckpt is not None and ckpt.exists():
        start, curves = _load_checkpoint(ckpt, model, opt, config)
    qpaths = [q.path for q in data.queries]
    qboxes = [q.bbox for q in data.queries]
    size = config.image_size
    for epoch in range(start, config.epochs):
        model.eval()
        xdb = describe_paths(model, list(data.db_paths), None, size, str(dev))
        xq = describe_paths(model, qpaths, qboxes, size, str(dev))
        tuples = mine_tuples(xq, xdb, data.gnd, config.positives, config.negatives)
        if not tuples:
            raise ConfigError("no training tuples: every query needs a positive and a negative in the ground truth")
        order = np.random.default_rng([config.seed, epoch]).permutation(len(tuples))
        steps = [order[i:i + config.queries_per_step] for i in range(0, len(order), config.queries_per_step)]
        losses, l1s = [], []
        bar = tqdm(steps, desc=f"epoch {epoch + 1}/{config.epochs}", unit="step", disable=not progress)
        for step in bar:
            opt.zero_grad(set_to_none=True)
            loss = torch.zeros((), device=dev)
            for j in step:
                qi, pos, neg = tuples[j]
                ims = [_image(model, qpaths[qi], qboxes[qi], size)]
                ims += [_image(model, data.db_paths[k], None, size) for k in (*pos, *neg)]
                y = _describe(model, ims, dev).float()
                loss = loss + triplet_loss(y[0], y[1:1 + len(pos)], y[1 + len(pos):], config.margin)
            loss = loss / len(step)
            l1 = config.l1 * l1_norm(model) if config.l1 > 0 else torch.zeros((), device=dev)
            (loss + l1).backward()
            opt.step()
            losses.append(float(loss.detach()))
            l1s.append(float(l1.detach()))
            bar.set_postfix(loss=f"{np.mean(losses):.4f}")
        bar.close()
        curves["epoch_loss"].append(float(np.mean(losses)))
        curves["epoch_l1"].append(float(np.mean(l1s)))
        curves["step_loss"] += losses
        if ckpt is not None:
            _save_checkpoint(ckpt, model, opt, config, epoch + 1, curves)
    model.cpu().eval()
    return TrainResult(model, curves["epoch_loss"], curves["epoch_l1"], curves["step_loss"],
                       max(0, config.epochs - start))
