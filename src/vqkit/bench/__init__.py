"""The benchmark suite behind ``vqkit bench`` (also ``python -m vqkit.bench``).

One run measures, over a grid of N tokens x K codes x D dims, the forward + backward time and the peak
memory of vqkit's :class:`~vqkit.quantizers.VectorQuantizer` next to the bare matmul + argmin floors and
vector-quantize-pytorch (the ``[bench]`` extra), each case in a fresh process, plus a VQ-VAE training step
with either quantizer; results go to ``benchmarks/results/<tag>.json`` and ``.md``. See
``benchmarks/README.md``.
"""

from .cli import build_parser, main

__all__ = ["main", "build_parser"]
