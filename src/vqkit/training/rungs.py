"""The configurations an ablation compares ("rungs"), each defined once, and the named tables of rungs.

A rung turns the base recipe's quantizer section into its own (``make(base, fixes)``); ``fixes`` are
explicit :class:`~vqkit.VectorQuantizer` arguments that reach the vqkit VQ rungs using that fix. The
switches come from :data:`vqkit.quantizers.vector.TECHNIQUES` / ``PLAIN_STE``, so the ladder, the
benchmark and the docs describe the method the same way. :data:`TABLES` names the row sets of
``vqkit ablate --table``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..models.peer import PEER_BEST_PRACTICE
from ..quantizers.scalar import fsq_levels
from ..quantizers.vector import PLAIN_STE, TECHNIQUES
from .recipe import QuantizerConfig, RecipeError

__all__ = ["Rung", "RUNGS", "TABLES", "LADDER", "RUNG_NAMES", "rung_table"]


@dataclass(frozen=True)
class Rung:
    """One configuration: ``key`` (for ``--rungs``), table ``label``, and how it turns the base
    recipe's quantizer section into its own (``make(base, fixes) -> QuantizerConfig``)."""

    key: str
    label: str
    make: Callable[[QuantizerConfig, dict[str, Any]], QuantizerConfig] = field(repr=False)


def _codebook_size(base: QuantizerConfig) -> int:
    k = base.args.get("codebook_size")
    if not isinstance(k, int):
        raise RecipeError("quantizer.codebook_size: the ablation needs the base recipe's VQ codebook size")
    return k


def _vq(**flags: Any) -> Callable[[QuantizerConfig, dict[str, Any]], QuantizerConfig]:
    def make(base: QuantizerConfig, fixes: dict[str, Any]) -> QuantizerConfig:
        args = {**base.args, **PLAIN_STE, **flags}
        # explicit fix settings apply where the rung uses that fix (e.g. alternating_lr only with alternating steps)
        for k, v in fixes.items():
            uses = {
                    "sync_nu": args.get("sync_nu", 0) > 0, "dead_code_steps": args.get("dead_code_steps", 0) > 0,
                    "dead_code_threshold": args.get("dead_code_steps", 0) > 0,
                    "alternating_lr": args.get("alternating_steps", 0) > 0,
                    "alternating_reassign": args.get("alternating_steps", 0) > 0,
                    "alternating_steps": args.get("alternating_steps", 0) > 0}.get(k, True)
            if uses:
                args[k] = v
        return QuantizerConfig("vq", base.loss_weight, args)

    return make


def _defaults(base: QuantizerConfig, fixes: dict[str, Any]) -> QuantizerConfig:
    """VectorQuantizer as a user gets it: only the codebook size given (``fixes`` do not apply)."""
    return QuantizerConfig("vq", base.loss_weight, {"codebook_size": _codebook_size(base)})


def _fsq(base: QuantizerConfig, fixes: dict[str, Any]) -> QuantizerConfig:
    return QuantizerConfig("fsq", base.loss_weight, {"levels": fsq_levels(_codebook_size(base), nearest=True)})


def _peer(base: QuantizerConfig, fixes: dict[str, Any]) -> QuantizerConfig:
    return QuantizerConfig("vqpytorch", base.loss_weight, {"codebook_size": _codebook_size(base), **PEER_BEST_PRACTICE})


def _cumulative(last: str) -> dict[str, Any]:
    """The switches of :data:`~vqkit.quantizers.vector.TECHNIQUES` up to and including ``last``."""
    names = list(TECHNIQUES)
    return {k: v for t in names[: names.index(last) + 1] for k, v in TECHNIQUES[t].items()}


_TECHNIQUE_LABELS = {"kmeans": "k-means init", "sync": "sync commitment", "affine": "affine",
                     "alternating": "alternating", "replacement": "dead-code replacement"}

_ALL: tuple[Rung, ...] = (
    Rung("plain", "plain STE", _vq()),
    *(Rung(t, f"+ {_TECHNIQUE_LABELS[t]}", _vq(**_cumulative(t))) for t in TECHNIQUES),
    Rung("defaults", "vqkit defaults", _defaults),
    Rung("ema", "EMA codebook + replacement (k-means init)",
         _vq(**TECHNIQUES["kmeans"], **TECHNIQUES["replacement"], codebook={"kind": "ema", "decay": 0.99})),
    Rung("rotation", "rotation trick (k-means init)", _vq(**TECHNIQUES["kmeans"], estimator="rotation")),
    Rung("fsq", "FSQ", _fsq),
    Rung("peer", "vector-quantize-pytorch (EMA, k-means, dead code 2; its default rotation trick)", _peer),
)

#: every rung by key
RUNGS: dict[str, Rung] = {r.key: r for r in _ALL}

#: named row sets (``vqkit ablate --table NAME``); "ladder" is the default
TABLES: dict[str, tuple[str, ...]] = {
    "ladder": tuple(r.key for r in _ALL),
}


def rung_table(name: str) -> tuple[Rung, ...]:
    """The rungs of table ``name``."""
    if name not in TABLES:
        raise RecipeError(f"--table: unknown table {name!r}; valid: {', '.join(TABLES)}")
    return tuple(RUNGS[k] for k in TABLES[name])


LADDER: tuple[Rung, ...] = rung_table("ladder")
RUNG_NAMES = tuple(RUNGS)




# ----------------------------------------------------------------------------------------------
# The bar and codebooks that scale (issue 13, sections 1 and 3): each row at the base recipe's codebook size K,
# with its own defaults (what a user gets from the name and K alone).
# ----------------------------------------------------------------------------------------------


def _at_size(kind: str) -> Callable[[QuantizerConfig, dict[str, Any]], QuantizerConfig]:
    def make(base: QuantizerConfig, fixes: dict[str, Any]) -> QuantizerConfig:
        k = _codebook_size(base)
        if kind in ("lfq", "bsq") and k & (k - 1):
            raise RecipeError(f"quantizer.codebook_size: {kind} needs a power of two (log2 K bits), got {k}")
        return QuantizerConfig(kind, base.loss_weight, {"codebook_size": k})

    return make


_SIZED_ROWS: tuple[Rung, ...] = (
    Rung("simvq", "SimVQ (`simvq`: the linear codebook, vqkit defaults otherwise)", _at_size("simvq")),
    Rung("lfq", "LFQ (log2 K bits, its defaults)", _at_size("lfq")),
    Rung("bsq", "BSQ (log2 K bits, its defaults)", _at_size("bsq")),
)

RUNGS.update({r.key: r for r in _SIZED_ROWS})
TABLES["bar"] = ("defaults", "peer")
TABLES["scaling"] = ("defaults", "fsq", "lfq", "bsq", "simvq", "peer")
RUNG_NAMES = tuple(RUNGS)
