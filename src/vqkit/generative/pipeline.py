"""The generative stage on run directories: what ``vqkit encode / decode / prior / sample`` do.

* :func:`load_tokenizer`: a ``vqkit train`` run (VQ-VAE) as a tokenizer: its recipe, its newest intact
  checkpoint and its fingerprint (SHA-256 of the recipe and every weight, stored in every token file).
* :func:`encode_split` / :func:`cached_tokens`: token files ``<tokenizer run>/tokens/<split>.safetensors``
  (re-encoded whenever the tokenizer's fingerprint changed).
* :func:`run_prior`: train a prior from a :class:`~vqkit.generative.recipe.PriorRecipe` into a run
  directory (checkpoints, resume, ``metrics.jsonl``), then measure it (:func:`measure_prior`), draw
  ``samples.png`` and write ``report.md`` (:func:`write_prior_report`).
* :func:`sample_prior`, :func:`decode_token_file`: image grids from a prior run / a token file.

A prior run directory holds (names from :mod:`vqkit.training.rundir`)::

    recipe.toml     the prior recipe (what --resume continues), including the tokenizer's run directory
    prior.json      the prior's kind and arguments, the training config, the token spec and content hash,
                    the tokenizer's fingerprint
    metrics.jsonl   train records and held-out ("test") loss / accuracy on the test tokens
    checkpoints/    as in `vqkit train`
    run.json        final training metrics, wall time, and "quality": the sample-quality metrics
    samples.png     class-conditional samples (a row per class)
    report.md, plots/
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..data import ImageDataset, load_dataset
from ..training import Recipe, RecipeError, build_from_recipe
from ..training.checkpoint import find_checkpoint
from ..training.console import note
from ..training.logging import read_metrics
from ..training.plots import line_plot
from ..training.recipe import read_recipe_file
from ..training.rundir import PRIOR_FILE, RunDir
from .features import load_or_train_feature_net
from .images import sample_images, save_image_grid
from .layout import TokenSpec
from .quality import sample_quality
from .recipe import PriorRecipe, check_prior_values, prior_recipe_to_toml, read_prior_recipe_file
from .tokens import TokenSet, check_tokenizer, decode_tokens, encode_dataset, load_tokens, save_tokens, tokenizer_fingerprint
from .trainer import PriorRunResult, read_prior_run, read_summary, train_prior, load_prior

__all__ = [
    "Tokenizer",
    "load_tokenizer",
    "resolve_device",
    "encode_split",
    "cached_tokens",
    "measure_prior",
    "PriorStageResult",
    "run_prior",
    "resume_prior_recipe",
    "write_prior_report",
    "sample_prior",
    "decode_token_file",
    "default_scale",
    "quality_rows",
    "FD_CAVEAT",
]

#: what the Fréchet distance here is not (repeated in every report and table)
FD_CAVEAT = ("FD is the Fréchet distance between Gaussian fits of real test images and generated (or "
             "reconstructed) images in the feature space of a small classifier trained here on the same "
             "dataset, deterministically; it is comparable only between runs measured with the same feature "
             "network, reference set and sample count, and never with published (Inception) FID values.")


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} asked for, but torch sees no CUDA device; use device = \"cpu\"")
    return torch.device(name)


@dataclass
class Tokenizer:
    """A trained tokenizer of a ``vqkit train`` run: ``model`` (eval mode), its ``recipe``, ``run_dir``,
    the ``checkpoint`` its weights come from and its ``fingerprint``."""

    model: nn.Module
    recipe: Recipe
    run_dir: Path
    checkpoint: Path
    fingerprint: str

    def dataset(self, split: str) -> ImageDataset:
        """Split ``split`` of the dataset the tokenizer was trained on."""
        return load_dataset(self.recipe.data.dataset, split, self.recipe.data.root or None)

    def info(self) -> dict[str, Any]:
        """JSON-able description (stored with a prior)."""
        return {"run_dir": str(self.run_dir), "checkpoint": self.checkpoint.name, "fingerprint": self.fingerprint}


def load_tokenizer(run_dir: str | Path, *, device: torch.device | str = "cpu") -> Tokenizer:
    """The tokenizer of a ``vqkit train`` run: its recipe, its newest intact checkpoint (corrupt newer ones
    are skipped, with a note), on ``device`` in eval mode.

    Raises:
        FileNotFoundError: not a run directory, or no checkpoint yet.
        ValueError: the run's model is not a tokenizer (no ``decode_indices``), or no checkpoint is intact.
    """
    run = RunDir(run_dir)
    if not run.root.is_dir():
        raise FileNotFoundError(f"--tokenizer: {run.root} does not exist; give the run directory of a "
                                "`vqkit train` run (a VQ-VAE)")
    if not run.recipe.is_file():
        raise FileNotFoundError(f"--tokenizer: {run.root} has no {run.recipe.name}; give the run directory of a "
                                "`vqkit train` run (a VQ-VAE)")
    recipe = read_recipe_file(run.recipe, complete=True)
    model = build_from_recipe(recipe, load_dataset(recipe.data.dataset, "test", recipe.data.root or None))
    try:
        check_tokenizer(model)
    except TypeError:
        raise ValueError(f"--tokenizer: {run.root} trained a {recipe.model.kind} ({recipe.name}), not a tokenizer; "
                         "the generative stage needs an autoencoder run (model.kind = \"vqvae\")") from None
    if not run.step_dirs():
        raise FileNotFoundError(f"--tokenizer: {run.checkpoints} holds no checkpoint yet; train the tokenizer first "
                                f"(`vqkit train --out {run.root} --resume` continues it)")
    checkpoint, skipped = find_checkpoint(run.root, model)
    if checkpoint is None:
        raise ValueError(f"--tokenizer: no intact checkpoint in {run.checkpoints}: "
                         + "; ".join(str(e) for _, e in skipped))
    for path, error in skipped:
        note(f"warning: {error}; using the older checkpoint {checkpoint.path.name} of the tokenizer")
    checkpoint.apply(model, None, restore_rng=False)
    model = model.to(device).eval()
    # the stored tensors: the fingerprint of a checkpoint does not change when a newer release converts it on load
    return Tokenizer(model, recipe, run.root, checkpoint.path,
                     tokenizer_fingerprint(checkpoint.model_tensors, recipe.to_dict()))


def encode_split(tokenizer: Tokenizer, split: str, out: str | Path | None = None) -> tuple[TokenSet, Path]:
    """Encode split ``split`` with ``tokenizer`` and save it to ``out`` (default
    ``<tokenizer run>/tokens/<split>.safetensors``); returns the tokens and the file."""
    if split not in ("train", "test"):
        raise ValueError(f"--split: expected 'train' or 'test', got {split!r}")
    path = Path(out) if out is not None else RunDir(tokenizer.run_dir).tokens(split)
    tokens = encode_dataset(tokenizer.model, tokenizer.dataset(split), tokenizer_hash=tokenizer.fingerprint,
                            batch_size=tokenizer.recipe.data.eval_batch_size)
    return tokens, save_tokens(tokens, path)


def cached_tokens(tokenizer: Tokenizer, split: str, *, verbose: bool = True) -> TokenSet:
    """The token file of ``split`` in the tokenizer's run directory, encoded (again) when it is missing,
    unreadable or from another state of the tokenizer (its fingerprint differs)."""
    path = RunDir(tokenizer.run_dir).tokens(split)
    if path.is_file():
        try:
            return load_tokens(path, tokenizer_hash=tokenizer.fingerprint)
        except ValueError as e:
            note(f"re-encoding {split}: {e}", enabled=verbose)
    else:
        note(f"encoding the {split} split with the tokenizer into {path}", enabled=verbose)
    return encode_split(tokenizer, split, path)[0]


def default_scale(image_size: int) -> int:
    """Integer upscaling of image grids: small images (8x8 digits) get 4x, 28x28 and up none."""
    return max(1, 32 // max(1, image_size))


def _feature_hash(net: nn.Module) -> str:
    return tokenizer_fingerprint(net)


def measure_prior(prior: nn.Module, tokenizer: Tokenizer, spec: TokenSpec, test_tokens: TokenSet,
                  recipe: PriorRecipe, features_dir: str | Path, *, verbose: bool = True) -> dict[str, Any]:
    """Sample-quality metrics of a prior and of its tokenizer's reconstructions (:mod:`~vqkit.generative.quality`).

    The reference set is the first ``metrics.reference_limit`` test images (all when 0); the tokenizer's
    reconstructions are the decoded test tokens of those images; the prior draws ``metrics.num_samples``
    samples (0 = one per reference image, conditioned on its label for a conditional prior) with the
    ``[sample]`` options and a generator seeded by ``sample.seed``.

    Returns:
        ``{"generation": SampleQuality dict, "reconstruction": ..., "conditional", "sampling": {...},
        "reference": {...}, "feature_net": {...}, "wall_time_s"}``; ``wall_time_s`` covers decoding,
        sampling and measuring, not the feature network's training (``feature_net.training_wall_time_s``,
        the time it took when it was trained and cached).
    """
    m = recipe.metrics
    train_set, test_set = tokenizer.dataset("train"), tokenizer.dataset("test")
    note(f"metrics: feature network in {features_dir}", enabled=verbose)
    net, net_info = load_or_train_feature_net(features_dir, train_set, test_set, steps=m.feature_steps,
                                              seed=m.feature_seed)
    started = time.perf_counter()  # sampling and measuring (the feature network's training is timed apart)
    n_ref = len(test_set) if m.reference_limit == 0 else min(m.reference_limit, len(test_set))
    real, real_labels = test_set.get_batch(torch.arange(n_ref), "cpu")
    if len(test_tokens) < n_ref or not torch.equal(test_tokens.labels[:n_ref], real_labels):
        raise ValueError(f"test tokens: expected the {n_ref} encoded test images in order, got {len(test_tokens)} "
                         "token maps with other labels; re-encode the test split (`vqkit encode --split test`)")
    recon = decode_tokens(tokenizer.model, test_tokens.indices[:n_ref], batch_size=recipe.sample.batch_size)
    reconstruction = sample_quality(net, real, recon, real_labels, k=m.k)
    num = m.num_samples or n_ref
    labels = real_labels[torch.arange(num) % n_ref] if prior.num_classes > 0 else None
    options = recipe.sampling_options()
    note(f"metrics: drawing {num} samples ({', '.join(f'{k} {v}' for k, v in options.items())})", enabled=verbose)
    generator = torch.Generator().manual_seed(recipe.sample.seed)
    fake = sample_images(prior, tokenizer.model, spec, labels=labels, num_samples=None if labels is not None else num,
                         batch_size=recipe.sample.batch_size, generator=generator, **options)
    generation = sample_quality(net, real, fake, labels, k=m.k)
    return {
        "generation": generation.to_dict(),
        "reconstruction": reconstruction.to_dict(),
        "conditional": labels is not None,
        "sampling": {**options, "seed": recipe.sample.seed, "num_samples": num},
        "reference": {"split": f"{train_set.name.split('/')[0]}/test", "images": n_ref, "k": m.k},
        "feature_net": {"dir": str(features_dir), "sha256": _feature_hash(net), "steps": m.feature_steps,
                        "seed": m.feature_seed, "test_accuracy": net_info.get("test_accuracy"),
                        "training_wall_time_s": net_info.get("wall_time_s")},
        "wall_time_s": round(time.perf_counter() - started, 3),
    }


@dataclass
class PriorStageResult:
    """What :func:`run_prior` did: the training result, the quality metrics (None when
    ``metrics.enabled`` is off), the report's path (None without a report), and whether the run was already
    finished (nothing trained or measured)."""

    training: PriorRunResult
    quality: dict[str, Any] | None
    report: Path | None
    already_finished: bool = False

    @property
    def run_dir(self) -> Path:
        return self.training.run_dir


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _features_dir(recipe: PriorRecipe) -> Path:
    return Path(recipe.metrics.features_dir) if recipe.metrics.features_dir else RunDir(recipe.tokenizer).features


def resume_prior_recipe(out: str | Path, notes: list[str] | None = None) -> PriorRecipe:
    """The prior recipe ``--resume`` continues in ``out``: ``recipe.toml``, or the copy in ``prior.json``
    when that file is missing or broken (with a warning in ``notes``)."""
    run = RunDir(out)
    if not run.root.is_dir():
        raise FileNotFoundError(f"--resume: {run.root} does not exist; start a prior run there without --resume")
    try:
        return read_prior_recipe_file(run.recipe, complete=True)
    except (FileNotFoundError, RecipeError) as e:
        problem = str(e)
    try:
        recipe = PriorRecipe.from_dict(read_prior_run(run.root)["recipe"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        raise RecipeError(f"--resume: {problem}; {run.prior_info.name} holds no copy of the recipe either: restore "
                          f"the file (`vqkit prior --recipe NAME` writes one) or start over with another --out") from None
    if notes is not None:
        notes.append(f"warning: {problem}; using the recipe stored in {PRIOR_FILE} instead "
                     f"({run.recipe.name} will be rewritten)")
    return recipe


def run_prior(recipe: PriorRecipe, out_dir: str | Path, *, resume: bool = False,
              on_step: Callable[[int], None] | None = None, notes: list[str] | None = None,
              label: str | None = None) -> PriorStageResult:
    """Train the prior of ``recipe`` on its tokenizer's train tokens into ``out_dir``, then measure it,
    draw ``samples.png`` and write the report (each as the recipe says).

    A resume of a run whose training finished but whose metrics are missing (interrupted while
    measuring) only measures. Raises :class:`~vqkit.training.TrainingInterrupted` on SIGINT / SIGTERM
    during training (a checkpoint is saved; ``vqkit prior --out DIR --resume`` continues).
    """
    check_prior_values(recipe.validate())
    if not recipe.tokenizer:
        raise ValueError("--tokenizer: give the run directory of the tokenizer (a `vqkit train` VQ-VAE run)")
    verbose = recipe.log.progress
    run = RunDir(out_dir)
    if not resume and run.holds_run():
        raise FileExistsError(f"--out: {run.root} already holds a run; pass --resume to continue it, or choose "
                              "another --out")
    device = resolve_device(recipe.device)
    tokenizer = load_tokenizer(recipe.tokenizer, device=device)
    train_tokens = cached_tokens(tokenizer, "train", verbose=verbose)
    test_tokens = cached_tokens(tokenizer, "test", verbose=verbose)
    limit = recipe.log.eval_limit
    val = test_tokens if limit == 0 or limit >= len(test_tokens) else \
        TokenSet(test_tokens.spec, test_tokens.indices[:limit], test_tokens.labels[:limit])
    recipe_text = prior_recipe_to_toml(recipe)
    result = train_prior(
        train_tokens, run.root, recipe.prior_config(), val_tokens=val, resume=resume, device=device,
        on_step=on_step, progress=verbose, label=label or recipe.name, notes=notes,
        info={"recipe": recipe.to_dict(), "tokenizer": tokenizer.info()},
        on_start=lambda: _write_atomic(run.recipe, recipe_text),
        resume_hint=f"continue with `vqkit prior --out {run.root} --resume`")
    summary = read_summary(run.root) or {}
    quality = summary.get("quality") if isinstance(summary.get("quality"), dict) else None
    if result.already_finished and (quality is not None or not recipe.metrics.enabled):
        return PriorStageResult(result, quality, run.report if run.report.is_file() else None, True)
    if recipe.metrics.enabled:
        quality = measure_prior(result.prior, tokenizer, train_tokens.spec, test_tokens, recipe, _features_dir(recipe),
                                verbose=verbose)
        summary["quality"] = quality
        _write_atomic(run.summary, json.dumps(summary, indent=1) + "\n")
    _draw_samples(result.prior, tokenizer, train_tokens.spec, recipe, run.samples)
    report = write_prior_report(run.root, verbose=verbose) if recipe.log.report else None
    return PriorStageResult(result, quality, report)


def _draw_samples(prior: nn.Module, tokenizer: Tokenizer, spec: TokenSpec, recipe: PriorRecipe, path: Path) -> Path:
    """``samples.png``: ``grid_per_class`` samples per class (a row each), or 64 unconditional ones."""
    per_class = recipe.metrics.grid_per_class
    labels = torch.arange(prior.num_classes).repeat_interleave(per_class) if prior.num_classes > 0 else None
    images = sample_images(prior, tokenizer.model, spec, labels=labels, num_samples=None if labels is not None else 64,
                           batch_size=recipe.sample.batch_size,
                           generator=torch.Generator().manual_seed(recipe.sample.seed), **recipe.sampling_options())
    return save_image_grid(images, path, nrow=per_class if labels is not None else None,
                           scale=default_scale(images.shape[-1]))


# ----------------------------------------------------------------------------------------------
# the report
# ----------------------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3g}"
    return str(value)


def quality_rows(quality: dict[str, Any]) -> list[str]:
    """Markdown table rows (with header) of the reconstruction and generation metrics of a prior run."""
    ref = quality["reference"]
    rows = [f"| images (against {ref['images']} real {ref['split']} images) | FD | precision | recall | "
            "class accuracy |", "|---|---|---|---|---|"]
    what = {"reconstruction": "tokenizer reconstructions of those images",
            "generation": "prior samples" + (" (conditioned on their labels)" if quality.get("conditional") else
                                             " (unconditional)")}
    for key in ("reconstruction", "generation"):
        q = quality[key]
        rows.append(f"| {what[key]} ({q['n_fake']}) | {q['fd']:.3f} | {q['precision']:.3f} | {q['recall']:.3f} | "
                    f"{_fmt(q['accuracy'])} |")
    return rows


def write_prior_report(run_dir: str | Path, *, verbose: bool = False) -> Path:
    """``report.md`` (and ``plots/loss.png``) of a prior run, from its files alone (nothing is recomputed)."""
    run = RunDir(run_dir)
    info = read_prior_run(run.root)
    recipe = read_prior_recipe_file(run.recipe, complete=True) if run.recipe.is_file() else \
        PriorRecipe.from_dict(info["recipe"])
    summary = read_summary(run.root) or {}
    records = read_metrics(run.root)
    train = [r for r in records if r["split"] == "train"]
    test = [r for r in records if r["split"] == "test"]
    note(f"report: writing {run.report}", enabled=verbose)
    images: list[tuple[str, str]] = []
    if train:
        run.plots.mkdir(exist_ok=True)
        series = {"train loss": ([r["step"] for r in train], [r["loss"] for r in train])}
        if test:
            series["held-out loss (test tokens)"] = ([r["step"] for r in test], [r["loss"] for r in test])
        line_plot(run.plot("loss"), series, title="prior loss (cross-entropy per token)", smooth=max(1, len(train) // 50))
        images.append(("Loss", f"{run.plots.name}/loss.png"))
    spec, tok = info.get("tokens", {}), info.get("tokenizer", {})
    tok_summary = read_summary(tok.get("run_dir", "")) if tok.get("run_dir") else None
    tok_final = (tok_summary or {}).get("final", {})
    args = ", ".join(f"{k}={v}" for k, v in info["prior"]["args"].items() if k not in ("vocab_sizes",))
    lines = [f"# Prior report: {recipe.name}", "", "| | |", "|---|---|",
             f"| tokenizer | `{tok.get('run_dir', recipe.tokenizer)}` ({tok.get('checkpoint', '?')}, fingerprint "
             f"{str(tok.get('fingerprint', '?'))[:12]}) |",
             f"| tokens | {spec.get('source', '?')}: grid {spec.get('grid')}, trailing index axes "
             f"{spec.get('trailing')}, vocabulary sizes {_vocab_text(spec.get('vocab_sizes', []))} |",
             f"| prior | {info['prior']['kind']} ({args}) |",
             f"| training | {recipe.steps} steps, batch {recipe.batch_size}, AdamW lr {recipe.optim.lr} "
             f"({recipe.optim.schedule}), seed {recipe.seed} |"]
    if summary:
        lines.append(f"| run | {summary.get('wall_time_s', '?')} s training wall time on {summary.get('device', '?')}, "
                     f"{summary.get('threads', '?')} intra-op thread(s), torch {summary.get('torch', '?')} |")
    if tok_final:
        shown = ", ".join(f"{k} {_fmt(float(v), 4)}" for k, v in tok_final.items() if k in ("usage", "perplexity", "mse"))
        lines.append(f"| tokenizer held-out | {shown} |")
    final = summary.get("final", {})
    if final:
        lines += ["", "## Training (last records)", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v, 4)} |" for k, v in final.items()]
    quality = summary.get("quality")
    if isinstance(quality, dict):
        s = quality["sampling"]
        fn = quality["feature_net"]
        lines += ["", "## Sample quality", "",
                  f"Sampling: {', '.join(f'{k} {v}' for k, v in s.items())}. Feature network: "
                  f"`{fn['dir']}` (sha256 {fn['sha256'][:12]}, {fn['steps']} steps, seed {fn['seed']}, test accuracy "
                  f"{_fmt(fn.get('test_accuracy'))}). Measured in {quality['wall_time_s']:.1f} s.", ""]
        lines += quality_rows(quality)
        lines += ["", FD_CAVEAT + " Precision / recall: k-NN manifolds with k = "
                  f"{quality['reference']['k']}; class accuracy: the feature network's classifier on the images "
                  "against the labels they were conditioned on (reconstructions: their true labels)."]
    if run.samples.is_file():
        lines += ["", "## Samples", "", f"![samples]({run.samples.name})"]
    for title, path in images:
        lines += ["", f"## {title}", "", f"![{title}]({path})"]
    _write_atomic(run.report, "\n".join(lines) + "\n")
    return run.report


def _vocab_text(sizes: list[int]) -> str:
    if sizes and len(set(sizes)) == 1:
        return f"{sizes[0]} x {len(sizes)} column(s)"
    return str(sizes)


# ----------------------------------------------------------------------------------------------
# grids
# ----------------------------------------------------------------------------------------------


def _tokenizer_of_prior(prior_dir: Path, info: dict[str, Any], device: torch.device) -> Tokenizer:
    tok = info.get("tokenizer", {})
    if not tok.get("run_dir"):
        raise ValueError(f"{RunDir(prior_dir).prior_info}: records no tokenizer run; was it written by `vqkit prior`?")
    tokenizer = load_tokenizer(tok["run_dir"], device=device)
    expected = info.get("tokens", {}).get("tokenizer_hash")
    if tokenizer.fingerprint != expected:
        raise ValueError(f"PRIOR_DIR: the tokenizer in {tokenizer.run_dir} changed since the prior in {prior_dir} was "
                         f"trained (fingerprint {tokenizer.fingerprint[:12]}, the prior's tokens "
                         f"{str(expected)[:12]}); its samples would decode to the wrong images: train the prior again")
    return tokenizer


def sample_prior(prior_dir: str | Path, out: str | Path, *, num: int | None = None, per_class: int | None = None,
                 seed: int | None = None, scale: int | None = None, **options: Any) -> tuple[Path, Tensor]:
    """Sample a prior run into a PNG grid.

    Args:
        prior_dir: a ``vqkit prior`` run directory.
        out: the PNG file.
        num: number of samples (unconditional priors, or cycling through the classes of a conditional one).
        per_class: samples per class, a row each (conditional priors; default 10 when ``num`` is not given).
        seed: the sampling generator's seed (default ``sample.seed`` of the run's recipe).
        scale: integer upscaling (default :func:`default_scale`).
        **options: ``generate`` options overriding the recipe's ``[sample]`` (``steps``, ``temperature``,
            ``confidence_noise``, ``guidance`` for maskgit; ``temperature``, ``top_k`` for autoregressive).
    Returns:
        the PNG path and the images ``(N, C, H, W)``.
    """
    run = RunDir(prior_dir)
    info = read_prior_run(run.root)
    recipe = read_prior_recipe_file(run.recipe, complete=True) if run.recipe.is_file() else \
        PriorRecipe.from_dict(info["recipe"])
    sampling = recipe.sampling_options()
    given = {k: v for k, v in options.items() if v is not None}
    wrong = [k for k in given if k not in sampling]
    if wrong:
        raise ValueError(f"--{wrong[0].replace('_', '-')}: not an option of {recipe.prior.kind} sampling; its options: "
                         + ", ".join(f"--{k.replace('_', '-')}" for k in sampling))
    sampling.update(given)
    device = resolve_device(recipe.device)
    prior, _ = load_prior(run.root, device=device)
    tokenizer = _tokenizer_of_prior(run.root, info, device)
    spec = TokenSpec.from_dict(info["tokens"])
    if prior.num_classes > 0:
        if num is not None and per_class is not None:
            raise ValueError("--num, --per-class: give one of them")
        if num is not None:
            labels, nrow = torch.arange(num) % prior.num_classes, None
        else:
            per_class = 10 if per_class is None else per_class
            labels, nrow = torch.arange(prior.num_classes).repeat_interleave(per_class), per_class
    else:
        if per_class is not None:
            raise ValueError("--per-class: the prior is unconditional; give --num")
        labels, nrow = None, None
    n = num if num is not None else (64 if labels is None else len(labels))
    if n < 1:
        raise ValueError(f"--num: expected an int >= 1, got {n}")
    generator = torch.Generator().manual_seed(recipe.sample.seed if seed is None else seed)
    images = sample_images(prior, tokenizer.model, spec, labels=labels, num_samples=None if labels is not None else n,
                           batch_size=recipe.sample.batch_size, generator=generator, **sampling)
    path = save_image_grid(images, out, nrow=nrow, scale=scale or default_scale(images.shape[-1]))
    return path, images


def decode_token_file(tokens_path: str | Path, tokenizer_dir: str | Path, out: str | Path, *, num: int = 64,
                      scale: int | None = None) -> tuple[Path, int]:
    """Decode the first ``num`` token maps of a token file with the tokenizer that wrote it into a PNG grid.

    Raises:
        ValueError: the token file was written by another tokenizer (fingerprints differ), or is invalid.
    """
    if num < 1:
        raise ValueError(f"--num: expected an int >= 1, got {num}")
    tokenizer = load_tokenizer(tokenizer_dir)
    tokens = load_tokens(tokens_path, tokenizer_hash=tokenizer.fingerprint)
    n = min(num, len(tokens))
    images = decode_tokens(tokenizer.model, tokens.indices[:n])
    nrow = math.ceil(math.sqrt(n))
    return save_image_grid(images, out, nrow=nrow, scale=scale or default_scale(images.shape[-1])), n
