"""Datasets and models from a recipe: the one place that turns a :class:`~vqkit.training.recipe.Recipe`
into objects (used by the trainer, the report and the ablation)."""

from __future__ import annotations

import torch

from pathlib import Path

from ..data import ImageDataset, load_dataset
from ..models import build_model
from ..models.base import QuantizedModel
from .checkpoint import latest_checkpoint, load_model_weights
from .recipe import Recipe, RecipeError, load_recipe
from .rundir import RunDir

__all__ = ["load_datasets", "build_from_recipe", "load_trained_run"]


def load_datasets(recipe: Recipe) -> tuple[ImageDataset, ImageDataset]:
    """The train and test splits of ``recipe.data`` (``root = ""`` means the loader's default)."""
    root = recipe.data.root or None
    return (load_dataset(recipe.data.dataset, "train", root), load_dataset(recipe.data.dataset, "test", root))


def _argument_error(recipe: Recipe, error: Exception) -> RecipeError:
    """``error`` from a model / quantizer constructor as a recipe error naming the dotted key."""
    message = str(error)
    name = message.split(":", 1)[0].strip()
    for section, args in (("quantizer", recipe.quantizer.args), ("model", recipe.model.args)):
        if name in args:
            return RecipeError(f"{section}.{message}")
    return RecipeError(f"model / quantizer arguments ({recipe.model.kind}, {recipe.quantizer.kind}): {message}")


def build_from_recipe(recipe: Recipe, dataset: ImageDataset) -> QuantizedModel:
    """The recipe's model (with its quantizer) for images like ``dataset``'s, seeded by ``recipe.seed``.

    Raises:
        RecipeError: an argument of the model or quantizer has a wrong type or value; the message names
            its key (e.g. ``quantizer.codebook_size: expected an int >= 1, got 'abc' (str)``).
    """
    torch.manual_seed(recipe.seed)
    try:
        return build_model(recipe.model.kind, dataset.image_shape, dataset.num_classes, recipe.quantizer_spec(),
                           **recipe.model.args)
    except ImportError:
        raise
    except (TypeError, ValueError) as e:
        raise _argument_error(recipe, e) from None


def load_trained_run(run_dir: str | Path) -> tuple[Recipe, QuantizedModel, ImageDataset, ImageDataset]:
    """The latest checkpoint of a ``vqkit train`` run directory: its recipe, its model (in eval mode) and its
    (train, test) splits.

    Raises:
        FileNotFoundError: ``run_dir`` holds no checkpoint.
    """
    run = RunDir(run_dir)
    recipe = load_recipe(str(run.recipe))
    train_ds, test_ds = load_datasets(recipe)
    model = build_from_recipe(recipe, test_ds)
    checkpoint = latest_checkpoint(run.root)
    if checkpoint is None:
        raise FileNotFoundError(f"run_dir: {run.root} holds no checkpoint")
    load_model_weights(checkpoint, model)
    return recipe, model.eval(), train_ds, test_ds
