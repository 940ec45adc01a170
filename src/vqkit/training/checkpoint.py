"""Checkpoints as safetensors + JSON, written atomically, checked before use, loaded without pickle.

Layout of ``<run>/checkpoints/`` (names from :mod:`vqkit.training.rundir`)::

    step_00000600/
        model.safetensors       model parameters and buffers (quantizer buffers included)
        optimizer.safetensors   optimizer state tensors (e.g. Adam moments)
        rng.safetensors         torch RNG states (CPU, and CUDA when used)
        state.json              step, optimizer structure (param groups, scalar state), recipe, extras
    latest                      name of the newest complete checkpoint

A checkpoint directory is assembled under a temporary name (``.tmp-step_...``) and renamed into place,
and ``latest`` is replaced with ``os.replace``, so an interruption at any moment leaves the previous
checkpoints intact; the temporary directories a killed save leaves behind are removed by the next
run in that directory (:func:`remove_leftovers`).

Reading is two-phase: :func:`read_checkpoint` loads every file and checks it against the model and
optimizer it is meant for (readable safetensors, the same keys, shapes and dtypes, finite values,
a consistent ``state.json``) without changing anything, and raises :class:`CheckpointError` naming the
file and what is wrong; :meth:`Checkpoint.apply` then restores it. :func:`find_checkpoint` walks the
checkpoints newest first and returns the newest intact one with the reasons the newer ones were
skipped.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .. import __version__
from ..codebooks import AffineCodebook
from .rundir import (
    CORRUPT_PREFIX,
    MODEL_FILE,
    OPTIMIZER_FILE,
    RNG_FILE,
    OLD_PREFIX,
    STATE_FILE,
    TMP_PREFIX,
    RunDir,
    checkpoint_name,
    checkpoint_step,
)

__all__ = [
    "CheckpointError",
    "Checkpoint",
    "save_checkpoint",
    "latest_checkpoint",
    "peek_state",
    "read_checkpoint",
    "find_checkpoint",
    "load_checkpoint",
    "load_model_weights",
    "remove_leftovers",
    "set_aside",
    "optimizer_state_to_flat",
    "optimizer_state_from_flat",
]

#: the checkpoint format written; 2 (vqkit 0.6.0) stores the affine codebook's positive scale, so a release
#: that reads only format 1 refuses it instead of reading that scale as the linear ``1 + a s``
FORMAT_VERSION = 2
#: the formats this release reads (format 1: the stored release says how to read the tensors)
READ_FORMATS = (1, 2)
_SHOWN = 4  # how many offending tensor names a message lists


#: the first vqkit release whose affine codebook has the positive scale (:func:`~vqkit.codebooks.positive_scale`)
POSITIVE_SCALE_RELEASE = (0, 6, 0)


def release_tuple(release: object) -> tuple[int, ...] | None:
    """``"0.5.0"`` -> ``(0, 5, 0)`` (a suffix such as ``"+probe"`` or ``"rc1"`` is dropped); None when
    ``release`` is not a string that starts with a version."""
    parts = re.match(r"^(\d+)\.(\d+)(?:\.(\d+))?", release) if isinstance(release, str) else None
    return None if parts is None else tuple(int(p or 0) for p in parts.groups())


def stores_linear_scale(release: object) -> bool:
    """Whether tensors written by vqkit ``release`` hold the affine codebook's linear scale ``1 + a s``: a release
    before :data:`POSITIVE_SCALE_RELEASE`, or one that did not record itself (None)."""
    version = release_tuple(release)
    return version is None or version < POSITIVE_SCALE_RELEASE


def converted_affine_codebooks(model: nn.Module, release: object) -> list[str]:
    """Names of ``model``'s :class:`~vqkit.codebooks.AffineCodebook` modules (every path of a shared one) whose stored scale is
    the linear ``1 + a s`` (:func:`stores_linear_scale`)."""
    if not stores_linear_scale(release):
        return []
    return [name for name, module in model.named_modules(remove_duplicate=False) if isinstance(module, AffineCodebook)]


def legacy_state_dict(model: nn.Module, state_dict: Mapping[str, Tensor], release: object) -> dict[str, Tensor]:
    """``state_dict`` marked with the module versions of the vqkit ``release`` that wrote it.

    For formats that store no module versions (safetensors checkpoints): every affine codebook named by
    :func:`converted_affine_codebooks` is marked version 1, so loading converts its linear scale to the same
    codes; otherwise ``state_dict`` is returned as is.
    """
    names = converted_affine_codebooks(model, release)
    if not names:
        return dict(state_dict)
    marked = OrderedDict(state_dict)
    marked._metadata = {name: {"version": 1} for name in names}  # type: ignore[attr-defined]
    return marked


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or does not fit the model / optimizer; the message names
    the file."""


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _save_tensors(path: Path, tensors: dict[str, Tensor]) -> None:
    # clones: safetensors refuses tensors that share storage (tied weights, views)
    save_file({k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()}, str(path))
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def optimizer_state_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (for safetensors) and a JSON-able structure."""
    sd = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    state: dict[str, dict[str, Any]] = {}
    for pid, entry in sd["state"].items():
        out: dict[str, Any] = {}
        for key, value in entry.items():
            if isinstance(value, Tensor):
                name = f"state.{pid}.{key}"
                tensors[name] = value
                out[key] = {"__tensor__": name}
            else:
                out[key] = value
        state[str(pid)] = out
    return tensors, {"state": state, "param_groups": sd["param_groups"]}


def optimizer_state_from_flat(tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`optimizer_state_to_flat`: a state dict for ``optimizer.load_state_dict``."""
    state: dict[int, dict[str, Any]] = {}
    for pid, entry in meta["state"].items():
        state[int(pid)] = {k: tensors[v["__tensor__"]] if isinstance(v, dict) and "__tensor__" in v else v
                           for k, v in entry.items()}
    groups = [{k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()}
              for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def _rng_tensors(device: torch.device) -> dict[str, Tensor]:
    out = {"torch_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        out["torch_cuda"] = torch.cuda.get_rng_state(device)
    return out


def _model_device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    extra: dict[str, Any] | None = None,
    keep: int = 3,
) -> Path:
    """Write checkpoint ``step`` atomically and keep only the newest ``keep`` ones.

    Args:
        run_dir: the run directory (the checkpoint goes to ``run_dir/checkpoints/step_<step>``).
        step: number of completed optimizer steps.
        model: the (unwrapped) model; its ``state_dict`` holds parameters and buffers.
        optimizer: its state goes to ``optimizer.safetensors`` + ``state.json``.
        extra: JSON-able values stored in ``state.json`` (e.g. the recipe).
        keep: checkpoints to keep (>= 1).
    Returns:
        the checkpoint directory.
    """
    run = RunDir(run_dir)
    root = run.checkpoints
    root.mkdir(parents=True, exist_ok=True)
    final = run.checkpoint(step)
    tmp = root / f"{TMP_PREFIX}{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    _save_tensors(tmp / MODEL_FILE, model.state_dict())
    opt_tensors, opt_meta = optimizer_state_to_flat(optimizer)
    _save_tensors(tmp / OPTIMIZER_FILE, opt_tensors)
    _save_tensors(tmp / RNG_FILE, _rng_tensors(_model_device(model)))
    # the release tells a later reader how to interpret the tensors (legacy_state_dict)
    state = {"format": FORMAT_VERSION, "step": int(step), "optimizer": opt_meta, **(extra or {}),
             "vqkit": __version__}
    _fsync_write(tmp / STATE_FILE, json.dumps(state, indent=1).encode())
    _fsync_dir(tmp)
    if final.exists():  # re-saving a step (e.g. after a resume): swap the old one out first
        old = root / f"{OLD_PREFIX}{final.name}-{os.getpid()}"
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old)
    else:
        os.rename(tmp, final)
    latest_tmp = root / f"{TMP_PREFIX}latest-{os.getpid()}"
    _fsync_write(latest_tmp, final.name.encode())
    os.replace(latest_tmp, run.latest_pointer)
    _fsync_dir(root)
    for _, old_dir in run.step_dirs()[:-keep]:
        shutil.rmtree(old_dir, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest checkpoint directory with a ``state.json`` (not checked further), or None."""
    dirs = [p for _, p in RunDir(run_dir).step_dirs() if (p / STATE_FILE).is_file()]
    return dirs[-1] if dirs else None


def peek_state(checkpoint: Path) -> dict[str, Any] | None:
    """The ``state.json`` of checkpoint directory ``checkpoint`` as a dict, None when it is missing or not a
    JSON object (nothing else is checked: :func:`read_checkpoint` validates)."""
    try:
        state = json.loads((checkpoint / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def remove_leftovers(run_dir: str | Path) -> list[Path]:
    """Delete the temporary directories / files of interrupted checkpoint writes; returns what was removed."""
    removed = RunDir(run_dir).leftovers()
    for p in removed:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return removed


def set_aside(checkpoint: Path) -> Path:
    """Rename a corrupt checkpoint directory to ``.corrupt-step_...`` (kept for inspection, never loaded
    or pruned); returns the new path."""
    target = checkpoint.with_name(f"{CORRUPT_PREFIX}{checkpoint.name}")
    n = 1
    while target.exists():
        n += 1
        target = checkpoint.with_name(f"{CORRUPT_PREFIX}{checkpoint.name}.{n}")
    os.rename(checkpoint, target)
    return target


# ----------------------------------------------------------------------------------------------
# reading and checking
# ----------------------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """A checkpoint read and checked by :func:`read_checkpoint`, not yet applied."""

    path: Path
    step: int
    state: dict[str, Any]
    model_tensors: dict[str, Tensor]
    optimizer_state: dict[str, Any] | None = None
    rng: dict[str, Tensor] = field(default_factory=dict)

    def apply(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
              restore_rng: bool = True) -> None:
        """Load the checked states into ``model`` (and ``optimizer``, and the RNGs)."""
        release = self.state.get("vqkit")
        model.load_state_dict(legacy_state_dict(model, self.model_tensors, release), strict=True)
        if optimizer is not None and self.optimizer_state is not None:
            optimizer.load_state_dict(self.optimizer_state)
            # a converted scale (and the weights that took its sign) has other gradients than the stored
            # moments were accumulated for: those parameters' optimizer state starts over
            for name in converted_affine_codebooks(model, release):
                module = model.get_submodule(name)
                for param in (module.weight, module.scale):
                    optimizer.state.pop(param, None)
        if restore_rng and self.rng:
            torch.set_rng_state(self.rng["torch_cpu"])
            device = _model_device(model)
            if device.type == "cuda" and "torch_cuda" in self.rng:
                torch.cuda.set_rng_state(self.rng["torch_cuda"], device)


def _load_tensors(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises its own error types for truncated / garbled files
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: not a readable safetensors file, truncated or corrupt ({reason})") from None


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def _check_finite(path: Path, tensors: dict[str, Tensor]) -> None:
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise CheckpointError(f"{path}: non-finite values (NaN or inf) in {_names(bad)}")


def _optional_keys(model: nn.Module) -> set[str]:
    """State-dict keys a checkpoint may lack: buffers a module gained after checkpoints without them were
    written, which its own loading fills in (listed by the module's ``optional_state_keys``)."""
    return {f"{name}.{key}" if name else key for name, module in model.named_modules()
            for key in getattr(module, "optional_state_keys", ())}


def _check_model_tensors(path: Path, tensors: dict[str, Tensor], model: nn.Module) -> None:
    optional = _optional_keys(model)
    expected = {k: v for k, v in model.state_dict().items() if k in tensors or k not in optional}
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    if missing or unexpected:
        parts = ([f"missing {_names(missing)}"] if missing else []) + (
            [f"unexpected {_names(unexpected)}"] if unexpected else [])
        raise CheckpointError(f"{path}: does not match the model ({'; '.join(parts)}); was it written for "
                              "another model or quantizer configuration?")
    shapes = [f"{k} {tuple(tensors[k].shape)} vs the model's {tuple(v.shape)}" for k, v in expected.items()
              if tensors[k].shape != v.shape]
    if shapes:
        raise CheckpointError(f"{path}: shape mismatch: {_names(shapes)}; was it written for another model "
                              "or quantizer configuration?")
    dtypes = [f"{k} {tensors[k].dtype} vs {v.dtype}" for k, v in expected.items()
              if tensors[k].dtype.is_floating_point != v.dtype.is_floating_point]
    if dtypes:
        raise CheckpointError(f"{path}: dtype mismatch: {_names(dtypes)}")
    _check_finite(path, tensors)


def _read_state(path: Path, directory_step: int | None) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(state).__name__}")
    missing = [k for k in ("format", "step", "optimizer") if k not in state]
    if missing:
        raise CheckpointError(f"{path}: missing key(s) {', '.join(missing)}")
    if state["format"] not in READ_FORMATS or isinstance(state["format"], bool):
        raise CheckpointError(f"{path}: checkpoint format {state['format']!r}, this vqkit reads "
                              f"{' and '.join(map(str, READ_FORMATS))} (written by a newer vqkit?)")
    step = state["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise CheckpointError(f"{path}: step {step!r} is not a positive int")
    if directory_step is not None and step != directory_step:
        raise CheckpointError(f"{path}: step {step} does not match its directory "
                              f"{checkpoint_name(directory_step)} (the file was edited or corrupted)")
    opt = state["optimizer"]
    if not (isinstance(opt, dict) and isinstance(opt.get("state"), dict) and isinstance(opt.get("param_groups"), list)):
        raise CheckpointError(f"{path}: 'optimizer' must hold 'state' (object) and 'param_groups' (list)")
    return state


def _check_optimizer(path: Path, state_path: Path, meta: dict[str, Any], tensors: dict[str, Tensor],
                     optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state dict, after checking it against ``optimizer``'s parameters."""
    groups = optimizer.param_groups
    saved = meta["param_groups"]
    sizes = [len(g.get("params", [])) if isinstance(g, dict) else -1 for g in saved]
    if sizes != [len(g["params"]) for g in groups]:
        raise CheckpointError(f"{state_path}: optimizer parameter groups of sizes {sizes}, the model's optimizer "
                              f"has {[len(g['params']) for g in groups]} (another model or optim configuration?)")
    params = [p for g in groups for p in g["params"]]
    ids = [i for g in saved for i in g["params"]]
    if sorted(ids) != list(range(len(params))):
        raise CheckpointError(f"{state_path}: optimizer parameter ids {ids[:8]}... are not 0..{len(params) - 1}")
    position = {pid: n for n, pid in enumerate(ids)}
    bad: list[str] = []
    for pid_text, entry in meta["state"].items():
        try:
            param = params[position[int(pid_text)]]
        except (ValueError, KeyError):
            raise CheckpointError(f"{state_path}: optimizer state for unknown parameter {pid_text!r}") from None
        if not isinstance(entry, dict):
            raise CheckpointError(f"{state_path}: optimizer state of parameter {pid_text} is not an object")
        for key, value in entry.items():
            if isinstance(value, dict) and "__tensor__" in value:
                name = value["__tensor__"]
                if name not in tensors:
                    raise CheckpointError(f"{path}: missing optimizer tensor {name!r} (listed in {state_path.name})")
                t = tensors[name]
                if t.ndim > 0 and t.shape != param.shape:
                    bad.append(f"{name} {tuple(t.shape)} vs parameter {tuple(param.shape)}")
    if bad:
        raise CheckpointError(f"{path}: shape mismatch: {_names(bad)} (another model configuration?)")
    _check_finite(path, tensors)
    return optimizer_state_from_flat(tensors, meta)


def read_checkpoint(
    checkpoint: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    rng: bool = True,
) -> Checkpoint:
    """Read and check a checkpoint directory for ``model`` (and ``optimizer``) without changing either.

    Raises:
        CheckpointError: a file is missing, unreadable, truncated, has other keys / shapes than the model
            or optimizer, holds NaN / inf, or ``state.json`` is inconsistent; the message names the file.
    """
    path = Path(checkpoint)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    state = _read_state(path / STATE_FILE, checkpoint_step(path.name))
    model_tensors = _load_tensors(path / MODEL_FILE)
    _check_model_tensors(path / MODEL_FILE, model_tensors, model)
    opt_state = None
    if optimizer is not None:
        opt_tensors = _load_tensors(path / OPTIMIZER_FILE)
        opt_state = _check_optimizer(path / OPTIMIZER_FILE, path / STATE_FILE, state["optimizer"], opt_tensors,
                                     optimizer)
    rng_tensors: dict[str, Tensor] = {}
    if rng:
        rng_tensors = _load_tensors(path / RNG_FILE)
        cpu = rng_tensors.get("torch_cpu")
        reference = torch.get_rng_state()
        if cpu is None or cpu.dtype != reference.dtype or cpu.shape != reference.shape:
            raise CheckpointError(f"{path / RNG_FILE}: no valid 'torch_cpu' RNG state")
    return Checkpoint(path, int(state["step"]), state, model_tensors, opt_state, rng_tensors)


def find_checkpoint(
    run_dir: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
) -> tuple[Checkpoint | None, list[tuple[Path, CheckpointError]]]:
    """The newest intact checkpoint of a run directory (checked by :func:`read_checkpoint`) and the
    ``(directory, error)`` of every newer one that is not; ``(None, errors)`` when none is intact."""
    skipped: list[tuple[Path, CheckpointError]] = []
    for _, path in reversed(RunDir(run_dir).step_dirs()):
        try:
            return read_checkpoint(path, model, optimizer), skipped
        except CheckpointError as e:
            skipped.append((path, e))
    return None, skipped


def load_model_weights(checkpoint: str | Path, model: nn.Module) -> None:
    """Load parameters and buffers of ``checkpoint`` into ``model`` (checked first: same architecture,
    finite values; raises :class:`CheckpointError` naming the file otherwise)."""
    path = Path(checkpoint) / MODEL_FILE
    tensors = _load_tensors(path)
    _check_model_tensors(path, tensors, model)
    state = peek_state(Path(checkpoint))
    if state is None and converted_affine_codebooks(model, None):
        raise CheckpointError(f"{Path(checkpoint) / STATE_FILE}: missing or unreadable; it records the vqkit release "
                              "that wrote the checkpoint, which says how to read the affine codebook's scale "
                              "(linear before 0.6.0)")
    model.load_state_dict(legacy_state_dict(model, tensors, (state or {}).get("vqkit")), strict=True)


def load_checkpoint(
    checkpoint: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Check, then restore model, optimizer and RNG states from a checkpoint directory; returns
    ``state.json``. Only safetensors and JSON are read: nothing is unpickled."""
    ckpt = read_checkpoint(checkpoint, model, optimizer, rng=restore_rng)
    ckpt.apply(model, optimizer, restore_rng=restore_rng)
    return ckpt.state

