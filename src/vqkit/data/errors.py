"""Errors raised by the dataset loaders."""

from __future__ import annotations

import os
from collections.abc import Sequence

from .paths import ENV_VAR

__all__ = ["DatasetFormatError", "DatasetNotFoundError"]


class DatasetFormatError(ValueError):
    """A dataset file exists but is corrupt, truncated or not in the expected format."""


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files were not found; the message lists every path tried and how to get the data.

    Attributes:
        dataset: registry name of the dataset.
        tried: the paths (files or directories) that were looked at, in order.
    """

    def __init__(self, dataset: str, wanted: str, tried: Sequence[str | os.PathLike[str]], hint: str) -> None:
        self.dataset = dataset
        self.tried = [str(p) for p in tried]
        lines = [f"{dataset}: could not find {wanted}.", "Looked in:"]
        lines += [f"  {p}" for p in self.tried] or [
            f"  (nowhere: root=None, ${ENV_VAR} is not set, and {dataset} has no default location)"
        ]
        lines.append(f"How to get it: {hint}")
        super().__init__("\n".join(lines))
