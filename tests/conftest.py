"""Shared test fixtures."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny models: one intra-op thread avoids OpenMP oversubscription stalls on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TINY_OVERRIDES = ["batch_size=32", "model.hidden=16", "model.latent_dim=8", "quantizer.codebook_size=32",
                  "quantizer.dead_code_steps=3", "log.eval_every=10", "log.checkpoint_every=5",
                  "log.progress=false", "log.report=false"]


@pytest.fixture
def tiny_recipe():
    """``tiny_recipe(steps, *overrides)``: the default recipe (digits VQ-VAE) shrunk to run in about a second."""
    from vqkit.training import apply_overrides, load_recipe

    def make(steps: int = 20, *extra: str):
        return apply_overrides(load_recipe(), [f"steps={steps}", *TINY_OVERRIDES, *extra])

    return make


@pytest.fixture
def load_script():
    """``load_script("name")`` imports ``scripts/name.py`` (not a package) as a module."""
    import importlib.util
    from pathlib import Path

    def load(name: str):
        path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
