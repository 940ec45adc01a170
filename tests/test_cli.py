"""The ``vqkit`` command line: train / report / recipes, and its error messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
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


# ----------------------------------------------------------------------------------------------
# start fast: python -m vqkit, --version, no torch for --help; typed argument errors; threads
# ----------------------------------------------------------------------------------------------

SRC = Path(__file__).resolve().parents[1] / "src"


def _python(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_python_dash_m_vqkit_version_and_help():
    import vqkit

    out = _python("-m", "vqkit", "--version")
    assert out.returncode == 0 and out.stdout.strip() == f"vqkit {vqkit.__version__}"
    out = _python("-m", "vqkit", "--help")
    assert out.returncode == 0 and "{train,report,ablate,recipes,bench,encode,decode,prior,sample,genablate}" in out.stdout and "--version" in out.stdout
    out = _python("-m", "vqkit", "train", "--help")
    assert out.returncode == 0 and "--threads N|auto" in out.stdout and "--resume" in out.stdout


def test_help_version_and_import_do_not_load_torch():
    code = textwrap.dedent("""
        import contextlib, io, sys
        import vqkit
        assert "torch" not in sys.modules, "import vqkit"
        from vqkit.cli import main
        for argv in (["--help"], ["--version"], ["train", "--help"], ["ablate", "--help"]):
            with contextlib.redirect_stdout(io.StringIO()):
                try:
                    main(argv)
                except SystemExit as e:
                    assert e.code == 0, argv
        assert "torch" not in sys.modules, "vqkit --help"
        print("ok")
    """)
    out = _python("-c", code)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_lazy_exports_still_work():
    import vqkit

    assert vqkit.__all__ and sorted(vqkit.__all__) == sorted(set(vqkit.__all__))
    for name in vqkit.__all__:
        assert getattr(vqkit, name) is not None, name
        assert name in dir(vqkit)
    from vqkit import PLAIN_STE, VectorQuantizer, distributed, metrics  # noqa: F401

    assert VectorQuantizer.__module__ == "vqkit.quantizers.vector" and metrics.__name__ == "vqkit.metrics"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        vqkit.nope  # noqa: B018


@pytest.mark.parametrize("value,message", [
    ("abc", "quantizer.codebook_size: expected an int >= 1, got 'abc' (str)"),
    ("1.5", "quantizer.codebook_size: expected an int >= 1, got 1.5 (float)"),
])
def test_wrongly_typed_argument_is_a_one_line_named_error(tmp_path, capsys, value, message):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--set", f"quantizer.codebook_size={value}"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"vqkit train: error: {message}"]
    assert not out.exists()


def test_threads_choice(monkeypatch):
    from vqkit.training import threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads.choose_threads(3) == (3, "--threads")
    with pytest.raises(ValueError, match="--threads: expected an int >= 1"):
        threads.choose_threads(0)
    monkeypatch.setattr(threads, "allowed_cpus", lambda: {0, 1, 2, 3})
    monkeypatch.setattr(threads, "_cgroup_quota", lambda: None)
    monkeypatch.setattr(threads, "busy_cores", lambda cpus, sample_s=0.2: 0.1)
    assert threads.choose_threads("auto")[0] == 4
    monkeypatch.setattr(threads, "busy_cores", lambda cpus, sample_s=0.2: 1.0)  # another process on one core
    n, why = threads.choose_threads("auto")
    assert n == 3 and "1 busy with other work" in why
    monkeypatch.setattr(threads, "busy_cores", lambda cpus, sample_s=0.2: 9.0)
    assert threads.choose_threads(None)[0] == 1
    monkeypatch.setattr(threads, "_cgroup_quota", lambda: 2.0)
    monkeypatch.setattr(threads, "busy_cores", lambda cpus, sample_s=0.2: 0.0)
    assert threads.choose_threads("auto")[0] == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads.choose_threads("auto") == (1, "OMP_NUM_THREADS")
    assert threads.choose_threads(2) == (2, "--threads")
    monkeypatch.undo()
    assert 0 <= threads.busy_cores(sample_s=0.01) <= len(threads.allowed_cpus()) + 0.5


def test_threads_flag_sets_torch_and_is_recorded(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--threads", "1", *TINY, "--set", "log.progress=true",
                 "--set", "log.report=false"]) == 0
    assert "vqkit: 1 intra-op thread(s) (--threads)" in capsys.readouterr().err
    assert json.loads((out / "run.json").read_text())["threads"] == 1
    with pytest.raises(SystemExit):
        main(["train", "--threads", "0"])
    assert "--threads: expected an int >= 1 or 'auto', got '0'" in capsys.readouterr().err
