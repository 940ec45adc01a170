"""The paper-shaped table's rungs (vqkit and vqtorch rows), the families table, and the optional vqtorch
adapter (its tests skip when vqtorch is not installed)."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from vqkit.quantizers.registry import _OPTIONAL, get_quantizer, make_quantizer
from vqkit.quantizers.vector import PLAIN_STE
from vqkit.training.recipe import QuantizerConfig
from vqkit.training.rungs import (
    PAPER_TABLE_TECHNIQUES,
    RUNG_NAMES,
    RUNGS,
    TABLES,
    VQTORCH_TABLE_TECHNIQUES,
)

HAVE_VQTORCH = importlib.util.find_spec("vqtorch") is not None
needs_vqtorch = pytest.mark.skipif(not HAVE_VQTORCH, reason="vqtorch is not installed (not on PyPI)")


def _args(key: str, k: int = 1024) -> QuantizerConfig:
    return RUNGS[key].make(QuantizerConfig("vq", 1.0, {"codebook_size": k}), {})


def test_paper_table_rows_are_each_technique_alone_over_plain_ste():
    assert TABLES["paper"] == ("paper-base", "paper-affine", "paper-sync", "paper-alternating",
                               "paper-replacement", "paper-all")
    assert set(TABLES["paper"]) <= set(RUNG_NAMES)
    base = _args("paper-base").args
    assert {k: base[k] for k in PLAIN_STE} == PLAIN_STE and base["kmeans_init"] is False
    for t, flags in PAPER_TABLE_TECHNIQUES.items():
        row = _args(f"paper-{t}").args
        changed = {k for k in row if row.get(k) != base.get(k)}
        assert changed == set(flags), t  # exactly this technique's switches differ from the baseline
    everything = _args("paper-all").args
    for flags in PAPER_TABLE_TECHNIQUES.values():
        assert all(everything[k] == v for k, v in flags.items())
    assert everything["kmeans_init"] is False
    # --fix kmeans_init=true adds k-means to every row, the baseline included
    with_kmeans = RUNGS["paper-base"].make(QuantizerConfig("vq", 1.0, {"codebook_size": 64}), {"kmeans_init": True})
    assert with_kmeans.args["kmeans_init"] is True


def test_vqtorch_rows_and_their_arguments():
    assert TABLES["paper-vqtorch"] == ("vqtorch-base", "vqtorch-affine", "vqtorch-sync", "vqtorch-alternating",
                                       "vqtorch-replacement")
    assert TABLES["paper-vqtorch-brackets"] == ("vqtorch-no-alternating", "vqtorch-no-affine")
    assert TABLES["paper-brackets"] == ("paper-no-alternating", "paper-no-affine")
    for key in TABLES["paper-vqtorch"] + TABLES["paper-vqtorch-brackets"]:
        q = _args(key)
        assert q.kind == "vqtorch" and q.args["codebook_size"] == 1024
    assert _args("vqtorch-base").args == {"codebook_size": 1024, "beta": 0.95}
    for t, flags in VQTORCH_TABLE_TECHNIQUES.items():
        assert _args(f"vqtorch-{t}").args == {"codebook_size": 1024, "beta": 0.95, **flags}
    assert _args("vqtorch-alternating").args["beta"] == 1.0  # vqtorch's in-place optimizer needs beta = 1
    assert "vqtorch" in _OPTIONAL


def test_family_rows_have_matched_codebook_sizes():
    k = 512
    sizes = {}
    for key in TABLES["families"]:
        q = _args(key, k)
        if q.kind in ("vq", "lfq", "bsq"):
            sizes[key] = q.args["codebook_size"]
        elif q.kind == "fsq":
            sizes[key] = math.prod(q.args["levels"])
        elif q.kind == "residual_vq":
            sizes[key] = q.args["codebook_size"] ** q.args["num_levels"]
        elif q.kind == "residual_fsq":
            sizes[key] = math.prod(q.args["levels"]) ** q.args["num_levels"]
    assert sizes.pop("fam-rfsq-33") == 729  # the nearest residual FSQ with 2-d levels >= 3, labelled so
    assert set(sizes.values()) == {k}
    assert _args("fam-rvq", k).args["quantize_dropout"] == 1.0 and "quantize_dropout" not in _args("fam-rvq-nodrop", k).args
    with pytest.raises(ValueError, match="power of two"):
        _args("fam-lfq", 1000)
    with pytest.raises(ValueError, match="cube"):
        _args("fam-rvq", 1024)


@pytest.mark.skipif(HAVE_VQTORCH, reason="vqtorch is installed")
def test_vqtorch_missing_is_a_clear_error():
    with pytest.raises(ValueError, match="vqtorch"):
        get_quantizer("vqtorch")


@needs_vqtorch
def test_vqtorch_adapter_contract():
    torch.manual_seed(0)
    q = make_quantizer("vqtorch", 8, codebook_size=32, channel_dim=1, affine_lr=10.0, sync_nu=1.0, replace_freq=20)
    x = torch.randn(4, 8, 5, 5, requires_grad=True)
    out = q(x)
    assert out.quantized.shape == x.shape and out.indices.shape == (4, 5, 5) and out.indices.dtype == torch.int64
    assert out.loss.shape == () and {"usage", "perplexity"} <= set(out.stats)
    (out.quantized.square().sum() + out.loss).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert q.vq.affine_transform.scale.grad is not None  # the affine parameters learn
    q.eval()
    ev = q(x.detach())
    assert torch.equal(q.decode(ev.indices), ev.quantized)
    codes = q.codebook
    assert codes.shape == (32, 8)
    nearest = torch.cdist(x.detach().movedim(1, -1).reshape(-1, 8), codes).argmin(-1)
    assert torch.equal(nearest, ev.indices.reshape(-1))


@needs_vqtorch
def test_vqtorch_adapter_mask_keeps_padding_out():
    torch.manual_seed(0)
    q = make_quantizer("vqtorch", 6, codebook_size=16)
    x = torch.randn(3, 10, 6)
    mask = torch.rand(3, 10) > 0.4
    x_bad = torch.where(mask[..., None], x, torch.full_like(x, 1e6))
    out = q(x_bad, mask=mask)
    alone = q(x[mask].unsqueeze(0))
    assert torch.equal(out.indices[mask], alone.indices.reshape(-1))
    assert torch.allclose(out.loss, alone.loss)
    assert torch.equal(out.indices[~mask], torch.zeros_like(out.indices[~mask]))
    assert torch.equal(out.quantized[~mask], torch.zeros_like(out.quantized[~mask]))


@needs_vqtorch
def test_vqtorch_adapter_matches_vqtorch_and_rejects_what_vqtorch_cannot_run():
    from vqtorch.nn import VectorQuant

    torch.manual_seed(0)
    q = make_quantizer("vqtorch", 8, codebook_size=32, sync_nu=0.5)
    ref = VectorQuant(8, 32, sync_nu=0.5, dim=-1)
    ref.load_state_dict(q.vq.state_dict())
    x = torch.randn(1, 50, 8)
    z_q, info = ref(x)
    out = q(x)
    assert torch.equal(out.quantized, z_q) and torch.equal(out.indices, info["q"].reshape(1, 50))
    assert torch.allclose(out.loss, info["loss"])
    # the in-place alternating step: vqtorch needs beta = 1 and fails with the affine codebook
    with pytest.raises(ValueError, match="beta=1.0"):
        make_quantizer("vqtorch", 8, codebook_size=32, inplace_lr=50.0)
    with pytest.raises(ValueError, match="cannot combine"):
        make_quantizer("vqtorch", 8, codebook_size=32, beta=1.0, inplace_lr=50.0, affine_lr=10.0)
    opt = lambda params: torch.optim.SGD(params, lr=50.0, momentum=0.9)  # noqa: E731
    broken = VectorQuant(8, 32, beta=1.0, affine_lr=10.0, inplace_optimizer=opt, dim=-1)
    z = torch.randn(1, 50, 8, requires_grad=True)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        z_q, info = broken(z)
        (z_q.sum() + info["loss"]).backward()
    # without affine the in-place step runs and moves the used codes
    q = make_quantizer("vqtorch", 8, codebook_size=32, beta=1.0, inplace_lr=50.0)
    before = q.vq.codebook.weight.detach().clone()
    out = q(x)
    used = out.indices.unique()
    assert not torch.equal(q.vq.codebook.weight[used], before[used])
    unused = torch.ones(32, dtype=torch.bool)
    unused[used] = False
    assert torch.equal(q.vq.codebook.weight[unused], before[unused])


def test_evaluate_at_the_first_levels_of_a_residual_quantizer():
    from vqkit.training import apply_overrides, build_from_recipe, evaluate, evaluate_levels, load_datasets, load_recipe

    recipe = apply_overrides(load_recipe(), [
        "model.hidden=16", "model.latent_dim=8", "data.eval_limit=64",
        'quantizer={kind="residual_vq", loss_weight=1.0, codebook_size=4, num_levels=3, kmeans_init=false}'])
    _, test = load_datasets(recipe)
    torch.manual_seed(0)
    model = build_from_recipe(recipe, test)
    per_level = evaluate_levels(model, test, limit=64)
    assert len(per_level) == 3
    full = evaluate(model, test, limit=64)
    assert per_level[-1].metrics == full.metrics
    assert torch.equal(per_level[-1].counts, full.counts)
    # n levels: the MSE of the model whose quantizer uses its first n levels, the codes of those levels only
    x, _ = test.get_batch(torch.arange(64), "cpu")
    model.eval()
    with torch.no_grad():
        for n, res in enumerate(per_level, 1):
            z = model.encode(x)
            q = model.quantizer(z, num_levels=n)
            assert q.indices.shape[-1] == n
            recon = model.decoder(q.quantized)
            assert torch.allclose(model.decode_indices(q.indices), recon)
            assert math.isclose(res.metrics["mse"], float(((recon - x) ** 2).mean()), rel_tol=1e-5)
            assert res.counts.shape == (n, 4)
            assert res.counts.sum() == q.indices.numel()
    assert model.quantizer._forward_pre_hooks == {}  # the hook is gone after the call
    with pytest.raises(ValueError, match="num_levels"):
        evaluate(model, test, limit=8, num_levels=4)
    vq = build_from_recipe(load_recipe(), test)
    with pytest.raises(ValueError, match="only residual quantizers"):
        evaluate(vq, test, limit=8, num_levels=1)
