"""The names of everything in a run directory, in one place.

::

    <run>/recipe.toml       the resolved recipe (what ``--resume`` continues)
    <run>/metrics.jsonl     per-step train records and held-out ("test") records
    <run>/checkpoints/      step_<N>/{model,optimizer,rng}.safetensors + state.json, and ``latest``
    <run>/run.json          summary: final held-out metrics, wall time, world size, threads, versions
    <run>/report.md         ``vqkit report`` (written by ``vqkit train`` at the end when ``log.report``)
    <run>/plots/            the report's PNG plots
    <run>/tensorboard/      with ``log.tensorboard = true``

An ablation directory holds ``ablation.md``, ``ablation.json``, ``curves_<metric>.png`` and one run
directory per configuration and seed, ``<rung>/seed<k>`` (``<variant>/<rung>/seed<k>`` when recipe values are
varied); a run directory of an ablation also keeps ``budgets.json`` (the held-out metrics and wall time at each
step budget it was evaluated for) and, beside it, ``seed<k>.lock`` while a process trains it.

The generative stage (:mod:`vqkit.generative`) adds::

    <tokenizer run>/tokens/<split>.safetensors   ``vqkit encode``: token maps of a split
    <tokenizer run>/features/                    the metric's feature network (feature_net.safetensors + .json)
    <prior run>/prior.json                        the prior's kind, arguments, training config, token spec
    <prior run>/samples.png                       a grid of class-conditional samples (the report's)

and a generative comparison (``vqkit genablate``) holds ``generative.md``, ``generative.json``, the shared
``features/`` and ``<row>/seed<k>/{tokenizer,prior}``.

Every other module asks :class:`RunDir` (or the constants here) for a path; no file name is spelled
anywhere else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "RunDir",
    "RECIPE_FILE",
    "METRICS_FILE",
    "SUMMARY_FILE",
    "REPORT_FILE",
    "PLOTS_DIR",
    "TENSORBOARD_DIR",
    "CHECKPOINT_DIR",
    "LATEST_FILE",
    "STATE_FILE",
    "MODEL_FILE",
    "OPTIMIZER_FILE",
    "RNG_FILE",
    "ABLATION_TABLE_FILE",
    "ABLATION_JSON_FILE",
    "BUDGETS_FILE",
    "PRIOR_FILE",
    "TOKENS_DIR",
    "FEATURES_DIR",
    "FEATURE_NET_FILE",
    "FEATURE_NET_INFO_FILE",
    "SAMPLES_FILE",
    "GENERATIVE_TABLE_FILE",
    "GENERATIVE_JSON_FILE",
    "TMP_PREFIX",
    "OLD_PREFIX",
    "CORRUPT_PREFIX",
    "checkpoint_name",
    "checkpoint_step",
    "ablation_run_dir",
    "ablation_run_dirs",
    "run_lock_file",
    "curves_file",
    "generative_run_dirs",
]

RECIPE_FILE = "recipe.toml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "run.json"
REPORT_FILE = "report.md"
PLOTS_DIR = "plots"
TENSORBOARD_DIR = "tensorboard"
CHECKPOINT_DIR = "checkpoints"
LATEST_FILE = "latest"
STATE_FILE = "state.json"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng.safetensors"
ABLATION_TABLE_FILE = "ablation.md"
ABLATION_JSON_FILE = "ablation.json"
BUDGETS_FILE = "budgets.json"
PRIOR_FILE = "prior.json"
TOKENS_DIR = "tokens"
FEATURES_DIR = "features"
FEATURE_NET_FILE = "feature_net.safetensors"
FEATURE_NET_INFO_FILE = "feature_net.json"
SAMPLES_FILE = "samples.png"
GENERATIVE_TABLE_FILE = "generative.md"
GENERATIVE_JSON_FILE = "generative.json"

# prefixes inside checkpoints/: a checkpoint being written, one being replaced, one set aside as corrupt
TMP_PREFIX = ".tmp-"
OLD_PREFIX = ".old-"
CORRUPT_PREFIX = ".corrupt-"

_STEP_RE = re.compile(r"^step_(\d{8,})$")


def checkpoint_name(step: int) -> str:
    """``step_00000600`` for step 600."""
    return f"step_{int(step):08d}"


def checkpoint_step(name: str) -> int | None:
    """The step of a checkpoint directory name (``step_00000600`` -> 600), None for other names."""
    m = _STEP_RE.match(name)
    return int(m.group(1)) if m else None


def ablation_run_dir(out: str | Path, rung: str, seed: int, variant: str = "") -> Path:
    """The run directory of one (rung, seed) of an ablation in ``out`` (under ``variant/`` when given)."""
    root = Path(out) / variant if variant else Path(out)
    return root / rung / f"seed{seed}"


def ablation_run_dirs(out: str | Path, rung: str, variant: str = "") -> list[Path]:
    """The existing run directories of one rung of an ablation in ``out``, in seed order (not the
    ``seed<k>.lock`` files beside them)."""
    root = ablation_run_dir(out, rung, 0, variant).parent
    runs = [r for r in root.glob("seed*") if r.is_dir() and r.name[4:].isdigit()]
    return sorted(runs, key=lambda r: int(r.name[4:]))


def run_lock_file(run_dir: str | Path) -> Path:
    """The lock file a process holds while it trains ``run_dir`` (beside it, so removing an outdated run
    directory leaves the lock alone)."""
    run_dir = Path(run_dir)
    return run_dir.with_name(f"{run_dir.name}.lock")


def curves_file(out: str | Path, metric: str, variant: str = "") -> Path:
    """The overlaid curves of ``metric`` in an ablation directory (one file per variant when given)."""
    return Path(out) / (f"curves_{variant}_{metric}.png" if variant else f"curves_{metric}.png")


def generative_run_dirs(out: str | Path, row: str, seed: int) -> tuple[Path, Path]:
    """``(tokenizer run, prior run)`` of one (row, seed) of a generative comparison in ``out``."""
    root = Path(out) / row / f"seed{seed}"
    return root / "tokenizer", root / "prior"


@dataclass(frozen=True)
class RunDir:
    """Paths of one run directory (nothing is created or read here)."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def recipe(self) -> Path:
        return self.root / RECIPE_FILE

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_FILE

    @property
    def summary(self) -> Path:
        return self.root / SUMMARY_FILE

    @property
    def budgets(self) -> Path:
        return self.root / BUDGETS_FILE

    @property
    def report(self) -> Path:
        return self.root / REPORT_FILE

    @property
    def plots(self) -> Path:
        return self.root / PLOTS_DIR

    def plot(self, name: str) -> Path:
        """``plots/<name>.png``."""
        return self.plots / f"{name}.png"

    @property
    def tensorboard(self) -> Path:
        return self.root / TENSORBOARD_DIR

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINT_DIR

    @property
    def latest_pointer(self) -> Path:
        return self.checkpoints / LATEST_FILE

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / checkpoint_name(step)

    def step_dirs(self) -> list[tuple[int, Path]]:
        """``(step, dir)`` of every ``step_<N>`` directory, oldest first (complete or not)."""
        if not self.checkpoints.is_dir():
            return []
        found = [(checkpoint_step(p.name), p) for p in self.checkpoints.iterdir() if p.is_dir()]
        return sorted((s, p) for s, p in found if s is not None)

    def tokens(self, split: str) -> Path:
        """``tokens/<split>.safetensors``: the token maps of a dataset split (``vqkit encode``)."""
        return self.root / TOKENS_DIR / f"{split}.safetensors"

    @property
    def features(self) -> Path:
        """``features/``: the cached feature network of the sample-quality metrics."""
        return self.root / FEATURES_DIR

    @property
    def prior_info(self) -> Path:
        """``prior.json`` of a prior run."""
        return self.root / PRIOR_FILE

    @property
    def samples(self) -> Path:
        """``samples.png`` of a prior run."""
        return self.root / SAMPLES_FILE

    def leftovers(self) -> list[Path]:
        """Temporary directories and files of interrupted checkpoint writes (safe to delete)."""
        if not self.checkpoints.is_dir():
            return []
        return sorted(p for p in self.checkpoints.iterdir() if p.name.startswith((TMP_PREFIX, OLD_PREFIX)))

    def holds_run(self) -> bool:
        """True when a run was started here (a metrics log, checkpoints or a recipe exist)."""
        return self.metrics.exists() or self.checkpoints.exists() or self.recipe.exists()
