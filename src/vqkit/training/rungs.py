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
                    "sync_nu": args.get("sync_nu", 0) > 0, "dead_code_steps": args.get("dead_code_steps", 0) != 0,
                    "dead_code_threshold": args.get("dead_code_steps", 0) != 0,
                    "dead_code_mass": args.get("dead_code_steps", 0) != 0,
                    "replacement_sampling": (args.get("dead_code_steps", 0) != 0
                                             or args.get("dead_code_threshold", 0) > 0
                                             or args.get("dead_code_mass", 0) > 0),
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


# ----------------------------------------------------------------------------------------------
# The paper's classification table in its own shape (issue 13, section 2): plain STE, each technique
# *alone* on top of it, and all four together; vqkit rows ("paper") and the rows of the authors' own
# library vqtorch ("paper-vqtorch", the optional quantizer "vqtorch"). Every setting is explicit, so the
# table does not move when the library defaults do.
#
# k-means init is NOT part of these rows: the baseline is plain STE from a random N(0, 1) codebook (the
# initialization of both libraries), as in the paper's rows, whose code never turns k-means on there.
# Add it to every vqkit row with ``--fix kmeans_init=true``.
# ----------------------------------------------------------------------------------------------

#: the explicit base of every "paper" row: plain STE, the paper's beta = 0.95 loss split, random init
PAPER_TABLE_BASE: dict[str, Any] = dict(
    PLAIN_STE, commitment_weight=0.05, codebook_weight=0.95, dead_code_threshold=0.0, estimator="ste",
    metric="euclidean")

#: each technique of the "paper" table alone, with its settings written out (vqkit)
PAPER_TABLE_TECHNIQUES: dict[str, dict[str, Any]] = {
    "affine": dict(codebook={"kind": "affine", "lr": 10.0, "groups": 1}),
    "sync": dict(sync_nu=1.0),
    "alternating": dict(alternating_steps=1, alternating_lr=1.0, alternating_reassign=False),
    "replacement": dict(dead_code_steps=20),
}

#: the same techniques in vqtorch's arguments (``vqkit.models.vqtorch_adapter``): affine_lr = 10 and
#: replace_freq = 20 as in vqtorch's README, sync_nu = 1 as vqkit's, and its in-place alternating
#: optimizer (SGD lr 50, momentum 0.9, the README's), which vqtorch allows only with beta = 1.0
VQTORCH_TABLE_TECHNIQUES: dict[str, dict[str, Any]] = {
    "affine": dict(affine_lr=10.0),
    "sync": dict(sync_nu=1.0),
    "alternating": dict(beta=1.0, inplace_lr=50.0, inplace_momentum=0.9),
    "replacement": dict(replace_freq=20),
}


def _paper_vq(*techniques: str) -> Callable[[QuantizerConfig, dict[str, Any]], QuantizerConfig]:
    flags = {k: v for t in techniques for k, v in PAPER_TABLE_TECHNIQUES[t].items()}
    return _vq(**{**PAPER_TABLE_BASE, **flags})


def _vqtorch(*techniques: str) -> Callable[[QuantizerConfig, dict[str, Any]], QuantizerConfig]:
    """A vqtorch row (``fixes`` do not apply: they are vqkit arguments)."""
    flags = {k: v for t in techniques for k, v in VQTORCH_TABLE_TECHNIQUES[t].items()}

    def make(base: QuantizerConfig, fixes: dict[str, Any]) -> QuantizerConfig:
        return QuantizerConfig("vqtorch", base.loss_weight,
                               {"codebook_size": _codebook_size(base), "beta": 0.95, **flags})

    return make


_SIZED_ROWS: tuple[Rung, ...] = (
    Rung("simvq", "SimVQ (`simvq`: the linear codebook, vqkit defaults otherwise)", _at_size("simvq")),
    Rung("lfq", "LFQ (log2 K bits, its defaults)", _at_size("lfq")),
    Rung("bsq", "BSQ (log2 K bits, its defaults)", _at_size("bsq")),
)

RUNGS.update({r.key: r for r in _SIZED_ROWS})
TABLES["bar"] = ("defaults", "peer")
TABLES["scaling"] = ("defaults", "fsq", "lfq", "bsq", "simvq", "peer")


_ALONE = ("affine", "sync", "alternating", "replacement")

_PAPER_ROWS: tuple[Rung, ...] = (
    Rung("paper-base", "plain STE (random init)", _paper_vq()),
    *(Rung(f"paper-{t}", f"+ {_TECHNIQUE_LABELS[t]} alone", _paper_vq(t)) for t in _ALONE),
    Rung("paper-all", "+ all four", _paper_vq(*_ALONE)),
    # the counterparts of vqtorch's rows with three of the four (its "all four" does not run)
    Rung("paper-no-alternating", "+ affine, sync, replacement (all but alternating)",
         _paper_vq("affine", "sync", "replacement")),
    Rung("paper-no-affine", "+ sync, alternating, replacement (all but affine)",
         _paper_vq("sync", "alternating", "replacement")),
)

# vqtorch cannot combine affine_lr with its in-place alternating optimizer (the in-place step runs a
# backward through the affine-transformed codebook inside forward, which frees the graph the training
# loss needs), so its "all four" row does not run; the rows with three of the four bracket it.
_VQTORCH_ROWS: tuple[Rung, ...] = (
    Rung("vqtorch-base", "vqtorch: plain STE (random init)", _vqtorch()),
    *(Rung(f"vqtorch-{t}", f"vqtorch: + {_TECHNIQUE_LABELS[t]} alone", _vqtorch(t)) for t in _ALONE),
    Rung("vqtorch-no-alternating", "vqtorch: + affine, sync, replacement (all but alternating)",
         _vqtorch("affine", "sync", "replacement")),
    Rung("vqtorch-no-affine", "vqtorch: + sync, alternating, replacement (all but affine)",
         _vqtorch("sync", "alternating", "replacement")),
)

RUNGS.update({r.key: r for r in (*_PAPER_ROWS, *_VQTORCH_ROWS)})
TABLES["paper"] = tuple(r.key for r in _PAPER_ROWS[:6])
TABLES["paper-brackets"] = tuple(r.key for r in _PAPER_ROWS[6:])
TABLES["paper-vqtorch"] = tuple(r.key for r in _VQTORCH_ROWS[:5])  # the paper's shape; "all four" does not run
TABLES["paper-vqtorch-brackets"] = tuple(r.key for r in _VQTORCH_ROWS[5:])


# ----------------------------------------------------------------------------------------------
# Quantizer families at a matched codebook size (issue 12, evidence): K codes per token from the base
# recipe's codebook_size (2^9 = 512 for the Fashion-MNIST VQ-VAE): VQ with K codes, FSQ with the paper's
# levels for K, LFQ / BSQ with log2 K bits, SimVQ with K codes, residual VQ with 3 levels of K^(1/3)
# codes (with and without quantize dropout), residual FSQ with 3 levels of K^(1/3) codes. The VQ-type
# rows use the paper's full method with k-means init (``PAPER``), written out.
# ----------------------------------------------------------------------------------------------

#: the full method of the VQ-type family rows, explicit
FAMILY_VQ_SETTINGS: dict[str, Any] = dict(
    commitment_weight=0.05, codebook_weight=0.95, sync_nu=1.0, alternating_steps=1, alternating_lr=1.0,
    alternating_reassign=False, kmeans_init=True, dead_code_steps=20, dead_code_threshold=0.0,
    estimator="ste", metric="euclidean")

#: residual levels of the residual family rows
FAMILY_LEVELS = 3


def _bits(base: QuantizerConfig) -> int:
    k = _codebook_size(base)
    if k & (k - 1):
        raise RecipeError(f"quantizer.codebook_size: the family rows need a power of two (LFQ / BSQ bits), got {k}")
    return k.bit_length() - 1


def _per_level(base: QuantizerConfig) -> int:
    k = _codebook_size(base)
    per = round(k ** (1 / FAMILY_LEVELS))
    if per ** FAMILY_LEVELS != k:
        raise RecipeError(f"quantizer.codebook_size: the residual family rows need a cube ({FAMILY_LEVELS} levels of "
                          f"equal size), got {k}")
    return per


def _family(kind: str, **fixed: Any) -> Callable[[QuantizerConfig, dict[str, Any]], QuantizerConfig]:
    def make(base: QuantizerConfig, fixes: dict[str, Any]) -> QuantizerConfig:
        k = _codebook_size(base)
        if kind == "vq":
            args = {"codebook_size": k, **FAMILY_VQ_SETTINGS, **fixed}
        elif kind == "residual_vq":
            args = {"codebook_size": _per_level(base), "num_levels": FAMILY_LEVELS, **FAMILY_VQ_SETTINGS,
                    "codebook": {"kind": "affine", "lr": 10.0, "groups": 1}, **fixed}
        elif kind == "fsq":
            args = {"levels": fsq_levels(k, nearest=True)}
        elif kind == "lfq":
            args = {"codebook_size": 2 ** _bits(base), "entropy_weight": 0.1, "diversity": 1.0, "temperature": 0.01,
                    "commitment_weight": 0.25, "batch_entropy": "auto", **fixed}
        elif kind == "bsq":
            args = {"codebook_size": 2 ** _bits(base), "entropy_weight": 0.1, "diversity": 1.0, "temperature": 1.0,
                    "commitment_weight": 0.0, "batch_entropy": "factorized"}
        elif kind == "residual_fsq":
            args = {"levels": fixed.get("levels") or [_per_level(base)], "num_levels": FAMILY_LEVELS,
                    **{a: v for a, v in fixed.items() if a != "levels"}}
        else:  # pragma: no cover - programming error
            raise ValueError(kind)
        return QuantizerConfig(kind, base.loss_weight, args)

    return make


_FAMILY_ROWS: tuple[Rung, ...] = (
    Rung("fam-vq", "VQ (K codes; affine, sync, alternating, replacement, k-means)",
         _family("vq", codebook={"kind": "affine", "lr": 10.0, "groups": 1})),
    Rung("fam-fsq", "FSQ (the paper's levels for K)", _family("fsq")),
    Rung("fam-lfq", "LFQ (log2 K bits)", _family("lfq")),
    Rung("fam-lfq-t1", "LFQ (log2 K bits), temperature 1, diversity 2",
         _family("lfq", temperature=1.0, diversity=2.0)),
    Rung("fam-bsq", "BSQ (log2 K bits)", _family("bsq")),
    Rung("fam-simvq", "SimVQ (K codes, linear codebook; sync, alternating, replacement, k-means)",
         _family("vq", codebook={"kind": "linear", "lr": 1.0, "bias": True})),
    Rung("fam-rvq", "residual VQ (3 levels of K^(1/3) codes, quantize dropout 1.0)",
         _family("residual_vq", quantize_dropout=1.0)),
    Rung("fam-rvq-nodrop", "residual VQ (3 levels of K^(1/3) codes, no dropout)", _family("residual_vq")),
    Rung("fam-rfsq", "residual FSQ (3 levels of K^(1/3) codes, 1-d levels [K^(1/3)], quantize dropout 1.0)",
         _family("residual_fsq", quantize_dropout=1.0)),
    Rung("fam-rfsq-33", "residual FSQ (3 levels of levels [3, 3] = 9 codes: 729 in all, quantize dropout 1.0)",
         _family("residual_fsq", levels=[3, 3], quantize_dropout=1.0)),
)

RUNGS.update({r.key: r for r in _FAMILY_ROWS})
TABLES["families"] = tuple(r.key for r in _FAMILY_ROWS)
RUNG_NAMES = tuple(RUNGS)
