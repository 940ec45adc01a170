"""Recipes: everything a training run needs, as dataclasses that round-trip through TOML.

A recipe file looks like::

    name = "digits-vqvae"
    seed = 0
    steps = 600
    batch_size = 128          # global batch (split over ranks under torchrun)
    device = "auto"           # auto | cpu | cuda | cuda:N
    bf16 = false              # bfloat16 autocast for the forward pass

    [data]
    dataset = "digits"        # any name of vqkit.data.available_datasets()

    [model]
    kind = "vqvae"            # vqvae | alexnet | resnet18 | vit; other keys: the model's arguments
    latent_dim = 16
    downsample = 1

    [quantizer]
    kind = "vq"               # a registered quantizer: vq | grouped_vq | residual_vq | fsq | latent | ... (vqkit.list_quantizers())
    loss_weight = 10.0        # the trainer adds loss_weight * quantizer loss to the task loss
    codebook_size = 256       # other keys: the quantizer's arguments ("none" means None)

    [optim]
    name = "adamw"
    lr = 1e-3

    [log]
    eval_every = 100

A ``[model]`` / ``[quantizer]`` table replaces the default one as a whole (its ``kind`` and arguments);
missing keys of the other tables take their defaults. Overrides (``--set key=value``) address keys by
dotted path, e.g. ``steps=20``, ``quantizer.codebook_size=512``, ``optim.lr=3e-4``; values are typed by
the field (TOML syntax for lists: ``quantizer.levels=[8,5,5,5]``), and an inline table replaces a whole
section: ``quantizer={kind="fsq", levels=[8,5,5,5]}``. Unknown keys raise a ValueError naming the key
and listing the valid ones.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any, TypeVar

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from ..models.factory import MODEL_KINDS, model_arguments, quantizer_arguments, quantizer_kinds
from .presets import preset_data, preset_names

__all__ = [
    "DataConfig",
    "ModelConfig",
    "QuantizerConfig",
    "OptimConfig",
    "LogConfig",
    "Recipe",
    "RecipeError",
    "load_recipe",
    "read_recipe_file",
    "get_preset",
    "parse_overrides",
    "parse_arg_value",
    "apply_overrides",
    "to_toml",
    "recipe_differences",
]

NONE_STRING = "none"  # how None is written in TOML (which has no null) for model/quantizer arguments
OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("constant", "cosine")


class RecipeError(ValueError):
    """A recipe key or value is invalid; the message names the key."""


@dataclass
class DataConfig:
    """``dataset``: registry name; ``root``: where its files are (``""`` = the loader's default /
    ``$VQKIT_DATA``); ``eval_batch_size``: batch of the held-out evaluation; ``eval_limit``: evaluate on
    the first N test images only (0 = all)."""

    dataset: str = "digits"
    root: str = ""
    eval_batch_size: int = 1000
    eval_limit: int = 0


@dataclass
class ModelConfig:
    """``kind`` (see :data:`~vqkit.models.factory.MODEL_KINDS`) and the model's keyword ``args``."""

    kind: str = "vqvae"
    args: dict[str, Any] = field(default_factory=lambda: {"hidden": 64, "latent_dim": 16, "downsample": 1})


@dataclass
class QuantizerConfig:
    """``kind`` (a registered quantizer name, see :func:`vqkit.list_quantizers`), the weight of its loss in the total
    loss, and its keyword ``args`` (the defaults of the class apply to the others)."""

    kind: str = "vq"
    loss_weight: float = 10.0
    args: dict[str, Any] = field(default_factory=lambda: {"codebook_size": 256})


@dataclass
class OptimConfig:
    """Optimizer (``adamw`` | ``adam`` | ``sgd``) and learning-rate schedule.

    Weight decay applies to weights with 2+ dims outside the quantizer (never to biases, norms or
    codebooks). ``schedule``: ``constant`` or ``cosine`` (to 0 at the last step), after ``warmup_steps``
    of linear warm-up. ``grad_clip`` > 0 clips the global gradient norm.
    """

    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    momentum: float = 0.9
    schedule: str = "constant"
    warmup_steps: int = 0
    grad_clip: float = 0.0


@dataclass
class LogConfig:
    """``every``: steps between train-metric records (1 = every step); ``eval_every``: steps between
    held-out evaluations (0 = only at the end); ``checkpoint_every``: steps between checkpoints (0 = no
    step-based ones); ``checkpoint_minutes``: also checkpoint when this much wall time passed since the
    last one (0 = off); a checkpoint is always written at the last step and on Ctrl-C / SIGTERM;
    ``keep_checkpoints``: how many to keep; ``tensorboard``: also write TensorBoard events;
    ``progress``: progress bar and status lines; ``report``: ``vqkit train`` writes ``report.md`` + plots
    at the end."""

    every: int = 1
    eval_every: int = 100
    checkpoint_every: int = 100
    checkpoint_minutes: float = 10.0
    keep_checkpoints: int = 3
    tensorboard: bool = False
    progress: bool = True
    report: bool = True


@dataclass
class Recipe:
    """A complete training run. ``batch_size`` is the global batch: under ``torchrun`` with N ranks each
    rank takes ``batch_size / N`` examples of every batch (must divide)."""

    name: str = "digits-vqvae"
    seed: int = 0
    steps: int = 600
    batch_size: int = 128
    device: str = "auto"
    bf16: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    log: LogConfig = field(default_factory=LogConfig)

    # ------------------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        """Build from nested dicts (as read from TOML) and validate; unknown keys raise RecipeError."""
        recipe = cls()
        for key, value in data.items():
            _set_section_or_field(recipe, key, value)
        recipe.validate()
        return recipe

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dicts; ``model`` / ``quantizer`` args are flattened next to ``kind``."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (ModelConfig, QuantizerConfig)):
                d = {k: v for k, v in dataclasses.asdict(value).items() if k != "args"}
                d.update(value.args)
                out[f.name] = d
            elif dataclasses.is_dataclass(value):
                out[f.name] = dataclasses.asdict(value)
            else:
                out[f.name] = value
        return out

    def validate(self) -> Recipe:
        """Check values and the model / quantizer argument names; returns ``self``."""
        for name in ("seed",):
            _check_int(name, getattr(self, name), 0)
        _check_int("steps", self.steps, 1)
        _check_int("batch_size", self.batch_size, 1)
        _check_int("data.eval_batch_size", self.data.eval_batch_size, 1)
        _check_int("data.eval_limit", self.data.eval_limit, 0)
        _check_choice("model.kind", self.model.kind, MODEL_KINDS)
        _check_choice("quantizer.kind", self.quantizer.kind, tuple(quantizer_kinds()))
        _check_choice("optim.name", self.optim.name, OPTIMIZERS)
        _check_choice("optim.schedule", self.optim.schedule, SCHEDULES)
        if not (isinstance(self.device, str) and (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"))):
            raise RecipeError(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        if not self.optim.lr > 0:
            raise RecipeError(f"optim.lr: expected a float > 0, got {self.optim.lr}")
        for name in ("weight_decay", "grad_clip", "momentum"):
            if getattr(self.optim, name) < 0:
                raise RecipeError(f"optim.{name}: expected a float >= 0, got {getattr(self.optim, name)}")
        if len(self.optim.betas) != 2 or not all(0 <= b < 1 for b in self.optim.betas):
            raise RecipeError(f"optim.betas: expected two floats in [0, 1), got {self.optim.betas}")
        _check_int("optim.warmup_steps", self.optim.warmup_steps, 0)
        if self.quantizer.loss_weight < 0:
            raise RecipeError(f"quantizer.loss_weight: expected a float >= 0, got {self.quantizer.loss_weight}")
        _check_int("log.every", self.log.every, 1)
        for name in ("eval_every", "checkpoint_every"):
            _check_int(f"log.{name}", getattr(self.log, name), 0)
        if not (self.log.checkpoint_minutes >= 0 and math.isfinite(self.log.checkpoint_minutes)):
            raise RecipeError(f"log.checkpoint_minutes: expected a float >= 0, got {self.log.checkpoint_minutes}")
        _check_int("log.keep_checkpoints", self.log.keep_checkpoints, 1)
        for section, cfg, lister, fixed in (("model", self.model, model_arguments, ["kind"]),
                                            ("quantizer", self.quantizer, quantizer_arguments, ["kind", "loss_weight"])):
            valid = lister(cfg.kind)
            unknown = [k for k in cfg.args if k not in valid]
            if unknown:
                names = ", ".join(f"{section}.{k}" for k in unknown)
                keys = ", ".join(f"{section}.{k}" for k in fixed + valid)
                raise RecipeError(f"{names}: unknown key for {section} kind {cfg.kind!r}; valid keys: {keys}")
        return self

    def quantizer_spec(self) -> dict[str, Any]:
        """``{"kind": ..., **args}`` for :func:`vqkit.models.build_model`."""
        return {"kind": self.quantizer.kind, **self.quantizer.args}

    def valid_keys(self) -> list[str]:
        """Every dotted key ``--set`` accepts for this recipe (args keys for the current kinds)."""
        keys = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, ModelConfig):
                keys += ["model.kind"] + [f"model.{k}" for k in _arguments(model_arguments, value.kind)]
            elif isinstance(value, QuantizerConfig):
                keys += ["quantizer.kind", "quantizer.loss_weight"]
                keys += [f"quantizer.{k}" for k in _arguments(quantizer_arguments, value.kind)]
            elif dataclasses.is_dataclass(value):
                keys += [f"{f.name}.{g.name}" for g in dataclasses.fields(value)]
            else:
                keys.append(f.name)
        return keys


# ----------------------------------------------------------------------------------------------
# checks
# ----------------------------------------------------------------------------------------------


def _arguments(lister: Any, kind: str) -> list[str]:
    try:
        return lister(kind)
    except (ValueError, ImportError):  # unknown kind: reported by validate()
        return []


def _check_int(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise RecipeError(f"{name}: expected an int >= {low}, got {value!r}")


def _check_choice(name: str, value: object, choices: tuple) -> None:
    if value not in choices:
        raise RecipeError(f"{name}: expected one of {', '.join(choices)}, got {value!r}")


# ----------------------------------------------------------------------------------------------
# setting values by key, with types from the dataclass fields
# ----------------------------------------------------------------------------------------------

_SECTIONS = {"data": DataConfig, "model": ModelConfig, "quantizer": QuantizerConfig, "optim": OptimConfig,
             "log": LogConfig}


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """``value`` (from TOML, or a string from ``--set``) converted to the field type ``tp``."""
    origin = typing.get_origin(tp)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
    elif tp is int or tp is float:  # an int field takes ints only; a float field ints or floats
        if isinstance(value, (int, float) if tp is float else int) and not isinstance(value, bool):
            return tp(value)
        if isinstance(value, str):
            try:
                return tp(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            quoted = len(value) >= 2 and value[0] == value[-1] and value[0] in "'\""
            return _parse_literal(value) if quoted else value
    elif origin is list:
        if isinstance(value, str):
            value = _parse_literal(value)
        (item,) = typing.get_args(tp)
        if isinstance(value, (list, tuple)):
            return [_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    type_name = getattr(tp, "__name__", str(tp))
    raise RecipeError(f"{key}: expected {type_name}, got {value!r}")


def _parse_literal(text: str) -> Any:
    """A TOML value (``512``, ``3e-4``, ``true``, ``[8, 5]``, ``"x"``, ``{a = 1}``); bare words stay strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _arg_value(value: Any) -> Any:
    """Model / quantizer argument from TOML or ``--set``: the string ``"none"`` means None."""
    if isinstance(value, str) and value.strip().lower() == NONE_STRING:
        return None
    if isinstance(value, list):
        return [_arg_value(v) for v in value]
    return value


def parse_arg_value(text: str) -> Any:
    """A model / quantizer argument (or an ablation ``--fix``) from command-line text: a TOML value,
    bare words stay strings, ``none`` is None."""
    return _arg_value(_parse_literal(text))


def _kinded_from_dict(cls: type, name: str, data: Any) -> Any:
    """ModelConfig / QuantizerConfig from a table: ``kind`` (+ ``loss_weight``) + free arguments."""
    if not isinstance(data, dict):
        raise RecipeError(f"{name}: expected a table (e.g. {name}={{kind=...}}), got {data!r}")
    data = dict(data)
    default = cls()
    kind = data.pop("kind", default.kind)
    cfg = cls(kind=_coerce(f"{name}.kind", kind, str), args={})
    if cls is QuantizerConfig and "loss_weight" in data:
        cfg.loss_weight = _coerce(f"{name}.loss_weight", data.pop("loss_weight"), float)
    cfg.args = {k: _arg_value(v) for k, v in data.items()}
    return cfg


def _set_section_or_field(recipe: Recipe, key: str, value: Any) -> None:
    """Set a top-level field, or replace a section from a table."""
    if key in _SECTIONS:
        cls = _SECTIONS[key]
        if cls in (ModelConfig, QuantizerConfig):
            setattr(recipe, key, _kinded_from_dict(cls, key, value))
            return
        if not isinstance(value, dict):
            raise RecipeError(f"{key}: expected a table, got {value!r}")
        section = cls()
        for k, v in value.items():
            _set_simple(section, f"{key}.{k}", k, v, recipe)
        setattr(recipe, key, section)
        return
    _set_simple(recipe, key, key, value, recipe)


def _set_simple(obj: Any, full_key: str, attr: str, value: Any, recipe: Recipe) -> None:
    types = _field_types(type(obj))
    if attr not in types or attr in _SECTIONS:
        raise RecipeError(f"{full_key}: unknown recipe key; valid keys: {', '.join(recipe.valid_keys())}")
    setattr(obj, attr, _coerce(full_key, value, types[attr]))


def parse_overrides(items: list[str]) -> list[tuple[str, str]]:
    """``["a.b=1", ...]`` -> ``[("a.b", "1"), ...]``; raises RecipeError on items without ``=``."""
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise RecipeError(f"--set: expected key=value (e.g. quantizer.codebook_size=512), got {item!r}")
        out.append((key.strip(), value.strip()))
    return out


def apply_overrides(recipe: Recipe, overrides: list[str] | list[tuple[str, str]]) -> Recipe:
    """A copy of ``recipe`` with ``key=value`` overrides applied (typed by field) and validated."""
    recipe = Recipe.from_dict(recipe.to_dict())
    pairs = parse_overrides(overrides) if overrides and isinstance(overrides[0], str) else overrides
    for key, text in pairs:
        parts = key.split(".")
        if len(parts) == 1:
            value: Any = _parse_literal(text) if key in _SECTIONS else text
            _set_section_or_field(recipe, key, value)
        elif len(parts) == 2 and parts[0] in _SECTIONS:
            section, attr = parts
            cfg = getattr(recipe, section)
            if isinstance(cfg, (ModelConfig, QuantizerConfig)):
                if attr == "kind":
                    cfg.kind = _coerce(key, text, str)
                elif attr == "loss_weight" and isinstance(cfg, QuantizerConfig):
                    cfg.loss_weight = _coerce(key, text, float)
                else:
                    cfg.args[attr] = parse_arg_value(text)
            else:
                _set_simple(cfg, key, attr, text, recipe)
        else:
            raise RecipeError(f"{key}: unknown recipe key; valid keys: {', '.join(recipe.valid_keys())}")
    return recipe.validate()


# ----------------------------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------------------------


def get_preset(name: str) -> Recipe:
    """The built-in recipe ``name`` (a fresh, validated :class:`Recipe`; see :mod:`vqkit.training.presets`)."""
    data = preset_data(name)
    if data is None:
        raise RecipeError(f"recipe: unknown built-in recipe {name!r}; built-in recipes: {', '.join(preset_names())}")
    return Recipe.from_dict(data)


_TOP_LEVEL = tuple(f.name for f in dataclasses.fields(Recipe))
T = TypeVar("T")


def read_toml_recipe(path: str | Path, build: Callable[[dict[str, Any]], T], top_level: tuple[str, ...], *,
                     kind: str = "recipe", complete: bool = False) -> T:
    """Read, parse and ``build`` a TOML recipe file; every error names the file (``kind`` names what it is).

    Args:
        top_level: the keys a complete file has (``complete=True``: as a run writes ``recipe.toml``, so an
            emptied or truncated file is an error instead of silently meaning the defaults).
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such {kind} file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"{path}: cannot read the recipe ({e})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"{path}: not valid TOML: {e}") from None
    if complete:
        if not data:
            raise RecipeError(f"{path}: empty {kind} file")
        missing = [k for k in top_level if k not in data]
        if missing:
            raise RecipeError(f"{path}: incomplete {kind} (missing {', '.join(missing)})")
    try:
        return build(data)
    except RecipeError as e:
        raise RecipeError(f"{path}: {e}") from None


def read_recipe_file(path: str | Path, *, complete: bool = False) -> Recipe:
    """A recipe from a TOML file; errors name the file (``complete``: see :func:`read_toml_recipe`)."""
    return read_toml_recipe(path, Recipe.from_dict, _TOP_LEVEL, complete=complete)


def load_recipe(source: str | Path | None = None) -> Recipe:
    """A recipe from a TOML file path or a built-in name (see :mod:`vqkit.training.presets`);
    ``None`` = the default (VQ-VAE on the bundled digits)."""
    if source is None:
        return Recipe().validate()
    path = Path(source)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"--recipe: no such recipe file {str(path)!r}")
        return read_recipe_file(path)
    if str(source) in preset_names():
        return get_preset(str(source))
    raise RecipeError(f"--recipe: {str(source)!r} is neither a .toml file nor a built-in recipe; "
                      f"built-in recipes: {', '.join(preset_names())}")


def recipe_differences(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(dotted key, old value, new value)`` for every key that differs between two
    :meth:`Recipe.to_dict` dicts (a key missing on one side has the value None there)."""
    out: list[tuple[str, Any, Any]] = []

    def walk(prefix: str, a: Any, b: Any) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in list(a) + [k for k in b if k not in a]:
                walk(f"{prefix}{k}" if not prefix else f"{prefix}.{k}", a.get(k), b.get(k))
        elif a != b:
            out.append((prefix, a, b))

    walk("", old, new)
    return out


def _toml_value(value: Any) -> str:
    if value is None:
        return f'"{NONE_STRING}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table, e.g. codebook = {kind = "ema", decay = 0.8}
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} {value!r} to TOML")


def to_toml(recipe: Recipe) -> str:
    """The recipe as TOML text (loads back to an equal recipe)."""
    d = recipe.to_dict()
    lines = [f"{k} = {_toml_value(v)}" for k, v in d.items() if not isinstance(v, dict)]
    for k, v in d.items():
        if isinstance(v, dict):
            lines += ["", f"[{k}]"] + [f"{kk} = {_toml_value(vv)}" for kk, vv in v.items()]
    return "\n".join(lines) + "\n"
