"""The Fréchet distance between Gaussian fits of two feature sets (the formula behind FID).

``FD = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))``. The trace term is computed as
``tr((A S2 A)^(1/2))`` with ``A = S1^(1/2)``: ``A S2 A`` is symmetric positive semi-definite and has the
eigenvalues of ``S1 S2``, so two symmetric eigendecompositions in float64 (negative round-off
eigenvalues clipped to 0) replace a general, unstable matrix square root. Works for singular
covariances (fewer samples than dimensions, dead features).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["gaussian_fit", "frechet_distance", "feature_frechet_distance", "sqrtm_psd"]


def _as_features(name: str, x: Tensor) -> Tensor:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"{name}: expected features (N, D) with N >= 2, got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name}: expected finite features")
    return x.detach().to("cpu", torch.float64)


def gaussian_fit(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` (float64) of ``features (N, D)``, N >= 2."""
    x = _as_features("features", features)
    mu = x.mean(0)
    xc = x - mu
    return mu, xc.T @ xc / (x.shape[0] - 1)


def sqrtm_psd(s: Tensor) -> Tensor:
    """Symmetric square root of a symmetric PSD matrix ``(D, D)`` (float64; eigenvalues < 0 clipped)."""
    s = (s + s.T) / 2
    w, v = torch.linalg.eigh(s)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> float:
    """Fréchet (2-Wasserstein) distance squared between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``.

    Args:
        mu1, mu2: means ``(D,)``.
        sigma1, sigma2: covariances ``(D, D)`` (symmetric PSD).
    Returns:
        a float >= 0 (computed in float64).
    """
    mu1, mu2, s1, s2 = (t.detach().to("cpu", torch.float64) for t in (mu1, mu2, sigma1, sigma2))
    d = mu1.shape[0]
    for name, mu, s in (("mu1", mu1, s1), ("mu2", mu2, s2)):
        if mu.shape != (d,) or s.shape != (d, d):
            raise ValueError(f"{name}, sigma{name[-1]}: expected shapes ({d},) and ({d}, {d}), "
                             f"got {tuple(mu.shape)} and {tuple(s.shape)}")
    a = sqrtm_psd(s1)
    m = a @ s2 @ a
    tr_sqrt = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum()
    fd = (mu1 - mu2).square().sum() + torch.trace(s1) + torch.trace(s2) - 2 * tr_sqrt
    return max(float(fd), 0.0)


def feature_frechet_distance(a: Tensor, b: Tensor) -> float:
    """:func:`frechet_distance` between the Gaussian fits of feature sets ``a (N, D)`` and ``b (M, D)``."""
    if a.ndim == 2 and b.ndim == 2 and a.shape[1] != b.shape[1]:
        raise ValueError(f"a, b: expected the same feature width, got {tuple(a.shape)} and {tuple(b.shape)}")
    return frechet_distance(*gaussian_fit(a), *gaussian_fit(b))
