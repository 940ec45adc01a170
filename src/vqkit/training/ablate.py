"""``vqkit ablate``: tables of configurations trained with the same data, model, seeds and budget.

A table is a set of **rows** (configurations) trained for every seed, optionally for every combination of
**varied** recipe values:

- rungs (:mod:`vqkit.training.rungs`): ``rungs=[...]`` or a named row set ``table=NAME`` (default: the
  ``ladder`` table, the cumulative ladder of Huh et al. 2023 from plain STE to the full method, the
  library defaults, and EMA / rotation / FSQ / vector-quantize-pytorch for comparison). ``fixes`` passes
  explicit keyword arguments to the vqkit VQ rungs that use the fix (e.g. ``{"alternating_lr": 0.5}``
  reaches the rungs with alternating steps; never ``defaults``).
- a one-factor-at-a-time **sweep** around the base recipe: ``sweep={"quantizer.dead_code_steps": ["1",
  "5"], ...}`` gives a ``base`` row (the base recipe as it is) and one row per (key, value), each the base
  with that one override; a value equal to the base's is the base row, not trained twice.
- explicit **override rows**: ``rows={"name": [("quantizer.dead_code_steps", "1"), ...]}``, each the base
  recipe with those overrides.
- **varied** recipe values: ``vary={"quantizer.codebook_size": ["512", "1024"], "steps": ["600", "3000"]}``
  trains every row for every combination (the cross product), each in its own directory
  ``OUT/<key=value,...>/<row>/seed<k>``. Step budgets are special: with a constant learning-rate schedule a
  shorter budget is the prefix of a longer one (the data order depends on the seed and step only), so each
  run trains once, to the longest budget, and is evaluated at every budget on the way (the budgets must be
  multiples of ``log.eval_every``); the wall time at each budget is that of the run when it reached it.

The table ``OUT/ablation.md`` (+ ``ablation.json``) gives, per row and combination, the held-out usage,
perplexity and MSE (or accuracy), the **lowest training usage at any logged step after the first** (the
first training call initializes the codebook; the recipe's ``log.every`` sets which steps are logged) and
the wall time per run, as mean ± std over seeds (the plain value for one seed); it says which test images
were evaluated and lists a row whose package is missing as not run. ``OUT/curves_*.png`` overlay the
held-out curves and the training usage (one set per combination).

Each run directory is reused when it finished with the same recipe, resumed from its checkpoint when it
stopped early (so an interrupted table continues where it stopped) and extended when a longer budget is
asked for; a run directory of another recipe is replaced. While a process trains a run it holds a lock
file beside the run directory: several processes started with the same command share the work (each
takes the next run nobody holds, then waits for the others' runs before writing the table).
"""

from __future__ import annotations

import fcntl
import hashlib
import inspect
import itertools
import json
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..quantizers.vector import ALTERNATING_LR, VectorQuantizer
from .build import build_from_recipe, load_datasets
from .checkpoint import peek_state
from .console import note, warn
from .logging import read_metrics
from .plots import line_plot
from .recipe import QuantizerConfig, Recipe, RecipeError, apply_overrides, parse_overrides, to_toml
from .rundir import ABLATION_JSON_FILE, ABLATION_TABLE_FILE, RunDir, ablation_run_dir, curves_file, run_lock_file
from .rungs import LADDER, RUNG_NAMES, RUNGS, TABLES, Rung
from .trainer import TrainingInterrupted, train

__all__ = ["Rung", "Row", "LADDER", "RUNG_NAMES", "run_ablation", "effective_arguments", "split_values",
           "parse_axis", "parse_row"]


PEER_PACKAGE = "vector-quantize-pytorch"
PEER_MISSING = f"not run: {PEER_PACKAGE} is not installed (pip install 'vqkit[bench]')"
#: seconds between looks at runs another process is training
LOCK_POLL_SECONDS = 15.0


def _peer_available() -> bool:
    try:
        import vector_quantize_pytorch  # noqa: F401  (optional dependency)
    except ImportError:
        return False
    return True


# ----------------------------------------------------------------------------------------------
# command-line values: "key=v1,v2,..." axes and "name: key=value; key=value" rows
# ----------------------------------------------------------------------------------------------


def split_values(text: str) -> list[str]:
    """``"1,5,{kind=\\"affine\\", lr=3}"`` -> ``["1", "5", "{kind=\\"affine\\", lr=3}"]``: split on the commas
    outside brackets, braces and quotes (so TOML lists and inline tables stay whole)."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return parts


def parse_axis(item: str, option: str = "--vary") -> tuple[str, list[str]]:
    """``"quantizer.codebook_size=512,1024"`` -> ``("quantizer.codebook_size", ["512", "1024"])``."""
    key, sep, text = item.partition("=")
    values = split_values(text) if sep else []
    if not key.strip() or not values or any(not v for v in values):
        raise RecipeError(f"{option}: expected key=value1,value2,... (e.g. quantizer.codebook_size=512,1024), "
                          f"got {item!r}")
    return key.strip(), values


def parse_row(item: str) -> tuple[str, list[tuple[str, str]]]:
    """``"name: quantizer.dead_code_steps=1; optim.lr=1e-3"`` -> ``("name", [(key, value), ...])``."""
    name, sep, body = item.partition(":")
    name = name.strip()
    pairs = [p.strip() for p in body.split(";") if p.strip()] if sep else []
    if not name or not pairs:
        raise RecipeError(f"--row: expected 'name: key=value; key=value ...', got {item!r}")
    return name, parse_overrides(pairs)


# ----------------------------------------------------------------------------------------------
# rows
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One configuration of a table: ``key`` (its directory name), table ``label``, and ``build``, which
    turns the base recipe (with the combination's varied values applied) into the row's recipe."""

    key: str
    label: str
    build: Callable[[Recipe], Recipe] = field(repr=False)
    overrides: tuple[tuple[str, str], ...] = ()
    rung: Rung | None = None


def _copy(recipe: Recipe) -> Recipe:
    return Recipe.from_dict(recipe.to_dict())


def _rung_row(rung: Rung, fixes: dict[str, Any]) -> Row:
    def build(base: Recipe) -> Recipe:
        recipe = _copy(base)
        recipe.quantizer = rung.make(base.quantizer, fixes)
        return recipe

    return Row(rung.key, rung.label, build, rung=rung)


def _override_row(key: str, label: str, pairs: Sequence[tuple[str, str]]) -> Row:
    pairs = tuple(pairs)
    return Row(key, label, lambda base: apply_overrides(base, list(pairs)) if pairs else _copy(base), pairs)


_DIR_UNSAFE = re.compile(r"[^A-Za-z0-9._=+,-]+")


def _dir_name(text: str) -> str:
    """A directory name for ``text``: unsafe characters become ``_`` and then a short hash of ``text`` is
    appended (so two texts never share a name); names over 80 characters are cut, with the hash."""
    name = _DIR_UNSAFE.sub("_", text).strip("_.") or "row"
    if name == text and len(name) <= 80:
        return name
    return f"{name[:72]}-{hashlib.sha1(text.encode()).hexdigest()[:6]}"


def _short(key: str) -> str:
    return key.split(".", 1)[1] if key.startswith("quantizer.") else key


def _select_rungs(rungs: Sequence[str] | None, table: str | None) -> tuple[list[Rung], list[Rung]]:
    """``(rungs to run, rungs left out because their package is missing)``."""
    if table is not None:
        if rungs is not None:
            raise RecipeError("--table: give either --table or --rungs, not both")
        if table not in TABLES:
            raise RecipeError(f"--table: unknown table {table!r}; valid: {', '.join(TABLES)}")
        listed = list(LADDER) if table == "ladder" else [RUNGS[k] for k in TABLES[table]]
        peer_ok = _peer_available()  # a named table lists a missing peer as not run
        return [r for r in listed if r.key != "peer" or peer_ok], [r for r in listed if r.key == "peer" and not peer_ok]
    if rungs is None:
        return [], []
    unknown = [k for k in rungs if k not in RUNGS]
    if unknown:
        raise RecipeError(f"--rungs: unknown rung(s) {', '.join(unknown)}; valid: {', '.join(RUNG_NAMES)}")
    if "peer" in rungs and not _peer_available():
        raise ImportError(f"--rungs peer: needs {PEER_PACKAGE} (pip install 'vqkit[bench]')")
    return [RUNGS[k] for k in rungs], []


def _plan_rows(rungs: Sequence[str] | None, table: str | None, sweep: Mapping[str, Sequence[str]],
               rows: Mapping[str, Sequence[tuple[str, str]]], fixes: dict[str, Any]) -> tuple[list[Row], list[Rung]]:
    """The rows of the table, in order: the sweep's base and one row per swept value, the override rows,
    the rungs (the ladder when nothing else is asked for); and the rungs left out (missing package)."""
    out: list[Row] = []
    if sweep:
        out.append(_override_row("base", "base", ()))
        for key, values in sweep.items():
            for value in values:
                text = f"{_short(key)}={value}"
                out.append(_override_row(_dir_name(text), text, [(key, value)]))
    for name, pairs in rows.items():
        out.append(_override_row(_dir_name(name), name, pairs))
    if rungs is None and table is None and not out:
        table = "ladder"
    selected, missing = _select_rungs(rungs, table)
    out += [_rung_row(r, fixes) for r in selected]
    keys = [r.key for r in out]
    clash = sorted({k for k in keys if keys.count(k) > 1})
    if clash:
        raise RecipeError(f"rows: two rows share the name(s) {', '.join(clash)}; give each row its own name")
    return out, missing


# ----------------------------------------------------------------------------------------------
# combinations of varied values and step budgets
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One combination of the varied values other than ``steps``: ``values`` (key -> text, in the order
    given), its directory ``tag`` ("" without varied values) and ``base`` (the base recipe with them)."""

    values: tuple[tuple[str, str], ...]
    tag: str
    base: Recipe


def _variants(base: Recipe, vary: Mapping[str, Sequence[str]]) -> tuple[list[Variant], list[int]]:
    """The combinations of varied values (``steps`` aside) and the sorted step budgets."""
    axes = {k: list(v) for k, v in vary.items() if k != "steps"}
    if "steps" in vary:
        try:
            budgets = sorted({int(v) for v in vary["steps"]})
        except ValueError:
            raise RecipeError(f"--vary steps: expected integers, got {', '.join(vary['steps'])}") from None
        if budgets[0] < 1:
            raise RecipeError("--vary steps: budgets must be >= 1")
    else:
        budgets = [base.steps]
    variants = []
    for combo in itertools.product(*axes.values()) if axes else [()]:
        values = tuple(zip(axes, combo))
        recipe = apply_overrides(base, list(values)) if values else _copy(base)
        recipe.steps = budgets[-1]
        tag = _dir_name(",".join(f"{_short(k)}={v}" for k, v in values)) if values else ""
        variants.append(Variant(values, tag, recipe.validate()))
    if len(budgets) > 1:
        for v in variants:
            if v.base.optim.schedule != "constant":
                raise RecipeError("--vary steps: several budgets share one run only with the constant learning-rate "
                                  f"schedule (optim.schedule = {v.base.optim.schedule!r} depends on the run's length); "
                                  "run one table per budget with --set steps=N")
            every = v.base.log.eval_every
            off = [b for b in budgets[:-1] if every <= 0 or b % every]
            if off:
                raise RecipeError(f"--vary steps: budgets {', '.join(map(str, off))} are not multiples of "
                                  f"log.eval_every = {every}, so the runs are not evaluated there; choose budgets "
                                  "that are, or --set log.eval_every=N")
    return variants, budgets


def _combination(variant: Variant, budget: int, many_budgets: bool) -> str:
    """The name of one combination: the variant's tag, plus ``steps=N`` with several budgets."""
    return ",".join(([variant.tag] if variant.tag else []) + ([f"steps={budget}"] if many_budgets else []))


def _curve_combinations(variants: list[Variant], budgets: list[int]) -> list[tuple[Variant, int, str]]:
    """``(variant, budget, name)`` of every combination that gets its own curves (name "" for a single one without a
    varied value): the one source of the curve file names, for the plots and the table's links."""
    many = len(budgets) > 1
    return [(v, b, _combination(v, b, many)) for v in variants for b in budgets]


def _cell_key(variant: Variant, budget: int, many_budgets: bool, row: str) -> str:
    prefix = _combination(variant, budget, many_budgets)
    return f"{prefix}/{row}" if prefix else row


# ----------------------------------------------------------------------------------------------
# one run: train (or reuse, resume, extend) and read its metrics at each budget
# ----------------------------------------------------------------------------------------------


def _run_recipe(row_recipe: Recipe, base_name: str, variant: Variant, row: Row, seed: int) -> Recipe:
    recipe = _copy(row_recipe)
    recipe.seed = seed
    recipe.name = "/".join([base_name, *([variant.tag] if variant.tag else []), row.key, f"seed{seed}"])
    recipe.log.report = False
    recipe.log.keep_checkpoints = 1
    return recipe.validate()


def _same_run(run: RunDir, recipe: Recipe) -> bool:
    """``run`` holds a run of ``recipe``: the same recipe up to ``log.progress`` (display only) and, under the
    constant learning-rate schedule, ``steps`` (a shorter run is the prefix of a longer one)."""
    try:
        text = run.recipe.read_text()
    except OSError:
        return False
    other = _copy(recipe)
    m = re.search(r"^steps = (\d+)$", text, re.M)
    if m and recipe.optim.schedule == "constant":
        other.steps = int(m.group(1))
    for progress in (True, False):
        other.log.progress = progress
        if text == to_toml(other):
            # a run trained by another vqkit release may have used other library defaults for the arguments
            # the recipe leaves out (e.g. alternating_lr): not the same run, finished or interrupted
            summary = _summary(run)
            if summary is not None:
                return summary.get("vqkit", __version__) == __version__
            return _checkpoint_release(run) in (None, __version__)
    return False


def _checkpoint_release(run: RunDir) -> str | None:
    """The vqkit release recorded by the run's newest checkpoint: None without a readable checkpoint
    (nothing to resume), ``"unrecorded"`` for one written before checkpoints recorded it."""
    dirs = run.step_dirs()
    state = peek_state(dirs[-1][1]) if dirs else None
    return None if state is None else str(state.get("vqkit", "unrecorded"))


def _summary(run: RunDir) -> dict[str, Any] | None:
    try:
        summary = json.loads(run.summary.read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(summary, dict) and isinstance(summary.get("final"), dict) and isinstance(summary.get("steps"), int)
    return summary if ok else None


def _read_budgets(run: RunDir) -> dict[str, Any]:
    try:
        data = json.loads(run.budgets.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_budgets(run: RunDir, data: dict[str, Any]) -> None:
    tmp = run.budgets.with_name(f".{run.budgets.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, run.budgets)


def _test_record(run: RunDir, step: int) -> dict[str, float] | None:
    for r in read_metrics(run.root, "test"):
        if r["step"] == step:
            return {k: v for k, v in r.items() if k not in ("step", "split")}
    return None


def _min_train_usage(run: RunDir, budget: int) -> tuple[float | None, int | None]:
    """Lowest training usage over the logged steps 2..budget (step 1 initializes the codebook) and its step."""
    best: tuple[float | None, int | None] = (None, None)
    for r in read_metrics(run.root, "train"):
        if 2 <= r["step"] <= budget and "usage" in r and (best[0] is None or r["usage"] < best[0]):
            best = (r["usage"], r["step"])
    return best


@contextmanager
def _try_lock(path: Path) -> Iterator[bool]:
    """Hold ``path``'s lock if no other process does; yields whether this process got it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _budget_metrics(run: RunDir, budget: int, final: dict[str, float], wall: float | None) -> dict[str, Any]:
    low, at = _min_train_usage(run, budget)
    return {"final": final, "wall_time_s": wall, "min_train_usage": low, "min_train_usage_step": at}


def _complete(run: RunDir, recipe: Recipe, budgets: Sequence[int]) -> dict[int, dict[str, Any]] | None:
    """The metrics of ``run`` at every budget when they are all known without training, else None."""
    if not _same_run(run, recipe):
        return None
    known = _read_budgets(run)
    summary = _summary(run)
    out = {}
    for b in budgets:
        if str(b) in known:
            out[b] = known[str(b)]
        elif summary is not None and summary["steps"] >= b:
            final = summary["final"] if summary["steps"] == b else _test_record(run, b)
            if final is None:
                return None
            out[b] = _budget_metrics(run, b, final, summary["wall_time_s"] if summary["steps"] == b else None)
        else:
            return None
    return out


def _train_budgets(run: RunDir, recipe: Recipe, budgets: Sequence[int], tag: str, out: Path,
                   progress: bool) -> dict[int, dict[str, Any]]:
    """Train ``run`` up to each budget in turn (reusing, resuming or extending it) and return the metrics
    at each budget (also kept in the run's ``budgets.json``)."""
    if run.root.exists() and not _same_run(run, recipe):  # an outdated run: another recipe
        shutil.rmtree(run.root)
    known = _read_budgets(run) if run.root.exists() else {}
    results: dict[int, dict[str, Any]] = {}
    for b in budgets:
        summary = _summary(run) if run.root.exists() else None
        if str(b) in known:
            results[b] = known[str(b)]
            continue
        if summary is not None and summary["steps"] >= b:
            final = summary["final"] if summary["steps"] == b else _test_record(run, b)
            if final is not None:
                results[b] = _budget_metrics(run, b, final, summary["wall_time_s"] if summary["steps"] == b else None)
                known[str(b)] = results[b]
                _write_budgets(run, known)
                continue
        step_recipe = _copy(recipe)
        step_recipe.steps = b
        resumable = run.recipe.is_file() and bool(run.step_dirs())
        if not resumable and run.root.exists():  # stopped before any checkpoint
            shutil.rmtree(run.root)
            known = {}
        how = "extending" if summary is not None else "resuming" if resumable else "training"
        note(f"{tag}: {how} to {b} steps in {run.root}", enabled=progress)
        try:
            train(step_recipe, run.root, resume=resumable, label=tag)
        except TrainingInterrupted as e:
            raise TrainingInterrupted(e.signum, e.step, e.checkpoint, e.run_dir, e.rank,
                                      hint=f"run the same `vqkit ablate` command (--out {out}) again to "
                                           "continue the table") from None
        summary = _summary(run)
        assert summary is not None and summary["steps"] == b
        results[b] = _budget_metrics(run, b, summary["final"], summary["wall_time_s"])
        known[str(b)] = results[b]
        _write_budgets(run, known)
    return results


def _shown_metrics(final: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in final.items() if k != "quantizer_loss")


# ----------------------------------------------------------------------------------------------
# the table
# ----------------------------------------------------------------------------------------------


_QUIET = ("channel_dim", "check_finite", "memory_budget", "kmeans_iters",
          "codebook_dim", "metric")


def effective_arguments(q: QuantizerConfig) -> dict[str, Any]:
    """The quantizer's arguments as it will be built: given ones plus the class defaults (for vqkit's
    VectorQuantizer; a few arguments that do not change results are left out unless given), so the
    table records what ran even while the library defaults change."""
    args: dict[str, Any] = {"kind": q.kind, "loss_weight": q.loss_weight}
    if q.kind == "vq":
        for name, p in inspect.signature(VectorQuantizer.__init__).parameters.items():
            if p.default is not p.empty and name not in _QUIET:
                args[name] = p.default
        args["alternating_lr"] = ALTERNATING_LR  # None in the signature (it depends on alternating_steps)
    args.update(q.args)
    return args


def _recipe_differences(base: Recipe, recipe: Recipe) -> dict[str, Any]:
    """Recipe keys outside the quantizer section that ``recipe`` changes from ``base``."""
    a, b = base.to_dict(), recipe.to_dict()
    out = {}
    for section in b:
        if section in ("quantizer", "name", "seed", "steps"):
            continue
        if isinstance(b[section], dict):
            for k, v in b[section].items():
                if a.get(section, {}).get(k) != v:
                    out[f"{section}.{k}"] = v
        elif a.get(section) != b[section]:
            out[section] = b[section]
    return out


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample std over seeds; std None for one seed (there is no spread to report)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return mean, std


def run_ablation(
    base: Recipe,
    out_dir: str | Path,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    rungs: Sequence[str] | None = None,
    fixes: dict[str, Any] | None = None,
    command: str = "",
    progress: bool = True,
    table: str | None = None,
    vary: Mapping[str, Sequence[str]] | None = None,
    sweep: Mapping[str, Sequence[str]] | None = None,
    rows: Mapping[str, Sequence[tuple[str, str]]] | None = None,
) -> Path:
    """Train every row for every seed (and every combination of ``vary``); write the table and plots.

    Args:
        base: the recipe all runs share (its quantizer section supplies ``codebook_size`` and
            ``loss_weight`` to the rungs and is the base of the sweep and the override rows; its seed is
            replaced by each of ``seeds``).
        out_dir: where runs, ``ablation.md``, ``ablation.json`` and ``curves_*.png`` go.
        seeds: seeds of every row.
        rungs: rungs by name (:data:`RUNG_NAMES`); ``peer`` needs its package.
        fixes: explicit VectorQuantizer keyword arguments for the vqkit VQ rungs that use that fix.
        command: the command line, recorded in the table's header.
        progress: a ``[k/N]`` line per run, a progress bar while it trains, and status lines.
        table: a named row set of :data:`~vqkit.training.rungs.TABLES` (instead of ``rungs``); with no
            rows asked for at all, ``"ladder"`` (where a missing peer package is listed as not run).
        vary: recipe key -> values (command-line text); every row is trained for every combination.
            ``steps`` gives step budgets evaluated on one run each (constant schedule).
        sweep: recipe key -> values: a ``base`` row plus one row per value, the base with that override.
        rows: row name -> ``(key, value)`` overrides of the base.
    Returns:
        path of ``ablation.md``.
    """
    seeds = list(seeds)
    if not seeds:
        raise RecipeError("--seeds: give at least one seed")
    if len(set(seeds)) != len(seeds):
        raise RecipeError(f"--seeds: each seed once, got {' '.join(map(str, seeds))}")
    fixes = dict(fixes or {})
    vary, sweep, rows = dict(vary or {}), dict(sweep or {}), dict(rows or {})
    for k, values in list(vary.items()) + list(sweep.items()):
        if len(set(values)) != len(values):
            raise RecipeError(f"{k}: each value once, got {', '.join(values)}")
    table_rows, missing = _plan_rows(rungs, table, sweep, rows, fixes)
    variants, budgets = _variants(base, vary)
    many_budgets = len(budgets) > 1
    for rung in missing:
        warn(f"{rung.label}: {PEER_MISSING}; the table lists it as not run", enabled=progress)

    # every configuration must build before anything is trained or written
    _, test_ds = load_datasets(base)
    plan = []  # (variant, row, seed, recipe at the longest budget)
    built: dict[tuple[str, str], Recipe] = {}
    duplicates: dict[tuple[str, str], str] = {}  # rows that build the same run as an earlier row
    for variant in variants:
        seen: dict[str, str] = {}
        for row in table_rows:
            recipe = row.build(variant.base)
            recipe.steps = budgets[-1]
            recipe.validate()
            fingerprint = json.dumps([effective_arguments(recipe.quantizer), _recipe_differences(variant.base, recipe),
                                      recipe.quantizer.kind], sort_keys=True, default=str)
            if fingerprint in seen:
                duplicates[(variant.tag, row.key)] = seen[fingerprint]
                continue
            seen.setdefault(fingerprint, row.key)
            built[(variant.tag, row.key)] = recipe
            build_from_recipe(_run_recipe(recipe, base.name, variant, row, seeds[0]), test_ds)
            plan += [(variant, row, seed, _run_recipe(recipe, base.name, variant, row, seed)) for seed in seeds]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    measured: dict[tuple[str, str, int], dict[int, dict[str, Any]]] = {}
    pending = list(enumerate(plan, 1))
    waiting_noted = False
    while pending:
        left = []
        for k, (variant, row, seed, recipe) in pending:
            where = f"{variant.tag} " if variant.tag else ""
            tag = f"[{k}/{len(plan)}] {where}{row.key} seed {seed}"
            run = RunDir(ablation_run_dir(out, row.key, seed, variant.tag))
            recipe.log.progress = progress
            done = _complete(run, recipe, budgets)
            if done is None:
                with _try_lock(run_lock_file(run.root)) as mine:
                    if not mine:
                        left.append((k, (variant, row, seed, recipe)))
                        continue
                    done = _train_budgets(run, recipe, budgets, tag, out, progress)
                shown = done[budgets[-1]]
                note(f"{tag}: {_shown_metrics(shown['final'])} ({shown['wall_time_s'] or 0:.1f} s)", enabled=progress)
            else:
                note(f"{tag}: reusing the finished run in {run.root}: {_shown_metrics(done[budgets[-1]]['final'])}",
                     enabled=progress)
            measured[(variant.tag, row.key, seed)] = done
        if left and len(left) == len(pending):
            if not waiting_noted:
                note(f"waiting for {len(left)} run(s) another process is training (checking every "
                     f"{LOCK_POLL_SECONDS:.0f} s)", enabled=progress)
                waiting_noted = True
            time.sleep(LOCK_POLL_SECONDS)
        pending = left

    task_metric = "mse" if base.model.kind == "vqvae" else "accuracy"
    results: dict[str, dict[str, Any]] = {}
    cells = []  # (cell key, variant, budget, row)
    for variant in variants:
        for b in budgets:
            for row in table_rows:
                key = _cell_key(variant, b, many_budgets, row.key)
                same = duplicates.get((variant.tag, row.key))
                cells.append((key, variant, b, row))
                values = {**dict(variant.values), **({"steps": b} if many_budgets else {})}
                if same is not None:
                    results[key] = {"label": row.label, "variant": values,
                                    "same_as": _cell_key(variant, b, many_budgets, same)}
                    continue
                recipe = built[(variant.tag, row.key)]
                per_seed = []
                for seed in seeds:
                    m = measured[(variant.tag, row.key, seed)][b]
                    per_seed.append({"seed": seed, "wall_time_s": m["wall_time_s"], "min_train_usage": m["min_train_usage"],
                                     "min_train_usage_step": m["min_train_usage_step"], **m["final"]})
                metrics = [k for k in per_seed[0] if k not in ("seed", "min_train_usage_step")]
                results[key] = {
                    "label": row.label,
                    "variant": values,
                    "quantizer": effective_arguments(recipe.quantizer),
                    "recipe_overrides": _recipe_differences(variant.base, recipe),
                    "runs": per_seed,
                    "mean_std": {m: _mean_std([r[m] for r in per_seed if r.get(m) is not None])
                                 for m in metrics if all(r.get(m) is not None for r in per_seed)},
                }
    for variant in variants:
        for b in budgets:
            for rung in missing:
                results[_cell_key(variant, b, many_budgets, rung.key)] = {"label": rung.label, "not_run": PEER_MISSING}
    total = sum((m[budgets[-1]]["wall_time_s"] or 0.0) for m in measured.values())
    eval_scope = "; ".join(sorted({_eval_scope(v.base, len(test_ds)) for v in variants}))
    note(f"writing {ABLATION_TABLE_FILE}, {ABLATION_JSON_FILE} and the curves to {out}", enabled=progress)
    payload = {"base_recipe": base.to_dict(), "seeds": seeds, "fixes": fixes, "vary": vary, "sweep": sweep,
               "rows": {k: [list(p) for p in v] for k, v in rows.items()}, "table": table, "rungs": list(rungs or []),
               "command": command, "evaluated_on": eval_scope, "total_run_wall_time_s": round(total, 1),
               "threads": torch.get_num_threads(), "torch": torch.__version__, "vqkit": __version__,
               "results": results}
    (out / ABLATION_JSON_FILE).write_text(json.dumps(payload, indent=1) + "\n")
    _write_curves(out, variants, budgets, table_rows, duplicates, seeds, task_metric)
    scaling = _write_scaling_plots(out, vary, variants, budgets, table_rows, results, seeds, task_metric)
    return _write_table(out, base, variants, budgets, table_rows, missing, seeds, results, task_metric, total,
                        command, fixes, eval_scope, vary, scaling)


def _eval_scope(base: Recipe, n_test: int) -> str:
    limit = base.data.eval_limit
    if 0 < limit < n_test:
        return f"the first {limit} of the {n_test} test images (data.eval_limit = {limit})"
    return f"the full test split ({n_test} images)"


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _seeds_text(seeds: Sequence[int]) -> str:
    return f"mean ± std over {len(seeds)} seeds" if len(seeds) > 1 else f"one seed ({seeds[0]}), no spread"


def _write_curves(out: Path, variants: list[Variant], budgets: list[int], rows: list[Row],
                  duplicates: dict[tuple[str, str], str], seeds: Sequence[int], task_metric: str) -> None:
    for variant, b, tag in _curve_combinations(variants, budgets):
        for key, split in (("usage", "test"), ("perplexity", "test"), (task_metric, "test"), ("usage", "train")):
            series, bands = {}, {}
            for row in rows:
                if (variant.tag, row.key) in duplicates:
                    continue
                runs = [[r for r in read_metrics(ablation_run_dir(out, row.key, s, variant.tag), split)
                         if r["step"] <= b and key in r] for s in seeds]
                steps = [r["step"] for r in runs[0] if all(any(q["step"] == r["step"] for q in run) for run in runs)]
                if not steps:
                    continue
                by_step = [[next(q[key] for q in run if q["step"] == st) for run in runs] for st in steps]
                stats = [_mean_std(v) for v in by_step]
                series[row.label] = (steps, [m for m, _ in stats])
                if len(seeds) > 1:
                    bands[row.label] = ([m - s for m, s in stats], [m + s for m, s in stats])
            if series:
                what = _seeds_text(seeds).replace(", no spread", "")
                name = key if split == "test" else f"train_{key}"
                where = "training" if split == "train" else "held-out"
                line_plot(curves_file(out, name, _dir_name(tag) if tag else ""), series,
                          title=f"{where} {key}{f' ({tag})' if tag else ''} ({what})", ylabel=key,
                          logy=key == "mse", bands=bands or None)


def _write_scaling_plots(out: Path, vary: Mapping[str, Sequence[str]], variants: list[Variant], budgets: list[int],
                         rows: list[Row], results: dict[str, Any], seeds: Sequence[int], task_metric: str) -> list[Path]:
    """With ``quantizer.codebook_size`` the only varied recipe value (besides ``steps``): the held-out metrics
    against K, one line per row (``scaling_<metric>.png``, per budget with several). Returns the files written."""
    axis = "quantizer.codebook_size"
    written: list[Path] = []
    if axis not in vary or len(vary[axis]) < 2 or any(k not in (axis, "steps") for k in vary):
        return written
    many = len(budgets) > 1
    for b in budgets:
        suffix = f"_steps={b}" if many else ""
        for metric in (task_metric, "usage", "perplexity"):
            series, bands = {}, {}
            for row in rows:
                points = []
                for variant in variants:
                    cell = results.get(_cell_key(variant, b, many, row.key), {})
                    cell = results.get(cell["same_as"], {}) if "same_as" in cell else cell
                    ms = cell.get("mean_std", {}).get(metric)
                    if ms is not None:
                        points.append((int(dict(variant.values)[axis]), ms))
                if len(points) < 2:
                    continue
                points.sort(key=lambda p: p[0])
                series[row.label] = ([k for k, _ in points], [m for _, (m, _) in points])
                if len(seeds) > 1:
                    bands[row.label] = ([m - s for _, (m, s) in points], [m + s for _, (m, s) in points])
            if series:
                written.append(out / f"scaling{suffix}_{metric}.png")
                line_plot(written[-1], series, xlabel="codebook size K (the row's nominal K)",
                          ylabel=metric, logx=True, logy=metric in ("mse", "perplexity"), bands=bands or None,
                          title=f"held-out {metric} against K{f' ({b} steps)' if many else ''} "
                                f"({_seeds_text(seeds).replace(', no spread', '')})")
    return written


def _fmt_cell(ms: tuple[float, float | None] | None, scale: float, digits: int) -> str:
    if ms is None:
        return "n/a"
    m, s = ms
    return f"{m * scale:.{digits}f}" if s is None else f"{m * scale:.{digits}f} ± {s * scale:.{digits}f}"


def _write_table(out: Path, base: Recipe, variants: list[Variant], budgets: list[int], rows: list[Row],
                 missing: list[Rung], seeds: Sequence[int], results: dict[str, Any], task_metric: str, total: float,
                 command: str, fixes: dict[str, Any], eval_scope: str, vary: Mapping[str, Sequence[str]],
                 scaling: Sequence[Path] = ()) -> Path:
    many = len(budgets) > 1
    varied = [k for k in vary if k != "steps"] + (["steps"] if many else [])
    task_head, task_args = ("test MSE", (1.0, 4)) if task_metric == "mse" else ("test accuracy (%)", (100.0, 1))
    lines = [f"# Ablation: {base.name}", ""]
    if command:
        lines += ["```", command, "```", ""]
    k_text = "varied" if "quantizer.codebook_size" in vary else base.quantizer.args.get("codebook_size", "?")
    steps_text = f"{', '.join(map(str, budgets))} steps (each shorter budget read from the longer run, whose prefix it is)" \
        if many else f"{budgets[0]} steps"
    lines += [f"Data {base.data.dataset}, model {base.model.kind} ({', '.join(f'{k}={v}' for k, v in base.model.args.items())}), "
              f"K = {k_text}, quantizer loss weight {base.quantizer.loss_weight}, "
              f"{base.optim.name} lr {base.optim.lr}, batch {base.batch_size}, {steps_text}, seeds "
              f"{', '.join(map(str, seeds))}. Held-out metrics on {eval_scope} at the last step, "
              f"{_seeds_text(seeds)}. Min train usage: the lowest training-batch usage at any logged step after "
              f"the first (which initializes the codebook; logged every {base.log.every} step(s)). Training wall "
              f"time of all runs {_duration(total)} ({torch.get_num_threads()} intra-op thread(s); per run: data "
              "loading, training, evaluations)."]
    if varied:
        lines += ["", "Varied: " + "; ".join(f"`{k}` in {', '.join(map(str, budgets if k == 'steps' else vary[k]))}"
                                              for k in varied) + " (every row for every combination)."]
    if base.quantizer.args and any(r.overrides or r.key == "base" for r in rows):
        base_q = {k: v for k, v in base.quantizer.args.items() if k != "codebook_size" or "quantizer.codebook_size" not in vary}
        lines += ["", f"Base of the sweep / override rows: quantizer `{base.quantizer.kind}` with "
                      f"{', '.join(f'{k}={v!r}' for k, v in base_q.items()) or 'no argument'} (the rest its defaults)."]
    if fixes:
        lines += ["", f"Explicit fix settings for the vqkit VQ rungs: {', '.join(f'{k}={v!r}' for k, v in fixes.items())}."]
    heads = [_short(k) for k in varied] + ["configuration", "test usage (%)", "test perplexity", task_head,
                                          "min train usage (%)", "wall time / run (s)"]
    lines += ["", "| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for variant in variants:
        values = dict(variant.values)
        for b in budgets:
            lead = [str(values[k]) for k in varied if k != "steps"] + ([str(b)] if many else [])
            for row in rows:
                r = results[_cell_key(variant, b, many, row.key)]
                if "same_as" in r:
                    lines.append("| " + " | ".join(lead + [f"{r['label']}", f"= {r['same_as'].rsplit('/', 1)[-1]} row",
                                                            "", "", "", ""]) + " |")
                    continue
                ms = r["mean_std"]
                cells = [_fmt_cell(ms.get("usage"), 100.0, 1), _fmt_cell(ms.get("perplexity"), 1.0, 1),
                         _fmt_cell(ms.get(task_metric), *task_args), _fmt_cell(ms.get("min_train_usage"), 100.0, 1),
                         _fmt_cell(ms.get("wall_time_s"), 1.0, 1)]
                lines.append("| " + " | ".join(lead + [r["label"]] + cells) + " |")
            for rung in missing:
                lines.append("| " + " | ".join(lead + [rung.label, PEER_MISSING, "", "", "", ""]) + " |")
    first = variants[0]
    lines += ["", "Arguments of each row (given and defaulted, as built"
              + (f"; shown for {', '.join(f'{k}={v}' for k, v in first.values)}" if first.values else "") + "):", ""]
    for row in rows:
        r = results[_cell_key(first, budgets[-1], many, row.key)]
        if "quantizer" not in r:
            continue
        q = ", ".join(f"{k}={v!r}" for k, v in r["quantizer"].items())
        extra = r["recipe_overrides"]
        lines.append(f"- {r['label']}: `{q}`" + (f"; recipe: `{', '.join(f'{k}={v!r}' for k, v in extra.items())}`" if extra else ""))
    curve_names = ["usage", "perplexity", task_metric, "train_usage"]
    tags = [tag for _, _, tag in _curve_combinations(variants, budgets)]  # the names _write_curves used
    if tags == [""]:
        lines += ["", "Curves: " + ", ".join(f"[{k}]({curves_file(out, k).name})" for k in curve_names)]
    else:
        lines += ["", "Curves (per combination): " + "; ".join(
            ", ".join(f"[{tag} {k}]({curves_file(out, k, _dir_name(tag)).name})" for k in curve_names)
            for tag in tags)]
    if scaling:  # the plots this table wrote (not older files in the same directory)
        lines += ["", "Against K: " + ", ".join(f"[{p.stem.removeprefix('scaling').lstrip('_')}]({p.name})"
                                                for p in scaling)]
    path = out / ABLATION_TABLE_FILE
    path.write_text("\n".join(lines) + "\n")
    return path
