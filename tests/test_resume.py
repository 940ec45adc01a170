"""Never lose a run: signals, kills mid-run and mid-save, every corrupt-file case on --resume, and
nothing written before the checks pass."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from vqkit.cli import main
from vqkit.training import (
    CheckpointError,
    TrainingInterrupted,
    latest_checkpoint,
    read_checkpoint,
    read_metrics,
    train,
)
from vqkit.training import checkpoint as checkpoint_module
from vqkit.training.recipe import RecipeError, read_recipe_file

pytest.importorskip("sklearn")
pytestmark = pytest.mark.usefixtures("one_thread")

SRC = Path(__file__).resolve().parents[1] / "src"
TINY_SET = ["--set", "batch_size=32", "--set", "model.hidden=16", "--set", "model.latent_dim=8",
            "--set", "quantizer.codebook_size=32", "--set", "quantizer.dead_code_steps=3",
            "--set", "log.eval_every=5", "--set", "log.checkpoint_every=5", "--set", "log.progress=false",
            "--set", "log.report=false"]


def _tensors_equal(a: Path, b: Path) -> None:
    for name in ("model.safetensors", "optimizer.safetensors"):
        ta, tb = load_file(str(a / name)), load_file(str(b / name))
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), name


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its content (to show that nothing was written)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
                OMP_NUM_THREADS="1")


# ----------------------------------------------------------------------------------------------
# signals and kills
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_mid_run_saves_a_checkpoint_and_resume_is_bit_identical(tmp_path, tiny_recipe, sig):
    recipe = tiny_recipe(20)
    full = train(recipe, tmp_path / "full")

    def send(step: int) -> None:
        if step == 13:  # between the checkpoints at 10 and 15
            os.kill(os.getpid(), sig)

    with pytest.raises(TrainingInterrupted) as info:
        train(recipe, tmp_path / "cut", on_step=send)
    assert info.value.step == 13 and info.value.signum == sig
    assert "--resume" in str(info.value)
    assert latest_checkpoint(tmp_path / "cut").name == "step_00000013"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    resumed = train(recipe, tmp_path / "cut", resume=True)
    assert resumed.final == full.final
    _tensors_equal(tmp_path / "full/checkpoints/step_00000020", tmp_path / "cut/checkpoints/step_00000020")
    assert (tmp_path / "full/metrics.jsonl").read_bytes() == (tmp_path / "cut/metrics.jsonl").read_bytes()


def test_sigterm_during_a_save_finishes_the_save_then_stops(tmp_path, tiny_recipe, monkeypatch):
    real = checkpoint_module._save_tensors

    def save_and_signal(path, tensors):
        real(path, tensors)
        if path.name == "model.safetensors" and "step_00000010" in str(path.parent):
            os.kill(os.getpid(), signal.SIGTERM)  # arrives while the checkpoint is half written

    monkeypatch.setattr(checkpoint_module, "_save_tensors", save_and_signal)
    with pytest.raises(TrainingInterrupted) as info:
        train(tiny_recipe(20), tmp_path / "run")
    assert info.value.step == 10
    ckpt = tmp_path / "run/checkpoints/step_00000010"
    assert {p.name for p in ckpt.iterdir()} == {"model.safetensors", "optimizer.safetensors", "rng.safetensors",
                                               "state.json"}
    assert not [p for p in (tmp_path / "run/checkpoints").iterdir() if p.name.startswith(".")]


_KILL_MID_SAVE = textwrap.dedent("""
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    from vqkit.training import apply_overrides, load_recipe, train
    from vqkit.training import checkpoint
    real = checkpoint._save_tensors
    def kill_mid_save(path, tensors):
        real(path, tensors)
        if path.name == "model.safetensors" and "step_00000010" in str(path.parent):
            os.kill(os.getpid(), signal.SIGKILL)  # no handler can run: the save is cut in the middle
    checkpoint._save_tensors = kill_mid_save
    recipe = apply_overrides(load_recipe(), sys.argv[2:])
    train(recipe, sys.argv[1])
""")


def test_killed_mid_save_leaves_the_previous_checkpoint_and_resume_cleans_up(tmp_path, tiny_recipe, capsys):
    from conftest import TINY_OVERRIDES

    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", _KILL_MID_SAVE, str(run), "steps=20", *TINY_OVERRIDES],
                          env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    leftovers = [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".tmp-step_00000010")]
    assert leftovers and latest_checkpoint(run).name == "step_00000005"
    # the same thread count as the killed process: bit-identical results need it
    assert main(["train", "--out", str(run), "--resume", "--threads", "1", "--set", "log.progress=true"]) == 0
    err = capsys.readouterr().err
    assert f"removed {leftovers[0]}, left by an interrupted checkpoint write" in err
    assert "resuming from step_00000005 (step 5 of 20)" in err
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    full = train(tiny_recipe(20), tmp_path / "full")
    assert json.loads((run / "run.json").read_text())["final"] == full.final
    assert (tmp_path / "full/metrics.jsonl").read_bytes() == (run / "metrics.jsonl").read_bytes()


def _wait_for_records(path: Path, n: int, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and path.read_text().count("\n") >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"training ended before it could be interrupted: {proc.stderr.read()[-2000:]}")
        time.sleep(0.05)
    raise AssertionError("no training records appeared")


def test_cli_sigterm_exits_143_with_a_checkpoint_then_resumes(tmp_path, capsys):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "vqkit", "train", "--out", str(run), "--set", "steps=2000", *TINY_SET]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_records(run / "metrics.jsonl", 8, proc)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "stopped by SIGTERM after step" in err and f"vqkit train --out {run} --resume" in err
    assert "Traceback" not in err
    step = int(err.split("stopped by SIGTERM after step ")[1].split(";")[0])
    ckpt = latest_checkpoint(run)
    assert ckpt.name == f"step_{step:08d}"
    assert read_metrics(run, "train")[-1]["step"] >= step
    assert main(["train", "--out", str(run), "--resume", "--set", f"steps={step + 3}"]) == 0
    assert f"done: {step + 3} steps" in capsys.readouterr().out
    assert [r["step"] for r in read_metrics(run, "train")] == list(range(1, step + 4))


# ----------------------------------------------------------------------------------------------
# corrupt files on --resume
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A finished 10-step run with checkpoints at steps 5 and 10."""
    from conftest import TINY_OVERRIDES
    from vqkit.training import apply_overrides, load_recipe

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("pristine") / "run"
    train(apply_overrides(load_recipe(), ["steps=10", *TINY_OVERRIDES, "log.eval_every=5"]), run)
    torch.set_num_threads(threads)
    return run


@pytest.fixture
def run_copy(pristine, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(pristine, run)
    return run


def _resume(run: Path, capsys, *extra: str) -> tuple[int, str]:
    code = main(["train", "--out", str(run), "--resume", "--set", "steps=15", "--threads", "1", *extra])
    return code, capsys.readouterr().err


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _rewrite_model(path: Path, change) -> None:
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path))


def _nan_first(tensors):
    key = next(k for k, v in tensors.items() if v.is_floating_point() and v.numel() > 1)
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] = float("nan")


def _drop_first(tensors):
    del tensors[next(iter(sorted(tensors)))]


def _reshape_first(tensors):
    key = next(k for k, v in tensors.items() if v.ndim == 2)
    tensors[key] = torch.zeros(tensors[key].shape[0] + 1, tensors[key].shape[1])


def _state(run: Path, change) -> None:
    path = run / "checkpoints/step_00000010/state.json"
    state = json.loads(path.read_text())
    change(state)
    path.write_text(json.dumps(state))


CORRUPTIONS = {
    "truncated safetensors": (lambda run: _truncate(run / "checkpoints/step_00000010/model.safetensors"),
                              "model.safetensors: not a readable safetensors file, truncated or corrupt"),
    "truncated optimizer": (lambda run: _truncate(run / "checkpoints/step_00000010/optimizer.safetensors"),
                            "optimizer.safetensors: not a readable safetensors file"),
    "bad json": (lambda run: (run / "checkpoints/step_00000010/state.json").write_text('{"format": 1, "st'),
                 "state.json: not valid JSON"),
    "missing key": (lambda run: _rewrite_model(run / "checkpoints/step_00000010/model.safetensors", _drop_first),
                    "model.safetensors: does not match the model (missing"),
    "shape mismatch": (lambda run: _rewrite_model(run / "checkpoints/step_00000010/model.safetensors",
                                                  _reshape_first), "model.safetensors: shape mismatch"),
    "nan weights": (lambda run: _rewrite_model(run / "checkpoints/step_00000010/model.safetensors", _nan_first),
                    "model.safetensors: non-finite values (NaN or inf)"),
    "step -5": (lambda run: _state(run, lambda s: s.update(step=-5)), "state.json: step -5 is not a positive int"),
    "step 1e9": (lambda run: _state(run, lambda s: s.update(step=1_000_000_000)),
                 "state.json: step 1000000000 does not match its directory step_00000010"),
    "step 1e9 float": (lambda run: _state(run, lambda s: s.update(step=1e9)),
                       "state.json: step 1000000000.0 is not a positive int"),
    "missing rng": (lambda run: (run / "checkpoints/step_00000010/rng.safetensors").unlink(), "rng.safetensors: missing"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corrupt_newest_checkpoint_falls_back_to_the_older_one(run_copy, capsys, case):
    corrupt, message = CORRUPTIONS[case]
    corrupt(run_copy)
    code, err = _resume(run_copy, capsys)
    assert code == 0, err
    assert message in err and "step_00000010" in err
    assert "resuming from the older intact checkpoint step_00000005 instead" in err
    assert "Traceback" not in err
    assert (run_copy / "checkpoints/.corrupt-step_00000010").is_dir()
    records = read_metrics(run_copy, "train")
    assert [r["step"] for r in records] == list(range(1, 16))
    assert latest_checkpoint(run_copy).name == "step_00000015"


def test_no_intact_checkpoint_is_a_clear_error_and_writes_nothing(run_copy, capsys):
    _truncate(run_copy / "checkpoints/step_00000010/model.safetensors")
    _rewrite_model(run_copy / "checkpoints/step_00000005/model.safetensors", _nan_first)
    before = _snapshot(run_copy)
    code, err = _resume(run_copy, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vqkit train: error: --resume: no intact checkpoint")
    assert "step_00000010/model.safetensors: not a readable" in err and "step_00000005/model.safetensors: non-finite" in err
    assert "to restart the run from step 0" in err
    assert _snapshot(run_copy) == before


def test_steps_below_the_checkpoint_are_refused_and_nothing_is_written(run_copy, capsys):
    before = _snapshot(run_copy)
    code = main(["train", "--out", str(run_copy), "--resume", "--set", "steps=8"])
    err = capsys.readouterr().err
    assert code == 2
    assert "steps: 8 is below the 10 steps this run already trained" in err and "--set steps=N with N >= 10" in err
    assert _snapshot(run_copy) == before


def test_resume_of_a_finished_run_changes_nothing(run_copy, capsys):
    before = _snapshot(run_copy)
    assert main(["train", "--out", str(run_copy), "--resume"]) == 0
    captured = capsys.readouterr()
    assert "already finished its 10 steps" in captured.err and "already finished: 10 steps" in captured.out
    assert _snapshot(run_copy) == before


def test_torn_last_metrics_line_is_dropped_with_a_note(run_copy, capsys):
    with open(run_copy / "metrics.jsonl", "a") as f:
        f.write('{"step": 11, "split": "tra')
    code, err = _resume(run_copy, capsys)
    assert code == 0, err
    assert "metrics.jsonl: dropped a torn last line" in err
    assert [r["step"] for r in read_metrics(run_copy, "train")] == list(range(1, 16))


def test_bad_metrics_line_is_an_error_naming_the_line_and_writes_nothing(run_copy, capsys):
    lines = (run_copy / "metrics.jsonl").read_text().splitlines()
    lines[2] = lines[2][:10]
    (run_copy / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    before = _snapshot(run_copy)
    code, err = _resume(run_copy, capsys)
    assert code == 2
    assert "metrics.jsonl: line 3: not valid JSON" in err and "delete or repair that line" in err
    assert _snapshot(run_copy) == before


def test_empty_recipe_uses_the_checkpoint_copy_and_says_so(run_copy, capsys):
    (run_copy / "recipe.toml").write_text("")
    code, err = _resume(run_copy, capsys)
    assert code == 0, err
    assert "recipe.toml: empty recipe file; using the recipe stored with checkpoint step_00000010" in err
    assert read_recipe_file(run_copy / "recipe.toml", complete=True).steps == 15
    assert read_recipe_file(run_copy / "recipe.toml").model.args["hidden"] == 16  # not the built-in default


def test_empty_recipe_without_checkpoints_is_an_error(run_copy, capsys):
    (run_copy / "recipe.toml").write_text("")
    shutil.rmtree(run_copy / "checkpoints")
    before = _snapshot(run_copy)
    code, err = _resume(run_copy, capsys)
    assert code == 2
    assert "recipe.toml: empty recipe file; no checkpoint holds a copy of the recipe either" in err
    assert _snapshot(run_copy) == before
    with pytest.raises(RecipeError, match="incomplete recipe \\(missing name, seed"):
        (run_copy / "partial.toml").write_text("steps = 3\n")
        read_recipe_file(run_copy / "partial.toml", complete=True)


def test_run_without_checkpoint_restarts_cleanly(tmp_path, tiny_recipe, capsys):
    recipe = tiny_recipe(6, "log.checkpoint_every=0", "log.checkpoint_minutes=0")

    def crash(step: int) -> None:
        if step == 4:
            raise KeyError("a crash before any checkpoint")

    with pytest.raises(KeyError):
        train(recipe, tmp_path / "run", on_step=crash)
    assert not latest_checkpoint(tmp_path / "run")
    with pytest.raises(FileExistsError, match="pass --resume to continue it \\(a run without checkpoints restarts"):
        train(recipe, tmp_path / "run")
    assert main(["train", "--out", str(tmp_path / "run"), "--resume", "--threads", "1", "--set",
                 "log.progress=true"]) == 0
    assert "no checkpoint in" in capsys.readouterr().err
    fresh = train(recipe, tmp_path / "fresh")
    assert (tmp_path / "fresh/metrics.jsonl").read_bytes() == (tmp_path / "run/metrics.jsonl").read_bytes()
    assert json.loads((tmp_path / "run/run.json").read_text())["final"] == fresh.final


def test_changed_recipe_on_resume_is_reported(run_copy, capsys):
    code, err = _resume(run_copy, capsys, "--set", "optim.lr=0.0005", "--set", "log.progress=true")
    assert code == 0, err
    assert "differs from the one checkpoint step_00000010 was trained with: steps 10 -> 15, optim.lr 0.001 -> 0.0005" in err


def test_architecture_change_on_resume_is_a_named_error(run_copy, capsys):
    before = _snapshot(run_copy)
    code, err = _resume(run_copy, capsys, "--set", "quantizer.codebook_size=64")
    assert code == 2
    assert "no intact checkpoint" in err and "shape mismatch" in err and "model.safetensors" in err
    assert _snapshot(run_copy) == before


@pytest.mark.skipif(__import__("importlib").util.find_spec("tensorboard") is not None, reason="tensorboard installed")
def test_missing_tensorboard_fails_before_writing(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--set", "steps=2", "--set", "log.tensorboard=true"]) == 2
    assert "needs the tensorboard package: pip install tensorboard" in capsys.readouterr().err
    assert not out.exists()


def test_read_checkpoint_checks_without_changing_the_model(pristine):
    from vqkit.training import apply_overrides, build_from_recipe, load_datasets, load_recipe

    recipe = load_recipe(pristine / "recipe.toml")
    train_ds, _ = load_datasets(recipe)
    model = build_from_recipe(recipe, train_ds)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ckpt = read_checkpoint(pristine / "checkpoints/step_00000010", model)
    assert ckpt.step == 10 and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    other = build_from_recipe(apply_overrides(recipe, ["model.hidden=8"]), train_ds)
    with pytest.raises(CheckpointError, match="model.safetensors: shape mismatch"):
        read_checkpoint(pristine / "checkpoints/step_00000010", other)


def test_other_thread_count_on_resume_is_reported(run_copy, capsys):
    code, err = _resume(run_copy, capsys, "--threads", "2")
    assert code == 0, err
    assert "step_00000010 was trained with 1 intra-op thread(s), this session uses 2" in err
    assert "--threads 1 to match it" in err


def _set_release(run: Path, release) -> None:
    """Rewrite the release recorded by the run's newest checkpoint (None: none recorded)."""
    path = latest_checkpoint(run) / "state.json"
    state = json.loads(path.read_text())
    state.pop("vqkit") if release is None else state.update(vqkit=release)
    path.write_text(json.dumps(state))


@pytest.mark.parametrize("release", [None, "0.1.0"])
def test_resume_across_a_default_change_asks_to_pin_the_argument(run_copy, capsys, release):
    """The recipe leaves alternating_lr unset and its default changed (1.0 -> 0.1 in 0.2.0) after the release
    that wrote the checkpoint: the resume stops and names both ways to pin it; nothing is written."""
    from vqkit import __version__

    assert json.loads((run_copy / "checkpoints/step_00000010/state.json").read_text())["vqkit"] == __version__
    _set_release(run_copy, release)
    (run_copy / "run.json").unlink()  # interrupted after its last checkpoint: nothing else records the release
    before = _snapshot(run_copy)
    code, err = _resume(run_copy, capsys)
    assert code == 2, err
    assert "checkpoint step_00000010 was written by " + ("a vqkit release that did not record itself" if release is None
                                                           else "vqkit 0.1.0") in err
    assert "alternating_lr: 1.0 before vqkit 0.2.0, 0.1 since, and this run takes it from the library (quantizer)" in err
    assert "--set quantizer.alternating_lr=1.0 continues as the run started before 0.2.0" in err
    assert ("--set quantizer.alternating_lr=0.1 if it started with 0.2.0 or later" in err) == (release is None)
    assert "dead_code_steps" not in err  # the recipe gives a fixed window
    assert _snapshot(run_copy) == before
    code, err = _resume(run_copy, capsys, "--set", "quantizer.alternating_lr=1.0", "--set", "log.progress=true")
    assert code == 0, err
    assert "alternating_lr (unset) -> 1.0" in err
    assert json.loads((run_copy / "checkpoints/step_00000015/state.json").read_text())["vqkit"] == __version__
    assert "alternating_lr = 1.0" in (run_copy / "recipe.toml").read_text()  # the next resume keeps it pinned


def test_stale_defaults_name_only_the_arguments_left_to_a_changed_default():
    from torch import nn

    from vqkit import VectorQuantizer
    from vqkit.training.resume import stale_defaults

    model = nn.ModuleDict({"a": VectorQuantizer(4, 8), "b": VectorQuantizer(4, 8, alternating_lr=0.1),
                           "c": VectorQuantizer(4, 8, alternating_steps=0, dead_code_steps=2),
                           "d": VectorQuantizer(4, 8, alternating_lr=0.1, dead_code_steps="auto")})
    assert model["a"].defaulted == {"alternating_lr", "dead_code_steps"} and not model["c"].defaulted
    assert model["b"].defaulted == model["d"].defaulted == {"dead_code_steps"}  # "auto" given: its rule changed too
    both = ["a:alternating_lr", "a:dead_code_steps", "b:dead_code_steps", "d:dead_code_steps"]
    for release, stale in ((None, both), ("garbage", both), ("0.1.9", both), ("0.2.0", both[1:]), ("0.3.0", []),
                           ("0.4.0", []), ("0.10.0", [])):
        assert [f"{name}:{c.argument}" for name, c in stale_defaults(model, release)] == stale, release


def test_a_checkpoint_without_its_release_takes_it_from_the_run_summary_of_the_same_session(run_copy, capsys):
    """Checkpoints of 0.2.0 did not record the release; the run.json written with the last one did."""
    _set_release(run_copy, None)
    code, err = _resume(run_copy, capsys)
    assert code == 0, err
    summary = json.loads((run_copy / "run.json").read_text())
    summary["vqkit"] = "0.1.0"
    summary["steps"] = 15
    (run_copy / "run.json").write_text(json.dumps(summary))
    _set_release(run_copy, None)  # now step_00000015, written by the resumed session
    code, err = _resume(run_copy, capsys, "--set", "steps=20")
    assert code == 2 and "written by vqkit 0.1.0" in err, err


def test_resume_across_the_auto_window_change_pins_the_checkpoint_window(tmp_path, tiny_recipe, capsys):
    """dead_code_steps="auto" changed its rule in 0.3.0 (ceil(2K/n) -> round(8K/n)): resuming a 0.2.0 run asks to
    pin the window its checkpoint holds, whether "auto" was given or defaulted."""
    run = tmp_path / "run"
    train(tiny_recipe(4, 'quantizer.dead_code_steps="auto"', "quantizer.alternating_lr=0.1", "quantizer.codebook_size=256",
                      "log.checkpoint_every=2"), run)
    (run / "run.json").unlink()
    _set_release(run, "0.2.0")
    window = int(load_file(str(latest_checkpoint(run) / "model.safetensors"))["quantizer.dead_code_window"])
    code, err = _resume(run, capsys)
    assert code == 2, err
    assert 'dead_code_steps: "auto" = ceil(2 K / n) calls before vqkit 0.3.0, "auto" = round(8 K / n) calls since' in err
    assert f"pin it: --set quantizer.dead_code_steps={window} continues as the run started before 0.3.0" in err
    assert "alternating_lr" not in err  # pinned in the recipe
    code, err = _resume(run, capsys, "--set", f"quantizer.dead_code_steps={window}")
    assert code == 0, err


def test_a_checkpoint_from_before_the_ramp_resumes_past_it(tmp_path, tiny_recipe, capsys):
    """Checkpoints of 0.3.0 have no training_calls buffer: they load (resume, report, load_model_weights) as past
    the ramp, so "auto" continues with the window the run had, no pin needed; a 0.4.0 checkpoint continues its
    ramp from its call count."""
    from safetensors.torch import save_file

    from vqkit.quantizers.vector import RAMP_DONE
    from vqkit.training import build_from_recipe, load_datasets, load_model_weights

    run = tmp_path / "run"
    recipe = tiny_recipe(4, 'quantizer.dead_code_steps="auto"', "quantizer.codebook_size=256", "log.checkpoint_every=2")
    train(recipe, run)
    (run / "run.json").unlink()
    path = latest_checkpoint(run) / "model.safetensors"
    tensors = load_file(str(path))
    assert int(tensors["quantizer.training_calls"]) == 4
    code, err = _resume(run, capsys, "--set", "steps=6")  # 0.4.0 -> 0.4.0: the ramp goes on
    assert code == 0, err
    assert int(load_file(str(latest_checkpoint(run) / "model.safetensors"))["quantizer.training_calls"]) == 6

    old = run / "old"
    shutil.copytree(run, old, ignore=shutil.ignore_patterns("*.lock"))
    path = latest_checkpoint(old) / "model.safetensors"
    tensors = load_file(str(path))
    window = int(tensors["quantizer.dead_code_window"])
    save_file({k: v for k, v in tensors.items() if k != "quantizer.training_calls"}, str(path))  # as 0.3.0 wrote
    _set_release(old, "0.3.0")
    model = build_from_recipe(recipe, load_datasets(recipe)[0])
    load_model_weights(latest_checkpoint(old), model)
    assert int(model.quantizer.training_calls) == RAMP_DONE and int(model.quantizer.dead_code_window) == window
    code, err = _resume(old, capsys, "--set", "steps=8")
    assert code == 0, err
    assert not [p for p in old.rglob("*") if "corrupt" in p.name] and "no intact checkpoint" not in err
    after = load_file(str(latest_checkpoint(old) / "model.safetensors"))
    assert int(after["quantizer.training_calls"]) == RAMP_DONE + 2


def test_resuming_a_checkpoint_with_the_linear_affine_scale_converts_it_and_says_so(run_copy, capsys):
    """Checkpoints before 0.6.0 store the affine scale as ``1 + a s``: resume loads the same codes in the positive
    form and warns that the run continues with it; a current checkpoint resumes without the warning."""
    from vqkit.training import build_from_recipe, load_datasets, load_model_weights, resume_recipe

    recipe = resume_recipe(run_copy)
    model = build_from_recipe(recipe, load_datasets(recipe)[0])
    codes = model.quantizer.codes
    tensors = load_file(str(latest_checkpoint(run_copy) / "model.safetensors"))
    scale, shift, weight = (tensors[f"quantizer.codes.{n}"].double() for n in ("scale", "shift", "weight"))
    a = codes.affine_lr
    _set_release(run_copy, "0.5.0")
    load_model_weights(latest_checkpoint(run_copy), model)
    torch.testing.assert_close(model.quantizer.codebook.double(), (1 + a * scale) * weight + a * shift,
                               atol=1e-5, rtol=1e-5)
    code, err = _resume(run_copy, capsys)
    assert code == 0, err
    assert "was written by vqkit 0.5.0 with the affine codebook's linear scale 1 + a s (quantizer.codes)" in err
    code, err = _resume(run_copy, capsys, "--set", "steps=20")  # step 15 was written by this release
    assert code == 0 and "linear scale" not in err, err
