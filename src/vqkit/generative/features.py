"""The feature network of the sample-quality metrics: a small CNN classifier trained here, deterministically.

:class:`FeatureNet` maps images ``(B, C, H, W)`` in ``[0, 1]`` to penultimate-layer features
``(B, feature_dim)`` and class logits. :func:`train_feature_net` trains it on a dataset's training split
on the CPU, single-threaded, from a fixed seed with a deterministic data order, for a fixed number of
steps: the same call on the same machine and torch build gives bit-identical weights. It is cached as
``feature_net.safetensors`` + ``feature_net.json`` in a directory (:func:`load_or_train_feature_net`),
so every run compared against it uses one and the same network.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import ImageDataset
from ..training.rundir import FEATURE_NET_FILE, FEATURE_NET_INFO_FILE
from .order import batch_indices

__all__ = ["FeatureNet", "FeatureNetConfig", "train_feature_net", "save_feature_net", "load_feature_net",
           "load_or_train_feature_net", "classifier_accuracy", "FEATURE_NET_FILES"]

FEATURE_NET_FILES = (FEATURE_NET_FILE, FEATURE_NET_INFO_FILE)
_FORMAT = 1


class FeatureNet(nn.Module):
    """Three 3x3 conv layers (widths w, 2w, 4w; the last two stride 2), global average pooling, a hidden
    linear layer (the features, after ReLU) and a linear classifier.

    Args:
        image_shape: ``(C, H, W)``.
        num_classes: output classes.
        width: w.
        feature_dim: width of the penultimate layer (the feature space).

    Shapes: ``x (B, C, H, W)`` -> ``logits (B, num_classes)``; :meth:`features` -> ``(B, feature_dim)``.
    """

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int, *, width: int = 32,
                 feature_dim: int = 128) -> None:
        super().__init__()
        c = image_shape[0]
        self.image_shape = tuple(image_shape)
        self.body = nn.Sequential(
            nn.Conv2d(c, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(4 * width, feature_dim), nn.ReLU(),
        )
        self.classifier = nn.Linear(feature_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features ``(B, feature_dim)`` of images ``(B, C, H, W)``."""
        if x.ndim != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(f"x: expected images (B, {', '.join(map(str, self.image_shape))}), got {tuple(x.shape)}")
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))

    @torch.no_grad()
    def features_and_logits(self, images: Tensor, *, batch_size: int = 500) -> tuple[Tensor, Tensor]:
        """Features ``(N, feature_dim)`` and logits ``(N, num_classes)`` (float32, CPU) of ``images``
        ``(N, C, H, W)`` in ``[0, 1]``, computed in eval mode in batches on the network's device."""
        if not isinstance(images, Tensor) or not images.is_floating_point():
            raise TypeError(f"images: expected a float tensor in [0, 1], got {getattr(images, 'dtype', type(images))}")
        device = next(self.parameters()).device
        feats, logits, was_training = [], [], self.training
        self.eval()
        try:
            for i in range(0, images.shape[0], batch_size):
                f = self.features(images[i:i + batch_size].to(device, torch.float32))
                feats.append(f.cpu())
                logits.append(self.classifier(f).cpu())
        finally:
            self.train(was_training)
        return torch.cat(feats), torch.cat(logits)


@dataclass
class FeatureNetConfig:
    """How a feature network is trained (stored in ``feature_net.json``; a cache hit needs equality)."""

    dataset: str = ""
    image_shape: tuple[int, int, int] = (1, 8, 8)
    num_classes: int = 10
    width: int = 32
    feature_dim: int = 128
    steps: int = 1000
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["image_shape"] = list(self.image_shape)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureNetConfig:
        d = dict(d)
        d["image_shape"] = tuple(d["image_shape"])
        return cls(**d)


def train_feature_net(
    train_set: ImageDataset,
    *,
    steps: int = 1000,
    batch_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    width: int = 32,
    feature_dim: int = 128,
) -> tuple[FeatureNet, FeatureNetConfig]:
    """Train a :class:`FeatureNet` on ``train_set`` deterministically (CPU, one thread, AdamW, cross-entropy,
    data order from ``seed``); the global RNG and thread count are left as they were."""
    if steps < 1:
        raise ValueError(f"steps: expected an int >= 1, got {steps!r}")
    config = FeatureNetConfig(train_set.name.split("/")[0], train_set.image_shape, train_set.num_classes, width,
                              feature_dim, steps, batch_size, lr, weight_decay, seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = FeatureNet(train_set.image_shape, train_set.num_classes, width=width, feature_dim=feature_dim)
        decay = [p for p in net.parameters() if p.ndim >= 2]
        other = [p for p in net.parameters() if p.ndim < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                 {"params": other, "weight_decay": 0.0}], lr=lr)
        net.train()
        with torch.enable_grad():  # also when called under torch.no_grad()
            for step in range(steps):
                x, y = train_set.get_batch(batch_indices(len(train_set), batch_size, seed, step), "cpu")
                loss = F.cross_entropy(net(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    net.eval()
    return net, config


def classifier_accuracy(net: FeatureNet, dataset: ImageDataset, *, batch_size: int = 500) -> float:
    """Classification accuracy of ``net`` on ``dataset``."""
    x, y = dataset.get_batch(torch.arange(len(dataset)), "cpu")
    _, logits = net.features_and_logits(x, batch_size=batch_size)
    return float((logits.argmax(1) == y).double().mean())


def save_feature_net(net: FeatureNet, config: FeatureNetConfig, directory: str | Path,
                     info: dict[str, Any] | None = None) -> Path:
    """Write ``feature_net.safetensors`` + ``feature_net.json`` (config and ``info``) into ``directory``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights, meta = (directory / name for name in FEATURE_NET_FILES)
    tmp = directory / f".{weights.name}.tmp-{os.getpid()}"
    save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(tmp))
    os.replace(tmp, weights)
    tmp = directory / f".{meta.name}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps({"format": _FORMAT, "config": config.to_dict(), "info": info or {}}, indent=1) + "\n")
    os.replace(tmp, meta)
    return weights


def load_feature_net(directory: str | Path) -> tuple[FeatureNet, FeatureNetConfig, dict[str, Any]]:
    """Read a feature network saved by :func:`save_feature_net`: (net in eval mode, config, info)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    weights, meta = (directory / name for name in FEATURE_NET_FILES)
    if not (weights.is_file() and meta.is_file()):
        raise FileNotFoundError(f"{directory}: no feature network ({FEATURE_NET_FILES[0]} + {FEATURE_NET_FILES[1]})")
    data = json.loads(meta.read_text())
    if data.get("format") != _FORMAT:
        raise ValueError(f"{meta}: feature network format {data.get('format')!r}, expected {_FORMAT}")
    config = FeatureNetConfig.from_dict(data["config"])
    net = FeatureNet(config.image_shape, config.num_classes, width=config.width, feature_dim=config.feature_dim)
    net.load_state_dict(load_file(str(weights), device="cpu"), strict=True)
    return net.eval(), config, data.get("info", {})


def load_or_train_feature_net(
    directory: str | Path,
    train_set: ImageDataset,
    test_set: ImageDataset | None = None,
    **train_kwargs: Any,
) -> tuple[FeatureNet, dict[str, Any]]:
    """The cached feature network of ``directory``, trained (and saved) first if absent.

    Args:
        directory: where ``feature_net.*`` live (e.g. a run directory).
        train_set: its training split.
        test_set: when given, the test accuracy is recorded in the JSON at training time.
        **train_kwargs: :func:`train_feature_net` arguments (``steps``, ``seed``, ...).
    Returns:
        the network (eval mode) and its info (``test_accuracy``, ``wall_time_s``).
    Raises:
        ValueError: the directory holds a network trained with other settings (the message lists them).
    """
    import time

    directory = Path(directory)
    if all((directory / name).is_file() for name in FEATURE_NET_FILES):
        net, config, info = load_feature_net(directory)
        requested = _kwargs_to_config(train_set, train_kwargs)
        wanted = FeatureNetConfig.from_dict({**FeatureNetConfig().to_dict(), **requested})
        if wanted != config:
            w = wanted.to_dict()
            diff = {k: (v, w[k]) for k, v in config.to_dict().items() if w[k] != v}
            raise ValueError(f"{directory}: the cached feature network was trained with other settings "
                             f"(cached, requested): {diff}; use another directory or delete {FEATURE_NET_FILES}")
        return net, info
    _kwargs_to_config(train_set, train_kwargs)  # unknown arguments fail before training
    started = time.perf_counter()
    net, config = train_feature_net(train_set, **train_kwargs)
    info: dict[str, Any] = {"wall_time_s": round(time.perf_counter() - started, 3), "torch": torch.__version__}
    if test_set is not None:
        info["test_accuracy"] = classifier_accuracy(net, test_set)
    save_feature_net(net, config, directory, info)
    return net, info


def _kwargs_to_config(train_set: ImageDataset, kwargs: dict[str, Any]) -> dict[str, Any]:
    allowed = {"steps", "batch_size", "lr", "weight_decay", "seed", "width", "feature_dim"}
    unknown = set(kwargs) - allowed
    if unknown:
        raise ValueError(f"unknown feature-network argument(s) {sorted(unknown)}; valid: {sorted(allowed)}")
    return {"dataset": train_set.name.split("/")[0], "image_shape": list(train_set.image_shape),
            "num_classes": train_set.num_classes, **kwargs}
