"""Where loaders look for dataset files: an explicit ``root``, else ``$VQKIT_DATA``, else a default.

Resolution order for a dataset (no path is ever created and nothing is downloaded):

1. ``root=`` given to :func:`vqkit.data.load_dataset`: only there (no fallback).
2. otherwise each directory in the environment variable ``VQKIT_DATA`` (several allowed, separated by
   ``os.pathsep``), then the dataset's default directory, if it has one.

Each base directory is tried as-is and with the dataset's usual sub-folder names appended (e.g.
``<base>/fashion-mnist``, ``<base>/cifar-10-batches-py``), so ``root`` may point either at the folder that
holds the files or at its parent.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["ENV_VAR", "PathLike", "base_dirs", "candidate_dirs"]

ENV_VAR = "VQKIT_DATA"
PathLike = str | os.PathLike[str]


def base_dirs(root: PathLike | None, defaults: Sequence[PathLike] = ()) -> list[Path]:
    """The base directories to search: ``[root]`` if given, else ``$VQKIT_DATA`` entries then ``defaults``."""
    if root is not None:
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(f"root: expected a path (str or os.PathLike) or None, got {type(root).__name__}")
        return [Path(root).expanduser()]
    env = os.environ.get(ENV_VAR, "")
    bases = [Path(p).expanduser() for p in env.split(os.pathsep) if p.strip()]
    return bases + [Path(d) for d in defaults]


def candidate_dirs(
    root: PathLike | None, subdirs: Sequence[str] = (), defaults: Sequence[PathLike] = ()
) -> list[Path]:
    """Every directory to try, in order: each base itself, then each base joined with each of ``subdirs``."""
    out: list[Path] = []
    for base in base_dirs(root, defaults):
        for d in [base, *(base / s for s in subdirs)]:
            if d not in out:
                out.append(d)
    return out
