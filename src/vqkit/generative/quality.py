"""Sample-quality metrics in the feature space of a :class:`~vqkit.generative.features.FeatureNet`.

* ``fd``: Fréchet distance between Gaussian fits of the features of real images and of samples
  (:mod:`vqkit.generative.fid`); lower is better, 0 for identical statistics.
* ``precision`` / ``recall``: improved precision and recall (Kynkäänniemi et al. 2019): the real
  (generated) manifold is the union of balls around each real (generated) feature vector with radius
  its distance to its ``k``-th nearest neighbour in the same set; precision is the fraction of
  generated samples inside the real manifold (fidelity), recall the fraction of real samples inside
  the generated manifold (coverage).
* ``accuracy``: the classifier's accuracy on class-conditional samples against the requested labels.

These numbers use a small classifier trained here on the same dataset, not Inception-v3 on
ImageNet: they are comparable only between runs that use the same cached feature network, never with
published FID values.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from .features import FeatureNet
from .fid import feature_frechet_distance

__all__ = ["SampleQuality", "knn_radii", "precision_recall", "sample_quality"]


def _pairwise(a: Tensor, b: Tensor, chunk: int) -> list[Tensor]:
    return [torch.cdist(a[i:i + chunk], b) for i in range(0, a.shape[0], chunk)]


def knn_radii(features: Tensor, k: int, *, chunk: int = 1024) -> Tensor:
    """Distance ``(N,)`` of each row of ``features (N, D)`` to its ``k``-th nearest other row (float64)."""
    x = features.detach().to("cpu", torch.float64)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < x.shape[0]:
        raise ValueError(f"k: expected an int in [1, {x.shape[0] - 1}] for {x.shape[0]} feature vectors, got {k!r}")
    # the smallest distance of a row is its distance to itself (0): take the (k + 1)-th smallest
    return torch.cat([d.kthvalue(k + 1, dim=1).values for d in _pairwise(x, x, chunk)])


def _coverage(points: Tensor, centers: Tensor, radii: Tensor, chunk: int) -> float:
    """Fraction of ``points`` within ``radii[j]`` of some ``centers[j]``."""
    inside = torch.cat([(d <= radii[None]).any(1) for d in _pairwise(points, centers, chunk)])
    return float(inside.double().mean())


def precision_recall(real: Tensor, fake: Tensor, *, k: int = 3, chunk: int = 1024) -> tuple[float, float]:
    """Improved precision and recall of ``fake (M, D)`` against ``real (N, D)`` (k-NN manifolds)."""
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"real, fake: expected (N, D) and (M, D) features, "
                         f"got {tuple(real.shape)} and {tuple(fake.shape)}")
    r, f = real.detach().to("cpu", torch.float64), fake.detach().to("cpu", torch.float64)
    precision = _coverage(f, r, knn_radii(r, k, chunk=chunk), chunk)
    recall = _coverage(r, f, knn_radii(f, k, chunk=chunk), chunk)
    return precision, recall


@dataclass
class SampleQuality:
    """``fd``, ``precision``, ``recall`` (see the module docstring), ``accuracy`` (None without labels),
    and the numbers of real and generated images used."""

    fd: float
    precision: float
    recall: float
    accuracy: float | None
    n_real: int
    n_fake: int

    def to_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def sample_quality(
    net: FeatureNet,
    real: Tensor,
    fake: Tensor,
    fake_labels: Tensor | None = None,
    *,
    k: int = 3,
    batch_size: int = 500,
) -> SampleQuality:
    """All metrics of generated images against real ones.

    Args:
        net: the feature network (fixed, trained on the same dataset).
        real: real images ``(N, C, H, W)`` in ``[0, 1]`` (e.g. the test split).
        fake: generated (or reconstructed) images ``(M, C, H, W)`` in ``[0, 1]``.
        fake_labels: int64 ``(M,)`` labels the samples were conditioned on (gives ``accuracy``).
        k: neighbourhood size of precision / recall.
        batch_size: images per forward of ``net``.
    """
    real_f, _ = net.features_and_logits(real, batch_size=batch_size)
    fake_f, fake_logits = net.features_and_logits(fake, batch_size=batch_size)
    accuracy = None
    if fake_labels is not None:
        if fake_labels.shape != (fake.shape[0],):
            raise ValueError(f"fake_labels: expected shape ({fake.shape[0]},), got {tuple(fake_labels.shape)}")
        accuracy = float((fake_logits.argmax(1) == fake_labels.cpu()).double().mean())
    precision, recall = precision_recall(real_f, fake_f, k=k)
    return SampleQuality(feature_frechet_distance(real_f, fake_f), precision, recall, accuracy,
                         int(real.shape[0]), int(fake.shape[0]))
