"""The generative stage as toolkit commands: encode / decode / prior / sample / report / genablate, prior
recipes, interrupt + resume of a prior run, multi-axis (grouped residual) token layouts."""

from __future__ import annotations

import json
import os
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
from vqkit.data import load_dataset
from vqkit.generative import TokenLayout, TokenSpec, encode_dataset, index_layout, load_tokens, save_tokens
from vqkit.generative.pipeline import load_tokenizer, run_prior
from vqkit.generative.recipe import (
    apply_prior_overrides,
    get_prior_preset,
    load_prior_recipe,
    prior_recipe_to_toml,
    read_prior_recipe_file,
)
from vqkit.models import build_model
from vqkit.training import RecipeError, TrainingInterrupted

pytest.importorskip("sklearn")  # the bundled digits
pytestmark = pytest.mark.usefixtures("one_thread")

SRC = Path(__file__).resolve().parents[1] / "src"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TOKENIZER = ["--set", "steps=30", "--set", "batch_size=32", "--set", "model.hidden=16", "--set", "model.latent_dim=8",
             "--set", "quantizer.codebook_size=32", "--set", "log.eval_every=30", "--set", "log.progress=false",
             "--set", "log.report=false", "--threads", "1"]
PRIOR = ["steps=12", "batch_size=32", "prior.dim=32", "prior.depth=1", "log.checkpoint_every=5", "log.every=1",
         "log.eval_every=5", "log.eval_limit=64", "log.progress=false", "metrics.feature_steps=30",
         "metrics.reference_limit=120", "metrics.grid_per_class=2", "sample.steps=4"]


def _sets(items: list[str]) -> list[str]:
    return [a for item in items for a in ("--set", item)]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
                OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def tokenizer_run(tmp_path_factory) -> Path:
    """A tiny digits VQ-VAE trained with `vqkit train` (4x4 tokens, K = 32)."""
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("gen") / "tok"
    assert main(["train", "--out", str(run), *TOKENIZER]) == 0
    return run


def _tensors_equal(a: Path, b: Path) -> None:
    for name in ("model.safetensors", "optimizer.safetensors"):
        ta, tb = load_file(str(a / name)), load_file(str(b / name))
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), name


# ----------------------------------------------------------------------------------------------
# the commands
# ----------------------------------------------------------------------------------------------


def test_encode_decode_prior_sample_report(tmp_path, tokenizer_run, capsys):
    out = tmp_path / "t.safetensors"
    assert main(["encode", str(tokenizer_run), "--split", "test", "--out", str(out), "--threads", "1"]) == 0
    shown = capsys.readouterr().out
    assert "360 token maps of digits/test, grid 4x4" in shown
    tokenizer = load_tokenizer(tokenizer_run)
    tokens = load_tokens(out, tokenizer_hash=tokenizer.fingerprint)
    assert tokens.indices.shape == (360, 4, 4) and torch.equal(tokens.labels, load_dataset("digits", "test").labels)
    assert main(["decode", str(out), "--tokenizer", str(tokenizer_run), "--out", str(tmp_path / "d.png"),
                 "--num", "9"]) == 0
    assert (tmp_path / "d.png").read_bytes()[:8] == PNG_MAGIC

    prior = tmp_path / "prior"
    assert main(["prior", "--tokenizer", str(tokenizer_run), "--out", str(prior), *_sets(PRIOR), "--threads", "1"]) == 0
    shown = capsys.readouterr().out
    assert "done: 12 steps" in shown and "generation FD" in shown and "not Inception FID" in shown
    summary = json.loads((prior / "run.json").read_text())
    q = summary["quality"]
    assert q["reference"] == {"split": "digits/test", "images": 120, "k": 3}
    assert q["generation"]["n_fake"] == 120 and 0 <= q["generation"]["accuracy"] <= 1 and q["generation"]["fd"] > 0
    assert q["reconstruction"]["fd"] >= 0 and q["conditional"] is True
    assert (tokenizer_run / "tokens/train.safetensors").is_file()  # encoded on demand, cached in the tokenizer run
    assert (tokenizer_run / "features/feature_net.safetensors").is_file()
    assert (prior / "samples.png").read_bytes()[:8] == PNG_MAGIC
    report = (prior / "report.md").read_text()
    assert "generation" not in report or "never with published (Inception) FID" in report
    assert "| tokenizer reconstructions" in report and "| prior samples" in report
    assert read_prior_recipe_file(prior / "recipe.toml", complete=True).tokenizer == str(tokenizer_run)

    assert main(["sample", str(prior), "--out", str(tmp_path / "s.png"), "--per-class", "2", "--steps", "2",
                 "--temperature", "0.5", "--threads", "1"]) == 0
    assert "wrote" in capsys.readouterr().out and (tmp_path / "s.png").read_bytes()[:8] == PNG_MAGIC
    assert main(["sample", str(prior), "--out", str(tmp_path / "s.png"), "--top-k", "3"]) == 2
    assert "--top-k: not an option of maskgit sampling" in capsys.readouterr().err
    (prior / "report.md").unlink()
    assert main(["report", str(prior), "--threads", "1"]) == 0 and (prior / "report.md").is_file()
    # a second run in the same directory is refused; a resume of a finished run changes nothing
    assert main(["prior", "--tokenizer", str(tokenizer_run), "--out", str(prior), *_sets(PRIOR)]) == 2
    assert "already holds a run; pass --resume" in capsys.readouterr().err
    before = (prior / "run.json").read_bytes()
    assert main(["prior", "--out", str(prior), "--resume", "--threads", "1"]) == 0
    assert "already finished: 12 steps" in capsys.readouterr().out and (prior / "run.json").read_bytes() == before


@pytest.mark.parametrize("argv,message", [
    (["prior", "--resume"], "--resume: give the run directory"),
    (["prior", "--out", "x", "--resume", "--recipe", "maskgit"], "drop --recipe"),
    (["prior", "--out", "x"], "--tokenizer: give the run directory of the tokenizer"),
    (["prior", "--tokenizer", "nowhere", "--out", "x"], "--tokenizer: nowhere does not exist"),
    (["prior", "--tokenizer", "nowhere", "--set", "prior.width=3"], "prior.width: unknown key for prior kind 'maskgit'"),
    (["prior", "--tokenizer", "nowhere", "--set", "prior.heads=3"], "prior.heads: expected a divisor of dim=128, got 3"),
    (["prior", "--recipe", "gan"], "unknown built-in prior recipe 'gan'; built-in prior recipes: maskgit, autoregressive"),
    (["sample", "nowhere", "--out", "x.png"], "not a prior run directory"),
    (["genablate", "--rows", "nope"], "--rows: unknown row(s) nope"),
])
def test_command_errors_are_one_line(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_decode_refuses_tokens_of_another_tokenizer(tmp_path, tokenizer_run, capsys):
    model = build_model("vqvae", (1, 8, 8), 10, {"kind": "vq", "codebook_size": 32}, hidden=16, latent_dim=8)
    other = encode_dataset(model, load_dataset("digits", "test"), tokenizer_hash="0" * 64, limit=10)
    path = save_tokens(other, tmp_path / "other.safetensors")
    assert main(["decode", str(path), "--tokenizer", str(tokenizer_run), "--out", str(tmp_path / "d.png")]) == 2
    assert "re-encode the split with this tokenizer" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# interrupt and resume
# ----------------------------------------------------------------------------------------------


def test_prior_sigterm_mid_run_then_resume_ends_identical(tmp_path, tokenizer_run, capsys):
    recipe = apply_prior_overrides(get_prior_preset("maskgit"), [f"tokenizer={tokenizer_run}", *PRIOR])
    full = run_prior(recipe, tmp_path / "full")

    def send(step: int) -> None:
        if step == 8:  # between the checkpoints at 5 and 10
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingInterrupted) as info:
        run_prior(recipe, tmp_path / "cut", on_step=send)
    assert info.value.step == 8 and f"vqkit prior --out {tmp_path / 'cut'} --resume" in str(info.value)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    cut = tmp_path / "cut"
    assert sorted(p.name for p in (cut / "checkpoints").iterdir() if p.name.startswith("step_")) == \
        ["step_00000005", "step_00000008"]
    assert not (cut / "run.json").exists() and not (cut / "samples.png").exists()
    assert main(["prior", "--out", str(cut), "--resume", "--threads", "1"]) == 0
    assert "done: 12 steps" in capsys.readouterr().out
    _tensors_equal(tmp_path / "full/checkpoints/step_00000012", cut / "checkpoints/step_00000012")
    assert (tmp_path / "full/metrics.jsonl").read_bytes() == (cut / "metrics.jsonl").read_bytes()
    resumed = json.loads((cut / "run.json").read_text())
    assert resumed["final"] == full.training.final and resumed["resumed_from_step"] == 8
    q_full, q_cut = full.quality, resumed["quality"]
    for key in ("generation", "reconstruction"):
        assert q_cut[key] == q_full[key]
    assert (tmp_path / "full/samples.png").read_bytes() == (cut / "samples.png").read_bytes()


def test_prior_resume_skips_a_corrupt_checkpoint_and_measures_an_unmeasured_run(tmp_path, tokenizer_run, capsys):
    recipe = apply_prior_overrides(get_prior_preset("maskgit"), [f"tokenizer={tokenizer_run}", *PRIOR,
                                                                 "metrics.enabled=false", "log.report=false"])
    run_prior(recipe, tmp_path / "run")
    assert "quality" not in json.loads((tmp_path / "run/run.json").read_text())
    # the newest checkpoint is damaged: the resume falls back to the older one and names the bad file
    newest = tmp_path / "run/checkpoints/step_00000012/model.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])
    (tmp_path / "run/run.json").unlink()
    assert main(["prior", "--out", str(tmp_path / "run"), "--resume", "--set", "metrics.enabled=true",
                 "--threads", "1"]) == 0
    captured = capsys.readouterr()
    assert "model.safetensors: not a readable safetensors file" in captured.err and "step_00000010" in captured.err
    assert (tmp_path / "run/checkpoints/.corrupt-step_00000012").is_dir()
    assert "generation FD" in captured.out and "quality" in json.loads((tmp_path / "run/run.json").read_text())


def _wait_for_records(path: Path, n: int, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and path.read_text().count("\n") >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"the prior ended before it could be interrupted: {proc.stderr.read()[-2000:]}")
        time.sleep(0.05)
    raise AssertionError("no training records appeared")


def test_cli_sigterm_exits_143_with_a_checkpoint(tmp_path, tokenizer_run):
    run = tmp_path / "prior"
    cmd = [sys.executable, "-m", "vqkit", "prior", "--tokenizer", str(tokenizer_run), "--out", str(run),
           *_sets(PRIOR), "--set", "steps=100000", "--threads", "1"]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_records(run / "metrics.jsonl", 3, proc)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "stopped by SIGTERM after step" in err and f"vqkit prior --out {run} --resume" in err
    assert "Traceback" not in err
    step = int(err.split("stopped by SIGTERM after step ")[1].split(";")[0])
    assert (run / f"checkpoints/step_{step:08d}").is_dir()


# ----------------------------------------------------------------------------------------------
# the comparison
# ----------------------------------------------------------------------------------------------


def test_genablate_tiny_two_rows_then_reuses_finished_runs(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["genablate", "--seeds", "0", "--rows", "plain_replacement", "fsq", "--out", str(out), "--threads", "1",
            "--set", "steps=20", "--set", "batch_size=32", "--set", "model.hidden=16", "--set", "model.latent_dim=8",
            "--set", "quantizer.codebook_size=32", "--set", "log.eval_every=20", "--set", "log.progress=false",
            "--prior-set", "steps=6", "--prior-set", "prior.dim=32", "--prior-set", "prior.depth=1",
            "--prior-set", "log.progress=false", "--prior-set", "metrics.feature_steps=20",
            "--prior-set", "metrics.reference_limit=100", "--prior-set", "sample.steps=2"]
    assert main(argv) == 0
    table = (out / "generative.md").read_text()
    data = json.loads((out / "generative.json").read_text())
    assert data["rows"] == ["plain_replacement", "fsq"] and len(data["feature_net_sha256"]) == 1
    for row in ("plain_replacement", "fsq"):
        run = data["results"][row]["runs"][0]
        assert {"usage", "perplexity", "mse", "recon_fd", "gen_fd", "gen_precision", "gen_recall",
                "gen_accuracy"} <= set(run)
        assert (out / row / "seed0/prior/samples.png").is_file()
    assert data["results"]["plain_replacement"]["quantizer"]["dead_code_steps"] == 20
    assert data["results"]["plain_replacement"]["quantizer"]["kmeans_init"] is False
    assert "| plain STE + replacement |" in table and "| FSQ |" in table and "generation FD" in table
    assert "never with published (Inception) FID" in table
    capsys.readouterr()
    assert main(argv) == 0  # everything is reused
    err = capsys.readouterr().err
    assert err.count("reusing the finished tokenizer") == 2 and err.count("reusing the finished prior") == 2
    assert json.loads((out / "generative.json").read_text())["results"] == data["results"]


# ----------------------------------------------------------------------------------------------
# recipes, layouts, help
# ----------------------------------------------------------------------------------------------


def test_prior_recipes_round_trip_and_typed_overrides(tmp_path, capsys):
    assert main(["recipes"]) == 0
    assert "maskgit" in capsys.readouterr().out.split()
    assert main(["recipes", "autoregressive"]) == 0
    path = tmp_path / "ar.toml"
    path.write_text(capsys.readouterr().out)
    assert load_prior_recipe(path) == get_prior_preset("autoregressive")
    r = apply_prior_overrides(get_prior_preset("maskgit"), ["steps=7", "prior.dim=64", "sample.temperature=0.5",
                                                            "optim.betas=[0.9, 0.99]", "conditional=false"])
    assert (r.steps, r.prior.args["dim"], r.sample.temperature, r.optim.betas, r.conditional) == \
        (7, 64, 0.5, [0.9, 0.99], False)
    config = r.prior_config()
    assert config.model["dim"] == 64 and config.betas == (0.9, 0.99) and not config.conditional
    assert read_prior_recipe_file(_write(tmp_path / "r.toml", prior_recipe_to_toml(r))) == r
    r = apply_prior_overrides(r, ['prior={kind="autoregressive", dim=32, heads=2}'])
    assert r.prior.kind == "autoregressive" and r.prior.args == {"dim": 32, "heads": 2}
    assert set(r.sampling_options()) == {"temperature", "top_k"}
    for bad, message in (("steps=abc", "steps: expected int"), ("sample.temperature=-1", "sample.temperature"),
                         ("optim.nesterov=1", "optim.nesterov: unknown prior-recipe key"),
                         ("prior.class_dropout=0.1", "prior.class_dropout: unknown key for prior kind 'autoregressive'")):
        with pytest.raises(RecipeError, match=message):
            apply_prior_overrides(r, [bad])
    with pytest.raises(RecipeError, match="incomplete prior recipe"):
        read_prior_recipe_file(_write(tmp_path / "part.toml", 'name = "x"\n'), complete=True)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_grouped_residual_tokens_flatten_to_group_major_columns_and_back(tmp_path):
    model = build_model("vqvae", (1, 8, 8), 10, {"kind": "grouped_residual_vq", "codebook_size": 8, "groups": 2,
                                                 "num_levels": 3}, hidden=16, latent_dim=8, downsample=1).eval()
    layout = index_layout(model.quantizer)
    assert layout == TokenLayout((8,) * 6, (2, 3)) and layout.columns == 6
    tokens = encode_dataset(model, load_dataset("digits", "test"), tokenizer_hash="h", limit=20)
    assert tokens.indices.shape == (20, 4, 4, 2, 3)
    seqs = tokens.sequences()
    assert seqs.shape == (20, 16, 6)
    # column g * L + l holds group g, level l of the position (row-major over the trailing axes)
    assert torch.equal(seqs[:, 5, 1 * 3 + 2], tokens.indices[:, 1, 1, 1, 2])
    assert torch.equal(tokens.spec.to_maps(seqs), tokens.indices)
    loaded = load_tokens(save_tokens(tokens, tmp_path / "g.safetensors"))
    assert loaded.spec == tokens.spec and torch.equal(loaded.indices, tokens.indices)
    from vqkit.generative import build_prior, decode_tokens, sample_tokens

    prior = build_prior("maskgit", vocab_sizes=list(layout.vocab_sizes), length=16, num_classes=10, dim=16, depth=1,
                        heads=2)
    maps = sample_tokens(prior, tokens.spec, labels=torch.arange(3), steps=2, generator=torch.Generator().manual_seed(0))
    assert maps.shape == (3, 4, 4, 2, 3) and decode_tokens(model, maps).shape == (3, 1, 8, 8)
    with pytest.raises(ValueError, match=r"trailing axes \(2, 3\)"):
        layout.to_columns(torch.zeros(2, 4, 4, 3, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="do not fill the trailing index axes"):
        TokenLayout((8,) * 5, (2, 3))


def test_version_1_token_files_are_still_read(tmp_path):
    spec = TokenSpec((2, 2), TokenLayout((4, 4), True), 3, "h", "x/test")
    v1 = {"format": "vqkit-tokens", "version": "1",
          "spec": json.dumps({**spec.to_dict(), "trailing": True})}
    indices = torch.zeros(5, 2, 2, 2, dtype=torch.int64)
    save_file({"indices": indices, "labels": torch.zeros(5, dtype=torch.int64)}, str(tmp_path / "v1.safetensors"),
              metadata=v1)
    loaded = load_tokens(tmp_path / "v1.safetensors")
    assert loaded.spec.layout.trailing == (2,) and loaded.spec == spec


def test_help_of_the_new_commands_does_not_load_torch():
    code = textwrap.dedent("""
        import contextlib, io, sys
        from vqkit.cli import main
        for argv in (["--help"], ["encode", "--help"], ["decode", "--help"], ["prior", "--help"],
                     ["sample", "--help"], ["genablate", "--help"]):
            with contextlib.redirect_stdout(io.StringIO()) as out:
                try:
                    main(argv)
                except SystemExit as e:
                    assert e.code == 0, argv
            assert "usage: vqkit" in out.getvalue(), argv
        assert "torch" not in sys.modules
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
