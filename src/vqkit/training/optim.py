"""Optimizer and learning-rate schedule from an :class:`~vqkit.training.recipe.OptimConfig`.

The schedule is a pure function of the step (set into the param groups before every step), so there is
no scheduler state to checkpoint.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .recipe import OptimConfig

__all__ = ["param_groups", "build_optimizer", "lr_at"]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights with 2+ dims outside ``model.quantizer`` get ``weight_decay``; biases, norm
    parameters and every quantizer parameter (codebooks, affine, latent values) get none."""
    quantizer = getattr(model, "quantizer", None)
    in_quantizer = {id(p) for p in quantizer.parameters()} if quantizer is not None else set()
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and id(p) not in in_quantizer else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


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
