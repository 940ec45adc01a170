"""Datasets and models from a recipe: the one place that turns a :class:`~vqkit.training.recipe.Recipe`
into objects (used by the trainer, the report and the ablation)."""

from __future__ import annotations

import torch

from ..data import ImageDataset, load_dataset
from ..models import build_model
from ..models.base import QuantizedModel
from .recipe import Recipe, RecipeError

__all__ = ["load_datasets", "build_from_recipe"]


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
