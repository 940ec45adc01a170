"""Metric records: one JSON object per line in ``metrics.jsonl``, optionally mirrored to TensorBoard.

Each record is ``{"step": int, "split": "train" | "test", <metric>: float, ...}``. Records hold no wall
time, so a resumed run writes exactly the lines an uninterrupted run writes (timings go to ``run.json``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["MetricLogger", "read_metrics", "METRICS_FILE"]

METRICS_FILE = "metrics.jsonl"


def read_metrics(run_dir: str | Path, split: str | None = None) -> list[dict[str, Any]]:
    """The records of ``run_dir/metrics.jsonl`` (only ``split``'s when given)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if split is None or r.get("split") == split]


class MetricLogger:
    """Appends records to ``metrics.jsonl`` (flushed per record) and optionally to TensorBoard.

    Args:
        run_dir: the run directory.
        tensorboard: also write TensorBoard event files to ``run_dir/tensorboard`` (needs the
            ``tensorboard`` package).
        enabled: False on non-zero ranks: every call is then a no-op.
        resume_step: when resuming from a checkpoint at this step, drop records after it first (they
            belong to the interrupted part of the run, which will be redone).
    """

    def __init__(self, run_dir: str | Path, *, tensorboard: bool = False, enabled: bool = True,
                 resume_step: int | None = None) -> None:
        self.enabled = enabled
        self.path = Path(run_dir) / METRICS_FILE
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("")
        else:
            self._truncate_after(resume_step)
        self._file = open(self.path, "a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ImportError("log.tensorboard = true needs the tensorboard package: pip install tensorboard") from e
            self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=resume_step)

    def _truncate_after(self, step: int) -> None:
        kept = [line for line in (self.path.read_text().splitlines() if self.path.exists() else [])
                if line.strip() and json.loads(line)["step"] <= step]
        tmp = self.path.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.path)

    def log(self, step: int, split: str, metrics: dict[str, float]) -> None:
        """Write one record."""
        if not self.enabled:
            return
        record = {"step": int(step), "split": split, **{k: float(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(f"{split}/{k}", float(v), step)

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self) -> MetricLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
