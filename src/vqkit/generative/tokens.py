"""Token maps of a dataset split: encode with a trained tokenizer, save / load (safetensors), decode.

A token file is one safetensors file with two int64 tensors and JSON metadata::

    indices   (N, h, w, *trailing)   the quantizer's code indices (its own layout: (N, h, w),
                                     (N, h, w, C) or (N, h, w, G, L))
    labels    (N,)                   class labels of the encoded images
    metadata  {"format": "vqkit-tokens", "version": 2, "spec": TokenSpec.to_dict()}

Version 2 records the trailing index axes as a list of sizes; version-1 files (a bool) are still read.

A *tokenizer* is any model with ``encode(x) -> latents``, a ``quantizer`` and
``decode_indices(indices) -> images`` (e.g. :class:`vqkit.models.VQVAE`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..data import ImageDataset
from .layout import TokenSpec, index_layout

__all__ = [
    "TokenSet",
    "encode_dataset",
    "decode_tokens",
    "save_tokens",
    "load_tokens",
    "tokenizer_fingerprint",
    "check_tokenizer",
    "TOKENS_FORMAT",
]

TOKENS_FORMAT = "vqkit-tokens"
TOKENS_VERSION = 2
_READABLE_VERSIONS = ("1", "2")


@dataclass
class TokenSet:
    """Token maps of ``N`` images.

    Attributes:
        spec: grid, index layout, classes and tokenizer hash.
        indices: int64 ``(N, h, w, *trailing)`` (``spec.index_shape()`` per map).
        labels: int64 ``(N,)`` in ``[0, spec.num_classes)``.
    """

    spec: TokenSpec
    indices: Tensor
    labels: Tensor

    def __post_init__(self) -> None:
        self.validate("tokens")

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def content_hash(self) -> str:
        """SHA-256 (hex) of the spec, indices and labels (identifies the data a prior was trained on)."""
        h = hashlib.sha256(json.dumps(self.spec.to_dict(), sort_keys=True).encode())
        for t in (self.indices, self.labels):
            h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def sequences(self) -> Tensor:
        """Raster-order token sequences ``(N, L, C)`` (what the priors take)."""
        return self.spec.to_sequences(self.indices)

    def validate(self, where: str) -> None:
        """Raise a ValueError / TypeError naming ``where`` and what is wrong."""
        spec, idx, lab = self.spec, self.indices, self.labels
        for name, t in (("indices", idx), ("labels", lab)):
            if not isinstance(t, Tensor):
                raise TypeError(f"{where}: {name}: expected a torch.Tensor, got {type(t).__name__}")
            if t.dtype != torch.int64:
                raise TypeError(f"{where}: {name}: expected dtype torch.int64, got {t.dtype}")
        expected = spec.index_shape()
        if idx.ndim != 1 + len(expected) or tuple(idx.shape[1:]) != expected:
            raise ValueError(f"{where}: indices: expected shape (N, {', '.join(map(str, expected))}) for grid "
                             f"{spec.grid} and trailing index axes {spec.layout.trailing}, "
                             f"got {tuple(idx.shape)}")
        if lab.shape != idx.shape[:1]:
            raise ValueError(f"{where}: labels: expected shape ({idx.shape[0]},) to match indices, "
                             f"got {tuple(lab.shape)}")
        try:
            spec.layout.check("indices", spec.layout.to_columns(idx))
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        if lab.numel() and (int(lab.min()) < 0 or int(lab.max()) >= spec.num_classes):
            raise ValueError(f"{where}: labels: expected values in [0, {spec.num_classes}), "
                             f"got range [{int(lab.min())}, {int(lab.max())}]")


def _axes_text(trailing: tuple[int, ...]) -> str:
    return "".join(f", {a}" for a in trailing)


def check_tokenizer(tokenizer: object) -> nn.Module:
    """Raise a TypeError unless ``tokenizer`` has ``encode``, ``quantizer`` and ``decode_indices``."""
    missing = [a for a in ("encode", "quantizer", "decode_indices") if not hasattr(tokenizer, a)]
    if not isinstance(tokenizer, nn.Module) or missing:
        raise TypeError(f"tokenizer: expected an nn.Module with encode, quantizer and decode_indices (e.g. a VQVAE), "
                        f"got {type(tokenizer).__name__}" + (f" lacking {', '.join(missing)}" if missing else ""))
    return tokenizer


def _device_of(module: nn.Module) -> torch.device:
    return next((p.device for p in module.parameters()), torch.device("cpu"))


def tokenizer_fingerprint(model: nn.Module | Mapping[str, Tensor], recipe: Mapping[str, Any] | None = None) -> str:
    """SHA-256 (hex) of ``recipe`` (as sorted JSON) and every tensor of ``model.state_dict()`` (or of the
    given tensors: a checkpoint's as stored, so a conversion on load does not change the fingerprint).

    Two tokenizers share a fingerprint only if they have the same recipe and bit-identical weights and
    buffers, so a token file can be matched to the tokenizer that decodes it.
    """
    h = hashlib.sha256()
    h.update(json.dumps(dict(recipe or {}), sort_keys=True, default=str).encode())
    tensors = model.state_dict() if isinstance(model, nn.Module) else model
    for name, t in sorted(tensors.items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@torch.no_grad()
def encode_dataset(
    tokenizer: nn.Module,
    dataset: ImageDataset,
    *,
    tokenizer_hash: str,
    batch_size: int = 500,
    limit: int = 0,
) -> TokenSet:
    """Encode ``dataset`` into token maps with ``tokenizer`` (in eval mode, on its own device).

    Args:
        tokenizer: a trained tokenizer (``encode``, ``quantizer``, ``decode_indices``).
        dataset: the split to encode; its labels are kept.
        tokenizer_hash: identifies the tokenizer (e.g. :func:`tokenizer_fingerprint`); stored in the spec.
        batch_size: images per forward.
        limit: encode only the first ``limit`` images (0 = all).
    Returns:
        :class:`TokenSet` with indices ``(N, h, w, *trailing)`` on the CPU.
    Raises:
        ValueError: the quantizer has no enumerable codebook (see :func:`index_layout`), or its indices
            do not have the expected ``(B, h, w, *trailing)`` shape.
    """
    check_tokenizer(tokenizer)
    layout = index_layout(tokenizer.quantizer)
    device = _device_of(tokenizer)
    n = len(dataset) if limit <= 0 else min(limit, len(dataset))
    if n < 1:
        raise ValueError(f"dataset: expected at least one image to encode, got {len(dataset)} (limit={limit})")
    parts, was_training = [], tokenizer.training
    tokenizer.eval()
    try:
        for start in range(0, n, batch_size):
            x, _ = dataset.get_batch(torch.arange(start, min(start + batch_size, n)), device)
            idx = tokenizer.quantizer(tokenizer.encode(x)).indices
            if idx.ndim != 3 + len(layout.trailing) or tuple(idx.shape[3:]) != layout.trailing:
                raise ValueError(f"tokenizer: expected indices (B, h, w{_axes_text(layout.trailing)}), "
                                 f"got {tuple(idx.shape)}")
            parts.append(idx.to("cpu", torch.int64))
    finally:
        tokenizer.train(was_training)
    indices = torch.cat(parts)
    grid = (int(indices.shape[1]), int(indices.shape[2]))
    spec = TokenSpec(grid, layout, dataset.num_classes, tokenizer_hash, dataset.name)
    return TokenSet(spec, indices, dataset.labels[:n].to("cpu", torch.int64).clone())


@torch.no_grad()
def decode_tokens(tokenizer: nn.Module, indices: Tensor, *, batch_size: int = 500, clamp: bool = True) -> Tensor:
    """Token maps ``(N, h, w, *trailing)`` (the quantizer's layout) -> images ``(N, C_img, H, W)`` float32 on the CPU.

    The tokenizer runs in eval mode on its own device; ``clamp`` clips the images to ``[0, 1]``.
    """
    check_tokenizer(tokenizer)
    layout = index_layout(tokenizer.quantizer)
    if not isinstance(indices, Tensor) or indices.dtype != torch.int64:
        raise TypeError(f"indices: expected an int64 tensor, got {getattr(indices, 'dtype', type(indices).__name__)}")
    if indices.ndim != 3 + len(layout.trailing) or tuple(indices.shape[3:]) != layout.trailing:
        raise ValueError(f"indices: expected shape (N, h, w{_axes_text(layout.trailing)}) for this tokenizer, "
                         f"got {tuple(indices.shape)}")
    layout.check("indices", layout.to_columns(indices))
    device = _device_of(tokenizer)
    out, was_training = [], tokenizer.training
    tokenizer.eval()
    try:
        for start in range(0, indices.shape[0], batch_size):
            images = tokenizer.decode_indices(indices[start:start + batch_size].to(device)).float()
            out.append((images.clamp(0, 1) if clamp else images).cpu())
    finally:
        tokenizer.train(was_training)
    return torch.cat(out)


def save_tokens(tokens: TokenSet, path: str | Path) -> Path:
    """Write ``tokens`` to ``path`` (safetensors, written to a temporary file and renamed into place)."""
    from safetensors.torch import save_file

    tokens.validate("tokens")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": TOKENS_FORMAT, "version": str(TOKENS_VERSION), "spec": json.dumps(tokens.spec.to_dict())}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file({"indices": tokens.indices.contiguous(), "labels": tokens.labels.contiguous()}, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return path


def load_tokens(path: str | Path, *, tokenizer_hash: str | None = None) -> TokenSet:
    """Read and validate a token file written by :func:`save_tokens`.

    Args:
        path: the ``.safetensors`` token file.
        tokenizer_hash: when given, the file's tokenizer hash must equal it.
    Raises:
        FileNotFoundError: no such file.
        ValueError: not a vqkit token file, or its content is inconsistent (the message names the file and
            the problem: metadata, shapes, dtypes, value ranges, tokenizer hash).
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such token file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            names = set(f.keys())
            tensors = {k: f.get_tensor(k) for k in ("indices", "labels") if k in names}
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    if meta.get("format") != TOKENS_FORMAT:
        raise ValueError(f"{path}: not a vqkit token file (metadata format {meta.get('format')!r}, "
                         f"expected {TOKENS_FORMAT!r})")
    if meta.get("version") not in _READABLE_VERSIONS:
        raise ValueError(f"{path}: token file version {meta.get('version')!r}, this vqkit reads versions "
                         f"{', '.join(_READABLE_VERSIONS)}")
    missing = [k for k in ("indices", "labels") if k not in tensors]
    if missing:
        raise ValueError(f"{path}: missing tensor(s) {', '.join(missing)}")
    try:
        spec = TokenSpec.from_dict(json.loads(meta["spec"]))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: invalid token spec in the metadata ({e})") from None
    if tokenizer_hash is not None and spec.tokenizer_hash != tokenizer_hash:
        raise ValueError(f"{path}: tokens come from tokenizer {spec.tokenizer_hash[:16]}..., expected "
                         f"{tokenizer_hash[:16]}... (re-encode the split with this tokenizer)")
    tokens = TokenSet.__new__(TokenSet)
    tokens.spec, tokens.indices, tokens.labels = spec, tensors["indices"], tensors["labels"]
    tokens.validate(str(path))
    return tokens
