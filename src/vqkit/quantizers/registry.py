"""The quantizer registry: one name per quantizer, the single source for the model factory, recipe
validation, evaluation, the benchmark and the docs.

Adding a quantizer is one module with a :class:`~vqkit.quantizers.base.Quantizer` subclass and one
decorator::

    @register_quantizer("my_vq", example=dict(codebook_size=16))
    class MyVQ(Quantizer):
        ...

``example`` holds keyword arguments that build a small instance for ``dim=6`` inputs: the contract test
suite (``tests/test_contract.py``) runs every registered quantizer with it. ``make_quantizer(name, dim,
**kwargs)`` builds one through the class's ``from_dim``; ``list_quantizers()`` lists the names.
Presets register a class with fixed keyword arguments under another name (e.g. ``simvq`` is a
:class:`~vqkit.VectorQuantizer` with the linear codebook).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

__all__ = [
    "QuantizerEntry",
    "register_quantizer",
    "register_preset",
    "register_optional",
    "list_quantizers",
    "get_quantizer",
    "make_quantizer",
    "quantizer_arguments",
]

#: arguments the caller (model factory) fills in itself
FILLED = ("self", "cls", "dim", "channel_dim")


@dataclass(frozen=True)
class QuantizerEntry:
    """A registered quantizer: its ``name``, class, fixed ``preset`` keyword arguments, a small
    ``example`` configuration (for ``dim=6``), and a one-line ``summary``."""

    name: str
    cls: type[nn.Module]
    example: dict[str, Any] = field(default_factory=dict)
    preset: dict[str, Any] = field(default_factory=dict)
    summary: str = ""

    def build(self, dim: int, **kwargs: Any) -> nn.Module:
        clash = [k for k in kwargs if k in self.preset and kwargs[k] != self.preset[k]]
        if clash:
            raise ValueError(f"{', '.join(clash)}: fixed by the {self.name!r} preset "
                             f"({', '.join(f'{k}={self.preset[k]!r}' for k in clash)})")
        missing = [r for r in self.required() if r not in kwargs]
        if missing:
            raise ValueError(f"{', '.join(missing)}: required for quantizer {self.name!r}")
        return self.cls.from_dim(dim, **{**self.preset, **kwargs})

    def arguments(self) -> list[str]:
        """Keyword arguments ``make_quantizer(self.name, dim, ...)`` accepts (sorted), besides ``channel_dim``.

        From the signatures of ``from_dim`` / ``__init__`` (and of the class they forward ``**kwargs`` to,
        ``forwards_kwargs_to``), or the class's ``accepted_arguments()`` when it defines one."""
        if hasattr(self.cls, "accepted_arguments"):
            return sorted(n for n in set(self.cls.accepted_arguments()) if n not in self.preset)
        names, var_kw = _signature_names(self.cls.from_dim)
        if var_kw:  # from_dim forwards to __init__, which may forward to an inner class
            init, init_var_kw = _signature_names(self.cls.__init__)
            names += init
            inner = getattr(self.cls, "forwards_kwargs_to", None)
            if init_var_kw and inner is not None:
                names += _signature_names(inner.__init__)[0]
        return sorted(n for n in set(names) if n not in self.preset)


    def required(self) -> list[str]:
        """Keyword arguments without a default that the caller must give (e.g. ``codebook_size``)."""

        def no_default(fn: Callable) -> tuple[list[str], list[str]]:
            params = [p for p in inspect.signature(fn).parameters.values()
                      if p.name not in FILLED and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
            return [p.name for p in params], [p.name for p in params if p.default is p.empty]

        named, required = no_default(self.cls.from_dim)
        if _signature_names(self.cls.from_dim)[1]:  # from_dim forwards the rest to __init__
            required += [n for n in no_default(self.cls.__init__)[1] if n not in named]
        return [n for n in required if n not in self.preset]


def _signature_names(fn: Callable) -> tuple[list[str], bool]:
    """(named keyword parameters minus the filled ones, accepts ``**kwargs``)."""
    params = list(inspect.signature(fn).parameters.values())
    names = [p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name not in FILLED]
    return names, any(p.kind is p.VAR_KEYWORD for p in params)


_REGISTRY: dict[str, QuantizerEntry] = {}
#: optional quantizers: name -> (module path, required package, example); registered on first use
_OPTIONAL: dict[str, tuple[str, str]] = {
    "vqpytorch": ("vqkit.models.peer", "vector_quantize_pytorch"),  # the peer library, for comparisons
    "vqtorch": ("vqkit.models.vqtorch_adapter", "vqtorch"),  # the paper's own library (not on PyPI)
}


def _summary(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    return doc.split("\n\n")[0].replace("\n", " ").strip()


def register_quantizer(name: str, *, example: Mapping[str, Any] | None = None) -> Callable[[type], type]:
    """Class decorator: register a :class:`~vqkit.quantizers.base.Quantizer` subclass under ``name``."""

    def deco(cls: type) -> type:
        if name in _REGISTRY and _REGISTRY[name].cls is not cls:
            raise ValueError(f"register_quantizer: {name!r} is already registered to {_REGISTRY[name].cls.__name__}")
        _REGISTRY[name] = QuantizerEntry(name, cls, dict(example or {}), {}, _summary(cls))
        return cls

    return deco


def register_preset(name: str, cls: type, preset: Mapping[str, Any], *, summary: str,
                    example: Mapping[str, Any] | None = None) -> None:
    """Register ``cls`` with fixed keyword arguments ``preset`` under ``name``."""
    _REGISTRY[name] = QuantizerEntry(name, cls, dict(example or {}), dict(preset), summary)


def register_optional(name: str, module: str, requires: str) -> None:
    """A quantizer that lives in ``module`` (registered when imported) and needs package ``requires``."""
    _OPTIONAL[name] = (module, requires)


def _load_builtins() -> None:
    importlib.import_module("vqkit.quantizers")


def _available(requires: str) -> bool:
    return importlib.util.find_spec(requires) is not None


def list_quantizers(include_optional: bool = True) -> list[str]:
    """Registered quantizer names; the optional ones (comparisons with other libraries, e.g. ``vqpytorch``)
    last, and only with ``include_optional`` and their package installed. The contract suite covers the
    others."""
    _load_builtins()
    names = [n for n in _REGISTRY if n not in _OPTIONAL]
    if include_optional:
        names += [n for n, (_, req) in _OPTIONAL.items() if n in _REGISTRY or _available(req)]
    return names


def get_quantizer(name: str) -> QuantizerEntry:
    """The registry entry of ``name`` (a ValueError lists the valid names)."""
    _load_builtins()
    if name not in _REGISTRY and name in _OPTIONAL:
        module, requires = _OPTIONAL[name]
        if not _available(requires):
            raise ValueError(f"quantizer {name!r} needs the {requires!r} package (pip install {requires.replace('_', '-')})")
        importlib.import_module(module)
    if name not in _REGISTRY:
        raise ValueError(f"unknown quantizer {name!r}; registered: {', '.join(list_quantizers())}")
    return _REGISTRY[name]


def make_quantizer(name: str, dim: int, **kwargs: Any) -> nn.Module:
    """Build the quantizer registered as ``name`` for ``dim`` input channels, e.g.
    ``make_quantizer("vq", 64, codebook_size=1024, channel_dim=1)``."""
    return get_quantizer(name).build(dim, **kwargs)


def quantizer_arguments(name: str) -> list[str]:
    """Keyword arguments ``make_quantizer(name, dim, ...)`` accepts, besides ``channel_dim``."""
    return get_quantizer(name).arguments()
