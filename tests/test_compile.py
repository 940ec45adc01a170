"""torch.compile: the search is one opaque custom op (no graph break, no unrolled chunk loop), and both the
eval-mode and the steady-state training forward of a VectorQuantizer (after the k-means initializing step)
compile with ``fullgraph=True``: maintenance (EMA and running statistics, alternating steps, dead-code
replacement, usage counters) is shape-static graph code without host syncs."""

import copy
import shutil

import pytest
import torch
import torch._dynamo

from vqkit import VectorQuantizer
from vqkit.search import nearest_code


def _backend() -> str:
    # inductor's CPU code generation needs a C++ compiler; aot_eager still traces the whole graph
    return "inductor" if shutil.which("g++") or shutil.which("c++") or shutil.which("clang++") else "aot_eager"


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _break_reasons(explanation) -> list[str]:
    return [str(b.reason) for b in explanation.break_reasons]


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_search_compiles_without_graph_breaks(metric):
    def f(x, codes):
        res = nearest_code(x, codes, metric, chunk_size=7)
        return res.indices, res.distances

    g = torch.Generator().manual_seed(0)
    x, codes = torch.randn(3, 10, 8, generator=g), torch.randn(300, 8, generator=g)
    ex = torch._dynamo.explain(f)(x, codes)
    assert ex.graph_break_count == 0, _break_reasons(ex)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    idx, dist = compiled(x, codes)
    ref = nearest_code(x, codes, metric)
    assert torch.equal(idx, ref.indices)
    torch.testing.assert_close(dist, ref.distances)


def _trained_quantizer(dim: int = 8, k: int = 32) -> VectorQuantizer:
    torch.manual_seed(0)
    vq = VectorQuantizer(dim, k)  # defaults: affine + sync + alternating + k-means + replacement
    vq.train()
    vq(torch.randn(64, dim))  # k-means init happens here, outside the compiled graphs
    return vq


def test_eval_forward_has_no_graph_break():
    vq = _trained_quantizer().eval()
    x = torch.randn(2, 5, 8)
    ex = torch._dynamo.explain(vq)(x)
    assert ex.graph_break_count == 0, _break_reasons(ex)
    assert ex.graph_count == 1


TRAINING_CONFIGS = {
    "defaults": {},
    "replace-every-step": dict(dead_code_steps=1),
    "running-affine": dict(codebook="running_affine", dead_code_steps=1),
    "ema-threshold": dict(codebook="ema", dead_code_steps=1, dead_code_threshold=2.0),
    "crowded-replacement": dict(dead_code_steps=1, replacement_sampling="crowded"),
    "error-replacement": dict(codebook="ema", dead_code_steps=1, replacement_sampling="error"),
    "cosine-projected": dict(metric="cosine", codebook_dim=4),
    "rotation-reassign": dict(estimator="rotation", alternating_steps=2, alternating_reassign=True),
    "simvq-regularized-sampled": dict(codebook="linear", orthogonal_weight=0.1, diversity_weight=0.1,
                                      sampling_temperature=0.5, dead_code_steps=1),
}


@pytest.mark.parametrize("config", sorted(TRAINING_CONFIGS))
def test_training_forward_has_no_graph_break(config):
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 32, **TRAINING_CONFIGS[config]).train()
    vq(torch.randn(64, 8))  # the k-means initializing step, eager
    mask = torch.rand(2, 5) > 0.3
    ex = torch._dynamo.explain(vq)(torch.randn(2, 5, 8), mask)
    assert ex.graph_break_count == 0, _break_reasons(ex)
    assert ex.graph_count == 1


@pytest.mark.parametrize("config", ["defaults", "replace-every-step", "ema-threshold", "crowded-replacement",
                                    "error-replacement"])
def test_fullgraph_training_steps_match_eager(config):
    """Several compiled training steps (aot_eager: the same kernels and RNG stream as eager) give the same
    indices, gradients and buffers as eager steps, with dead-code replacement firing."""
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 32, **TRAINING_CONFIGS[config]).train()
    vq(torch.randn(64, 8))
    twin = copy.deepcopy(vq)
    compiled = torch.compile(twin, fullgraph=True, backend="aot_eager")
    for step in range(4):
        x = torch.randn(3, 7, 8, generator=torch.Generator().manual_seed(step)) * (1 + step)
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        torch.manual_seed(100 + step)
        oa = vq(a)
        torch.manual_seed(100 + step)
        ob = compiled(b)
        (oa.quantized.square().sum() + oa.loss).backward()
        (ob.quantized.square().sum() + ob.loss).backward()
        assert torch.equal(oa.indices, ob.indices)
        torch.testing.assert_close(a.grad, b.grad)
        for (name, p), q in zip(vq.named_parameters(), twin.parameters()):
            torch.testing.assert_close(p.grad, q.grad, msg=name)
        for (name, t), u in zip(vq.state_dict().items(), twin.state_dict().values()):
            torch.testing.assert_close(t, u, msg=name)
        vq.zero_grad()
        twin.zero_grad()


def test_compiled_training_leaves_the_settling_calls_out():
    """settle_calls runs in eager calls only: a compiled forward on the second call quantizes with the k-means
    codes as they are (no graph break, no re-seed)."""
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 32, settle_calls=10).train()
    vq(torch.randn(64, 8))
    twin = copy.deepcopy(vq)
    compiled = torch.compile(twin, fullgraph=True, backend="aot_eager")
    x = torch.randn(64, 8) + 5.0  # the encoder's output moved off the codes
    torch.manual_seed(1)
    settled = vq(x)
    torch.manual_seed(1)
    plain = compiled(x)
    assert float(settled.stats["usage"]) > 0.9 > 0.5 > float(plain.stats["usage"])


def test_inductor_fullgraph_training_step_runs():
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 32, dead_code_steps=1).train()
    vq(torch.randn(64, 8))
    compiled = torch.compile(vq, fullgraph=True, backend=_backend())
    for step in range(2):
        x = torch.randn(4, 6, 8, requires_grad=True)
        out = compiled(x)
        (out.quantized.square().sum() + out.loss).backward()
        assert torch.isfinite(x.grad).all() and out.indices.min() >= 0


def test_compiled_eval_forward_matches_eager():
    vq = _trained_quantizer().eval()
    x = torch.randn(4, 6, 8)
    compiled = torch.compile(vq, fullgraph=True, backend=_backend())
    out, ref = compiled(x), vq(x)
    assert torch.equal(out.indices, ref.indices)
    torch.testing.assert_close(out.quantized, ref.quantized)
    torch.testing.assert_close(out.loss, ref.loss)


def test_compiled_training_step_matches_eager():
    vq = _trained_quantizer()
    twin = copy.deepcopy(vq)
    compiled = torch.compile(twin, backend="aot_eager")
    for step in range(2):
        x = torch.randn(3, 7, 8, generator=torch.Generator().manual_seed(step))
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        torch.manual_seed(100 + step)  # dead-code replacement (default every step) draws its candidates
        oa = vq(a)
        torch.manual_seed(100 + step)
        ob = compiled(b)
        (oa.quantized.square().sum() + oa.loss).backward()
        (ob.quantized.square().sum() + ob.loss).backward()
        assert torch.equal(oa.indices, ob.indices)
        torch.testing.assert_close(a.grad, b.grad)
        for (name, p), q in zip(vq.named_parameters(), twin.parameters()):
            torch.testing.assert_close(p.grad, q.grad, msg=name)
        vq.zero_grad()
        twin.zero_grad()
