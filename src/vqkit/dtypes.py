"""The one dtype rule of vqkit's numerics: statistics, distances and losses are computed in at least fp32.

fp16/bf16 inputs are promoted to fp32 (bf16 distances pick a different code for a large share of tokens,
fp16 overflows once squared norms pass 65504); fp64 stays fp64.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["accumulation_dtype"]


def accumulation_dtype(*values: Tensor | torch.dtype) -> torch.dtype:
    """fp32 for fp16 / bf16 / fp32 (and integer) tensors or dtypes, fp64 if any of them is fp64."""
    acc = torch.float32
    for v in values:
        dt = v if isinstance(v, torch.dtype) else v.dtype
        if dt.is_floating_point:
            acc = torch.promote_types(acc, dt)
    return acc
