"""Progress: rich bars on a terminal, periodic plain lines in logs.

``enabled=None`` (the library default, for notebooks and scripts): a bar when
stderr is a terminal, nothing otherwise, so logs of batch jobs stay clean.
``enabled=True`` (what the ``terraseg`` command passes unless ``-q``): a bar on a
terminal, and on anything else (a log file, a pipe, a CI job) one plain line
every 10 % of the work or every 30 s, whichever comes first, and one at the end
(:class:`PlainProgress`). ``enabled=False``: nothing.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import TextIO

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["PlainProgress", "ProgressCallback", "progress_bars", "progress_callback"]

ProgressCallback = Callable[[int, int], None]
"""Called as ``callback(done, total)`` after each unit of work."""


class PlainProgress:
    """Progress as plain lines, for output that is not a terminal.

    A line, e.g. ``predict: 12/40 chunks (30 %), 0:01:05 elapsed``, is written
    when the work crosses the next ``step_fraction`` of the total, when
    ``interval_s`` passed since the last line (and some work was done), and once
    when the work is complete.

    Parameters
    ----------
    description
        Starts each line (``"predict"``, a scene name...).
    unit
        What is counted, singular (``"chunk"``); lines say ``chunks``.
    stream
        Where lines go; stderr (looked up at each line) by default.
    step_fraction, interval_s
        A line at least every ``step_fraction`` of the work and every
        ``interval_s`` seconds of it.
    clock
        Seconds, monotonic (a fake clock in tests).

    Examples
    --------
    >>> import io
    >>> out = io.StringIO()
    >>> p = PlainProgress("predict", unit="chunk", stream=out, clock=lambda: 0.0)
    >>> for done in range(1, 21):
    ...     p.update(done, 20)
    >>> print(out.getvalue().splitlines()[0])
    predict: 2/20 chunks (10 %), 0:00:00 elapsed
    >>> len(out.getvalue().splitlines())
    10
    """

    def __init__(
        self,
        description: str,
        *,
        unit: str = "item",
        stream: TextIO | None = None,
        step_fraction: float = 0.1,
        interval_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.description = description
        self.unit = unit
        self.stream = stream
        self.step_fraction = step_fraction
        self.interval_s = interval_s
        self.clock = clock
        self._start = clock()
        self._last_line_t = self._start
        self._last_line_done = 0
        self._next_step = 1  # the next line is due at this multiple of step_fraction
        self._finished = False

    def update(self, done: int, total: int) -> None:
        """Record ``done`` of ``total`` units; write a line when one is due."""
        if self._finished or done <= self._last_line_done:
            return
        now = self.clock()
        fraction = done / total if total > 0 else 0.0
        complete = total > 0 and done >= total
        # (integer steps: 0.1 + 0.1 + 0.1 < 0.3 in floating point)
        steps = int(fraction / self.step_fraction + 1e-9) if total > 0 else 0
        due = complete or steps >= self._next_step
        if not (due or now - self._last_line_t >= self.interval_s):
            return
        self._next_step = max(self._next_step, steps + 1)
        self._finished = complete
        self._last_line_t, self._last_line_done = now, done
        seconds = int(now - self._start)
        elapsed = f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        of = f"/{total}" if total > 0 else ""
        pct = f" ({100 * fraction:.0f} %)" if total > 0 else ""
        stream = self.stream if self.stream is not None else sys.stderr
        stream.write(f"{self.description}: {done}{of} {self.unit}s{pct}, {elapsed} elapsed\n")
        stream.flush()


def _mode(enabled: bool | None) -> str:
    """``"bar"``, ``"lines"`` or ``"off"`` for ``enabled`` (see the module doc)."""
    tty = sys.stderr.isatty()
    if enabled is False or (enabled is None and not tty):
        return "off"
    return "bar" if tty else "lines"


@contextlib.contextmanager
def progress_callback(
    description: str, *, unit: str = "item", enabled: bool | None = None, extra: str = ""
) -> Iterator[ProgressCallback]:
    """Yield a ``callback(done, total)`` that shows progress on stderr.

    A rich bar on a terminal; plain lines elsewhere when ``enabled=True``
    (:class:`PlainProgress`); nothing elsewhere by default (``enabled=None``).
    """
    mode = _mode(enabled)
    if mode == "off":
        yield lambda done, total: None
        return
    if mode == "lines":
        yield PlainProgress(description, unit=unit).update
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
    """Yield ``callback(label, done, total)`` showing one bar (or line series) per label.

    Same modes as :func:`progress_callback`; plain lines start with the label's
    file name.
    """
    mode = _mode(enabled)
    if mode == "off":
        yield lambda label, done, total: None
        return
    if mode == "lines":
        lines: dict[str, PlainProgress] = {}

        def write(label: str, done: int, total: int) -> None:
            if label not in lines:
                lines[label] = PlainProgress(label.rsplit("/", 1)[-1], unit=unit)
            lines[label].update(done, total)

        yield write
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
