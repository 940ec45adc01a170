"""Metric records: one JSON object per line in ``metrics.jsonl``, optionally mirrored to TensorBoard.

Each record is ``{"step": int, "split": "train" | "test", <metric>: float, ...}``. Records hold no wall
time, so a resumed run writes exactly the lines an uninterrupted run writes (timings go to ``run.json``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .rundir import RunDir

__all__ = ["MetricLogger", "MetricsFileError", "read_metrics", "scan_metrics", "tensorboard_writer_class"]


class MetricsFileError(ValueError):
    """A line of ``metrics.jsonl`` (other than a torn last line) is not a record; the message names the
    file and the line."""


def scan_metrics(path: str | Path) -> tuple[list[tuple[str, dict[str, Any]]], bool]:
    """``([(line, record), ...], torn)`` of a metrics file; ``torn``: its last line is an incomplete
    record (a write interrupted by a kill), which is left out.

    Raises:
        MetricsFileError: another line is not a JSON object with an int ``step`` and a ``split``.
    """
    path = Path(path)
    if not path.is_file():
        return [], False
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError as e:
        raise MetricsFileError(f"{path}: not a text file ({e})") from None
    while lines and not lines[-1].strip():
        lines.pop()
    out: list[tuple[str, dict[str, Any]]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            ok = (isinstance(record, dict) and isinstance(record.get("step"), int)
                  and isinstance(record.get("split"), str))
            problem = "not a record with an int 'step' and a 'split'"
        except json.JSONDecodeError as e:
            record, ok, problem = None, False, f"not valid JSON ({e})"
        if not ok:
            if number == len(lines):
                return out, True
            raise MetricsFileError(f"{path}: line {number}: {problem}; delete or repair that line")
        out.append((line, record))
    return out, False


def read_metrics(run_dir: str | Path, split: str | None = None) -> list[dict[str, Any]]:
    """The records of ``run_dir/metrics.jsonl`` (only ``split``'s when given); a torn last line (an
    interrupted write) is left out, any other bad line raises :class:`MetricsFileError`."""
    records, _ = scan_metrics(RunDir(run_dir).metrics)
    return [r for _, r in records if split is None or r.get("split") == split]


def tensorboard_writer_class() -> type:
    """``torch.utils.tensorboard.SummaryWriter``; ImportError with the install command when missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise ImportError("log.tensorboard = true needs the tensorboard package: pip install tensorboard "
                          "(or --set log.tensorboard=false)") from e
    return SummaryWriter


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
        run = RunDir(run_dir)
        self.path = run.metrics
        self._tb = None
        if not enabled:
            return
        writer = tensorboard_writer_class() if tensorboard else None  # before anything is written
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("")
        else:
            self._truncate_after(resume_step)
        self._file = open(self.path, "a")
        if writer is not None:
            self._tb = writer(str(run.tensorboard), purge_step=resume_step)

    def _truncate_after(self, step: int) -> None:
        records, _ = scan_metrics(self.path)
        kept = [line for line, record in records if record["step"] <= step]
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
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
