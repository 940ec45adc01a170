"""Adapter giving vqtorch's ``VectorQuant`` (the library of Huh et al. 2023, the paper vqkit follows) the
vqkit quantizer contract.

Registered as the optional quantizer ``"vqtorch"``: the authors' own rows of the paper-shaped table
(``vqkit ablate --rungs vqtorch-base vqtorch-affine ...``, see ``docs/results/README.md``). vqtorch is not
on PyPI; install it from its repository (no CUDA needed for what this adapter uses)::

    git clone https://github.com/minyoungg/vqtorch
    pip install --no-deps -e vqtorch                  # its setup.py also pins the CUDA-only torchpq
    pip install string-color==1.2.3 "setuptools<71"   # vqtorch imports stringcolor, which needs pkg_resources

(or put the clone on ``PYTHONPATH``). The wrapped layer is used as is: this adapter only flattens the input
to ``(1, N, dim)`` rows (vqtorch's ``dim=-1`` layout), turns vqtorch's ``(z_q, dict)`` into a
:class:`~vqkit.quantizers.base.QuantizerOutput`, and adds usage / perplexity stats with
:mod:`vqkit.metrics`, so its logs and tables read like vqkit's.

What each argument switches on in vqtorch (``vqtorch.nn.VectorQuant``):

* ``affine_lr > 0``: the learned affine re-parameterization ``c = (1 + a s) w + a b`` (``a = affine_lr``),
  the same parameterization as vqkit's ``codebook={"kind": "affine", "lr": a}``.
* ``sync_nu > 0``: the synchronized update ``z + sg(q - z) + nu q - sg(nu q)``.
* ``replace_freq > 0``: its LRU replacement: a code unused for ``replace_freq`` training calls is re-seeded
  from a random input vector (plus 1% noise), written to the *raw* codebook weights.
* ``inplace_lr > 0``: its in-place alternating optimizer: inside ``forward`` one SGD step
  (``lr = inplace_lr``, ``momentum = inplace_momentum``) on ``mean((q - sg(z))^2)`` over the raw codebook,
  then the output is formed from the updated codes. vqtorch allows it only with ``beta = 1.0`` (no
  commitment term reaches the encoder) and it cannot be combined with ``affine_lr`` (the in-place backward
  frees the affine graph the training loss needs: "Trying to backward through the graph a second time"),
  which this adapter rejects up front.
* ``beta``: the loss is ``(1 - beta) ||z - sg(q)||^2 + beta ||sg(z) - q||^2`` (means), vqkit's
  ``commitment_weight = 1 - beta``, ``codebook_weight = beta``.

vqtorch's k-means init needs the CUDA-only ``torchpq`` and is not offered. The in-place optimizer's
momentum is not part of the state dict, so a resumed run with ``inplace_lr`` is not bit-identical.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..metrics import index_stats
from ..quantizers.base import IndexLayout, Quantizer, QuantizerOutput, flatten_input, restore_channel_dim
from ..quantizers.registry import register_quantizer
from ..validation import check_float, check_int

__all__ = ["VqtorchVectorQuantizer", "VQTORCH_INSTALL"]

#: how to install vqtorch (it is not on PyPI)
VQTORCH_INSTALL = ("git clone https://github.com/minyoungg/vqtorch && pip install --no-deps -e vqtorch && "
                   "pip install string-color==1.2.3 'setuptools<71'")


def _import_vqtorch() -> type:
    try:
        from vqtorch.nn import VectorQuant
    except ImportError as e:
        raise ImportError(f"quantizer.kind = 'vqtorch' needs vqtorch (not on PyPI): {VQTORCH_INSTALL} "
                          f"({type(e).__name__}: {e})") from e
    return VectorQuant


@register_quantizer("vqtorch", example=dict(codebook_size=16))
class VqtorchVectorQuantizer(Quantizer):
    """vqtorch's ``VectorQuant`` (Huh et al. 2023's own library) behind the vqkit quantizer contract (optional).

    Args:
        dim: input channels.
        codebook_size: K (vqtorch's ``num_codes``).
        beta: vqtorch's loss split, ``(1 - beta)`` commitment, ``beta`` codebook (default 0.95, vqtorch's).
        sync_nu: synchronized-update weight (0 = off).
        affine_lr: learning-rate multiplier of the affine re-parameterization (0 = off).
        affine_groups: groups of codes with their own affine parameters.
        replace_freq: LRU replacement after this many unused training calls (0 = off).
        inplace_lr: learning rate of vqtorch's in-place alternating SGD step (0 = off; needs ``beta=1.0``
            and ``affine_lr=0``).
        inplace_momentum: momentum of that SGD step.
        channel_dim: channel axis (``1`` for ``B x C x H x W``).

    Shapes: as every vqkit quantizer: ``x (..., dim)`` -> same shape; ``indices`` int64 without the channel
    axis; ``loss`` scalar (vqtorch's). Only the valid rows of a ``mask`` / ``lens`` reach vqtorch (its
    replacement counts and in-place step then see no padding). In eval mode the output is the codes
    themselves, so ``decode(indices)`` reproduces it exactly.
    """

    def __init__(self, dim: int, codebook_size: int, *, beta: float = 0.95, sync_nu: float = 0.0,
                 affine_lr: float = 0.0, affine_groups: int = 1, replace_freq: int = 0, inplace_lr: float = 0.0,
                 inplace_momentum: float = 0.9, channel_dim: int = -1) -> None:
        super().__init__(dim, channel_dim)
        self.codebook_size = check_int("codebook_size", codebook_size, 1)
        beta = check_float("beta", beta, low=0.0, high=1.0)
        sync_nu = check_float("sync_nu", sync_nu, low=0.0)
        affine_lr = check_float("affine_lr", affine_lr, low=0.0)
        check_int("affine_groups", affine_groups, 1)
        replace_freq = check_int("replace_freq", replace_freq, 0)
        if replace_freq == 1:
            raise ValueError("replace_freq: vqtorch's replacement needs a timeout > 1 (or 0 = off), got 1")
        inplace_lr = check_float("inplace_lr", inplace_lr, low=0.0)
        inplace_momentum = check_float("inplace_momentum", inplace_momentum, low=0.0, high=1.0)
        optimizer = None
        if inplace_lr > 0:
            if beta != 1.0:
                raise ValueError(f"beta: vqtorch's in-place optimizer (inplace_lr > 0) needs beta=1.0, got {beta}")
            if affine_lr > 0:
                raise ValueError("inplace_lr: vqtorch cannot combine its in-place alternating optimizer with "
                                 "affine_lr > 0 (the in-place backward frees the affine graph the training loss "
                                 "needs: 'Trying to backward through the graph a second time'); use one of them")

            def optimizer(params: Any) -> torch.optim.Optimizer:
                return torch.optim.SGD(params, lr=inplace_lr, momentum=inplace_momentum)

        self.config = dict(beta=beta, sync_nu=sync_nu, affine_lr=affine_lr, affine_groups=affine_groups,
                           replace_freq=replace_freq, inplace_lr=inplace_lr, inplace_momentum=inplace_momentum)
        self.vq = _import_vqtorch()(dim, self.codebook_size, beta=beta, sync_nu=sync_nu, affine_lr=affine_lr,
                                    affine_groups=affine_groups, replace_freq=replace_freq,
                                    inplace_optimizer=optimizer, dim=-1)

    @property
    def index_layout(self) -> IndexLayout:
        return IndexLayout((), (self.codebook_size,))

    @property
    def codebook(self) -> Tensor:
        """``(K, dim)`` effective code vectors (after vqtorch's affine transform), detached."""
        return self.vq.get_codebook().detach()

    def forward(self, x: Tensor, mask: Tensor | None = None, *, lens: Tensor | None = None) -> QuantizerOutput:
        flat, valid, lead = flatten_input(self, x, mask, lens)
        rows = flat if valid is None else flat[valid]
        indices = torch.zeros(flat.shape[0], dtype=torch.int64, device=flat.device)
        out_flat = torch.zeros_like(flat)
        if rows.shape[0] == 0:
            loss = flat.new_zeros((), dtype=torch.float32)
        else:
            z_q, info = self.vq(rows.unsqueeze(0))
            q = info["q"].reshape(-1).long()
            loss = info["loss"].reshape(()).float()
            # eval: the codes themselves (vqtorch's z + sg(q - z) equals them only up to rounding)
            rows_out = z_q.reshape(-1, self.dim) if self.training else F.embedding(q, self.codebook).to(flat.dtype)
            if valid is None:
                indices, out_flat = q, rows_out
            else:
                indices = indices.masked_scatter(valid, q)
                out_flat = out_flat.masked_scatter(valid[:, None], rows_out)  # differentiable in rows_out
        indices = indices.reshape(lead)
        stats = index_stats(indices.detach(), (self.codebook_size,),
                            mask=None if valid is None else valid.reshape(lead))
        out = restore_channel_dim(out_flat.reshape(*lead, self.dim).to(x.dtype), self.channel_dim)
        return QuantizerOutput(out, indices, loss, stats)

    def decode_codes(self, indices: Tensor) -> Tensor:
        """``(...)`` indices -> ``(..., dim)`` codes, channel-last."""
        return F.embedding(indices, self.codebook)
