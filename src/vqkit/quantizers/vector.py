"""Vector quantizers: :class:`VectorQuantizer`, :class:`GroupedVectorQuantizer` (the residual ones are in
:mod:`vqkit.quantizers.residual`).

The :class:`VectorQuantizer` implements the three techniques of Huh et al. 2023, *Straightening Out the
Straight-Through Estimator*, on by default (users keep defaults):

1. affine re-parameterization of the codebook (``codebook="affine"``, or ``"running_affine"``),
2. alternating optimization (``alternating_steps`` inner codebook steps before the output is formed),
3. the synchronized commitment update (``sync_nu``),

plus k-means++ initialization, dead-code replacement, EMA codebooks, the cosine metric, low-dimensional
codebooks with projections and the rotation-trick estimator.

Maintenance (k-means init, alternating steps, dead-code replacement, EMA and running statistics) never
modifies a tensor an autograd graph holds: every call's output and gradients are exact for the codebook
that call used, so one quantizer can be called several times before one backward (views of a batch,
chunks, scales of a multi-scale tokenizer, shared residual levels), under gradient accumulation and
under activation checkpointing (``torch.utils.checkpoint``: maintenance runs once per training forward; the
recomputation replays the original call's assignment and codebook state and continues the RNG as after
it, so random ops after the quantizer in the same region see the same numbers). In the steady state
(after the k-means initializing step) the training forward is shape-static graph code when compiled
(``fullgraph=True``); the optional settling of the first calls (``settle_calls``) is eager only. Not
supported: a *compiled* region that also checkpoints a training-mode quantizer
(the compiled recomputation cannot be told apart from a new call, so maintenance would run again):
checkpoint outside the compiled quantizer, or compile with maintenance off (eval, ``freeze_codebook``).
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import distributed as dist_utils
from ..codebooks import (
    CodebookSpec,
    EMACodebook,
    RunningAffineCodebook,
    assignment_sums,
    codebook_spec,
    keep_fp32_statistics,
)
from ..dtypes import accumulation_dtype
from ..estimators import ESTIMATORS, estimate, straight_through_with_loss
from ..losses import orthogonal_loss, soft_assignment_entropy, vq_loss
from ..maintenance import gather_embeddings, kmeans, replacement_candidates, shared_generator
from ..metrics import code_counts, perplexity, usage
from ..search import DEFAULT_MEMORY_BUDGET, METRICS, SearchResult, nearest_code, sample_code
from ..validation import check_bool, check_choice, check_float, check_int
from .base import (
    IndexLayout,
    QuantizerOutput,
    Quantizer,
    apply_projection,
    check_nonfinite,
    flatten_input,
    mean_stats,
    nan_rows,
    nonfinite_rows,
    restore_channel_dim,
)
from .registry import register_preset, register_quantizer

__all__ = [
    "VectorQuantizer",
    "GroupedVectorQuantizer",
    "VQResult",
    "PLAIN_STE",
    "TECHNIQUES",
    "PAPER",
    "DefaultChange",
    "DEFAULT_CHANGES",
]

#: keyword arguments that turn every fix off: the plain straight-through VQ-VAE baseline.
PLAIN_STE = dict(codebook="plain", sync_nu=0.0, alternating_steps=0, kmeans_init=False, dead_code_steps=0)

#: each technique of the method as the keyword arguments that switch it on over :data:`PLAIN_STE`, in the
#: order of the cumulative ablation ladder (k-means init, synchronized update, affine re-parameterization,
#: alternating optimization, dead-code replacement after T = 20 unused calls, the paper's typical T).
TECHNIQUES: dict[str, dict] = {
    "kmeans": dict(kmeans_init=True),
    "sync": dict(sync_nu=1.0),
    "affine": dict(codebook="affine"),
    "alternating": dict(alternating_steps=1, alternating_lr=1.0),
    "replacement": dict(dead_code_steps=20),
}

#: default inner step size of the alternating optimization (``alternating_lr``), chosen by measurement.
ALTERNATING_LR = 0.1


@dataclass(frozen=True)
class DefaultChange:
    """A :class:`VectorQuantizer` argument whose library default (or the rule behind a default value) changed:
    ``old`` before vqkit ``since``, ``new`` from it on. A run that takes it from the library trains with
    different settings on either side, so resuming one across the change has to pin the value (see
    :attr:`VectorQuantizer.defaulted`). ``pin`` is the value that continues as trained; None: the value the
    module holds in its buffer ``pin_buffer`` in the checkpoint."""

    since: str
    argument: str
    old: str
    new: str
    pin: Any = None
    pin_buffer: str | None = None


#: every default change of :class:`VectorQuantizer` that changes what an unchanged recipe trains, oldest first.
DEFAULT_CHANGES: tuple[DefaultChange, ...] = (
    DefaultChange("0.2.0", "alternating_lr", "1.0", str(ALTERNATING_LR), pin=1.0),
    DefaultChange("0.3.0", "dead_code_steps", '"auto" = ceil(2 K / n) calls', '"auto" = round(8 K / n) calls',
                  pin_buffer="dead_code_window"),
)

#: the paper's full method: every technique on (``VectorQuantizer(dim, K, **PAPER)``).
PAPER = dict(PLAIN_STE, **{k: v for t in TECHNIQUES.values() for k, v in t.items()})

#: window used for the ``dead_codes`` statistic when replacement is off (the paper's typical T).
DEAD_CODE_WINDOW = 20

#: decay of the running assignment counts behind ``dead_code_threshold``.
USAGE_EMA_DECAY = 0.8

#: ``dead_code_mass``: the running code masses average over ``max(dead_code_window, MASS_HORIZON)`` calls.
MASS_HORIZON = 10

#: ``dead_code_steps="auto"``: a code is dead after ``round(DEAD_CODE_COVERAGE * K / n)`` calls unused (at least
#: 1), ``n`` the vectors of the last training call (all ranks): the calls in which a code of mean mass 1 / K would
#: have been chosen this many times. It is 1 while a batch holds more than ``2 / 3`` of this many vectors per code.
DEAD_CODE_COVERAGE = 8

#: ``dead_code_steps="auto"`` ramps its window in (vqkit 0.4.0): after the ``t``-th training call (the buffer
#: ``training_calls``) it is at most ``1 + t // DEAD_CODE_RAMP``, so the codes stranded while the encoder's output still moves fast
#: (the spread of the Fashion-MNIST VQ-VAE's latents grows 9-20-fold over its first 30 steps) are re-seeded within a
#: few calls instead of a full window.
DEAD_CODE_RAMP = 10

#: rounds of the search / re-seed of one settling call (each one search of the call's vectors).
SETTLE_ROUNDS = 3

#: ``training_calls`` given to checkpoints written before the buffer existed: past any ramp, so a run resumed from
#: one continues with the window it had (no ramp, as it started); the ramp needs no entry in :data:`DEFAULT_CHANGES`.
RAMP_DONE = 1 << 40

#: ``replacement_sampling`` choices: the rule by which batch rows re-seed dead codes.
REPLACEMENT_SAMPLING = ("uniform", "crowded", "error")

#: most codes re-seeded in one step (the candidates drawn per step; more dead codes wait a step).
MAX_REPLACEMENTS_PER_STEP = 4096

#: training calls inside checkpointed regions remembered for their recomputation (e.g. the levels of a
#: shared-codebook residual quantizer, the scales of a multi-scale tokenizer).
_RECORDS = 64


class VQResult(NamedTuple):
    """Result of :meth:`VectorQuantizer.quantize_vectors` on flat vectors.

    ``codes`` ``(N, Dc)``: the selected effective codes, differentiable w.r.t. the codebook parameters (or
    the straight-through output when ``output_nu`` was given); ``indices`` ``(N,)`` (-1 for non-finite
    rows); ``loss`` scalar; ``stats`` detached scalars; ``bad`` ``(N,)`` bool of non-finite rows, or None.
    """

    codes: Tensor
    indices: Tensor
    loss: Tensor
    stats: dict[str, Tensor]
    bad: Tensor | None


class _Record(NamedTuple):
    """What a training call inside a checkpointed region leaves for its recomputation: the input's
    fingerprint, the assignment, the codebook state it used, and the RNG state after its random draws."""

    shape: torch.Size
    fingerprint: Tensor
    indices: Tensor
    state: dict[str, Tensor]
    rng: tuple[Tensor, Tensor | None]


def _in_backward() -> bool:
    """True while autograd runs a backward pass (where ``torch.utils.checkpoint`` recomputes forwards)."""
    return torch._C._current_graph_task_id() != -1


def _in_checkpointed_forward() -> bool:
    """True in the first forward of a ``torch.utils.checkpoint`` region: reentrant checkpointing runs it under
    ``no_grad``, non-reentrant checkpointing with saved-tensor hooks installed."""
    if not torch.is_grad_enabled():
        return True
    try:
        return torch._C._autograd._top_saved_tensors_default_hooks(False) is not None
    except (AttributeError, TypeError):  # pragma: no cover - other torch versions: record always
        return True


def _fingerprint(z: Tensor) -> Tensor:
    """Order-sensitive fp64 fingerprint of ``z (N, D)``: tells a recomputed input from another call's input
    of the same shape (also a permutation of it). One pass over ``z``."""
    n, d = z.shape
    mix = torch.linspace(1.0, 2.0, d, dtype=z.dtype, device=z.device)
    ramp = torch.arange(1, n + 1, dtype=torch.float64, device=z.device)
    rows = z @ mix
    return torch.stack([rows.sum(dtype=torch.float64), (rows.double() * ramp).sum()])


class _ValueOf(torch.autograd.Function):
    """``value`` in the forward (bit-exact), the identity gradient to ``param`` in the backward: a parameter as
    it was at an earlier call (``p + sg(p_then - p)`` without the rounding of the sum)."""

    @staticmethod
    def forward(param: Tensor, value: Tensor) -> Tensor:
        return value.clone()

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None


def _rng_state(device: torch.device) -> tuple[Tensor, Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple[Tensor, Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


@register_quantizer("vq", example=dict(codebook_size=16))
class VectorQuantizer(Quantizer):
    """Vector quantizer with the fixes of Huh et al. 2023 on by default.

    Args:
        dim: input channels D_in.
        codebook_size: number of codes K.
        codebook: the codebook parameterization: ``"affine"`` (learned shared scale / shift, the paper's
            re-parameterization; :class:`~vqkit.codebooks.Affine` with ``lr=10``), ``"running_affine"``,
            ``"plain"``, ``"ema"`` (no gradient; VQ-VAE-2 / SoundStream), ``"linear"`` (SimVQ), or a spec from
            :mod:`vqkit.codebooks` with its own settings, e.g. ``Affine(lr=2.0, groups=4)``, ``EMA(0.8)``.
            The affine scale is kept positive (about ``1 + 10 s`` above 1, ``exp(10 s)`` below; vqkit 0.6.0):
            the paper's linear scale was driven through zero by Adam on a ViT's residual stream, and the
            held-out usage collapsed on 1 seed of 3 (Fashion-MNIST, K = 512; 100% on every seed since).
        codebook_dim: code dimension D; when it differs from ``dim`` the input is projected in and the
            output projected back with learned linear maps.
        metric: ``"euclidean"`` (squared L2) or ``"cosine"`` (inputs and codes l2-normalized; the output
            is the unit-norm code, so the layers after the quantizer see features of a fixed scale).
            Measured on Fashion-MNIST (600 steps, K = 512): cosine raised an AlexNet-style classifier, which
            has no normalization layer, from 77.6% to 83.4% accuracy (6 seeds, every seed higher), did
            nothing to a ResNet-18-style one (batch norm), and cost a conv VQ-VAE 23% of its reconstruction
            MSE, so the default stays euclidean; a model whose layers after the bottleneck do not normalize
            their input may want cosine.
        commitment_weight: weight of ``mean((z - sg(c))^2)`` (pulls the encoder to its codes). Measured on
            Fashion-MNIST: 1.0 raised an AlexNet-style classifier's accuracy after 3000 steps by 1.5 points at
            K = 512 (1.9 on three other seeds) and 0.5 points at K = 1024 (3 seeds each, every seed higher)
            but cost a conv VQ-VAE 21% of its reconstruction MSE (0.25: 10%), so the default stays 0.05; a
            classifier trained to convergence may want 1.0.
        codebook_weight: weight of ``mean((sg(z) - c)^2)`` (pulls codes to the encoder). The default
            ``(0.05, 0.95)`` is the paper's ``beta = 0.95``; the classic VQ-VAE is ``(0.25, 1.0)``. Default
            0.95 (0 for an EMA codebook, which takes no gradient: another value is an error).
        sync_nu: synchronized update weight: the task gradient reaches the selected codes times ``nu``.
            Default 1.0 (0.0 for an EMA codebook, which takes no gradient).
        alternating_steps: inner codebook steps taken before the output is formed (training only).
            Default 1 (0 for an EMA codebook).
        alternating_lr: inner step size in ``(0, 1]`` (default :data:`ALTERNATING_LR` = 0.1): each step is
            block coordinate descent on the codebook loss, moving the affine shift (all codes of a group by the
            mean residual) and then each used code (toward its assigned-embedding mean) this fraction of the way
            to their optimum; ``1.0`` is an exact Lloyd-style step on the batch (the paper's full step,
            ``TECHNIQUES["alternating"]``). The damped default averages the batch targets over about ten calls
            instead of jumping to each batch's means: measured on a Fashion-MNIST VQ-VAE (K = 512 / 1024,
            3 seeds) it spreads usage more evenly (perplexity +4% / +6%; +8% at K = 8192, one seed) with an
            MSE inside the seed spread of the full step's.
            Only with ``alternating_steps > 0``.
        alternating_reassign: re-run the search after the last inner step, so the output and the STE
            gradient use the updated codebook *and* assignment (default False; only with alternating steps).
        kmeans_init: initialize the codebook with k-means++ on the first training batch.
        kmeans_iters: Lloyd iterations of that init (default 10; only with ``kmeans_init``).
        dead_code_steps: re-seed a code from a current embedding after this many training calls
            without use (0 = never), or ``"auto"`` (the default): after ``round(8 K / n)`` calls (at least 1),
            ``n`` the vectors of the last training call on all ranks, i.e. the calls in which a code of mean
            mass ``1 / K`` would have been chosen about 8 times. That is 1 (every code a batch did not choose
            is re-seeded before the next search) while a batch holds more than 16 / 3 vectors per code, and grows
            with K beyond, so a large codebook is not churned before its codes can be chosen. It ramps in:
            after the ``t``-th training call it is at most ``1 + t // 10`` (:data:`DEAD_CODE_RAMP`), so codes
            stranded while the encoder's output still moves fast, right after the init, are re-seeded within a
            few calls. Chosen by measurement (Fashion-MNIST VQ-VAE, K = 2^9 ... 2^16, against fixed windows;
            ``ceil(2 K / n)`` before vqkit 0.3.0, no ramp before 0.4.0); the window in use is the buffer
            ``dead_code_window``, the calls so far ``training_calls``.
        dead_code_threshold: also re-seed codes whose running assignment count (an EMA over calls with
            decay 0.8, of the all-reduced per-call counts) drops below this many vectors (0 = off): rarely
            used codes are recycled too, which flattens usage (higher perplexity) at large K.
        dead_code_mass: also re-seed codes whose running mass falls below this fraction of the mean mass
            ``1 / K`` (0 = off; in ``[0, 1)``). A code's running mass is an EMA over training calls of its share
            of the call's vectors (all ranks) times K, with horizon ``H = max(dead_code_window, 10)`` calls
            (weight ``1 / H`` on the newest call), so it is relative to the batch and follows the window as
            it ramps in and grows with K (the buffer ``code_mass``; 1 = the mean). A re-seeded code restarts at
            the mean: a code that is never chosen again falls below ``f`` after ``H ln(1 / f)`` calls. Unlike
            ``dead_code_threshold`` (an absolute count over about 5 calls) it means the same at every K and batch
            size; it recycles the codes of the low tail of the mass distribution into where the batch's vectors
            are, which evens out the masses.
        settle_calls: on training calls 2 to ``1 + settle_calls`` (0 = off, the default), *settle* the codebook
            before the assignment: every code that none of the call's vectors (all ranks) would choose is
            re-seeded from them, up to 3 rounds (a code that loses all its vectors to a re-seeded one is re-seeded
            in the next). Right after the k-means init the first optimizer steps move the encoder's output off
            most codes at once, which no replacement window (acting one call late) can follow: with
            ``settle_calls=10`` the lowest training-batch usage of a Fashion-MNIST AlexNet-style classifier
            (K = 512) rose from 42% to 66% and that of a VQ-VAE at lr 1e-3 from 31% to 79%, but the classifier's
            test accuracy after 600 steps fell by about 0.9 points (3 seeds, K = 512 and 1024), so it is off by
            default. Costs up to 3 extra searches on each of those calls; eager calls only (a compiled training
            forward leaves it out, as it leaves the k-means init to an eager call).
        replacement_sampling: which rows of the batch re-seed dead codes: ``"uniform"`` (the default: every
            valid row equally likely, so a region is drawn in proportion to its mass), ``"crowded"`` (a row in
            proportion to how many rows of the batch share its nearest code: re-seeded codes split the most
            used codes) or ``"error"`` (in proportion to its squared distance to its nearest code, k-means++'s
            rule: they go where the codebook fits worst). The last two cost one extra search of the batch per
            training call (eager CPU calls that replace no code skip it). Under torch.distributed the counts of
            ``"crowded"`` are all-reduced; each rank still draws its share of the candidates from its own rows.
            Only with replacement on (``dead_code_steps != 0``, ``dead_code_threshold > 0`` or
            ``dead_code_mass > 0``).
        estimator: ``"ste"`` (straight-through) or ``"rotation"`` (rotation trick).
        sampling_temperature: > 0 draws each training assignment from ``softmax(-distance / T)`` (Gumbel-max,
            straight-through output) instead of taking the nearest code; eval always takes the nearest.
            The drawn codes are the call's assignment everywhere (alternating steps, counts, records).
        orthogonal_weight: weight of the orthogonal codebook regularizer (ViT-VQGAN): the mean squared
            cosine similarity between codes, :func:`vqkit.losses.orthogonal_loss`; added to ``loss`` (needs a
            codebook trained by gradient).
        diversity_weight: weight of the codebook diversity regularizer ``log K - H(p_bar)``, the entropy gap
            of the batch-averaged soft assignment ``p_bar = mean_i softmax(-distance_i / diversity_temperature)``
            (:func:`vqkit.losses.soft_assignment_entropy`; exact, in row chunks); added to ``loss``.
        diversity_temperature: its softmax temperature (default 1.0; only with ``diversity_weight > 0``).
        freeze_codebook: no gradient reaches the codes and no maintenance runs (no k-means init,
            alternating steps, replacement, EMA or running statistics, no counter updates); also per call
            (``forward(..., freeze_codebook=True)``). A gradient-trained codebook whose parameters all have
            ``requires_grad=False`` is frozen the same way.
        channel_dim: axis of the channels (``1`` for ``B x C x H x W``).
        check_finite: raise on NaN/Inf input (one host sync per call). With False (and always under
            ``torch.compile``) non-finite rows are treated as padding instead: they change nothing and come
            back as NaN outputs with index -1.
        memory_budget: bytes for one chunk of the nearest-code search.

    Shapes: ``x`` ``(..., dim)`` (channels on ``channel_dim``) -> ``quantized`` same shape and dtype,
    ``indices`` int64 ``x.shape`` minus the channel axis, ``loss`` scalar. ``mask`` (bool, True = real
    position, the shape of ``indices``) or ``lens`` (``(B,)`` lengths for ``(B, T)`` sequences) mark
    padding: padded positions may hold anything and affect neither the loss, the codebook, the buffers,
    nor the stats; their outputs are meaningless. Stats: ``usage``, ``perplexity``, ``dead_codes``,
    ``quantization_error`` (mean squared distance of a vector to its code), ``vq_mse`` (per element),
    ``commitment_loss`` and ``codebook_loss`` (the two weighted terms of ``loss``), and with the regularizers
    on ``orthogonal_loss`` and ``diversity_entropy`` (unweighted).
    """

    #: buffers that checkpoints of older releases lack; loading fills them in (``_load_from_state_dict``)
    optional_state_keys: tuple[str, ...] = ("dead_code_window", "training_calls")

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        *,
        codebook: str | CodebookSpec = "affine",
        codebook_dim: int | None = None,
        metric: str = "euclidean",
        commitment_weight: float = 0.05,
        codebook_weight: float | None = None,
        sync_nu: float | None = None,
        alternating_steps: int | None = None,
        alternating_lr: float | None = None,
        alternating_reassign: bool | None = None,
        kmeans_init: bool = True,
        kmeans_iters: int | None = None,
        dead_code_steps: int | str = "auto",
        dead_code_threshold: float = 0.0,
        dead_code_mass: float = 0.0,
        settle_calls: int = 0,
        replacement_sampling: str = "uniform",
        estimator: str = "ste",
        sampling_temperature: float = 0.0,
        orthogonal_weight: float = 0.0,
        diversity_weight: float = 0.0,
        diversity_temperature: float | None = None,
        freeze_codebook: bool = False,
        channel_dim: int = -1,
        check_finite: bool = True,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
    ) -> None:
        super().__init__(dim, channel_dim)
        check_int("codebook_size", codebook_size, 1)
        if codebook_dim is not None:
            check_int("codebook_dim", codebook_dim, 1)
        spec = codebook_spec(codebook)
        check_choice("metric", metric, METRICS)
        check_choice("estimator", estimator, ESTIMATORS)
        gradient = spec.learns_by_gradient
        sync_nu = check_float("sync_nu", sync_nu, low=0.0) if sync_nu is not None else (1.0 if gradient else 0.0)
        steps = check_int("alternating_steps", alternating_steps, 0) if alternating_steps is not None \
            else (1 if gradient else 0)
        if not gradient:
            clashes = [f"{n}={v}" for n, v in (("sync_nu", sync_nu), ("alternating_steps", steps)) if v]
            if clashes:
                raise ValueError(f"codebook: an {spec.kind!r} codebook is not trained by gradient, so it takes no "
                                 f"{' and no '.join(clashes)}; leave them at their defaults or pass 0")
        self.sampling_temperature = check_float("sampling_temperature", sampling_temperature, low=0.0)
        self.orthogonal_weight = check_float("orthogonal_weight", orthogonal_weight, low=0.0)
        self.diversity_weight = check_float("diversity_weight", diversity_weight, low=0.0)
        for name, value, needs, what in (
                ("alternating_lr", alternating_lr, steps > 0, "alternating_steps > 0"),
                ("alternating_reassign", alternating_reassign, steps > 0, "alternating_steps > 0"),
                ("kmeans_iters", kmeans_iters, kmeans_init, "kmeans_init=True"),
                ("diversity_temperature", diversity_temperature, self.diversity_weight > 0, "diversity_weight > 0")):
            if value is not None and not needs:
                raise ValueError(f"{name}: only used with {what}; got {name}={value!r} with that option off")
        self.diversity_temperature = 1.0 if diversity_temperature is None else check_float(
            "diversity_temperature", diversity_temperature, low=0.0, low_open=True)
        self.freeze_codebook = check_bool("freeze_codebook", freeze_codebook)
        alternating_lr_given = alternating_lr
        alternating_lr = ALTERNATING_LR if alternating_lr is None else check_float(
            "alternating_lr", alternating_lr, low=0.0, high=1.0, low_open=True)
        reassign = False if alternating_reassign is None else check_bool("alternating_reassign", alternating_reassign)
        kmeans_iters = 10 if kmeans_iters is None else check_int("kmeans_iters", kmeans_iters, 0)
        self.commitment_weight = check_float("commitment_weight", commitment_weight, low=0.0)
        if codebook_weight is None:
            codebook_weight = 0.95 if gradient else 0.0
        self.codebook_weight = check_float("codebook_weight", codebook_weight, low=0.0)
        for name, value in (("codebook_weight", self.codebook_weight), ("orthogonal_weight", orthogonal_weight)):
            if value and not gradient:
                raise ValueError(f"{name}: a loss on the codes needs a codebook trained by gradient; the "
                                 f"{spec.kind!r} codebook takes none (got {name}={value})")
        check_bool("kmeans_init", kmeans_init)
        check_bool("check_finite", check_finite)
        if dead_code_steps != "auto":
            if isinstance(dead_code_steps, str):
                raise ValueError(f"dead_code_steps: expected an int >= 0 or 'auto', got {dead_code_steps!r}")
            check_int("dead_code_steps", dead_code_steps, 0)
        self.dead_code_threshold = check_float("dead_code_threshold", dead_code_threshold, low=0.0)
        self.dead_code_mass = check_float("dead_code_mass", dead_code_mass, low=0.0, high=1.0, high_open=True)
        check_choice("replacement_sampling", replacement_sampling, REPLACEMENT_SAMPLING)
        if (replacement_sampling != "uniform" and dead_code_steps == 0 and self.dead_code_threshold == 0
                and self.dead_code_mass == 0):
            raise ValueError(f"replacement_sampling: only used with dead-code replacement (dead_code_steps != 0, "
                             f"dead_code_threshold > 0 or dead_code_mass > 0); got "
                             f"replacement_sampling={replacement_sampling!r} with replacement off")
        self.replacement_sampling = replacement_sampling
        check_int("memory_budget", memory_budget, 1)

        self.codebook_size = codebook_size
        self.codebook_dim = codebook_dim or dim
        self.codebook_spec = spec
        self.metric = metric
        self.sync_nu = sync_nu
        self.alternating_steps = steps
        self.alternating_lr = alternating_lr
        #: arguments with a :data:`DEFAULT_CHANGES` entry that this module takes from the library default
        self.defaulted: frozenset[str] = frozenset(
            ({"alternating_lr"} if alternating_lr_given is None and steps > 0 else set())
            | ({"dead_code_steps"} if dead_code_steps == "auto" else set()))
        self.alternating_reassign = reassign
        self.kmeans_init = kmeans_init
        self.kmeans_iters = kmeans_iters
        self.dead_code_steps = dead_code_steps
        self.settle_calls = check_int("settle_calls", settle_calls, 0)
        self.estimator = estimator
        self.check_finite = check_finite
        self.memory_budget = memory_budget

        projects = self.codebook_dim != dim
        self.project_in = nn.Linear(dim, self.codebook_dim) if projects else nn.Identity()
        self.project_out = nn.Linear(self.codebook_dim, dim) if projects else nn.Identity()
        try:
            self.codes = spec.build(codebook_size, self.codebook_dim)
        except ValueError as err:  # e.g. groups that do not divide K: name the argument it came from
            raise ValueError(f"codebook: {err}") from None
        self.register_buffer("initialized", torch.tensor(not self.kmeans_init))
        self.register_buffer("code_age", torch.zeros(codebook_size, dtype=torch.int64))
        # calls unused after which a code is dead (fixed, or recomputed every training call with "auto")
        window = 1 if dead_code_steps == "auto" else (dead_code_steps or DEAD_CODE_WINDOW)
        self.register_buffer("dead_code_window", torch.tensor(window, dtype=torch.int64))
        # training calls that maintained the codebook: the "auto" window's ramp
        self.register_buffer("training_calls", torch.tensor(0, dtype=torch.int64))
        if self.dead_code_threshold > 0:  # inf = not yet observed (the first call's counts are copied)
            self.register_buffer("usage_ema", torch.full((codebook_size,), float("inf")))
        if self.dead_code_mass > 0:  # running mass relative to the mean 1 / K: every code starts at the mean
            self.register_buffer("code_mass", torch.ones(codebook_size))
        self._needs_init = self.kmeans_init
        # a fast path: False once the settling calls are over (the buffer decides before then)
        self._settling = self.settle_calls > 0
        self._records: collections.deque[_Record] = collections.deque(maxlen=_RECORDS)
        self.register_load_state_dict_post_hook(_after_load)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        # a fixed window is this module's argument, not the checkpoint's (a changed dead_code_steps must not be
        # silently undone by a resume); "auto" keeps the checkpoint's, or 1 from checkpoints without the buffer
        key = prefix + "dead_code_window"
        if self.dead_code_steps != "auto" or key not in state_dict:
            state_dict[key] = self.dead_code_window.clone()
        # checkpoints from before the "auto" window's ramp (vqkit < 0.4.0) are past it
        state_dict.setdefault(prefix + "training_calls", torch.tensor(RAMP_DONE, dtype=torch.int64))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, codebook_size={self.codebook_size}, codebook_dim={self.codebook_dim}, "
                f"codebook={self.codebook_spec.describe()}, metric={self.metric!r}, sync_nu={self.sync_nu}, "
                f"alternating_steps={self.alternating_steps}, kmeans_init={self.kmeans_init}, "
                f"dead_code_steps={self.dead_code_steps}, "
                + (f"dead_code_threshold={self.dead_code_threshold}, " if self.dead_code_threshold else "")
                + (f"dead_code_mass={self.dead_code_mass}, " if self.dead_code_mass else "")
                + (f"settle_calls={self.settle_calls}, " if self.settle_calls else "")
                + (f"replacement_sampling={self.replacement_sampling!r}, "
                   if self.replacement_sampling != "uniform" else "")
                + f"estimator={self.estimator!r}")

    def _apply(self, fn, recurse: bool = True):
        # running counts / masses keep their fp32 values
        before = {name: self._buffers.get(name) for name in ("usage_ema", "code_mass")}
        super()._apply(fn, recurse)
        keep_fp32_statistics(self, before)
        return self

    # ------------------------------------------------------------------------------------------
    # public API
    # ------------------------------------------------------------------------------------------

    @property
    def codebook(self) -> Tensor:
        """Effective code vectors ``(K, dim)`` in the output space (after affine, normalization and
        projection), detached."""
        with torch.no_grad():
            return self._project_out(self.effective_codes())

    @property
    def latent_codebook(self) -> Tensor:
        """The codes the search sees, ``(K, codebook_dim)``, detached."""
        with torch.no_grad():
            return self.effective_codes()

    @property
    def index_layout(self) -> IndexLayout:
        return IndexLayout((), (self.codebook_size,))

    def effective_codes(self, committed: bool = False) -> Tensor:
        """The codes the search sees, ``(K, codebook_dim)``, differentiable w.r.t. the parameters.

        ``committed``: without statistics still waiting to be folded in (EMA): the codes a training call uses.
        """
        codes = self.codes(committed)
        return F.normalize(codes, dim=-1) if self.metric == "cosine" else codes

    def decode_codes(self, indices: Tensor) -> Tensor:
        """``(...)`` indices -> ``(..., dim)`` codes, channel-last."""
        return self._project_out(F.embedding(indices, self.effective_codes()))

    @property
    def needs_initialization(self) -> bool:
        """True until the k-means init has run (with ``kmeans_init=True``)."""
        return self._needs_init

    def initialize_codebook(self, x: Tensor, mask: Tensor | None = None) -> None:
        """Run the k-means init now on ``x`` (the input of a forward), e.g. before compiling the training
        step with ``fullgraph=True`` (the init itself is data-dependent and runs eagerly)."""
        flat, valid, _ = flatten_input(self, x, mask)
        check_nonfinite("x", flat)
        with torch.no_grad():
            z = self._project_in(flat)
            if self.metric == "cosine":
                z = F.normalize(z, dim=-1)
            self._kmeans_init(z.detach(), None if valid is None else valid.to(accumulation_dtype(z)))
        self._records.clear()

    def forward(self, x: Tensor, mask: Tensor | None = None, *, lens: Tensor | None = None,
                freeze_codebook: bool | None = None) -> QuantizerOutput:
        """Quantize ``x``; see the class docstring for shapes (``freeze_codebook`` overrides the module's
        setting for this call)."""
        flat, valid, lead = flatten_input(self, x, mask, lens)
        z = self._project_in(flat)
        if self.metric == "cosine":
            z = F.normalize(z, dim=-1)
        if self.estimator == "ste":  # gather, straight-through output and loss in one fused op
            res = self.quantize_vectors(z, valid, output_nu=self.sync_nu, freeze=freeze_codebook)
            out = res.codes
        else:
            res = self.quantize_vectors(z, valid, freeze=freeze_codebook)
            out = estimate(self.estimator, z, res.codes, self.sync_nu)
        out = nan_rows(self._project_out(out), res.bad)
        quantized = restore_channel_dim(out.to(x.dtype).reshape(*lead, self.dim), self.channel_dim)
        return QuantizerOutput(quantized, res.indices.reshape(lead), res.loss, res.stats)

    # ------------------------------------------------------------------------------------------
    # the quantization step on flat vectors (reused by grouped / residual quantizers)
    # ------------------------------------------------------------------------------------------

    def search(self, z: Tensor, codes: Tensor) -> SearchResult:
        return nearest_code(z, codes, self.metric, memory_budget=self.memory_budget)

    def frozen(self, freeze: bool | None = None) -> bool:
        """Whether a call with ``freeze`` (None = the module's setting) leaves the codebook alone."""
        if freeze is not None:
            return check_bool("freeze_codebook", freeze)
        if self.freeze_codebook:
            return True
        requires = [p.requires_grad for p in self.codes.parameters()]
        return bool(requires) and not any(requires)

    def quantize_vectors(self, z: Tensor, valid: Tensor | None = None, output_nu: float | None = None,
                         freeze: bool | None = None, checked: bool = False) -> VQResult:
        """Assign ``z (N, codebook_dim)`` to codes, maintaining the codebook in training.

        Args:
            z: vectors in codebook space (already projected; l2-normalized for the cosine metric).
            valid: optional ``(N,)`` bool, False for padding rows (which must hold finite values, e.g. 0).
            output_nu: if given, ``codes`` of the result is already the (synchronized, with this ``nu``)
                straight-through output, computed with the loss in one fused op.
            freeze: leave the codebook alone this call (see ``freeze_codebook``); None = the module's setting.
            checked: the caller already applied the non-finite rule to ``z`` (a residual level): skip it.
        Returns:
            :class:`VQResult`; ``codes`` are the selected codes (not yet passed through an estimator,
            unless ``output_nu`` is given).
        """
        compiling = torch.compiler.is_compiling()
        bad = None
        if not checked:
            z, valid, bad = nonfinite_rows(self.check_finite, z, valid)
        zd = z.detach()
        acc = accumulation_dtype(zd)
        weight = None if valid is None else valid.to(acc)
        training = self.training
        frozen = self.frozen(freeze)
        maintains = training and not frozen
        replayed = None
        if maintains and not compiling and _in_backward():
            # activation checkpointing recomputes a call: its recorded assignment and codebook (or, for a call
            # that changed nothing, a plain recomputation); never maintenance again
            replayed = self._replay(zd)
            maintains = False
        if replayed is not None:
            indices, codes = replayed
        else:
            if maintains:
                self._maintain(zd, weight, compiling)
            if maintains and self.alternating_steps > 0:
                with torch.no_grad():
                    indices = self._assign(zd, self.effective_codes(True), training)
                for step in range(self.alternating_steps):
                    counts, sums = assignment_sums(zd, indices, weight, self.codebook_size)
                    self.codes.alternating_step_(counts, sums, self.alternating_lr)
                    if step < self.alternating_steps - 1 or self.alternating_reassign:
                        with torch.no_grad():
                            indices = self._assign(zd, self.effective_codes(True), training)
                codes = self.effective_codes(True)  # a snapshot: later maintenance cannot touch this graph
            else:
                codes = self.effective_codes(maintains)
                indices = self._assign(zd, codes.detach(), training)
        if frozen:
            codes = codes.detach()

        if output_nu is None:
            selected = F.embedding(indices, codes)
            if valid is not None and codes.requires_grad:  # a padding row's output sends its code no gradient
                selected = torch.where(valid[:, None], selected, selected.detach())
            total, mse, _ = vq_loss(z, selected, self.commitment_weight, self.codebook_weight, weight)
        else:
            selected, total, mse = straight_through_with_loss(
                z, codes, indices, output_nu, self.commitment_weight, self.codebook_weight, weight)

        if maintains and replayed is None:
            counts = self._bookkeep(zd, indices, weight)
            if not compiling and _in_checkpointed_forward():
                self._record(zd, indices)
        else:
            counts = code_counts(indices, self.codebook_size, valid)
        regularizers = {}
        if self.orthogonal_weight > 0:
            regularizers["orthogonal_loss"] = orthogonal_loss(codes)
            total = total + self.orthogonal_weight * regularizers["orthogonal_loss"]
        if self.diversity_weight > 0:
            regularizers["diversity_entropy"] = soft_assignment_entropy(
                z, codes, self.diversity_temperature, self.metric, weight, self.memory_budget)
            gap = math.log(self.codebook_size) - regularizers["diversity_entropy"]
            total = total + self.diversity_weight * gap
        mse = mse.detach()
        stats = {
            "usage": usage(counts),
            "perplexity": perplexity(counts),
            "dead_codes": (self.code_age >= self.dead_code_window).sum().float(),
            "quantization_error": mse * self.codebook_dim,
            "vq_mse": mse,
            "commitment_loss": mse * self.commitment_weight,
            "codebook_loss": mse * self.codebook_weight,
            **{k: v.detach() for k, v in regularizers.items()},
        }
        if bad is not None:
            indices = torch.where(bad, -1, indices)
        return VQResult(selected, indices, total, stats, bad)

    # ------------------------------------------------------------------------------------------
    # maintenance (training calls only; never touches a tensor an autograd graph saved)
    # ------------------------------------------------------------------------------------------

    def _project_in(self, flat: Tensor) -> Tensor:
        return apply_projection(self.project_in, flat)

    def _project_out(self, codes: Tensor) -> Tensor:
        return apply_projection(self.project_out, codes)

    def _maintain(self, z: Tensor, weight: Tensor | None, compiling: bool) -> None:
        """Before the search of a training call: fold deferred EMA statistics, k-means init (first call),
        running statistics, dead-code replacement."""
        self.codes.commit_()
        if self._needs_init:  # once, data-dependent: kept out of a compiled graph as one break
            init = torch.compiler.disable(self._kmeans_init) if compiling else self._kmeans_init
            init(z, weight)
        self.codes.update_statistics_(z, weight)
        if self._recycles:
            self._replace_dead_codes(z, weight, compiling)
        if self._settling and not compiling:  # eager only (see settle_calls)
            self._settle(z, weight)

    @property
    def _replaces_by_age(self) -> bool:
        return self.dead_code_steps == "auto" or self.dead_code_steps > 0

    @property
    def _recycles(self) -> bool:
        """Whether training calls re-seed codes (by age, running count or running mass)."""
        return self._replaces_by_age or self.dead_code_threshold > 0 or self.dead_code_mass > 0

    def _maintenance_changes_state(self) -> bool:
        """Whether a training call can change what the next call computes (a recomputation of it then needs
        its record)."""
        return (self._needs_init or self.alternating_steps > 0 or self._recycles
                or isinstance(self.codes, (EMACodebook, RunningAffineCodebook)))

    def _kmeans_init(self, z: Tensor, weight: Tensor | None) -> None:
        pool = gather_embeddings(z, weight, max_rows=max(4 * self.codebook_size, 16384))
        if pool.shape[0] == 0:  # every rank's batch is fully masked: try again next call
            return
        centers = kmeans(pool, self.codebook_size, shared_generator(z.device), self.kmeans_iters, self.metric)
        self.codes.set_codes_(torch.arange(self.codebook_size, device=z.device), centers)
        self.initialized.fill_(True)
        self._needs_init = False

    def _replace_dead_codes(self, z: Tensor, weight: Tensor | None, compiling: bool) -> None:
        """Shape-static: up to ``MAX_REPLACEMENTS_PER_STEP`` dead codes (lowest indices first) take fresh
        candidates drawn from this batch (all ranks); the rest wait for the next call."""
        if self._replaces_by_age:
            dead = self.code_age >= self.dead_code_window
        else:
            dead = torch.zeros_like(self.code_age, dtype=torch.bool)
        if self.dead_code_threshold > 0:
            dead = dead | (self.usage_ema < self.dead_code_threshold)
        if self.dead_code_mass > 0:
            dead = dead | (self.code_mass < self.dead_code_mass)
        if not compiling and z.device.type == "cpu" and not bool(dead.any()):
            return  # free on CPU; identical on every rank (the ages and counts are all-reduced)
        self._reseed(dead, z, weight)

    def _reseed(self, dead: Tensor, z: Tensor, weight: Tensor | None) -> None:
        """Shape-static: up to ``MAX_REPLACEMENTS_PER_STEP`` of the codes ``dead (K,)`` (lowest indices first) take
        fresh candidates drawn from ``z (N, D)`` (all ranks) and restart their age and running count."""
        count = min(self.codebook_size, MAX_REPLACEMENTS_PER_STEP)
        cand, any_valid = replacement_candidates(z, weight, count, row_weight=self._replacement_row_weight(z, weight))
        if self.metric == "cosine":
            cand = F.normalize(cand, dim=-1)
        slot = torch.cumsum(dead.to(torch.int64), 0) - 1
        take = dead & (slot < count) & any_valid
        self.codes.replace_codes_(take, cand[slot.clamp(0, count - 1)])
        self.code_age.masked_fill_(take, 0)
        if self.dead_code_threshold > 0:
            self.usage_ema.copy_(torch.where(take, self.dead_code_threshold, self.usage_ema))
        if self.dead_code_mass > 0:
            self.code_mass.masked_fill_(take, 1.0)

    def _settle(self, z: Tensor, weight: Tensor | None) -> None:
        """Training calls 2 .. ``1 + settle_calls``: re-seed, before the assignment, the codes none of this call's
        vectors (all ranks) would choose, up to ``SETTLE_ROUNDS`` times."""
        calls = int(self.training_calls)  # calls before this one; one host sync, on the settling calls only
        if calls > self.settle_calls:
            self._settling = False
            return
        if calls == 0:  # the first call: the k-means init (or the initial codes) has just been placed
            return
        mask = None if weight is None else weight > 0
        for _ in range(SETTLE_ROUNDS):
            with torch.no_grad():
                found = self.search(z, self.effective_codes(True).detach())
            counts = code_counts(found.indices, self.codebook_size, mask)
            dist_utils.all_reduce_sum_(counts)  # the same decision on every rank
            dead = counts == 0
            if not bool(dead.any()):
                return
            self._reseed(dead, z, weight)

    def _replacement_row_weight(self, z: Tensor, weight: Tensor | None) -> Tensor | None:
        """Per-row sampling weight ``(N,)`` of ``replacement_sampling`` on the current codes (None = uniform)."""
        if self.replacement_sampling == "uniform":
            return None
        with torch.no_grad():
            found = self.search(z, self.effective_codes(True).detach())
            if self.replacement_sampling == "error":
                return found.distances.clamp_min(0.0)
            batch_counts = code_counts(found.indices, self.codebook_size, None if weight is None else weight > 0)
            dist_utils.all_reduce_sum_(batch_counts)  # crowding over the global batch (shape-static)
            return batch_counts[found.indices]

    def _bookkeep(self, z: Tensor, indices: Tensor, weight: Tensor | None) -> Tensor:
        """After the assignment of a training call: all-reduced counts, code ages, usage EMA, and the
        EMA codebook's statistics for the next call. Returns the counts ``(K,)``."""
        if isinstance(self.codes, EMACodebook):
            counts, sums = assignment_sums(z, indices, weight, self.codebook_size)
            self.codes.record_(counts, sums)
        else:
            counts = code_counts(indices, self.codebook_size, None if weight is None else weight > 0)
            dist_utils.all_reduce_sum_(counts)
        self.code_age.add_(1).masked_fill_(counts > 0, 0)
        self.training_calls.add_(1)  # with a fixed window too: a resume that switches to "auto" is past the ramp
        if self.dead_code_steps == "auto":  # counts are all-reduced: the same window on every rank
            n = counts.sum().round().to(torch.int64).clamp_min(1)  # integer math: exact, and on every device
            # round(C K / n), halves up, and at most 1 + t // R at the t-th call
            coverage = torch.div(2 * DEAD_CODE_COVERAGE * self.codebook_size + n, 2 * n, rounding_mode="floor")
            ramp = 1 + torch.div(self.training_calls, DEAD_CODE_RAMP, rounding_mode="floor")
            self.dead_code_window.copy_(torch.minimum(coverage, ramp).clamp_min(1))
        if self.dead_code_threshold > 0:
            ema = self.usage_ema
            c = counts.to(ema.dtype)
            ema.copy_(torch.where(ema.isinf(), c, ema.lerp(c, 1.0 - USAGE_EMA_DECAY)))
        if self.dead_code_mass > 0:
            self._update_code_mass(counts)
        return counts

    def _update_code_mass(self, counts: Tensor) -> None:
        """``code_mass <- code_mass + (K c / n - code_mass) / H`` for the call's all-reduced counts ``c (K,)``
        (``n`` their sum, ``H = max(dead_code_window, MASS_HORIZON)``); a call without vectors changes nothing."""
        mass = self.code_mass
        c = counts.to(mass.dtype)
        n = c.sum()
        share = c * (self.codebook_size / n.clamp_min(1.0))
        horizon = self.dead_code_window.clamp_min(MASS_HORIZON).to(mass.dtype)
        step = torch.where(n > 0, 1.0 / horizon, torch.zeros_like(horizon))
        mass.add_((share - mass) * step)

    def _assign(self, z: Tensor, codes: Tensor, training: bool) -> Tensor:
        """Indices of ``z`` on ``codes`` (detached): a Gumbel draw in training with ``sampling_temperature``,
        else the nearest code."""
        if training and self.sampling_temperature > 0:
            return sample_code(z, codes, self.sampling_temperature, self.metric, memory_budget=self.memory_budget)
        return self.search(z, codes).indices

    def _record(self, z: Tensor, indices: Tensor) -> None:
        state = {name: t.detach().clone() for name, t in self.codes.state_dict(keep_vars=True).items()}
        self._records.append(_Record(z.shape, _fingerprint(z), indices.clone(), state, _rng_state(z.device)))

    def _replay(self, z: Tensor) -> tuple[Tensor, Tensor] | None:
        """``(indices, codes)`` of the training call that activation checkpointing recomputes now: the
        recorded assignment and the codebook state that call used, as a function of the current parameters
        (``p + sg(p_then - p)``: the value then, the gradient to ``p``); the RNG continues as after that call.
        None when the call left no record and nothing it used can have changed (no maintenance)."""
        fp = _fingerprint(z)
        for i in range(len(self._records) - 1, -1, -1):
            rec = self._records[i]
            if rec.shape == z.shape and torch.allclose(rec.fingerprint, fp, rtol=1e-6, atol=0.0):
                del self._records[i]  # each recomputation replays one call (newest first: backward order)
                params = dict(self.codes.named_parameters())
                state = {name: _ValueOf.apply(params[name], t) if name in params else t
                         for name, t in rec.state.items()}
                codes = torch.func.functional_call(self.codes, state, (True,))
                if self.metric == "cosine":
                    codes = F.normalize(codes, dim=-1)
                _set_rng_state(rec.rng, z.device)
                return rec.indices, codes
        if self._maintenance_changes_state():
            raise RuntimeError(
                "VectorQuantizer: a training-mode forward ran inside a backward pass (an activation-checkpoint "
                "recomputation) whose input matches none of the recorded training calls; the recomputed input "
                "differs from the original (non-deterministic layers before the quantizer?)"
            )
        return None


def _after_load(module: VectorQuantizer, incompatible_keys) -> None:
    module._needs_init = not bool(module.initialized)
    module._settling = module.settle_calls > 0 and int(module.training_calls) <= module.settle_calls
    module._records.clear()  # recomputations of calls before the load cannot be replayed


@register_quantizer("grouped_vq", example=dict(codebook_size=8, groups=2))
class GroupedVectorQuantizer(Quantizer):
    """Split each vector into ``groups`` equal parts, each quantized with its own (or a shared) codebook.

    Args:
        dim: input channels (divisible by ``groups``).
        codebook_size: codes per codebook.
        groups: number of groups G.
        shared_codebook: one codebook for all groups instead of one per group.
        channel_dim: channel axis.
        **kwargs: :class:`VectorQuantizer` arguments of each group's quantizer (``dim / G`` channels).

    Shapes: ``indices`` get a trailing axis of size G; ``loss`` is the mean over groups (the elementwise
    mean over the whole vector); stats are averaged over groups.
    """

    forwards_kwargs_to = None  # set below: VectorQuantizer
    _trailing_name = "groups"

    def __init__(self, dim: int, codebook_size: int, groups: int, *, shared_codebook: bool = False,
                 channel_dim: int = -1, **kwargs) -> None:
        super().__init__(dim, channel_dim)
        check_int("groups", groups, 1)
        if dim % groups != 0:
            raise ValueError(f"groups: expected a divisor of dim={dim}, got {groups}")
        self.groups = groups
        self.shared_codebook = check_bool("shared_codebook", shared_codebook)
        n = 1 if shared_codebook else groups
        self.quantizers = nn.ModuleList(VectorQuantizer(dim // groups, codebook_size, **kwargs) for _ in range(n))
        self.codebook_size = codebook_size

    @property
    def codebook(self) -> Tensor:
        """``(G or 1, K, dim / G)`` effective codebooks."""
        return torch.stack([q.codebook for q in self.quantizers])

    def forward(self, x: Tensor, mask: Tensor | None = None, *, lens: Tensor | None = None,
                freeze_codebook: bool | None = None) -> QuantizerOutput:
        flat, valid, lead = flatten_input(self, x, mask, lens)
        # a position with a non-finite entry in any group is padding in every group (NaN out, index -1)
        flat, valid, bad = nonfinite_rows(self.quantizers[0].check_finite, flat, valid)
        part = self.dim // self.groups
        parts = flat.view(-1, self.groups, part)
        if self.shared_codebook:
            v = None if valid is None else valid.repeat_interleave(self.groups)
            out = self.quantizers[0](parts.reshape(-1, part), v, freeze_codebook=freeze_codebook)
            quantized, loss, stats = out.quantized.reshape(-1, self.dim), out.loss, out.stats
            indices = out.indices.reshape(*lead, self.groups)
        else:
            outs = [vq(parts[:, g], valid, freeze_codebook=freeze_codebook) for g, vq in enumerate(self.quantizers)]
            quantized = torch.cat([o.quantized for o in outs], dim=-1)
            indices = torch.stack([o.indices for o in outs], dim=-1).reshape(*lead, self.groups)
            loss = torch.stack([o.loss for o in outs]).mean()
            stats = mean_stats([o.stats for o in outs])
        if bad is not None:
            quantized = nan_rows(quantized.reshape(-1, self.dim), bad)
            indices = torch.where(bad.reshape(*lead, 1), -1, indices)
        quantized = restore_channel_dim(quantized.to(x.dtype).reshape(*lead, self.dim), self.channel_dim)
        return QuantizerOutput(quantized, indices, loss, stats)

    @property
    def index_layout(self) -> IndexLayout:
        return IndexLayout((self.groups,), (self.codebook_size,) * self.groups, self.shared_codebook)

    def decode_codes(self, indices: Tensor) -> Tensor:
        """``(..., G)`` indices -> ``(..., dim)`` channel-last."""
        parts = [self.quantizers[0 if self.shared_codebook else g].decode_codes(indices[..., g])
                 for g in range(self.groups)]
        return torch.cat(parts, dim=-1)


register_preset("simvq", VectorQuantizer, dict(codebook="linear"), example=dict(codebook_size=16),
                summary="SimVQ (Zhu et al. 2024): a VectorQuantizer whose codes are a frozen random basis times one "
                        "learned linear map (codebook='linear'), with the paper's fixes on.")

GroupedVectorQuantizer.forwards_kwargs_to = VectorQuantizer

