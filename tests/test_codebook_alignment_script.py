"""scripts/codebook_alignment.py finds the run directories of an ablation (not its lock files)."""

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
