"""torch.compile: the search is one opaque custom op (no graph break, no unrolled chunk loop), the eval-mode
VectorQuantizer forward has no graph break, and in training the only breaks are the deliberately
``torch.compiler.disable``d maintenance call (k-means init, dead-code replacement, NaN check: data-dependent
and host-synchronizing)."""

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


def test_training_breaks_only_at_maintenance():
    vq = _trained_quantizer()
    ex = torch._dynamo.explain(vq)(torch.randn(2, 5, 8))
    reasons = _break_reasons(ex)
    assert ex.graph_break_count >= 1
    assert all("_maintain" in r for r in reasons), reasons


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
        oa, ob = vq(a), compiled(b)
        (oa.quantized.square().sum() + oa.loss).backward()
        (ob.quantized.square().sum() + ob.loss).backward()
        assert torch.equal(oa.indices, ob.indices)
        torch.testing.assert_close(a.grad, b.grad)
        for (name, p), q in zip(vq.named_parameters(), twin.parameters()):
            torch.testing.assert_close(p.grad, q.grad, msg=name)
        vq.zero_grad()
        twin.zero_grad()
