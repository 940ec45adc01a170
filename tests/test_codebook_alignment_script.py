"""scripts/codebook_alignment.py finds the run directories of an ablation (not its lock files); scripts/code_mass.py
counts code masses right."""

from __future__ import annotations

from pathlib import Path

import pytest

def test_lock_files_are_not_runs(load_script, tmp_path: Path) -> None:
    # vqkit ablate leaves seedN.lock beside the seedN directories; a rung holding only locks has no run
    (tmp_path / "rung").mkdir()
    (tmp_path / "rung" / "seed0.lock").write_text("")
    with pytest.raises(SystemExit, match="no run directories seedN under .*rung"):
        load_script("codebook_alignment").main([str(tmp_path), "rung", "--out", str(tmp_path / "a.md")])


def test_runs_in_seed_order(load_script, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = load_script("codebook_alignment")
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


def test_code_mass_statistics_equal_a_hand_count(load_script) -> None:
    module = load_script("code_mass")
    import math

    import torch

    # K = 10: one code holds half the vectors, four share the rest equally, five are unused
    counts = torch.tensor([50.0, 12.5, 12.5, 12.5, 12.5, 0, 0, 0, 0, 0])
    s = module.mass_stats(counts, top=2)
    assert s["perplexity"] == pytest.approx(math.exp(-(0.5 * math.log(0.5) + 4 * 0.125 * math.log(0.125))))
    assert s["usage"] == 0.5 and s["below_half_mean"] == 0.5 and s["below_quarter_mean"] == 0.5
    assert s["top10_share"] == pytest.approx(0.5) and s["largest_x_mean"] == [5.0, 1.2]


def test_code_mass_expected_usage_matches_sampling(load_script) -> None:
    """The usage predicted from code masses equals the closed form and a Monte Carlo draw of n vectors."""
    module = load_script("code_mass")
    import torch

    counts = torch.tensor([50.0, 30.0, 15.0, 4.0, 1.0, 0.0], dtype=torch.float64)
    p = counts / counts.sum()
    n = 20
    assert module.expected_usage(counts, n) == pytest.approx(float((1 - (1 - p) ** n).mean()), rel=1e-9)
    gen = torch.Generator().manual_seed(0)
    draws = torch.multinomial(p.expand(4000, -1), n, replacement=True, generator=gen)  # (4000 trials, n)
    hit = torch.zeros(4000, 6, dtype=torch.float64).scatter_(1, draws, 1.0)
    assert float(hit.mean()) == pytest.approx(module.expected_usage(counts, n), abs=0.01)
    assert module.expected_usage(torch.ones(8), 1e6) == pytest.approx(1.0)


def test_early_steps_replays_the_trainer_exactly(load_script, tmp_path: Path, tiny_recipe) -> None:
    """scripts/early_steps.py reports the same training-batch usage, step for step, as the trainer logs for the
    same recipe, and the window of the "auto" ramp."""
    import json

    from vqkit.training import to_toml, train

    module = load_script("early_steps")
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



def test_lloyd_steps_reach_the_cluster_means() -> None:
    import torch

    from vqkit.maintenance import lloyd_steps

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(200, 3, generator=gen) * 0.1
    b = torch.randn(300, 3, generator=gen) * 0.1 + 5.0
    x = torch.cat([a, b])
    # both centers start inside cluster a; a third never gets a point and must stay where it is
    start = torch.tensor([[0.0, 0.0, 0.0], [0.3, 0.3, 0.3], [100.0, 100.0, 100.0]])
    out = lloyd_steps(x, start, iters=10)
    means = torch.stack([a.mean(0), b.mean(0)])
    got = out[:2][out[:2, 0].argsort()]
    assert torch.allclose(got, means, atol=1e-5)
    assert torch.equal(out[2], start[2])


def test_lloyd_probe_rows_follow_the_channel_axis(load_script) -> None:
    import torch

    module = load_script("lloyd_probe")
    t = torch.arange(2 * 7 * 7 * 7, dtype=torch.float32).reshape(2, 7, 7, 7)  # (B, C = dim, H, W = dim)
    rows = module.channel_last_rows(t, 7, channel_dim=1)
    assert torch.equal(rows[8], t[0, :, 1, 1])  # row (b=0, h=1, w=1) holds the 7 channels there
    assert torch.equal(module.channel_last_rows(t, 7, channel_dim=-1)[8], t[0, 1, 1, :])


def test_lloyd_probe_reads_the_model_codebook_as_the_model_quantizes(load_script, tmp_path: Path, tiny_recipe) -> None:
    """The probe's perplexity of the trained codebook equals code_mass's count on the same test split, and
    Lloyd steps from that codebook do not raise the training-split error they minimize."""
    import torch

    from vqkit.maintenance import lloyd_steps
    from vqkit.training import train

    probe, mass = load_script("lloyd_probe"), load_script("code_mass")
    train(tiny_recipe(10, "quantizer.codebook_size=64"), tmp_path / "run")
    assert probe.main([str(tmp_path / "run"), "--iters", "3", "--rows", "4000", "--out", str(tmp_path / "p.md")]) == 0
    row = [line for line in (tmp_path / "p.md").read_text().splitlines() if line.startswith(f"| {tmp_path}")]
    model_ppl = float(row[0].split(" | ")[3].split(" / ")[0])
    assert model_ppl == round(mass.mass_stats(mass.test_counts(tmp_path / "run"))["perplexity"], 1)
    codes, lat = probe.latents(tmp_path / "run")
    z_train = lat["train"][0]
    err = float(torch.cdist(z_train, codes).square().min(1).values.mean())
    refined = lloyd_steps(z_train, codes, 3)
    assert float(torch.cdist(z_train, refined).square().min(1).values.mean()) <= err * (1 + 1e-5)


def test_code_mass_on_the_training_split_predicts_the_test_usage(load_script, tmp_path: Path, tiny_recipe) -> None:
    """``--split train`` adds the measured test usage beside the one the training masses predict."""
    from vqkit.training import train

    mass = load_script("code_mass")
    train(tiny_recipe(10, "quantizer.codebook_size=64"), tmp_path / "run")
    assert mass.main([str(tmp_path / "run"), "--split", "train", "--out", str(tmp_path / "m.md")]) == 0
    row = [line for line in (tmp_path / "m.md").read_text().splitlines() if line.startswith(f"| {tmp_path}")][0]
    measured, predicted = (float(v.strip(" %")) for v in row.split(" | ")[-1].strip(" |").split(" / "))
    test, train_counts = mass.test_counts(tmp_path / "run"), mass.test_counts(tmp_path / "run", split="train")
    assert measured == round(100 * float((test > 0).double().mean()), 1)
    assert predicted == round(100 * mass.expected_usage(train_counts, float(test.sum())), 1)


def test_code_mass_constant_patches_by_hand(load_script, tmp_path: Path, tiny_recipe) -> None:
    """The constant-patch mask marks exactly the flat tiles, and the shares the script reports for the largest
    codes equal a count by hand over the same test split."""
    import torch

    from vqkit.training import load_trained_run, train

    mass = load_script("code_mass")
    x = torch.zeros(1, 2, 4, 6)
    x[0, 1, 0, 0] = 1.0  # tile (0, 0) varies in channel 1
    x[0, :, 2:, 3:] = 5.0  # tile (1, 1) is flat at 5
    x[0, 0, 3, 2] = 2.0  # tile (1, 0) varies in channel 0
    assert mass.constant_patch_mask(x, (2, 2)).tolist() == [[[False, True], [False, True]]]
    with pytest.raises(SystemExit, match="does not tile"):
        mass.constant_patch_mask(x, (3, 2))

    train(tiny_recipe(10, "quantizer.codebook_size=16"), tmp_path / "run")
    counts = mass.test_counts(tmp_path / "run")
    test_idx, constant, _ = mass.assignments(tmp_path / "run", constant_patches=True)
    shares = mass.constant_patch_shares(test_idx, constant, counts, top=2)
    _, model, _, test = load_trained_run(tmp_path / "run")
    xs, _ = test.get_batch(torch.arange(len(test)), "cpu")
    found = []
    hook = model.quantizer.register_forward_hook(lambda m, a, out: found.append(out.indices))
    with torch.no_grad():
        model(xs)
    hook.remove()
    idx = found[0]
    cell = (xs.shape[2] // idx.shape[1], xs.shape[3] // idx.shape[2])
    for code, share in zip(counts.argsort(descending=True)[:2].tolist(), shares):
        flat = [bool(xs[b, :, i * cell[0]:(i + 1) * cell[0], j * cell[1]:(j + 1) * cell[1]].unique().numel() == 1)
                for b, i, j in (idx == code).nonzero().tolist()]
        assert share == pytest.approx(sum(flat) / len(flat))
    assert mass.main([str(tmp_path / "run"), "--constant-patches", "--out", str(tmp_path / "c.md")]) == 0
    assert "constant patch" in (tmp_path / "c.md").read_text()


def test_lloyd_probe_refuses_projected_codes(load_script) -> None:
    from vqkit import VectorQuantizer

    probe = load_script("lloyd_probe")
    with pytest.raises(SystemExit, match="projected"):
        probe.check_probe_quantizer(VectorQuantizer(8, 16, codebook_dim=4))
    with pytest.raises(SystemExit, match="euclidean"):
        probe.check_probe_quantizer(VectorQuantizer(8, 16, metric="cosine"))
    probe.check_probe_quantizer(VectorQuantizer(8, 16))


def _restore_quantizer(monkeypatch: pytest.MonkeyPatch) -> None:
    from vqkit.quantizers import vector

    for name in ("_assign", "_bookkeep"):  # undone after the test
        monkeypatch.setattr(vector.VectorQuantizer, name, getattr(vector.VectorQuantizer, name))
    monkeypatch.setattr(vector, "soft_assignment_entropy", vector.soft_assignment_entropy)


@pytest.mark.parametrize("at_eval", [False, True])
def test_assignment_bias_probe_moves_vectors_to_idle_codes(load_script, monkeypatch: pytest.MonkeyPatch, at_eval: bool) -> None:
    import torch

    from vqkit import VectorQuantizer

    _restore_quantizer(monkeypatch)
    load_script("balance_probes").patch_assignment_bias(eta=0.5, at_eval=at_eval)
    torch.manual_seed(0)
    q = VectorQuantizer(4, 8, kmeans_init=False, dead_code_steps=0, alternating_steps=0, channel_dim=-1)
    x = torch.randn(64, 4)
    first = q(x).indices
    codes = q.effective_codes(False).detach()
    nearest = torch.cdist(x, codes).argmin(1)
    assert torch.equal(first, nearest)  # no bias yet
    for _ in range(10):
        q(x)
    b = q.__dict__["_probe_bias"]
    assert b.sum().abs() < 1e-5  # centred
    counts = torch.bincount(nearest, minlength=8)
    assert b[counts.argmax()] < 0 < b[counts.argmin()]  # the busiest code loses, the least used gains
    codes = q.effective_codes(False).detach()
    nearest = torch.cdist(x, codes).argmin(1)
    trained = q(x).indices
    assert not torch.equal(trained, nearest)  # training calls leave the nearest code for less used ones
    assert torch.bincount(trained, minlength=8).max() < torch.bincount(nearest, minlength=8).max()
    evaluated = q.eval()(x).indices
    assert torch.equal(evaluated, nearest) != at_eval


def test_codebook_diversity_probe_moves_only_the_codes(load_script, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from vqkit import VectorQuantizer

    _restore_quantizer(monkeypatch)

    def grads() -> tuple[float, float]:
        torch.manual_seed(0)
        q = VectorQuantizer(4, 8, kmeans_init=False, dead_code_steps=0, alternating_steps=0, channel_dim=-1,
                            commitment_weight=0.0, codebook_weight=0.0, diversity_weight=1.0)
        x = torch.randn(64, 4, requires_grad=True)
        q(x).loss.backward()
        return 0.0 if x.grad is None else float(x.grad.abs().sum()), float(sum(p.grad.abs().sum() for p in q.parameters() if p.grad is not None))

    to_input, to_codes = grads()
    assert to_input > 0 and to_codes > 0  # the library's regularizer moves the encoder and the codes
    load_script("balance_probes").patch_codebook_diversity()
    to_input, to_codes = grads()
    assert to_input == 0 and to_codes > 0


def test_balance_probe_runs_are_tagged_resumable_and_not_reused(load_script, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from conftest import TINY_OVERRIDES
    from vqkit.cli import main as vqkit_main
    from vqkit.training import ablate, resume, trainer

    _restore_quantizer(monkeypatch)
    for module in (ablate, resume, trainer):
        monkeypatch.setattr(module, "__version__", module.__version__)
    probes = load_script("balance_probes")
    release = ablate.__version__

    def command(steps: int) -> list[str]:
        sets = [a for o in [f"steps={steps}", *TINY_OVERRIDES] for a in ("--set", o)]
        return ["ablate", "--seeds", "0", "--rungs", "defaults", "--threads", "1", *sets, "--out", str(tmp_path)]

    def run_version() -> str:
        return json.loads((tmp_path / "defaults" / "seed0" / "run.json").read_text())["vqkit"]

    assert probes.main(["assignment-bias", "--eta", "0.05", "--", *command(4)]) == 0
    text = (tmp_path / "ablation.md").read_text()
    assert "python scripts/balance_probes.py assignment-bias --eta 0.05 -- ablate" in text
    assert "\nvqkit ablate" not in text
    summary = json.loads((tmp_path / "ablation.json").read_text())
    assert summary["vqkit"] == release + "+assignment-bias-0.05"
    assert summary["command"].startswith("python scripts/balance_probes.py")
    assert run_version() == release + "+assignment-bias-0.05"
    # a tagged run extends (its checkpoint's tagged release reads as the release it was built on)
    assert probes.main(["assignment-bias", "--eta", "0.05", "--", *command(8)]) == 0
    extended = json.loads((tmp_path / "defaults" / "seed0" / "run.json").read_text())
    assert extended["steps"] == 8 and extended["resumed_from_step"] == 4
    # the library itself does not reuse the probe's run in the same directory: it trains its own
    for module in (ablate, resume, trainer):
        monkeypatch.setattr(module, "__version__", release)
    monkeypatch.undo()
    assert vqkit_main(command(8)) == 0
    assert run_version() == release
