"""What is measured: the floors, vqkit's quantizer, the peer's, and a VQ-VAE training step.

Every case is a zero-argument ``step()`` built by :func:`build`. Quantizer cases time one training step,
forward + backward (no optimizer step), from a fresh leaf ``z (N, D)`` with a fixed upstream gradient on
the quantized output plus the layer's auxiliary loss. Floor cases time the forward search only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..quantizers.vector import PAPER as PAPER_KWARGS

__all__ = ["CASE_KINDS", "MODEL_KINDS", "DESCRIPTIONS", "PAPER_KWARGS", "PEER_KWARGS", "MODEL_SHAPE",
           "model_shape", "model_tokens",
           "predict_bytes", "build", "peer_available"]

#: vqkit with the paper's fixes: affine re-parameterization + synchronized update + alternating step, and
#: k-means init + dead-code replacement (which run only in the warm-up: see DESCRIPTIONS).
PEER_KWARGS = {"peer_ema": {}, "peer_learnable": dict(learnable_codebook=True, ema_update=False)}

CASE_KINDS = ("floor", "floor_chunked", "vqkit_plain", "vqkit_paper", "peer_ema", "peer_learnable")
MODEL_KINDS = ("vqkit_paper", "vqkit_plain", "peer_ema", "peer_learnable")

DESCRIPTIONS = {
    "floor": "bare `torch.argmin(z @ C.T, dim=1)`: forward only, materializes the N x K matrix",
    "floor_chunked": "bare chunked floor: `torch.mm(z[rows], C.T, out=buf)` + `torch.argmin(buf, 1)` per chunk "
                     "into one reused buffer allocated outside the timing, forward only (rows tuned per shape among 1/4/16/64 "
                     "MiB blocks, at most N/2 rows)",
    "vqkit_plain": "`vqkit.VectorQuantizer(D, K, **PLAIN_STE)`: straight-through, no fixes; forward + backward",
    "vqkit_paper": "`vqkit.VectorQuantizer(D, K, codebook='affine', sync_nu=1.0, alternating_steps=1, "
                   "alternating_lr=1.0, kmeans_init=True, dead_code_steps=20)`; forward + backward. k-means init runs in the first "
                   "warm-up step only; dead-code replacement needs 20 steps without use, more steps than one "
                   "process runs, so it never fires (its per-step check does run)",
    "peer_ema": "`vector_quantize_pytorch.VectorQuantize(dim=D, codebook_size=K)` defaults (EMA codebook, "
                "decay 0.8); forward + backward",
    "peer_learnable": "`VectorQuantize(dim=D, codebook_size=K, learnable_codebook=True, ema_update=False)`; "
                      "forward + backward",
}

#: the VQ-VAE of the model-level rows: (batch, channels, height, width), downsample, hidden width.
MODEL_SHAPE = dict(batch=128, channels=3, size=32, downsample=2, hidden=64)
#: the ``--quick`` variant.
MODEL_SHAPE_QUICK = dict(MODEL_SHAPE, batch=16, hidden=16)


def model_shape(quick: bool = False) -> dict:
    return MODEL_SHAPE_QUICK if quick else MODEL_SHAPE


def model_tokens(quick: bool = False) -> int:
    s = model_shape(quick)
    return s["batch"] * (s["size"] // 2 ** s["downsample"]) ** 2

MiB = 2**20


def peer_available() -> bool:
    try:
        import vector_quantize_pytorch  # noqa: F401
    except ImportError:
        return False
    return True


def predict_bytes(kind: str, n: int, k: int, d: int, model: bool = False) -> int:
    """Predicted peak extra memory of one case (bytes), to skip cases that cannot fit the machine.

    The peer's 6.5 x N x K x 4 bytes is its measured ratio here (6.1-6.6 at N=4096-8192, K=8192).
    """
    base = 64 * MiB + (200 * MiB if model else 0)
    if kind == "floor":
        return base + 4 * n * k
    if kind == "floor_chunked":
        return base + 64 * MiB
    if kind.startswith("vqkit"):
        return base + 32 * MiB + 24 * n * d * 4 + 12 * k * d * 4
    if kind.startswith("peer"):
        return base + int(6.5 * 4 * n * k) + 16 * n * d * 4
    raise ValueError(f"kind: unknown case {kind!r}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _chunked_floor(z: torch.Tensor, c: torch.Tensor) -> tuple[Callable[[], None], dict]:
    n, k = z.shape[0], c.shape[0]
    ct = c.t()
    out = torch.empty(n, dtype=torch.int64, device=z.device)

    def make(rows: int, upto: int) -> Callable[[], None]:
        buf = torch.empty(rows * k, device=z.device)

        def run() -> None:
            for s in range(0, upto, rows):
                e = min(s + rows, upto)
                sc = buf[: (e - s) * k].view(e - s, k)
                torch.mm(z[s:e], ct, out=sc)
                torch.argmin(sc, dim=1, out=out[s:e])

        return run

    # tune the rows on a prefix of the input (time is linear in N); at most N / 2 rows per chunk, so the
    # N x K matrix is never whole
    sub = min(n, 4096)
    cap = max(1, min(sub, n // 2))
    options = sorted({min(cap, max(1, (mib * MiB) // (4 * k))) for mib in (1, 4, 16, 64)})
    timings = {}
    for rows in options:
        f = make(rows, sub)
        f()
        t0 = time.perf_counter()
        f()
        _sync(z.device)
        timings[rows] = time.perf_counter() - t0
    rows = min(timings, key=timings.get)
    return make(rows, n), {"rows": rows, "tuning_s": {str(r): round(t, 5) for r, t in timings.items()}}


def _quantizer(kind: str, d: int, k: int, channel_dim: int = -1) -> torch.nn.Module:
    from ..quantizers import PLAIN_STE, make_quantizer

    if kind.startswith("vqkit"):
        kwargs = PLAIN_STE if kind == "vqkit_plain" else PAPER_KWARGS
        return make_quantizer("vq", d, codebook_size=k, channel_dim=channel_dim, **kwargs)
    if kind.startswith("peer"):
        if channel_dim != -1:  # the model rows need the contract's layout: the adapter
            return make_quantizer("vqpytorch", d, codebook_size=k, channel_dim=channel_dim, **PEER_KWARGS[kind])
        # the quantizer rows time the peer's own layer, without the adapter
        from vector_quantize_pytorch import VectorQuantize

        return VectorQuantize(dim=d, codebook_size=k, **PEER_KWARGS[kind])
    raise ValueError(f"kind: unknown quantizer {kind!r}")


def build(spec: dict, device: torch.device) -> tuple[Callable[[], None], dict]:
    """``spec``: ``{"kind", "n", "k", "d", "seed"}`` (plus ``"model": true`` for the VQ-VAE rows).

    Returns ``(step, info)``; ``step()`` runs one measured unit and synchronizes the device.
    """
    kind, k, d = spec["kind"], spec["k"], spec["d"]
    torch.manual_seed(spec.get("seed", 0))
    if spec.get("model"):
        return _build_model(kind, k, d, device, bool(spec.get("quick")))
    n = spec["n"]
    z = torch.randn(n, d, device=device)
    info: dict = {}
    if kind == "floor":
        c = torch.randn(k, d, device=device)

        def step() -> None:
            torch.argmin(z @ c.t(), dim=1)
            _sync(device)

        return step, info
    if kind == "floor_chunked":
        c = torch.randn(k, d, device=device)
        run, info = _chunked_floor(z, c)

        def step() -> None:
            run()
            _sync(device)

        return step, info

    layer = _quantizer(kind, d, k).to(device).train()
    grad = torch.randn(n, d, device=device)
    peer = kind.startswith("peer")
    x_in = z.view(1, n, d) if peer else z
    g_in = grad.view(1, n, d) if peer else grad

    def step() -> None:
        leaf = x_in.detach().requires_grad_()
        out = layer(leaf)
        quantized, loss = out[0], out[2]
        torch.autograd.backward([quantized, loss.sum()], [g_in, None])
        layer.zero_grad(set_to_none=True)
        _sync(device)

    return step, info


def _build_model(kind: str, k: int, d: int, device: torch.device, quick: bool) -> tuple[Callable[[], None], dict]:
    s = model_shape(quick)
    make = lambda dim, channel_dim: _quantizer(kind, dim, k, channel_dim)  # noqa: E731
    from ..models import VQVAE

    model = VQVAE((s["channels"], s["size"], s["size"]), make_quantizer=make, hidden=s["hidden"], latent_dim=d,
                  downsample=s["downsample"])
    source = "vqkit.models.VQVAE"
    model = model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.rand(s["batch"], s["channels"], s["size"], s["size"], device=device)
    tokens = s["batch"] * (s["size"] // 2 ** s["downsample"]) ** 2

    def step() -> None:
        out = model(x)
        loss = F.mse_loss(out.output, x) + out.quant.loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)

    return step, {"model": source, "tokens": tokens, "params": sum(p.numel() for p in model.parameters())}


def flops_matmul(n: int, k: int, d: int) -> float:
    return 2.0 * n * k * d


def fmt_bytes(b: float | None) -> str:
    if b is None or (isinstance(b, float) and math.isnan(b)):
        return "-"
    return f"{b / MiB:.0f} MiB" if b < 2**30 else f"{b / 2**30:.2f} GiB"
