"""Training toolkit: recipes and overrides, sampling, checkpoints, train + resume, reports, ablation, DDP."""

from __future__ import annotations

import json
import math
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vqkit.training import (
    Recipe,
    RecipeError,
    TrainingInterrupted,
    apply_overrides,
    get_preset,
    latest_checkpoint,
    load_checkpoint,
    load_recipe,
    preset_names,
    read_metrics,
    run_ablation,
    save_checkpoint,
    to_toml,
    train,
    write_report,
)
from vqkit.training.checkpoint import optimizer_state_from_flat, optimizer_state_to_flat
from vqkit.quantizers.base import IndexLayout
from vqkit.training.evaluate import CodeCounter
from vqkit.training.sampling import BatchStream

pytest.importorskip("sklearn")  # the bundled digits

SRC = Path(__file__).resolve().parents[1] / "src"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(steps: int = 20, *extra: str) -> Recipe:
    """The default recipe (digits VQ-VAE) shrunk to run in about a second."""
    return apply_overrides(load_recipe(), [
        f"steps={steps}", "batch_size=32", "model.hidden=16", "model.latent_dim=8", "quantizer.codebook_size=32",
        "quantizer.dead_code_steps=3", "log.eval_every=10", "log.checkpoint_every=5", "log.progress=false",
        "log.report=false", *extra])


# ----------------------------------------------------------------------------------------------
# recipes
# ----------------------------------------------------------------------------------------------


def test_recipe_round_trips_through_toml(tmp_path):
    recipe = apply_overrides(load_recipe(), ['quantizer.codebook={kind="affine", lr=2.5}', "optim.betas=[0.8, 0.9]"])
    path = tmp_path / "r.toml"
    path.write_text(to_toml(recipe))
    assert load_recipe(path) == recipe
    assert load_recipe(path).quantizer.args["codebook"] == {"kind": "affine", "lr": 2.5}


def test_every_preset_is_valid():
    names = preset_names()
    assert "digits-vqvae" in names and "fashion-mnist-resnet18" in names
    for name in names:
        assert load_recipe(name) == get_preset(name)
    assert load_recipe(None) == get_preset("digits-vqvae")


def test_overrides_are_typed_and_nested():
    r = apply_overrides(load_recipe(), [
        "steps=20", "optim.lr=3e-4", "bf16=true", "quantizer.codebook_size=512", "quantizer.sync_nu=0.5",
        "quantizer.kmeans_init=false", "quantizer.codebook=plain", "model.latent_dim=8", "data.dataset=digits",
        "quantizer.loss_weight=5"])
    assert r.steps == 20 and isinstance(r.steps, int)
    assert r.optim.lr == 3e-4 and r.bf16 is True and r.quantizer.loss_weight == 5.0
    assert r.quantizer.args == {"codebook_size": 512, "sync_nu": 0.5, "kmeans_init": False, "codebook": "plain"}
    assert r.model.args["latent_dim"] == 8


def test_inline_table_replaces_a_section():
    r = apply_overrides(load_recipe(), ['quantizer={kind="fsq", levels=[8, 5, 5, 5]}'])
    assert r.quantizer.kind == "fsq" and r.quantizer.args == {"levels": [8, 5, 5, 5]}


@pytest.mark.parametrize("override,match", [
    ("quantizer.codebok_size=512",
     r"quantizer.codebok_size: unknown key for quantizer kind 'vq'; valid keys: .*quantizer.codebook_size"),
    ("stepz=3", r"stepz: unknown recipe key; valid keys: name, seed, steps, .*optim.lr"),
    ("optim.learning_rate=3", r"optim.learning_rate: unknown recipe key; valid keys: .*optim.lr"),
    ("a.b.c=1", r"a.b.c: unknown recipe key"),
    ("optim.lr=fast", r"optim.lr: expected float, got 'fast'"),
    ("steps=2.5", r"steps: expected int, got '2.5'"),
    ("bf16=maybe", r"bf16: expected bool, got 'maybe'"),
    ("steps=0", r"steps: expected an int >= 1, got 0"),
    ("optim.name=lion", r"optim.name: expected one of adamw, adam, sgd, got 'lion'"),
    ("quantizer.kind=pq", r"quantizer.kind: expected one of .*got 'pq'"),
    ("steps", r"--set: expected key=value"),
])
def test_bad_overrides_name_the_key(override, match):
    with pytest.raises(RecipeError, match=match):
        apply_overrides(load_recipe(), [override])


def test_recipe_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('steps = 10\n[optim]\nlrate = 0.1\n')
    with pytest.raises(RecipeError, match=r"bad.toml: optim.lrate: unknown recipe key"):
        load_recipe(bad)
    with pytest.raises(FileNotFoundError, match="no such recipe file"):
        load_recipe(tmp_path / "missing.toml")
    with pytest.raises(RecipeError, match="neither a .toml file nor a built-in recipe; built-in recipes: digits-vqvae"):
        load_recipe("nope")


# ----------------------------------------------------------------------------------------------
# sampling, evaluation helpers, checkpoints
# ----------------------------------------------------------------------------------------------


def test_batch_stream_is_stateless_and_sharded():
    a = BatchStream(10, 4, seed=3)
    first = [a.global_batch(s) for s in range(6)]
    # 24 positions = 2 full epochs + 4: every index appears twice in the first 20
    assert sorted(torch.cat(first[:5]).tolist()) == sorted(list(range(10)) * 2)
    b = BatchStream(10, 4, seed=3)
    assert torch.equal(b.global_batch(5), first[5])  # no state: any step, any order
    ranks = [BatchStream(10, 4, seed=3, rank=r, world_size=2).local_batch(5) for r in range(2)]
    assert torch.equal(torch.cat(ranks), first[5])
    with pytest.raises(ValueError, match="batch_size: the global batch 5 must be divisible"):
        BatchStream(10, 5, seed=0, world_size=2)


def test_usage_counts_per_codebook_column():
    idx = torch.tensor([[0, 1], [0, 2], [3, 2]])
    counter = CodeCounter(IndexLayout((2,), (4, 4)))
    counter.add(idx)
    assert counter.counts.tolist() == [[2, 0, 0, 1], [0, 1, 2, 0]]
    used, ppl = counter.result()
    assert used == 4 / 8 and ppl > 1
    shared = CodeCounter(IndexLayout((2,), (4, 4), shared=True))
    shared.add(idx)
    assert shared.result()[0] == 4 / 4
    # per-level sizes (residual), dropped levels (-1) not counted, huge implicit codebooks counted by sorting
    levels = CodeCounter(IndexLayout((2,), (2, 8)))
    levels.add(torch.tensor([[1, 7], [0, -1]]))
    assert levels.result()[0] == 3 / 10
    huge = CodeCounter(IndexLayout((), (2**40,)))
    huge.add(torch.tensor([5, 5, 2**39]))
    used, ppl = huge.result()
    assert used == 2 / 2**40 and huge.counts is None and ppl == pytest.approx(2 ** (-(2 / 3) * math.log2(2 / 3) - (1 / 3) * math.log2(1 / 3)))


def test_optimizer_state_round_trips_without_pickle():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.8, 0.9))
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    tensors, meta = optimizer_state_to_flat(opt)
    json.dumps(meta)  # JSON-able
    restored = optimizer_state_from_flat(tensors, json.loads(json.dumps(meta)))
    opt2 = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=0.5)
    opt2.load_state_dict(restored)
    assert opt2.param_groups[0]["betas"] == (0.8, 0.9) and opt2.param_groups[0]["lr"] == 1e-3
    for k, v in opt.state_dict()["state"][0].items():
        assert torch.equal(v, opt2.state_dict()["state"][0][k])


def test_checkpoints_are_atomic_pruned_and_loaded_without_unpickling(tmp_path, monkeypatch):
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    opt = torch.optim.Adam(model.parameters())
    for step in (1, 2, 3):
        model(torch.randn(4, 3)).sum().backward()
        opt.step()
        save_checkpoint(tmp_path, step, model, opt, extra={"note": "x"}, keep=2)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000002", "step_00000003"]
    assert latest_checkpoint(tmp_path) == root / "step_00000003"
    assert {p.name for p in (root / "step_00000003").iterdir()} == {
        "model.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json"}

    def no_pickle(*args, **kwargs):
        raise AssertionError("checkpoint loading must not unpickle")

    monkeypatch.setattr(torch, "load", no_pickle)
    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    model2 = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    opt2 = torch.optim.Adam(model2.parameters())
    state = load_checkpoint(latest_checkpoint(tmp_path), model2, opt2)
    assert state["step"] == 3 and state["note"] == "x"
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    # a leftover temporary directory (a crash mid-write) is ignored
    (root / ".tmp-step_00000004-1").mkdir()
    (root / "latest").unlink()
    assert latest_checkpoint(tmp_path) == root / "step_00000003"


# ----------------------------------------------------------------------------------------------
# train, resume, report
# ----------------------------------------------------------------------------------------------


class Interrupt(Exception):
    pass


def test_interrupted_and_resumed_run_is_bit_identical(tmp_path):
    recipe = tiny(20)
    full = train(recipe, tmp_path / "full")

    def crash(step: int) -> None:
        if step == 13:  # after the checkpoint at 10, before the one at 15
            raise Interrupt

    with pytest.raises(Interrupt):
        train(recipe, tmp_path / "cut", on_step=crash)
    assert latest_checkpoint(tmp_path / "cut").name == "step_00000010"
    assert read_metrics(tmp_path / "cut")[-1]["step"] == 13
    resumed = train(recipe, tmp_path / "cut", resume=True)
    assert resumed.final == full.final
    for name in ("model.safetensors", "optimizer.safetensors"):
        a = load_file(str(tmp_path / "full/checkpoints/step_00000020" / name))
        b = load_file(str(tmp_path / "cut/checkpoints/step_00000020" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert (tmp_path / "full/metrics.jsonl").read_bytes() == (tmp_path / "cut/metrics.jsonl").read_bytes()
    records = read_metrics(tmp_path / "full")
    assert [r["step"] for r in records if r["split"] == "train"] == list(range(1, 21))
    assert [r["step"] for r in records if r["split"] == "test"] == [10, 20]
    assert {"loss", "mse", "usage", "perplexity", "lr"} <= set(records[0])


def test_out_dir_guard(tmp_path):
    train(tiny(2), tmp_path / "run")
    with pytest.raises(FileExistsError, match="already holds a run; pass --resume"):
        train(tiny(2), tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="--resume: .*empty does not exist"):
        train(tiny(2), tmp_path / "empty", resume=True)


def test_bf16_autocast_and_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    result = train(tiny(3, "bf16=true", "log.tensorboard=true"), tmp_path / "run")
    assert result.final["usage"] > 0
    assert list((tmp_path / "run/tensorboard").glob("events.out.tfevents.*"))


def _assert_png(path: Path) -> None:
    from PIL import Image

    assert path.read_bytes()[:8] == PNG_MAGIC, path
    with Image.open(path) as img:
        img.verify()


def test_report_writes_markdown_and_valid_pngs(tmp_path):
    run = tmp_path / "run"
    train(tiny(12, "log.eval_every=4"), run)
    report = write_report(run)
    text = report.read_text()
    for name in ("loss", "loss_terms", "usage", "perplexity", "reconstructions", "codebook_usage"):
        _assert_png(run / "plots" / f"{name}.png")
        assert f"plots/{name}.png" in text
    assert "Held-out results" in text and "| usage |" in text
    assert "## What the loss is made of" in text and "Training usage is the fraction of codes" in text
    # quantizers that report vq_mse and the weighted terms get them decomposed (absent keys are tolerated)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r in records:
        if r["split"] == "train":
            r.update(vq_mse=r["quantizer_loss"], commitment_loss=0.05 * r["quantizer_loss"],
                     codebook_loss=0.95 * r["quantizer_loss"])
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    text = write_report(run).read_text()
    assert "| vq_mse (mean squared distance input - code, unweighted) |" in text
    assert "commitment_loss (= 0.05 x vq_mse)" in text and "codebook_loss (= 0.95 x vq_mse)" in text
    _assert_png(run / "plots/loss_terms.png")


def test_classifier_run_and_report(tmp_path):
    recipe = apply_overrides(get_preset("digits-alexnet"), [
        "steps=6", "batch_size=32", "model.width=4", "model.hidden=16", "quantizer.codebook_size=16",
        "log.eval_every=3", "log.progress=false"])
    result = train(recipe, tmp_path / "cls")
    assert {"accuracy", "usage", "perplexity"} <= set(result.final)
    assert not (tmp_path / "cls/report.md").exists()  # the CLI writes the report, train() does not
    write_report(tmp_path / "cls")
    _assert_png(tmp_path / "cls/plots/accuracy.png")
    assert not (tmp_path / "cls/plots/reconstructions.png").exists()


def test_ablation_writes_one_table_and_curves(tmp_path):
    base = tiny(6, "log.eval_every=3", "log.checkpoint_every=0")
    path = run_ablation(base, tmp_path / "ab", seeds=[0, 1], rungs=["plain", "replacement", "fsq"], progress=False)
    text = path.read_text()
    assert "| plain STE |" in text and "| + dead-code replacement |" in text and "| FSQ |" in text
    assert text.count(" ± ") >= 12
    data = json.loads((tmp_path / "ab/ablation.json").read_text())
    assert [r["seed"] for r in data["results"]["plain"]["runs"]] == [0, 1]
    for key in ("usage", "perplexity", "mse"):
        _assert_png(tmp_path / "ab" / f"curves_{key}.png")
    with pytest.raises(RecipeError, match="--rungs: unknown rung"):
        run_ablation(base, tmp_path / "ab2", rungs=["plane"])


# ----------------------------------------------------------------------------------------------
# torch.distributed: 2 processes, gloo, CPU
# ----------------------------------------------------------------------------------------------


def _torchrun(out: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "vqkit",
           "train", "--out", str(out), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def test_two_process_training_writes_once_and_resumes(tmp_path):
    common = ["--set", "batch_size=32", "--set", "model.hidden=16", "--set", "quantizer.codebook_size=32",
              "--set", "quantizer.dead_code_steps=3", "--set", "log.eval_every=4", "--set", "log.checkpoint_every=4",
              "--set", "log.progress=false", "--set", "log.report=false"]
    run = tmp_path / "ddp"
    first = _torchrun(run, "--set", "steps=8", *common)
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads((run / "run.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 8
    records = read_metrics(run)
    assert [r["step"] for r in records if r["split"] == "train"] == list(range(1, 9))  # one writer
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step_00000004", "step_00000008"]
    second = _torchrun(run, "--resume", "--set", "steps=12")
    assert second.returncode == 0, second.stderr[-3000:]
    assert json.loads((run / "run.json").read_text())["resumed_from_step"] == 8
    assert [r["step"] for r in read_metrics(run, "train")] == list(range(1, 13))
    assert latest_checkpoint(run).name == "step_00000012"


def test_teardown_waits_for_every_rank_only_after_a_clean_run(monkeypatch, tmp_path):
    """The group is destroyed after a barrier when training finished, without one when it raised (a rank that
    raised must not wait for ranks that may never arrive), and never when the caller owns it."""
    from vqkit.training import parallel, trainer

    calls = []
    monkeypatch.setattr(parallel.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(parallel.dist, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(parallel.dist, "destroy_process_group", lambda: calls.append("destroy"))
    ours = parallel.DistContext(0, 2, 0, torch.device("cpu"), owns_group=True)
    parallel.teardown(ours)
    assert calls == ["barrier", "destroy"]
    calls.clear()
    parallel.teardown(ours, clean=False)
    assert calls == ["destroy"]
    calls.clear()
    parallel.teardown(parallel.DistContext(0, 2, 0, torch.device("cpu"), owns_group=False))
    assert calls == []
    # train(): a clean return tears down with the barrier, an exception without it (and still raises)
    monkeypatch.setattr(trainer.parallel, "setup", lambda device: ours)
    monkeypatch.setattr(trainer, "_train", lambda *a, **k: "result")
    assert train(tiny(1), tmp_path / "a") == "result" and calls == ["barrier", "destroy"]
    calls.clear()

    def fails(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(trainer, "_train", fails)
    with pytest.raises(RuntimeError, match="boom"):
        train(tiny(1), tmp_path / "b")
    assert calls == ["destroy"]


# ----------------------------------------------------------------------------------------------
# honest output
# ----------------------------------------------------------------------------------------------


def test_one_seed_limited_eval_and_missing_peer_are_reported(tmp_path, monkeypatch, capsys):
    from vqkit.training import ablate

    monkeypatch.setattr(ablate, "LADDER", tuple(r for r in ablate.LADDER if r.key in ("plain", "fsq", "peer")))
    monkeypatch.setattr(ablate, "_peer_available", lambda: False)
    titles = []
    real_plot = ablate.line_plot
    monkeypatch.setattr(ablate, "line_plot", lambda path, series, **kw: titles.append(kw["title"]) or
                        real_plot(path, series, **kw))
    base = tiny(4, "log.eval_every=2", "data.eval_limit=50")
    text = run_ablation(base, tmp_path / "ab", seeds=[0]).read_text()
    err = capsys.readouterr().err
    assert "±" not in text and "one seed (0), no spread" in text
    assert "the first 50 of the 360 test images (data.eval_limit = 50)" in text and "full test split" not in text
    assert "| vector-quantize-pytorch" in text and "not run: vector-quantize-pytorch is not installed" in text
    assert "not run: vector-quantize-pytorch is not installed" in err
    assert "[1/2] plain seed 0: training to 4 steps" in err and "[2/2] fsq seed 0" in err
    assert "writing ablation.md, ablation.json and the curves" in err
    assert titles and all("+-" not in t and "±" not in t and "one seed" in t for t in titles)
    data = json.loads((tmp_path / "ab/ablation.json").read_text())
    assert data["results"]["plain"]["mean_std"]["usage"][1] is None and "not_run" in data["results"]["peer"]
    with pytest.raises(ImportError, match="--rungs peer: needs vector-quantize-pytorch"):
        run_ablation(base, tmp_path / "ab2", seeds=[0], rungs=["peer"])
    # two seeds: mean ± std in the table and the plot titles
    titles.clear()
    text = run_ablation(tiny(4, "log.eval_every=2"), tmp_path / "ab3", seeds=[0, 1], rungs=["plain"],
                        progress=False).read_text()
    assert "mean ± std over 2 seeds" in text and "full test split (360 images)" in text and " ± " in text
    assert all("mean ± std over 2 seeds" in t for t in titles)


def test_ablation_resumes_an_interrupted_run(tmp_path, monkeypatch):
    base = tiny(10, "log.eval_every=5", "log.checkpoint_every=5")
    from vqkit.training import ablate

    real_train = ablate.train
    calls = []

    def sigterm_once(recipe, out, **kw):
        calls.append(kw.get("resume"))
        if len(calls) == 1:
            kw["on_step"] = lambda step: os.kill(os.getpid(), signal.SIGTERM) if step == 7 else None
        return real_train(recipe, out, **kw)

    monkeypatch.setattr(ablate, "train", sigterm_once)
    with pytest.raises(TrainingInterrupted, match=r"after step 7; .*run the same `vqkit ablate` command"):
        run_ablation(base, tmp_path / "ab", seeds=[0], rungs=["plain"], progress=False)
    run_ablation(base, tmp_path / "ab", seeds=[0], rungs=["plain"], progress=False)
    assert calls == [False, True]  # the second call continued from the step-7 checkpoint
    steps = [r["step"] for r in read_metrics(tmp_path / "ab/plain/seed0", "train")]
    assert steps == list(range(1, 11))


def test_report_explains_the_loss_terms_and_the_usage_curve():
    from vqkit.training.report import loss_terms, usage_curve_notes

    record = {"step": 5, "split": "train", "loss": 0.5, "mse": 0.3, "quantizer_loss": 0.02, "vq_mse": 0.02,
              "commitment_loss": 0.001, "codebook_loss": 0.019}
    text = "\n".join(loss_terms(record, 10.0, (0.05, 0.95)))
    assert "| task loss (mse) | 0.3 |" in text and "| 10 x quantizer_loss | 0.2 (quantizer_loss 0.02) |" in text
    assert "vq_mse" in text and "commitment_loss (= 0.05 x vq_mse) | 0.001" in text
    assert "codebook_loss (= 0.95 x vq_mse) | 0.019" in text
    old = "\n".join(loss_terms({"step": 1, "loss": 0.5, "ce": 0.4, "quantizer_loss": 0.01}, 1.0))
    assert "task loss (ce)" in old and "vq_mse" not in old  # quantizers without the VQ terms
    usage = [1.0, 0.4, 0.2, 0.11, 0.15, 0.2] + [0.3] * 14 + [0.8, 0.9, 0.95, 0.95, 0.96, 0.96]
    records = [{"step": i + 1, "usage": u} for i, u in enumerate(usage)]
    (note,) = usage_curve_notes(records, dead_code_steps=20)
    assert "starts at 100% (step 1)" in note and "drops to 11% by step 4" in note
    assert "`dead_code_steps` = 20" in note and "96% at step 25" in note and "not a collapse" in note
    (auto,) = usage_curve_notes(records, dead_code_steps=20, auto=True, calls_per_step=1)  # window 1 at step 4
    assert 'the `dead_code_steps="auto"` window, which ramps in (at most 1 + t // 10 after t calls: 1 at step 4, 20 ' \
        "at the end)" in auto and "(here 30% at step 9)" in auto
    (old,) = usage_curve_notes(records, dead_code_steps=20, auto=True)  # a run from before the ramp
    assert '`dead_code_steps="auto"` (here 20)' in old and "96% at step 25" in old
    late = [1.0] + [0.95] * 30 + [0.4] + [0.5, 0.6, 0.7, 0.8, 0.9] * 4  # a dip at step 32: the ramp's window is 4
    (ramped,) = usage_curve_notes([{"step": i + 1, "usage": u} for i, u in enumerate(late)], 50, True, 1)
    assert "drops to 40% by step 32" in ramped and "4 at step 32, 50 at the end" in ramped
    (levels,) = usage_curve_notes([{"step": i + 1, "usage": u} for i, u in enumerate(late)], 50, True, 3)
    assert "10 at step 32, 50 at the end" in levels  # a quantizer called 3 times a step ramps 3 times as fast
    assert "(here 90% at step 37)" in ramped  # read after the dip
    (flat,) = usage_curve_notes([{"step": i, "usage": 0.9} for i in range(1, 10)], dead_code_steps=5)
    assert "drops" not in flat


def test_load_trained_run_returns_the_final_model_or_names_a_missing_checkpoint(tmp_path, tiny_recipe) -> None:
    from vqkit.training import load_trained_run, to_toml, train

    recipe = tiny_recipe(6)
    train(recipe, tmp_path / "run")
    loaded_recipe, model, train_ds, test_ds = load_trained_run(tmp_path / "run")
    assert to_toml(loaded_recipe) == (tmp_path / "run" / "recipe.toml").read_text()
    assert not model.training and len(train_ds) > len(test_ds)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "recipe.toml").write_text(to_toml(recipe))
    with pytest.raises(FileNotFoundError, match="run_dir: .*empty holds no checkpoint"):
        load_trained_run(tmp_path / "empty")
