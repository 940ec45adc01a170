"""scripts/eval_window.py averages the test evaluations inside the window, per seed and over seeds."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest



def _write_run(path: Path, evals: dict[int, float]) -> None:
    path.mkdir(parents=True)
    with open(path / "metrics.jsonl", "w") as f:
        for step, acc in evals.items():
            f.write(json.dumps({"step": step, "split": "train", "accuracy": 0.0, "perplexity": 1.0}) + "\n")
            f.write(json.dumps({"step": step, "split": "test", "accuracy": acc, "perplexity": 10 * acc}) + "\n")


def test_window_mean_per_seed_and_over_seeds(load_script, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module = load_script("eval_window")
    _write_run(tmp_path / "row" / "seed0", {100: 0.1, 200: 0.5, 300: 0.7, 400: 0.9})
    _write_run(tmp_path / "row" / "seed10", {100: 0.2, 200: 0.4, 300: 0.6, 400: 0.0})
    (tmp_path / "row" / "seed0.lock").write_text("")
    means, n = module.window_means(tmp_path / "row" / "seed0", ["accuracy"], 200, 300)
    assert n == 2 and means["accuracy"] == pytest.approx(0.6)  # train records and steps outside are ignored
    assert module.main([str(tmp_path), "--from-step", "200", "--to-step", "300"]) == 0
    out = capsys.readouterr().out
    expected = statistics.fmean([0.6, 0.5])
    spread = statistics.stdev([0.6, 0.5])
    assert f"| row | 2 | {expected:.4g} ± {spread:.2g} (0.6, 0.5) |" in out  # seeds in numeric order


def test_unfinished_runs_are_left_out_and_named(load_script, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module = load_script("eval_window")
    _write_run(tmp_path / "row" / "seed0", {100: 0.1, 200: 0.5})
    _write_run(tmp_path / "row" / "seed1", {100: 0.3})
    assert module.main([str(tmp_path), "--from-step", "200"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| row | 1 |"))
    assert "0.5 ± 0 (0.5)" in line and line.endswith("| seed1 |")


def test_bad_directory_and_metric_are_named(load_script, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module = load_script("eval_window")
    assert module.main([str(tmp_path)]) == 2
    assert "no <row>/seed<N>/metrics.jsonl" in capsys.readouterr().err
    _write_run(tmp_path / "row" / "seed0", {100: 0.1})
    assert module.main([str(tmp_path), "--metrics", "mse"]) == 2
    assert "metrics ['mse'] not logged" in capsys.readouterr().err
