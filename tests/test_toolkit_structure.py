"""Structure of the training package and the CLI: no import cycles, function-level imports only for
optional dependencies (and the CLI's lazy subcommands), run-directory names spelled in one module, one
weight-decay group builder."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch

SRC = Path(__file__).resolve().parents[1] / "src" / "vqkit"
TRAINING = SRC / "training"

# optional dependencies: imported where used, so the package works (and imports fast) without them
OPTIONAL = {"tqdm", "tqdm.auto", "matplotlib.figure", "torch.utils.tensorboard", "vector_quantize_pytorch"}


def _module_level_imports(path: Path) -> list[ast.ImportFrom | ast.Import]:
    tree = ast.parse(path.read_text())
    return [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]


def _function_level_imports(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text())
    out = []
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    out += [(a.name, node.lineno) for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    out.append(("." * node.level + (node.module or ""), node.lineno))
    return out


def _training_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted(TRAINING.glob("*.py")):
        deps = set()
        for node in _module_level_imports(path):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    deps.add(node.module.split(".")[0])
                else:
                    deps.update(a.name for a in node.names)
        graph[path.stem] = deps
    return graph


def test_training_package_has_no_import_cycle():
    graph = _training_graph()
    assert {"trainer", "report", "recipe", "presets", "rundir", "build"} <= set(graph)
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in graph.get(node, ()):
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack + [node, dep]))
            if dep not in state:
                visit(dep, stack + [node])
        state[node] = 2

    for module in graph:
        if module not in state:
            visit(module, [])
    assert "recipe" not in graph["presets"] and "trainer" not in graph["report"]


def test_function_level_imports_only_for_optional_dependencies():
    offending = [f"{path.name}:{line} {name}" for path in sorted(TRAINING.glob("*.py"))
                 for name, line in _function_level_imports(path) if name not in OPTIONAL]
    assert not offending, offending
    # the CLI imports its subcommands lazily, and nothing heavy at module level
    top = {(n.module if isinstance(n, ast.ImportFrom) else n.names[0].name) for n in _module_level_imports(SRC / "cli.py")}
    assert top <= {"__future__", "argparse", "shlex", "sys", "time", "pathlib", None}, top


def test_run_directory_names_are_spelled_in_one_module():
    names = re.compile(r"""["'](recipe\.toml|metrics\.jsonl|run\.json|report\.md|state\.json|checkpoints|"""
                       r"""model\.safetensors|ablation\.md|ablation\.json|prior\.json|samples\.png|"""
                       r"""feature_net\.safetensors|feature_net\.json|generative\.md|generative\.json)["']""")
    spelled = [f"{p.relative_to(SRC)}:{i}" for p in sorted(SRC.rglob("*.py")) if p.name != "rundir.py"
               and "bench" not in p.parts for i, line in enumerate(p.read_text().splitlines(), 1) if names.search(line)]
    assert not spelled, spelled


def test_rank_checks_go_through_vqkit_distributed():
    for path in sorted(TRAINING.glob("*.py")) + [SRC / "cli.py"]:
        text = path.read_text()
        assert "get_rank(" not in text and '"RANK"' not in text, path.name


def test_weight_decay_groups():
    from vqkit.models import build_model
    from vqkit.training.optim import param_groups

    model = build_model("vqvae", (1, 8, 8), 10, {"kind": "vq", "codebook_size": 16}, hidden=8, latent_dim=4)
    groups = param_groups(model, 0.1)
    decayed = {id(p) for p in groups[0]["params"]}
    quantizer = {id(p) for p in model.quantizer.parameters()}
    expected = {id(p) for p in model.parameters() if p.ndim >= 2 and id(p) not in quantizer}
    assert groups[0]["weight_decay"] == 0.1 and decayed == expected
    assert groups[1]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    # the order is the model's parameter order (optimizer state in checkpoints depends on it)
    order = [id(p) for p in model.parameters()]
    for g in groups:
        positions = [order.index(id(p)) for p in g["params"]]
        assert positions == sorted(positions)


@pytest.mark.parametrize("name", ["recipe.toml", "metrics.jsonl", "run.json", "report.md"])
def test_rundir_paths(tmp_path, name):
    from vqkit.training.rundir import RunDir, checkpoint_name, checkpoint_step

    run = RunDir(tmp_path)
    paths = {"recipe.toml": run.recipe, "metrics.jsonl": run.metrics, "run.json": run.summary,
             "report.md": run.report}
    assert paths[name] == tmp_path / name
    assert checkpoint_step(checkpoint_name(600)) == 600 and checkpoint_step(".tmp-step_00000600-1") is None
    assert torch.get_num_threads() >= 1
