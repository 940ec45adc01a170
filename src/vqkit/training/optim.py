"""Optimizer and learning-rate schedule from an :class:`~vqkit.training.recipe.OptimConfig`.

The schedule is a pure function of the step (set into the param groups before every step), so there is
no scheduler state to checkpoint.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..quantizers import latent_quantization_param_groups
from .recipe import OptimConfig

__all__ = ["param_groups", "build_optimizer", "lr_at"]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights with 2+ dims outside ``model.quantizer`` get ``weight_decay``; biases, norm
    parameters and every quantizer parameter (codebooks, affine, latent values) get none.

    Built by the library's one weight-decay group builder
    (:func:`vqkit.latent_quantization_param_groups`, which already exempts biases, norms and latent
    values) with the extra exemptions of this toolkit: 1-d parameters and the quantizer's parameters.
    """
    quantizer = getattr(model, "quantizer", None)
    in_quantizer = {id(p) for p in quantizer.parameters()} if quantizer is not None else set()
    return latent_quantization_param_groups(
        model, weight_decay, no_decay=lambda name, p: p.ndim < 2 or id(p) in in_quantizer)


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """``adamw`` / ``adam`` / ``sgd`` (with momentum) over :func:`param_groups`."""
    groups = param_groups(model, cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas))
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    raise ValueError(f"optim.name: expected adamw, adam or sgd, got {cfg.name!r}")


def lr_at(cfg: OptimConfig, step: int, total_steps: int) -> float:
    """Learning rate of (0-based) ``step``: linear warm-up, then constant or cosine decay to 0."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "cosine":
        span = max(1, total_steps - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.lr
