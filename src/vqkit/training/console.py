"""What the toolkit tells the person at the terminal: one-line status notes and progress bars (stderr).

Results go to stdout (the CLI prints them); everything here goes to stderr, so ``vqkit train > log``
keeps the results apart from the progress.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["note", "warn", "progress_bar", "require_progress_bar", "NullBar"]

_active_bar: Any = None


def _write(line: str) -> None:
    if _active_bar is not None:
        _active_bar.write(line, file=sys.stderr)
    else:
        print(line, file=sys.stderr, flush=True)


def note(message: str, *, enabled: bool = True) -> None:
    """A status line (``vqkit: ...``), e.g. what a silent stretch is doing."""
    if enabled:
        _write(f"vqkit: {message}")


def warn(message: str, *, enabled: bool = True) -> None:
    """A warning line (``vqkit: warning: ...``): something the user should know about the run."""
    if enabled:
        _write(f"vqkit: warning: {message}")


class NullBar:
    """Stands in for a progress bar when progress is off."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def set_postfix_str(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def require_progress_bar() -> None:
    """Raise ImportError (with the fix) when progress bars are wanted but tqdm is missing."""
    _tqdm()


def _tqdm() -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError as e:
        raise ImportError("log.progress = true needs tqdm: pip install tqdm (or --set log.progress=false)") from e
    return tqdm


def progress_bar(total: int, initial: int, desc: str, enabled: bool) -> Any:
    """A tqdm bar on stderr (updated at most every 10 s when stderr is not a terminal), or a
    :class:`NullBar`. Close it with ``.close()``; :func:`note` writes above it while it is open."""
    global _active_bar
    if not enabled:
        return NullBar()
    tqdm = _tqdm()
    interactive = sys.stderr.isatty()
    bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, file=sys.stderr,
               mininterval=0.1 if interactive else 10.0)
    _active_bar = bar
    close = bar.close

    def _close() -> None:
        global _active_bar
        close()
        if _active_bar is bar:
            _active_bar = None

    bar.close = _close
    return bar
