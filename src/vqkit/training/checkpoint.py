"""Checkpoints as safetensors + JSON, written atomically, loaded without executing pickled code.

Layout of ``<run>/checkpoints/``::

    step_00000600/
        model.safetensors       model parameters and buffers (quantizer buffers included)
        optimizer.safetensors   optimizer state tensors (e.g. Adam moments)
        rng.safetensors         torch RNG states (CPU, and CUDA when used)
        state.json              step, optimizer structure (param groups, scalar state), recipe, extras
    latest                      name of the newest complete checkpoint

A checkpoint directory is assembled under a temporary name and renamed into place, and ``latest`` is
replaced with ``os.replace``, so an interruption at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

__all__ = [
    "CHECKPOINT_DIR",
    "save_checkpoint",
    "latest_checkpoint",
    "load_checkpoint",
    "load_model_weights",
    "optimizer_state_to_flat",
    "optimizer_state_from_flat",
]

CHECKPOINT_DIR = "checkpoints"
FORMAT_VERSION = 1


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


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


def _restore_rng(tensors: dict[str, Tensor], device: torch.device) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    if device.type == "cuda" and "torch_cuda" in tensors:
        torch.cuda.set_rng_state(tensors["torch_cuda"], device)


def _step_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("step_*") if p.is_dir() and (p / "state.json").is_file())


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    extra: dict[str, Any] | None = None,
    keep: int = 2,
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
    root = Path(run_dir) / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    _save_tensors(tmp / "model.safetensors", model.state_dict())
    opt_tensors, opt_meta = optimizer_state_to_flat(optimizer)
    _save_tensors(tmp / "optimizer.safetensors", opt_tensors)
    _save_tensors(tmp / "rng.safetensors", _rng_tensors(device))
    state = {"format": FORMAT_VERSION, "step": int(step), "optimizer": opt_meta, **(extra or {})}
    _fsync_write(tmp / "state.json", json.dumps(state, indent=1).encode())
    if final.exists():  # re-saving a step (e.g. after a resume): swap the old one out first
        old = root / f".old-{final.name}-{os.getpid()}"
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old)
    else:
        os.rename(tmp, final)
    latest_tmp = root / f".latest-{os.getpid()}"
    _fsync_write(latest_tmp, final.name.encode())
    os.replace(latest_tmp, root / "latest")
    for old_dir in _step_dirs(root)[:-keep]:
        shutil.rmtree(old_dir, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run directory, or None."""
    root = Path(run_dir) / CHECKPOINT_DIR
    pointer = root / "latest"
    if pointer.is_file():
        candidate = root / pointer.read_text().strip()
        if (candidate / "state.json").is_file():
            return candidate
    dirs = _step_dirs(root) if root.is_dir() else []
    return dirs[-1] if dirs else None


def load_model_weights(checkpoint: str | Path, model: nn.Module) -> None:
    """Load parameters and buffers of ``checkpoint`` into ``model`` (strict: same architecture)."""
    tensors = load_file(str(Path(checkpoint) / "model.safetensors"), device="cpu")
    model.load_state_dict(tensors, strict=True)


def load_checkpoint(
    checkpoint: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Restore model, optimizer and RNG states from a checkpoint directory; returns ``state.json``.

    Only safetensors and JSON are read: nothing is unpickled.
    """
    checkpoint = Path(checkpoint)
    state = json.loads((checkpoint / "state.json").read_text())
    if state.get("format") != FORMAT_VERSION:
        raise ValueError(f"{checkpoint}: checkpoint format {state.get('format')!r}, expected {FORMAT_VERSION}")
    load_model_weights(checkpoint, model)
    if optimizer is not None:
        tensors = load_file(str(checkpoint / "optimizer.safetensors"), device="cpu")
        optimizer.load_state_dict(optimizer_state_from_flat(tensors, state["optimizer"]))
    if restore_rng:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        _restore_rng(load_file(str(checkpoint / "rng.safetensors"), device="cpu"), device)
    return state
