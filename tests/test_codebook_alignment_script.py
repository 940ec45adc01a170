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


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPT.parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lloyd_steps_reach_the_cluster_means() -> None:
    import torch

    module = _script("lloyd_probe")
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(200, 3, generator=gen) * 0.1
    b = torch.randn(300, 3, generator=gen) * 0.1 + 5.0
    x = torch.cat([a, b])
    # both centers start inside cluster a; a third never gets a point and must stay where it is
    start = torch.tensor([[0.0, 0.0, 0.0], [0.3, 0.3, 0.3], [100.0, 100.0, 100.0]])
    out = module.lloyd(x, start, iters=10)
    means = torch.stack([a.mean(0), b.mean(0)])
    got = out[:2][out[:2, 0].argsort()]
    assert torch.allclose(got, means, atol=1e-5)
    assert torch.equal(out[2], start[2])
    assert module.channel_last_rows(torch.zeros(2, 4, 3, 5), 4).shape == (30, 4)
    assert module.channel_last_rows(torch.zeros(2, 3, 4), 4).shape == (6, 4)


def test_lloyd_probe_reads_the_model_codebook_as_the_model_quantizes(tmp_path: Path, tiny_recipe) -> None:
    """The probe's perplexity of the trained codebook equals code_mass's count on the same test split."""
    from vqkit.training import train

    probe, mass = _script("lloyd_probe"), _script("code_mass")
    train(tiny_recipe(10, "quantizer.codebook_size=32"), tmp_path / "run")
    assert probe.main([str(tmp_path / "run"), "--iters", "3", "--rows", "2000", "--out", str(tmp_path / "p.md")]) == 0
    row = [line for line in (tmp_path / "p.md").read_text().splitlines() if line.startswith(f"| {tmp_path}")]
    model_ppl, model_err = (float(v) for v in row[0].split(" | ")[3].split(" / "))
    assert model_ppl == pytest.approx(mass.mass_stats(mass.test_counts(tmp_path / "run"))["perplexity"], abs=0.06)
    assert model_err > 0


def test_assignment_bias_probe_favours_idle_codes_in_training_only(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from vqkit import VectorQuantizer
    from vqkit.quantizers import vector

    probes = _script("balance_probes")
    for name in ("_assign", "_bookkeep"):  # undone after the test
        monkeypatch.setattr(vector.VectorQuantizer, name, getattr(vector.VectorQuantizer, name))
    probes.patch_assignment_bias(eta=0.5, at_eval=False)
    torch.manual_seed(0)
    q = VectorQuantizer(4, 8, kmeans_init=False, dead_code_steps=0, alternating_steps=0, channel_dim=-1)
    x = torch.randn(64, 4)
    for _ in range(5):
        q(x)
    b = q.__dict__["_probe_bias"]
    counts = torch.bincount(q.eval()(x).indices, minlength=8)
    assert b.sum().abs() < 1e-5  # centred
    assert (b[counts == 0] > 0).all() and b[counts.argmax()] < 0  # idle codes gain, the busiest loses
    codes = q.effective_codes(False)
    assert torch.equal(q(x).indices, torch.cdist(x, codes).argmin(1))  # evaluation: the nearest code


def test_balance_probe_tables_name_the_probe_and_its_runs_are_not_reused(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from conftest import TINY_OVERRIDES
    from vqkit.quantizers import vector
    from vqkit.training import ablate, resume, trainer

    for name in ("_assign", "_bookkeep"):
        monkeypatch.setattr(vector.VectorQuantizer, name, getattr(vector.VectorQuantizer, name))
    for module in (ablate, resume, trainer):
        monkeypatch.setattr(module, "__version__", module.__version__)
    probes = _script("balance_probes")
    sets = [a for o in ["steps=4", *TINY_OVERRIDES] for a in ("--set", o)]
    cmd = ["assignment-bias", "--eta", "0.05", "--", "ablate", "--seeds", "0", "--rungs", "defaults",
           "--threads", "1", *sets, "--out", str(tmp_path)]
    assert probes.main(cmd) == 0
    text = (tmp_path / "ablation.md").read_text()
    assert "python scripts/balance_probes.py assignment-bias --eta 0.05 -- ablate" in text
    assert "\nvqkit ablate" not in text
    summary = json.loads((tmp_path / "ablation.json").read_text())
    assert summary["vqkit"].endswith("+assignment-bias-0.05")
