"""Prior recipes: everything ``vqkit prior`` needs, as dataclasses that round-trip through TOML.

The same machinery as the tokenizer recipes of ``vqkit train`` (:mod:`vqkit.training.recipe`): a TOML
file or a built-in name (``maskgit``, ``autoregressive``), typed ``--set key=value`` overrides addressed
by dotted key, and errors that name the key and list the valid ones. A prior recipe looks like::

    name = "maskgit"
    tokenizer = "runs/fm"     # the tokenizer's `vqkit train` run directory (vqkit prior --tokenizer)
    seed = 0
    steps = 2000
    batch_size = 64
    conditional = true        # class-conditional prior (false: unconditional)
    device = "cpu"            # auto | cpu | cuda | cuda:N

    [prior]
    kind = "maskgit"          # maskgit | autoregressive; other keys: the prior's arguments
    dim = 128
    depth = 4
    heads = 4

    [optim]                   # AdamW; weight decay on linear weights only
    lr = 0.0003
    schedule = "cosine"

    [sample]                  # how samples are drawn (metrics, report grid, `vqkit sample` defaults)
    steps = 8                 # MaskGIT decoding steps
    temperature = 1.0

    [metrics]                 # sample quality in the feature space of a classifier trained here
    num_samples = 0           # 0: one sample per reference test image, conditioned on its label

    [log]
    checkpoint_every = 500

A ``[prior]`` table replaces the default one as a whole (its ``kind`` and arguments), like ``[model]`` in
a tokenizer recipe; ``--set prior.dim=256`` changes one argument. Overrides of the other sections are
typed by the field (``--set sample.temperature=0.8``, ``--set optim.betas=[0.9,0.99]``).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# the value typing of `vqkit train`'s recipes, shared so that both kinds of recipe read the same way
from ..training.recipe import RecipeError, _arg_value, _coerce, _field_types, _parse_literal, _toml_value
from ..training.recipe import parse_arg_value, parse_overrides, read_toml_recipe
from .priors import PRIOR_KINDS, build_prior
from .trainer import PriorConfig

__all__ = [
    "PriorRecipe",
    "PriorSection",
    "PriorOptimSection",
    "SampleSection",
    "MetricsSection",
    "PriorLogSection",
    "PRIOR_PRESETS",
    "prior_preset_names",
    "get_prior_preset",
    "load_prior_recipe",
    "read_prior_recipe_file",
    "apply_prior_overrides",
    "prior_recipe_to_toml",
    "prior_arguments",
    "check_prior_values",
]

# arguments of a prior that come from the token file, never from a recipe
_FROM_TOKENS = ("vocab_sizes", "length", "num_classes")
SCHEDULES = ("constant", "cosine")


def prior_arguments(kind: str) -> list[str]:
    """The recipe keys of prior ``kind``'s arguments (its constructor's, without the token-space ones)."""
    if kind not in PRIOR_KINDS:
        raise RecipeError(f"prior.kind: expected one of {', '.join(PRIOR_KINDS)}, got {kind!r}")
    params = inspect.signature(PRIOR_KINDS[kind].__init__).parameters
    return [n for n in params if n not in ("self", *_FROM_TOKENS)]


def check_prior_values(recipe: PriorRecipe) -> None:
    """Build the recipe's prior on a one-token space to check its argument values; a bad one raises a
    RecipeError naming its key (e.g. ``prior.heads: expected a divisor of dim=128, got 3``)."""
    try:
        build_prior(recipe.prior.kind, vocab_sizes=[2], length=1, num_classes=1, **recipe.prior.args)
    except (TypeError, ValueError) as e:
        raise RecipeError(f"prior.{e}") from None


@dataclass
class PriorSection:
    """``kind`` (``maskgit`` | ``autoregressive``) and the prior's keyword ``args`` (``dim``, ``depth``,
    ``heads``, ``mlp_ratio``, ``dropout``; ``class_dropout`` for maskgit)."""

    kind: str = "maskgit"
    args: dict[str, Any] = field(default_factory=lambda: {"dim": 128, "depth": 4, "heads": 4})


@dataclass
class PriorOptimSection:
    """AdamW (weight decay on linear weights only): ``lr``, ``weight_decay``, ``betas``; linear
    ``warmup_steps``, then a ``constant`` or ``cosine`` schedule (to 0 at the last step); ``grad_clip`` > 0
    clips the global gradient norm."""

    lr: float = 3e-4
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    warmup_steps: int = 0
    schedule: str = "cosine"
    grad_clip: float = 1.0


@dataclass
class SampleSection:
    """How samples are drawn for the metrics, the report's grid and ``vqkit sample`` (its defaults).

    ``steps``, ``confidence_noise``, ``guidance``: MaskGIT's decoding steps, the scale of the Gumbel noise
    on the confidences and the classifier-free guidance weight (maskgit only); ``top_k``: sample among the
    k most likely codes (autoregressive only; 0 = all); ``temperature``: softmax temperature (0 = argmax);
    ``batch_size``: samples per forward; ``seed``: the sampling generator's seed."""

    steps: int = 8
    temperature: float = 1.0
    confidence_noise: float = 4.5
    guidance: float = 0.0
    top_k: int = 0
    batch_size: int = 256
    seed: int = 0


@dataclass
class MetricsSection:
    """Sample-quality metrics at the end of a prior run (:mod:`vqkit.generative.quality`).

    ``enabled``: compute them; ``reference_limit``: real test images of the reference set (0 = the whole
    test split); ``num_samples``: generated images (0 = one per reference image, conditioned on its
    label, so the class balance matches); ``k``: neighbourhood of precision / recall; ``feature_steps``,
    ``feature_seed``: how the feature network is trained; ``features_dir``: where it is cached (``""`` =
    ``<tokenizer run>/features``); ``grid_per_class``: samples per class in ``samples.png``."""

    enabled: bool = True
    reference_limit: int = 0
    num_samples: int = 0
    k: int = 3
    feature_steps: int = 1000
    feature_seed: int = 0
    features_dir: str = ""
    grid_per_class: int = 10


@dataclass
class PriorLogSection:
    """``every``: steps between train records; ``eval_every``: steps between held-out evaluations (loss
    and accuracy on the first ``eval_limit`` test token maps, 0 = all; 0 = only at the end);
    ``checkpoint_every`` / ``checkpoint_minutes``: checkpoint intervals (0 = off; a checkpoint is always
    written at the last step and on Ctrl-C / SIGTERM); ``keep_checkpoints``; ``progress``: progress bar and
    status lines; ``report``: write ``report.md`` at the end."""

    every: int = 10
    eval_every: int = 0
    eval_limit: int = 2000
    checkpoint_every: int = 500
    checkpoint_minutes: float = 10.0
    keep_checkpoints: int = 2
    progress: bool = True
    report: bool = True


_SECTIONS: dict[str, type] = {"prior": PriorSection, "optim": PriorOptimSection, "sample": SampleSection,
                              "metrics": MetricsSection, "log": PriorLogSection}


@dataclass
class PriorRecipe:
    """A complete prior run: the tokenizer run it models, the prior, its training and its measurement."""

    name: str = "maskgit"
    tokenizer: str = ""
    seed: int = 0
    steps: int = 2000
    batch_size: int = 64
    conditional: bool = True
    device: str = "cpu"
    prior: PriorSection = field(default_factory=PriorSection)
    optim: PriorOptimSection = field(default_factory=PriorOptimSection)
    sample: SampleSection = field(default_factory=SampleSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    log: PriorLogSection = field(default_factory=PriorLogSection)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PriorRecipe:
        """Build from nested dicts (as read from TOML) and validate; unknown keys raise RecipeError."""
        recipe = cls()
        for key, value in data.items():
            _set_section_or_field(recipe, key, value)
        return recipe.validate()

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dicts; the prior's args are flattened next to ``kind``."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, PriorSection):
                out[f.name] = {"kind": value.kind, **value.args}
            elif dataclasses.is_dataclass(value):
                out[f.name] = dataclasses.asdict(value)
            else:
                out[f.name] = value
        return out

    def validate(self) -> PriorRecipe:
        """Check every value (and the prior's argument names); returns ``self``."""
        for name, low in (("seed", 0), ("steps", 1), ("batch_size", 1)):
            _check_int(name, getattr(self, name), low)
        if not (isinstance(self.device, str) and (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"))):
            raise RecipeError(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        valid = prior_arguments(self.prior.kind)
        unknown = [k for k in self.prior.args if k not in valid]
        if unknown:
            raise RecipeError(f"{', '.join(f'prior.{k}' for k in unknown)}: unknown key for prior kind "
                              f"{self.prior.kind!r}; valid keys: prior.kind, {', '.join(f'prior.{k}' for k in valid)}")
        o = self.optim
        if not o.lr > 0:
            raise RecipeError(f"optim.lr: expected a float > 0, got {o.lr}")
        for name in ("weight_decay", "grad_clip"):
            if not getattr(o, name) >= 0:
                raise RecipeError(f"optim.{name}: expected a float >= 0, got {getattr(o, name)}")
        if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
            raise RecipeError(f"optim.betas: expected two floats in [0, 1), got {o.betas}")
        _check_int("optim.warmup_steps", o.warmup_steps, 0)
        if o.schedule not in SCHEDULES:
            raise RecipeError(f"optim.schedule: expected one of {', '.join(SCHEDULES)}, got {o.schedule!r}")
        s = self.sample
        for name, low in (("steps", 1), ("top_k", 0), ("batch_size", 1), ("seed", 0)):
            _check_int(f"sample.{name}", getattr(s, name), low)
        for name in ("temperature", "confidence_noise", "guidance"):
            if not (getattr(s, name) >= 0 and math.isfinite(getattr(s, name))):
                raise RecipeError(f"sample.{name}: expected a float >= 0, got {getattr(s, name)}")
        m = self.metrics
        for name, low in (("reference_limit", 0), ("num_samples", 0), ("k", 1), ("feature_steps", 1),
                          ("feature_seed", 0), ("grid_per_class", 1)):
            _check_int(f"metrics.{name}", getattr(m, name), low)
        g = self.log
        _check_int("log.every", g.every, 1)
        for name in ("eval_every", "eval_limit", "checkpoint_every"):
            _check_int(f"log.{name}", getattr(g, name), 0)
        _check_int("log.keep_checkpoints", g.keep_checkpoints, 1)
        if not (g.checkpoint_minutes >= 0 and math.isfinite(g.checkpoint_minutes)):
            raise RecipeError(f"log.checkpoint_minutes: expected a float >= 0, got {g.checkpoint_minutes}")
        return self

    def valid_keys(self) -> list[str]:
        """Every dotted key ``--set`` accepts for this recipe (the prior's args for its current kind)."""
        keys = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, PriorSection):
                try:
                    args = prior_arguments(value.kind)
                except RecipeError:
                    args = []
                keys += ["prior.kind"] + [f"prior.{k}" for k in args]
            elif dataclasses.is_dataclass(value):
                keys += [f"{f.name}.{g.name}" for g in dataclasses.fields(value)]
            else:
                keys.append(f.name)
        return keys

    def prior_config(self) -> PriorConfig:
        """The :class:`~vqkit.generative.trainer.PriorConfig` of this recipe (what ``train_prior`` runs)."""
        o, g = self.optim, self.log
        return PriorConfig(kind=self.prior.kind, model=dict(self.prior.args), conditional=self.conditional,
                           steps=self.steps, batch_size=self.batch_size, lr=o.lr, weight_decay=o.weight_decay,
                           betas=tuple(o.betas), warmup_steps=o.warmup_steps, schedule=o.schedule,
                           grad_clip=o.grad_clip, seed=self.seed, log_every=g.every, eval_every=g.eval_every,
                           checkpoint_every=g.checkpoint_every, checkpoint_minutes=g.checkpoint_minutes,
                           keep_checkpoints=g.keep_checkpoints)

    def sampling_options(self) -> dict[str, Any]:
        """Keyword arguments of the prior kind's ``generate`` from ``[sample]`` (without the generator)."""
        s = self.sample
        if self.prior.kind == "maskgit":
            return {"steps": s.steps, "temperature": s.temperature, "confidence_noise": s.confidence_noise,
                    "guidance": s.guidance}
        return {"temperature": s.temperature, "top_k": s.top_k}


def _check_int(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise RecipeError(f"{name}: expected an int >= {low}, got {value!r}")


def _prior_section(name: str, data: Any) -> PriorSection:
    if not isinstance(data, dict):
        raise RecipeError(f"{name}: expected a table (e.g. {name}={{kind=\"maskgit\", dim=128}}), got {data!r}")
    data = dict(data)
    kind = _coerce(f"{name}.kind", data.pop("kind", PriorSection().kind), str)
    return PriorSection(kind, {k: _arg_value(v) for k, v in data.items()})


def _set_section_or_field(recipe: PriorRecipe, key: str, value: Any) -> None:
    if key == "prior":
        recipe.prior = _prior_section(key, value)
        return
    if key in _SECTIONS:
        if not isinstance(value, dict):
            raise RecipeError(f"{key}: expected a table, got {value!r}")
        section = _SECTIONS[key]()
        for k, v in value.items():
            _set_simple(section, f"{key}.{k}", k, v, recipe)
        setattr(recipe, key, section)
        return
    _set_simple(recipe, key, key, value, recipe)


def _set_simple(obj: Any, full_key: str, attr: str, value: Any, recipe: PriorRecipe) -> None:
    types = _field_types(type(obj))
    if attr not in types or attr in _SECTIONS:
        raise RecipeError(f"{full_key}: unknown prior-recipe key; valid keys: {', '.join(recipe.valid_keys())}")
    setattr(obj, attr, _coerce(full_key, value, types[attr]))


def _copy(recipe: PriorRecipe) -> PriorRecipe:
    return PriorRecipe.from_dict(recipe.to_dict())


def apply_prior_overrides(recipe: PriorRecipe, overrides: list[str] | list[tuple[str, str]]) -> PriorRecipe:
    """A copy of ``recipe`` with ``key=value`` overrides applied (typed by field) and validated.

    ``prior.<arg>=value`` sets one argument of the prior (TOML value, ``none`` is None);
    ``prior={kind="autoregressive", dim=64}`` replaces the whole section."""
    recipe = _copy(recipe)
    pairs = parse_overrides(overrides) if overrides and isinstance(overrides[0], str) else overrides
    for key, text in pairs:
        parts = key.split(".")
        if len(parts) == 1:
            _set_section_or_field(recipe, key, _parse_literal(text) if key in _SECTIONS else text)
        elif len(parts) == 2 and parts[0] == "prior":
            if parts[1] == "kind":
                recipe.prior.kind = _coerce(key, text, str)
            else:
                recipe.prior.args[parts[1]] = parse_arg_value(text)
        elif len(parts) == 2 and parts[0] in _SECTIONS:
            _set_simple(getattr(recipe, parts[0]), key, parts[1], text, recipe)
        else:
            raise RecipeError(f"{key}: unknown prior-recipe key; valid keys: {', '.join(recipe.valid_keys())}")
    return recipe.validate()


def prior_recipe_to_toml(recipe: PriorRecipe) -> str:
    """The recipe as TOML text (loads back to an equal recipe)."""
    d = recipe.to_dict()
    lines = [f"{k} = {_toml_value(v)}" for k, v in d.items() if not isinstance(v, dict)]
    for k, v in d.items():
        if isinstance(v, dict):
            lines += ["", f"[{k}]"] + [f"{kk} = {_toml_value(vv)}" for kk, vv in v.items()]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# built-in recipes and files
# ----------------------------------------------------------------------------------------------

#: built-in prior recipes (plain data): sized for a few CPU minutes on 4x4 digit tokens and a CPU hour or
#: so on 7x7 Fashion-MNIST tokens; scale ``steps`` and ``prior.dim`` / ``prior.depth`` up with ``--set``.
PRIOR_PRESETS: dict[str, dict[str, Any]] = {
    "maskgit": dict(name="maskgit", prior=dict(kind="maskgit", dim=128, depth=4, heads=4)),
    "autoregressive": dict(name="autoregressive", prior=dict(kind="autoregressive", dim=128, depth=4, heads=4)),
}


def prior_preset_names() -> list[str]:
    """Names of the built-in prior recipes."""
    return list(PRIOR_PRESETS)


def get_prior_preset(name: str) -> PriorRecipe:
    """The built-in prior recipe ``name`` (a fresh, validated :class:`PriorRecipe`)."""
    if name not in PRIOR_PRESETS:
        raise RecipeError(f"--recipe: unknown built-in prior recipe {name!r}; built-in prior recipes: "
                          f"{', '.join(PRIOR_PRESETS)}")
    return PriorRecipe.from_dict(PRIOR_PRESETS[name])


_TOP_LEVEL = tuple(f.name for f in dataclasses.fields(PriorRecipe))


def read_prior_recipe_file(path: str | Path, *, complete: bool = False) -> PriorRecipe:
    """A prior recipe from a TOML file; errors name the file (``complete``: every top-level key and section,
    as ``vqkit prior`` writes ``recipe.toml``)."""
    return read_toml_recipe(path, PriorRecipe.from_dict, _TOP_LEVEL, kind="prior recipe", complete=complete)


def load_prior_recipe(source: str | Path | None = None) -> PriorRecipe:
    """A prior recipe from a TOML file path or a built-in name; ``None`` = ``maskgit``."""
    if source is None:
        return get_prior_preset("maskgit")
    path = Path(source)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"--recipe: no such prior recipe file {str(path)!r}")
        return read_prior_recipe_file(path)
    return get_prior_preset(str(source))
