"""Progress bars (rich) that switch themselves off when output is not a terminal."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["ProgressCallback", "progress_bars", "progress_callback"]

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


@contextlib.contextmanager
def progress_bars(
    *, unit: str = "chunk", enabled: bool | None = None
) -> Iterator[Callable[[str, int, int], None]]:
    """Yield ``callback(label, done, total)`` driving one bar per label (e.g. per scene)."""
    show = sys.stderr.isatty() if enabled is None else enabled
    if not show:
        yield lambda label, done, total: None
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(f"{unit}s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns) as bar:
        tasks: dict[str, TaskID] = {}

        def update(label: str, done: int, total: int) -> None:
            if label not in tasks:
                tasks[label] = bar.add_task(label.rsplit("/", 1)[-1], total=total)
            bar.update(tasks[label], completed=done, total=total)

        yield update
