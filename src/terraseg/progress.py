"""Progress bars (rich) that switch themselves off when output is not a terminal."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["ProgressCallback", "progress_callback"]

ProgressCallback = Callable[[int, int], None]
"""Called as ``callback(done, total)`` after each unit of work."""


@contextlib.contextmanager
def progress_callback(
    description: str, *, unit: str = "item", enabled: bool | None = None, extra: str = ""
) -> Iterator[ProgressCallback]:
    """Yield a ``callback(done, total)`` that drives a rich progress bar on stderr.

    The bar is shown only when stderr is a terminal (or ``enabled=True``), so
    logs of batch jobs stay clean.
    """
    show = sys.stderr.isatty() if enabled is None else enabled
    if not show:
        yield lambda done, total: None
        return
    columns = (
        TextColumn(f"[bold]{description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(f"{unit}s{extra}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update
