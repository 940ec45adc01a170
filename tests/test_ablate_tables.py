"""``vqkit ablate`` tables: named row sets, sweeps, override rows, varied values and step budgets, the
lowest training usage, reuse / extension of runs, and several processes sharing one table."""

from __future__ import annotations

import json
import re

import pytest

from vqkit.cli import main
from vqkit.training import RecipeError, read_metrics, run_ablation, train
from vqkit.training import ablate
from vqkit.training.ablate import parse_axis, parse_row, split_values
from vqkit.training.rundir import run_lock_file

pytest.importorskip("sklearn")  # the bundled digits
pytestmark = pytest.mark.usefixtures("one_thread")


def test_values_split_outside_brackets_and_quotes():
    assert split_values("1,5, 20") == ["1", "5", "20"]
    assert split_values('{kind="affine", lr=3},plain,[8, 5, 5]') == ['{kind="affine", lr=3}', "plain", "[8, 5, 5]"]
    assert split_values("'a,b',c") == ["'a,b'", "c"]
    assert parse_axis("quantizer.codebook_size=512,1024") == ("quantizer.codebook_size", ["512", "1024"])
    assert parse_row("fast: quantizer.dead_code_steps=1; optim.lr=1e-3") == (
        "fast", [("quantizer.dead_code_steps", "1"), ("optim.lr", "1e-3")])
    for bad in ("steps", "steps=", "=1,2", "steps=1,,2"):
        with pytest.raises(RecipeError, match="--vary: expected key=value1,value2"):
            parse_axis(bad)
    with pytest.raises(RecipeError, match="--row: expected 'name: key=value"):
        parse_row("no overrides")


def test_sweep_rows_min_train_usage_and_the_base_duplicate(tiny_recipe, tmp_path):
    base = tiny_recipe(6, "log.eval_every=3", "log.checkpoint_every=0")
    path = run_ablation(base, tmp_path / "sw", seeds=[0], progress=False,
                        sweep={"quantizer.dead_code_steps": ["1", "3"], "quantizer.codebook": ['{kind="ema", decay=0.8}']},
                        rows={"both": [("quantizer.dead_code_steps", "1"), ("quantizer.dead_code_threshold", "2")]},
                        rungs=["plain"])
    text = path.read_text()
    assert "| base |" in text and "| dead_code_steps=1 |" in text and '| codebook={kind="ema", decay=0.8} |' in text
    assert "| both |" in text and "| plain STE |" in text
    assert "| dead_code_steps=3 | = base row |" in text  # the base recipe already has dead_code_steps=3
    assert "min train usage (%)" in text and "one seed (0), no spread" in text and "±" not in text
    data = json.loads((tmp_path / "sw/ablation.json").read_text())
    res = data["results"]
    assert res["dead_code_steps=3"]["same_as"] == "base" and not (tmp_path / "sw/dead_code_steps=3").exists()
    assert res["both"]["quantizer"]["dead_code_threshold"] == 2 and res["both"]["quantizer"]["dead_code_steps"] == 1
    run = res["dead_code_steps=1"]["runs"][0]
    train_usage = [r["usage"] for r in read_metrics(tmp_path / "sw/dead_code_steps=1/seed0", "train") if r["step"] >= 2]
    assert run["min_train_usage"] == min(train_usage) and 2 <= run["min_train_usage_step"] <= 6
    assert (tmp_path / "sw/curves_train_usage.png").is_file()
    # a recipe-level override row says what it changes
    text = run_ablation(base, tmp_path / "lr", seeds=[0], progress=False, rows={"lr": [("optim.lr", "0.01")]}).read_text()
    assert "recipe: `optim.lr=0.01`" in text


def test_varied_values_and_budgets_share_one_run(tiny_recipe, tmp_path, monkeypatch):
    calls = []
    real_train = ablate.train
    monkeypatch.setattr(ablate, "train", lambda recipe, out, **kw: calls.append((recipe.steps, kw["resume"]))
                        or real_train(recipe, out, **kw))
    base = tiny_recipe(8, "log.eval_every=4", "log.checkpoint_every=0")
    out = tmp_path / "v"
    text = run_ablation(base, out, seeds=[0], rungs=["defaults"], progress=False,
                        vary={"quantizer.codebook_size": ["16", "32"], "steps": ["4", "8"]}).read_text()
    assert calls == [(4, False), (8, True)] * 2  # each run trained to 4 steps, then extended to 8
    assert "| codebook_size | steps | configuration |" in text
    for k in (16, 32):
        for s in (4, 8):
            assert f"| {k} | {s} | vqkit defaults |" in text
    for s in (4, 8):  # the held-out metrics against K, one plot per metric and budget, linked from the table
        for metric in ("mse", "usage", "perplexity"):
            assert (out / f"scaling_steps={s}_{metric}.png").is_file()
            assert f"(scaling_steps={s}_{metric}.png)" in text
    res = json.loads((out / "ablation.json").read_text())["results"]
    short = res["codebook_size=16,steps=4/defaults"]
    assert short["variant"] == {"quantizer.codebook_size": "16", "steps": 4}
    assert short["quantizer"]["codebook_size"] == 16 and res["codebook_size=32,steps=8/defaults"]["quantizer"]["codebook_size"] == 32
    budgets = json.loads((out / "codebook_size=16/defaults/seed0/budgets.json").read_text())
    assert set(budgets) == {"4", "8"} and budgets["4"]["wall_time_s"] < budgets["8"]["wall_time_s"]
    # the 4-step numbers are those of a run trained for 4 steps only
    direct = tiny_recipe(4, "log.eval_every=4", "log.checkpoint_every=0")
    direct.quantizer.args = {"codebook_size": 16}  # the defaults row: the codebook size only
    got = real_train(direct, tmp_path / "direct").final
    assert got["mse"] == short["runs"][0]["mse"] and got["perplexity"] == short["runs"][0]["perplexity"]
    # everything is reused on a second call; a longer budget extends the runs
    calls.clear()
    run_ablation(base, out, seeds=[0], rungs=["defaults"], progress=False,
                 vary={"quantizer.codebook_size": ["16", "32"], "steps": ["4", "8"]})
    assert calls == []
    run_ablation(base, out, seeds=[0], rungs=["defaults"], progress=False,
                 vary={"quantizer.codebook_size": ["16"], "steps": ["8", "12"]})
    assert calls == [(12, True)]
    assert [r["step"] for r in read_metrics(out / "codebook_size=16/defaults/seed0", "train")] == list(range(1, 13))


@pytest.mark.parametrize("vary", [None, {"quantizer.codebook_size": ["16"]}, {"steps": ["4", "8"]}])
def test_every_linked_plot_exists(tiny_recipe, tmp_path, vary):
    # one varied value still names the curve files after it: the table must link those names
    out = tmp_path / "links"
    text = run_ablation(tiny_recipe(8, "log.eval_every=4", "log.checkpoint_every=0"), out, seeds=[0],
                        rungs=["defaults"], progress=False, vary=vary).read_text()
    links = re.findall(r"\]\(([^)]+\.png)\)", text)
    assert len(links) >= 4
    assert [name for name in links if not (out / name).is_file()] == []


def test_budgets_need_the_constant_schedule_and_evaluations(tiny_recipe, tmp_path):
    base = tiny_recipe(8, "log.eval_every=4")
    with pytest.raises(RecipeError, match="not multiples of log.eval_every = 4"):
        run_ablation(base, tmp_path / "a", seeds=[0], rungs=["plain"], vary={"steps": ["6", "8"]}, progress=False)
    with pytest.raises(RecipeError, match="constant learning-rate schedule"):
        run_ablation(tiny_recipe(8, "log.eval_every=4", "optim.schedule=cosine"), tmp_path / "b", seeds=[0],
                     rungs=["plain"], vary={"steps": ["4", "8"]}, progress=False)
    with pytest.raises(RecipeError, match="either --table or --rungs"):
        run_ablation(base, tmp_path / "c", seeds=[0], rungs=["plain"], table="ladder", progress=False)
    with pytest.raises(RecipeError, match="--table: unknown table 'nope'"):
        run_ablation(base, tmp_path / "c", seeds=[0], table="nope", progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_run_another_process_holds_is_waited_for(tiny_recipe, tmp_path, monkeypatch, capsys):
    import fcntl
    import os

    base = tiny_recipe(4, "log.eval_every=2", "log.checkpoint_every=0")
    out = tmp_path / "p"
    lock = run_lock_file(out / "plain/seed0")
    lock.parent.mkdir(parents=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # "another process" trains plain/seed0
    slept = []

    def other_process_finishes(seconds):
        slept.append(seconds)
        row = ablate._rung_row(ablate.RUNGS["plain"], {})
        train(ablate._run_recipe(row.build(base), base.name, ablate.Variant((), "", base), row, 0), out / "plain/seed0")
        fcntl.flock(fd, fcntl.LOCK_UN)

    monkeypatch.setattr(ablate.time, "sleep", other_process_finishes)
    run_ablation(base, out, seeds=[0, 1], rungs=["plain"])
    err = capsys.readouterr().err
    os.close(fd)
    assert len(slept) == 1 and "waiting for 1 run(s) another process is training" in err
    assert "plain seed 0: reusing the finished run" in err and "plain seed 1: training to 4 steps" in err


def test_cli_sweep_vary_row_and_table(tmp_path, capsys):
    tiny = ["--set", "steps=4", "--set", "batch_size=32", "--set", "model.hidden=16", "--set", "quantizer.codebook_size=16",
            "--set", "log.eval_every=2", "--set", "log.progress=false", "--seeds", "0", "--threads", "1"]
    out = tmp_path / "t"
    assert main(["ablate", *tiny, "--out", str(out), "--sweep", 'quantizer.codebook={kind="affine", lr=1},plain',
                 "--row", "r: quantizer.dead_code_steps=1", "--vary", "steps=2,4"]) == 0
    text = (out / "ablation.md").read_text()
    assert '--sweep \'quantizer.codebook={kind="affine", lr=1},plain\'' in text  # the command, quoted
    assert '| 2 | codebook={kind="affine", lr=1} |' in text and "| 4 | codebook=plain |" in text and "| 4 | r |" in text
    for argv, message in ((["--vary", "steps=2", "--vary", "steps=4"], "--vary: steps given twice"),
                          (["--sweep", "quantizer.dead_code_steps"], "--sweep: expected key=value1,value2"),
                          (["--row", "x"], "--row: expected 'name: key=value"),
                          (["--table", "ladder", "--rungs", "plain"], "either --table or --rungs")):
        assert main(["ablate", *tiny, "--out", str(tmp_path / "bad"), *argv]) == 2
        assert message in capsys.readouterr().err


def test_a_run_finished_by_another_release_is_not_reused(tiny_recipe, tmp_path, capsys):
    """Library defaults change between releases (alternating_lr 1.0 -> 0.1): a finished run whose recipe text
    matches but whose run.json names another vqkit version is trained again, not reported as this release's."""
    from vqkit import __version__

    base = tiny_recipe(4, "log.eval_every=2", "log.checkpoint_every=0")
    out = tmp_path / "ab"
    run_ablation(base, out, seeds=[0], rungs=["plain"])
    summary = out / "plain/seed0/run.json"
    data = json.loads(summary.read_text())
    data["vqkit"] = "0.0.1"
    summary.write_text(json.dumps(data))
    capsys.readouterr()
    run_ablation(base, out, seeds=[0], rungs=["plain"])
    err = capsys.readouterr().err
    assert "reusing the finished run" not in err and "plain seed 0: training to 4 steps" in err
    assert json.loads(summary.read_text())["vqkit"] == __version__


def test_an_interrupted_run_of_another_release_restarts_instead_of_resuming(tiny_recipe, tmp_path, capsys):
    """A checkpoint that records no vqkit release (written before checkpoints recorded it) or another one
    may have trained with other library defaults: the run starts over rather than continuing under new ones."""
    from vqkit import __version__

    base = tiny_recipe(4, "log.eval_every=2", "log.checkpoint_every=2")
    out = tmp_path / "ab"
    run_ablation(base, out, seeds=[0], rungs=["defaults"])
    run = out / "defaults/seed0"
    for release in (None, "0.1.0"):
        (run / "run.json").unlink()  # as if stopped after the last checkpoint
        state_file = run / "checkpoints/step_00000004/state.json"
        state = json.loads(state_file.read_text())
        assert state["vqkit"] == __version__
        state.pop("vqkit") if release is None else state.update(vqkit=release)
        state_file.write_text(json.dumps(state))
        capsys.readouterr()
        run_ablation(base, out, seeds=[0], rungs=["defaults"])
        err = capsys.readouterr().err
        assert "defaults seed 0: training to 4 steps" in err and "resuming" not in err, err
        assert json.loads((run / "run.json").read_text())["vqkit"] == __version__
