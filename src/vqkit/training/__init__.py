"""Training toolkit: recipes, the trainer loop, checkpoints, metric logs, reports and ablations.

Python entry points mirror the CLI: :func:`train` (``vqkit train``; then :func:`write_report` when the
recipe's ``log.report`` is on, as the CLI does), :func:`write_report` (``vqkit report``),
:func:`run_ablation` (``vqkit ablate``), :func:`set_threads` (``--threads``).

Module layout (imports only point down this list, no cycles): ``rundir`` (file names), ``console``
(status lines, progress bars), ``threads``, ``presets`` (data) -> ``recipe`` -> ``build`` (datasets,
models), ``optim``, ``sampling``, ``objective``, ``parallel``, ``logging``, ``checkpoint``, ``evaluate``,
``plots`` -> ``resume`` -> ``trainer`` -> ``report`` -> ``ablate``.
"""

from .ablate import run_ablation
from .rungs import LADDER, RUNGS, TABLES, Rung
from .build import build_from_recipe, load_datasets, load_trained_run
from .checkpoint import (
    Checkpoint,
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    load_model_weights,
    read_checkpoint,
    save_checkpoint,
)
from .evaluate import EvalResult, evaluate, evaluate_levels
from .logging import MetricLogger, MetricsFileError, read_metrics
from .presets import preset_names
from .recipe import (
    DataConfig,
    LogConfig,
    ModelConfig,
    OptimConfig,
    QuantizerConfig,
    Recipe,
    RecipeError,
    apply_overrides,
    get_preset,
    load_recipe,
    to_toml,
)
from .report import write_report
from .resume import resume_recipe
from .rundir import RunDir
from .threads import set_threads
from .trainer import RunResult, TrainingInterrupted, train

__all__ = [
    "Recipe",
    "DataConfig",
    "ModelConfig",
    "QuantizerConfig",
    "OptimConfig",
    "LogConfig",
    "RecipeError",
    "load_recipe",
    "apply_overrides",
    "to_toml",
    "get_preset",
    "preset_names",
    "train",
    "RunResult",
    "TrainingInterrupted",
    "resume_recipe",
    "build_from_recipe",
    "load_trained_run",
    "load_datasets",
    "evaluate",
    "evaluate_levels",
    "EvalResult",
    "save_checkpoint",
    "load_checkpoint",
    "read_checkpoint",
    "load_model_weights",
    "latest_checkpoint",
    "Checkpoint",
    "CheckpointError",
    "MetricLogger",
    "MetricsFileError",
    "read_metrics",
    "RunDir",
    "set_threads",
    "write_report",
    "run_ablation",
    "LADDER",
    "RUNGS",
    "TABLES",
    "Rung",
]
