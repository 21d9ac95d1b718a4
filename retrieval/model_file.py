"""A descriptor network (backbone cut at a layer + pooling, e.g. AlexNet conv + NetVLAD) and its compressed file.

`DescriptorNet` maps normalised images (n, 3, H, W) to (n, d) float32 unit descriptors. Its `stored_state()` is what
the descriptor depends on: the backbone parameters a forward to `layer` uses (for AlexNet's conv layer, the five
convolutions: 2.47M of its 61.1M parameters, the classifier is never run), the buffers of their modules (batch-norm
statistics) and the pooling's parameters (NetVLAD's centres and assignment).

The `.retrm` file (version MODEL_FILE_VERSION), written atomically, no pickle:

    b"RETRMODL" | header length, uint32 little-endian | header, UTF-8 JSON | payload

header: {"format": "retr-model", "version", "model": ModelConfig, "compression": CompressionConfig,
"prune": PruneReport, "dim", "tensors": [{"name", "shape", "dtype", "kind": "dense" | "coded", "mask", "bits",
"n_kept"}], ["whitening": {"bytes", "dims", "n_train"}], "payload_bytes", "payload_sha256"}. The payload holds,
tensor after tensor, in header order:
  dense: the array's bytes (little-endian, C order);
  coded: [the mask, ceil(n / 8) bytes, np.packbits little bit order, when "mask" is true (some weights pruned)]
         then the kept weights in flat order: ceil(n_kept * bits / 8) bytes of packed codes followed by the
         codebook (2**bits float32), or, when bits is null, n_kept float32;
then, version 2 with "whitening" only: the descriptor's PCA-whitening as a `codec.CodecParams` blob ("bytes" long;
reduction pca, whiten, no quantizer: mean (d,), components (p, d), variances (p,) float32, ~4 p d bytes: 16.8 MB for
256 axes of AlexNet + NetVLAD's 16,384 dims). A file without whitening is written as version 1, as before it existed.
So the file's size is 12 + len(header) + the sum of those byte counts; `retr model info` reports it as the memory
usage in MB (10**6 bytes). Loading rebuilds the module on the meta device, allocates it, zeroes it and fills the
stored tensors; parameters the descriptor does not use (AlexNet's classifier) are not stored and load as zeros.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .backbones import DEFAULT_BACKBONE, Backbone, get_spec, load_backbone
from .codec import CodecParams
from .compress import CompressedTensor, CompressionConfig, PruneReport, compress_state, pack_codes, unpack_codes
from .fileio import atomic_write
from .errors import ConfigError, DatabaseError, WeightsUnavailable
from .pooling import LEARNT_POOLINGS, POOLINGS, NetVLAD, Pooling, init_netvlad, l2n

MODEL_FILE_VERSION = 2  # 2: an optional PCA-whitening section; version 1 files (none) still load
MODEL_CONFIG_VERSION = 1
MAGIC = b"RETRMODL"
_LEN = struct.Struct("<I")


@dataclass(frozen=True)
class ModelConfig:
    """The architecture of a descriptor network.

    backbone / layer: a registry name (default `backbones.DEFAULT_BACKBONE`, the one of `retr index`; the paper's
    is alexnet) and its layer (`conv` for any pooling, or a vector layer with pooling None); weights: where the
    backbone's weights came from before fine-tuning or compression (imagenet, none or a path: a record, not
    re-read); pooling: netvlad or one of POOLINGS (None for vector layers); netvlad_k: its K; netvlad_alpha: the
    softness its assignment was initialised with (a record); gem_p: GeM's exponent.
    """

    backbone: str = DEFAULT_BACKBONE
    layer: str = "conv"
    weights: str = "imagenet"
    pooling: str | None = "netvlad"
    netvlad_k: int = 64
    netvlad_alpha: float = 100.0
    gem_p: float = 3.0
    version: int = MODEL_CONFIG_VERSION

    def __post_init__(self) -> None:
        spec = get_spec(self.backbone)
        if self.layer not in spec.layers:
            raise ConfigError(f"backbone {self.backbone} has no layer {self.layer!r}: choose one of "
                              f"{', '.join(spec.layers)}")
        poolings = POOLINGS | LEARNT_POOLINGS
        if self.layer == "conv" and self.pooling not in poolings:
            raise ConfigError(f"unknown pooling {self.pooling!r}: choose one of {', '.join(sorted(poolings))}")
        if self.layer != "conv" and self.pooling is not None:
            raise ConfigError(f"pooling applies to the conv layer only; layer {self.layer!r} is already a vector")
        if isinstance(self.netvlad_k, bool) or not isinstance(self.netvlad_k, int) or self.netvlad_k < 1:
            raise ConfigError(f"NetVLAD needs a positive integer number of clusters, got {self.netvlad_k!r}")

    @property
    def dim(self) -> int:
        """Descriptor dimension d: K * C for NetVLAD, C (or the vector layer's size) otherwise."""
        c = get_spec(self.backbone).layers[self.layer]
        return self.netvlad_k * c if self.pooling == "netvlad" else c

    def describe(self) -> str:
        pool = {None: "", "netvlad": f"+netvlad{self.netvlad_k}"}.get(self.pooling, f"+{self.pooling}")
        return f"{self.backbone}/{self.layer}{pool} (d={self.dim})"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown model option(s): {', '.join(sorted(unknown))}")
        if d.get("version", MODEL_CONFIG_VERSION) > MODEL_CONFIG_VERSION:
            raise ConfigError(f"model configuration version {d['version']} is newer than this retr; upgrade retr")
        return cls(**d)


class DescriptorNet(nn.Module):
    """backbone (a `Backbone`) then pooling: (n, 3, H, W) normalised images -> (n, d) float32 unit rows.

    pool: a `Pooling`, a `NetVLAD`, or None for a vector layer (the layer's output, L2-normalised).
    """

    def __init__(self, config: ModelConfig, backbone: Backbone, pool: nn.Module | None) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.pool = pool

    @property
    def dim(self) -> int:
        return self.config.dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.backbone(x)
        return l2n(y) if self.pool is None else self.pool(y)

    def stored_state(self) -> dict[str, torch.Tensor]:
        """name -> tensor (the live parameters and buffers, not copies) of what the descriptor depends on, in
        `named_parameters` order then buffers (module doc)."""
        used = used_backbone_parameters(self.config.backbone, self.config.layer)
        state: dict[str, torch.Tensor] = {}
        owners = set()
        for name, p in self.backbone.net.named_parameters():
            if name in used:
                state[f"backbone.net.{name}"] = p
                owners.add(name.rpartition(".")[0])
        for name, b in self.backbone.net.named_buffers():
            if name.rpartition(".")[0] in owners:
                state[f"backbone.net.{name}"] = b
        if self.pool is not None:
            for name, t in self.pool.state_dict(keep_vars=True).items():
                state[f"pool.{name}"] = t
        return state


_USED: dict[tuple[str, str], frozenset[str]] = {}


def used_backbone_parameters(backbone: str, layer: str) -> frozenset[str]:
    """Names (in the full classifier's `named_parameters`) of the parameters a forward to `layer` depends on,
    found by a forward and backward pass on the meta device (no memory, no computation)."""
    key = (backbone, layer)
    if key not in _USED:
        spec = get_spec(backbone)
        with torch.device("meta"):
            net = spec.build()
            x = torch.zeros(1, 3, spec.input_size, spec.input_size)
            Backbone(spec, net, layer)(x).sum().backward()
        _USED[key] = frozenset(n for n, p in net.named_parameters() if p.grad is not None)
    return _USED[key]


def build_model(config: ModelConfig, images: list[torch.Tensor] | None = None, weights: str | None = None,
                seed: int = 0, per_image: int = 100) -> DescriptorNet:
    """A new descriptor network: the backbone with `weights` (default config.weights) and, for NetVLAD, centres
    from k-means of local descriptors of `images` (preprocessed (3, h, w) float32 tensors, required then).
    The NetVLAD alpha in the returned model's config is the one derived from the data."""
    backbone = load_backbone(config.backbone, weights or config.weights, config.layer, seed=seed)
    if config.pooling == "netvlad":
        if not images:
            raise ConfigError("NetVLAD needs training images to initialise its centres: pass --train-on")
        pool = init_netvlad(backbone, images, k=config.netvlad_k, per_image=per_image, seed=seed)
        config = ModelConfig(**{**config.to_dict(), "netvlad_alpha": pool.alpha})
    elif config.pooling is None:
        pool = None
    else:
        pool = Pooling(config.pooling, p=config.gem_p)
    return DescriptorNet(config, backbone, pool)


def _empty_model(config: ModelConfig) -> DescriptorNet:
    """The module of `config` with every parameter and buffer allocated on the CPU and zero."""
    spec = get_spec(config.backbone)
    with torch.device("meta"):
        net = spec.build()
    net = net.to_empty(device="cpu")
    if config.pooling == "netvlad":
        pool: nn.Module | None = NetVLAD(spec.layers[config.layer], config.netvlad_k, config.netvlad_alpha)
    elif config.pooling is None:
        pool = None
    else:
        pool = Pooling(config.pooling, p=config.gem_p)
    model = DescriptorNet(config, Backbone(spec, net, config.layer), pool)
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            t.zero_()
    return model.eval()


# --- the file --------------------------------------------------------------------------------------------------


@dataclass
class ModelFile:
    """A read `.retrm`: its configurations, pruning counts, tensors (stored form), size on disk in bytes, and the
    PCA-whitening of its descriptors when it stores one (None otherwise)."""

    path: Path
    config: ModelConfig
    compression: CompressionConfig
    prune: PruneReport
    tensors: dict[str, CompressedTensor]
    file_bytes: int
    header: dict
    whitening: CodecParams | None = None

    @property
    def megabytes(self) -> float:
        """Memory usage in MB (10**6 bytes): the file's size, whitening included."""
        return self.file_bytes / 1e6

    @property
    def whitening_bytes(self) -> int:
        """Bytes of the payload that hold the whitening (0 without)."""
        return int(self.header.get("whitening", {}).get("bytes", 0)) if self.whitening is not None else 0

    def build(self) -> DescriptorNet:
        """The network with the stored tensors decoded to float (eval mode, CPU)."""
        model = _empty_model(self.config)
        state = model.stored_state()
        with torch.no_grad():
            for name, c in self.tensors.items():
                if name not in state:
                    raise WeightsUnavailable(f"{self.path}: tensor {name} does not belong to "
                                             f"{self.config.describe()}; re-create it with retr model compress")
                state[name].copy_(torch.from_numpy(np.array(c.decode())))
        return model


def _tensor_bytes(c: CompressedTensor) -> list[bytes]:
    if c.dense is not None:
        return [np.ascontiguousarray(c.dense).astype(c.dense.dtype.newbyteorder("<")).tobytes()]
    parts = [] if c.mask is None else [np.packbits(c.mask, bitorder="little").tobytes()]
    if c.bits is None:
        parts.append(c.values.astype("<f4").tobytes())
    else:
        parts += [pack_codes(c.codes, c.bits).tobytes(), c.codebook.astype("<f4").tobytes()]
    return parts


def expected_tensor_bytes(n: int, n_kept: int, bits: int | None, masked: bool) -> int:
    """Payload bytes of one coded tensor of n weights of which n_kept are stored (module doc)."""
    index = -(-n // 8) if masked else 0
    return index + (n_kept * 4 if bits is None else -(-n_kept * bits // 8) + 4 * (1 << bits))


def check_whitening(whitening: CodecParams, dim: int) -> None:
    """ConfigError unless `whitening` is a PCA-whitening without quantizer of `dim`-dimensional descriptors."""
    c = whitening.config
    if c.reduction not in ("pca", "dr2") or not c.whiten or c.quantizer != "none" or whitening.input_dim != dim:
        raise ConfigError(f"a model's whitening must be a PCA-whitening without quantizer of its {dim}-dim "
                          f"descriptors, not {whitening.label()} of {whitening.input_dim} dims")


def write_model_file(path: str | os.PathLike, config: ModelConfig, compression: CompressionConfig,
                     tensors: dict[str, CompressedTensor], prune: PruneReport,
                     whitening: CodecParams | None = None) -> Path:
    """Write a `.retrm` atomically (temporary file in the same folder, then os.replace); returns its path.

    whitening: the PCA-whitening of the descriptors (`codec.fit` with reduction pca, whiten, quantizer none) to
    store with the network (version 2); None writes a version 1 file."""
    path = Path(path)
    payload = b"".join(b for c in tensors.values() for b in _tensor_bytes(c))
    extra = {}
    if whitening is not None:
        check_whitening(whitening, config.dim)
        blob = whitening.to_bytes()
        payload += blob
        extra = {"whitening": {"bytes": len(blob), "dims": whitening.dims, "n_train": whitening.n_train}}
    entries = []
    for c in tensors.values():
        e = {"name": c.name, "shape": list(c.shape), "dtype": c.dtype}
        if c.dense is not None:
            e["kind"] = "dense"
        else:
            e.update(kind="coded", mask=c.mask is not None, bits=c.bits, n_kept=c.n_kept)
        entries.append(e)
    header = {"format": "retr-model", "version": MODEL_FILE_VERSION if extra else 1, "model": config.to_dict(),
              "compression": compression.to_dict(), "prune": prune.to_dict(), "dim": config.dim,
              "tensors": entries, **extra, "payload_bytes": len(payload),
              "payload_sha256": hashlib.sha256(payload).hexdigest()}
    head = json.dumps(header, separators=(",", ":")).encode()
    return atomic_write(path, MAGIC + _LEN.pack(len(head)) + head + payload)


def save_model(model: DescriptorNet, path: str | os.PathLike,
               compression: CompressionConfig = CompressionConfig(), whitening: CodecParams | None = None) -> ModelFile:
    """Prune and quantize `model` in place (so it computes what the file will give) and write it to `path`, with
    the PCA-whitening of its descriptors if given."""
    tensors, report = compress_state(model.stored_state(), compression)
    write_model_file(path, model.config, compression, tensors, report, whitening)
    return read_model_file(path)


def store_whitening(path: str | os.PathLike, whitening: CodecParams | None) -> ModelFile:
    """Rewrite the `.retrm` at `path` with the same network (its stored tensors as they are: nothing is compressed
    again) and `whitening` in place of the one it had (None: drop it)."""
    f = read_model_file(path)
    write_model_file(path, f.config, f.compression, f.tensors, f.prune, whitening)
    return read_model_file(path)


def read_model_file(path: str | os.PathLike) -> ModelFile:
    """Read and check a `.retrm` (magic, version, checksum, sizes); WeightsUnavailable with what to do if bad."""
    path = Path(path)
    redo = "re-create it with retr model compress"
    try:
        blob = path.read_bytes()
    except OSError as e:
        raise WeightsUnavailable(f"cannot read model file {path}: {e.strerror}") from None
    if blob[:8] != MAGIC or len(blob) < 12:
        raise WeightsUnavailable(f"{path} is not a retr model file (.retrm): create one with retr model compress")
    (hlen,) = _LEN.unpack_from(blob, 8)
    try:
        header = json.loads(blob[12:12 + hlen])
    except ValueError:
        raise WeightsUnavailable(f"{path}: unreadable header (truncated file?); {redo}") from None
    if header.get("version", 0) > MODEL_FILE_VERSION:
        raise WeightsUnavailable(f"{path} has model file version {header['version']}, newer than this retr; "
                                 "upgrade retr")
    payload = memoryview(blob)[12 + hlen:]
    if len(payload) != header["payload_bytes"] or hashlib.sha256(payload).hexdigest() != header["payload_sha256"]:
        raise WeightsUnavailable(f"{path} is corrupt (size or checksum mismatch); {redo}")
    tensors, pos = {}, 0

    def take(nbytes: int, dtype: str) -> np.ndarray:
        nonlocal pos
        a = np.frombuffer(payload[pos:pos + nbytes], dtype=dtype)
        pos += nbytes
        return a

    for e in header["tensors"]:
        shape = tuple(e["shape"])
        n = int(np.prod(shape, dtype=np.int64))
        if e["kind"] == "dense":
            dt = np.dtype(e["dtype"]).newbyteorder("<")
            a = take(n * dt.itemsize, dt).astype(e["dtype"]).reshape(shape)
            tensors[e["name"]] = CompressedTensor(e["name"], shape, e["dtype"], dense=a)
            continue
        mask = np.unpackbits(take(-(-n // 8), "u1"), count=n, bitorder="little").astype(bool) if e["mask"] else None
        k, bits = int(e["n_kept"]), e["bits"]
        c = CompressedTensor(e["name"], shape, "float32", mask=mask, bits=bits)
        if bits is None:
            c.values = take(4 * k, "<f4").astype(np.float32)
        else:
            c.codes = unpack_codes(take(-(-k * bits // 8), "u1"), k, bits)
            c.codebook = take(4 * (1 << bits), "<f4").astype(np.float32)
        tensors[e["name"]] = c
    whitening = None
    if "whitening" in header:
        try:
            whitening = CodecParams.from_bytes(bytes(take(int(header["whitening"]["bytes"]), "u1")))
            check_whitening(whitening, header["dim"])
        except (DatabaseError, ConfigError) as e:
            raise WeightsUnavailable(f"{path}: its whitening is unreadable ({e}); {redo}") from None
    return ModelFile(path, ModelConfig.from_dict(header["model"]), CompressionConfig.from_dict(header["compression"]),
                     PruneReport.from_dict(header["prune"]), tensors, len(blob), header, whitening)


def load_model_file(path: str | os.PathLike) -> tuple[Backbone, nn.Module | None, int]:
    """(backbone, pooling, d) of a `.retrm`, ready for an encoder: backbone maps (n, 3, H, W) normalised images
    (the backbone's own `preprocess`) to its layer's output, pooling maps that to (n, d) float32 unit rows (None
    for a vector layer: L2-normalise it). Both in eval mode on the CPU, weights decoded to float32."""
    model = read_model_file(path).build()
    return model.backbone, model.pool, model.dim
