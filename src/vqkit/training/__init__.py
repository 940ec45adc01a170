"""Training toolkit: recipes, the trainer loop, checkpoints, metric logs, reports and ablations.

Python entry points mirror the CLI: :func:`train` (``vqkit train``), :func:`write_report`
(``vqkit report``), :func:`run_ablation` (``vqkit ablate``).
"""

from .ablate import LADDER, Rung, run_ablation
from .checkpoint import latest_checkpoint, load_checkpoint, load_model_weights, save_checkpoint
from .evaluate import EvalResult, evaluate
from .logging import MetricLogger, read_metrics
from .presets import get_preset, preset_names
from .recipe import (
    DataConfig,
    LogConfig,
    ModelConfig,
    OptimConfig,
    QuantizerConfig,
    Recipe,
    RecipeError,
    apply_overrides,
    load_recipe,
    to_toml,
)
from .report import write_report
from .trainer import RunResult, build_from_recipe, train

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
    "build_from_recipe",
    "evaluate",
    "EvalResult",
    "save_checkpoint",
    "load_checkpoint",
    "load_model_weights",
    "latest_checkpoint",
    "MetricLogger",
    "read_metrics",
    "write_report",
    "run_ablation",
    "LADDER",
    "Rung",
]
