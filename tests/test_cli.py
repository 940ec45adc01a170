"""The ``vqkit`` command line: train / report / recipes, and its error messages."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from vqkit.cli import main
from vqkit.training import load_recipe

pytest.importorskip("sklearn")

TINY = ["--set", "steps=6", "--set", "batch_size=32", "--set", "model.hidden=16", "--set", "quantizer.codebook_size=32",
        "--set", "log.eval_every=3", "--set", "log.progress=false"]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_train_then_report(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    assert "done: 6 steps" in printed and "report.md" in printed
    assert (out / "report.md").is_file() and (out / "plots/loss.png").is_file()
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").is_file()
    assert main(["train", "--out", str(out), "--resume", "--set", "steps=8", "--set", "log.report=false"]) == 0
    assert "done: 8 steps" in capsys.readouterr().out


def test_missing_dataset_path_is_a_clear_error(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    code = main(["train", "--out", str(tmp_path / "run"), "--set", "data.dataset=fashion-mnist",
                 "--set", f"data.root={missing}"])
    err = capsys.readouterr().err
    assert code == 2
    assert "fashion-mnist: could not find the 'train' split" in err
    assert str(missing) in err and "--set data.root=" in err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_bad_recipe_key_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "--set", "quantizer.codebok_size=512"]) == 2
    err = capsys.readouterr().err
    assert "quantizer.codebok_size: unknown key" in err and "valid keys:" in err and "quantizer.codebook_size" in err
    bad = tmp_path / "r.toml"
    bad.write_text("[model]\nkind = 'vqvae'\nhiden = 3\n")
    assert main(["train", "--recipe", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: model.hiden: unknown key for model kind 'vqvae'; valid keys: model.kind, " in err


@pytest.mark.parametrize("argv,message", [
    (["train", "--resume"], "--resume: give the run directory"),
    (["train", "--recipe", "nope"], "'nope' is neither a .toml file nor a built-in recipe"),
    (["report", "/nonexistent/run"], "is not a vqkit run directory"),
    (["ablate", "--dataset", "digits", "--model", "vqvae", "--rungs", "plane"], "--rungs: unknown rung"),
    (["ablate", "--dataset", "imagenet"], "unknown built-in recipe 'imagenet-vqvae'"),
])
def test_other_errors(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_recipes_lists_and_prints_loadable_toml(tmp_path, capsys):
    assert main(["recipes"]) == 0
    assert "fashion-mnist-vqvae" in capsys.readouterr().out.split()
    assert main(["recipes", "fashion-mnist-alexnet"]) == 0
    path = tmp_path / "r.toml"
    path.write_text(capsys.readouterr().out)
    assert load_recipe(path) == load_recipe("fashion-mnist-alexnet")


@pytest.mark.slow
def test_default_run_finishes_in_two_minutes(tmp_path, monkeypatch):
    """The README's main job: ``vqkit train`` with no arguments (default recipe, report included)."""
    torch.set_num_threads(2)
    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    assert main(["train"]) == 0
    elapsed = time.perf_counter() - start
    (run,) = Path("runs").iterdir()
    assert (run / "report.md").is_file() and (run / "plots/reconstructions.png").is_file()
    assert elapsed < 120, elapsed


def test_bench_is_delegated(capsys):
    pytest.importorskip("vqkit.bench")
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--help"])
    assert exc.value.code == 0
    assert "vqkit bench" in capsys.readouterr().out
