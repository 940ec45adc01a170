"""scripts/codebook_alignment.py finds the run directories of an ablation (not its lock files); scripts/code_mass.py
counts code masses right."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "codebook_alignment.py"


def _load():
    spec = importlib.util.spec_from_file_location("codebook_alignment", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lock_files_are_not_runs(tmp_path: Path) -> None:
    # vqkit ablate leaves seedN.lock beside the seedN directories; a rung holding only locks has no run
    (tmp_path / "rung").mkdir()
    (tmp_path / "rung" / "seed0.lock").write_text("")
    with pytest.raises(SystemExit, match="no run directories seedN under .*rung"):
        _load().main([str(tmp_path), "rung", "--out", str(tmp_path / "a.md")])


def test_runs_in_seed_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = _load()
    for name in ("seed10", "seed2", "seed0"):
        (tmp_path / "rung" / name).mkdir(parents=True)
    (tmp_path / "rung" / "seed2.lock").write_text("")
    seen: list[str] = []

    def fake_measure(run: Path, images: int) -> dict[str, float]:
        seen.append(run.name)
        return {"mean_gap": 1.0, "spread_ratio": 1.0, "codes_near_data": 0.5}

    monkeypatch.setattr(module, "measure", fake_measure)
    assert module.main([str(tmp_path), "rung", "--out", str(tmp_path / "a.md")]) == 0
    assert seen == ["seed0", "seed2", "seed10"]
    assert "| rung | 1" in (tmp_path / "a.md").read_text()


def test_code_mass_statistics_equal_a_hand_count() -> None:
    spec = importlib.util.spec_from_file_location("code_mass", SCRIPT.parent / "code_mass.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    import math

    import torch

    # K = 10: one code holds half the vectors, four share the rest equally, five are unused
    counts = torch.tensor([50.0, 12.5, 12.5, 12.5, 12.5, 0, 0, 0, 0, 0])
    s = module.mass_stats(counts, top=2)
    assert s["perplexity"] == pytest.approx(math.exp(-(0.5 * math.log(0.5) + 4 * 0.125 * math.log(0.125))))
    assert s["usage"] == 0.5 and s["below_half_mean"] == 0.5 and s["below_quarter_mean"] == 0.5
    assert s["top10_share"] == pytest.approx(0.5) and s["largest_x_mean"] == [5.0, 1.2]


def test_early_steps_replays_the_trainer_exactly(tmp_path: Path, tiny_recipe) -> None:
    """scripts/early_steps.py reports the same training-batch usage, step for step, as the trainer logs for the
    same recipe, and the window of the "auto" ramp."""
    import json

    from vqkit.training import to_toml, train

    spec = importlib.util.spec_from_file_location("early_steps", SCRIPT.parent / "early_steps.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    recipe = tiny_recipe(12, 'quantizer.dead_code_steps="auto"', "quantizer.codebook_size=256", "log.every=1")
    (tmp_path / "r.toml").write_text(to_toml(recipe))
    train(recipe, tmp_path / "run")
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = [m["usage"] for m in logged if m["split"] == "train"]
    rows = module.early_steps(str(tmp_path / "r.toml"), 12, [])
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert [r["train usage (%)"] for r in rows] == pytest.approx([100 * u for u in logged], abs=1e-9)
    assert [r["window"] for r in rows] == [1] * 9 + [2] * 3  # min(round(8 K / n), 1 + t // 10), n = 32 * 16
    text = module.to_markdown(rows, "cmd")
    assert text.count("\n| ") == 13 and "| 12 |" in text
