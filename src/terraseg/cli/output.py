"""What the ``terraseg`` command prints besides its results: warnings, log lines, verbosity.

Library code warns (``warnings.warn``) and logs (``logging``) as libraries do.
While a command runs, :func:`install_output` turns both into one line each on
stderr, ``terraseg: warning: <message>``, with no Python file path or source
line; ``--debug`` keeps Python's own warning format (file and line) for
developers. Verbosity: ``-q`` hides warnings, log lines and progress (errors
and results still print); ``-v`` adds the library's info log lines, ``-vv`` its
debug lines.
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

__all__ = ["OutputSettings", "install_output", "one_line"]


@dataclass(frozen=True, slots=True)
class OutputSettings:
    """The global output options of one ``terraseg`` invocation.

    Attributes
    ----------
    verbosity
        ``-1`` with ``-q``, ``0`` by default, ``1`` with ``-v``, ``2`` with ``-vv``.
    debug
        ``--debug``: tracebacks on errors, warnings with their file and line.
    """

    verbosity: int = 0
    debug: bool = False

    @property
    def progress(self) -> bool:
        """Whether progress shows (a bar on a terminal, plain lines elsewhere)."""
        return self.verbosity >= 0

    @property
    def log_level(self) -> int:
        """Level of the ``terraseg`` logger's one-line handler."""
        if self.verbosity < 0:
            return logging.ERROR
        return {0: logging.WARNING, 1: logging.INFO}.get(self.verbosity, logging.DEBUG)


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines included) made one space.

    Examples
    --------
    >>> one_line("dropped 2 geometries\\n  (2 small)")
    'dropped 2 geometries (2 small)'
    """
    return " ".join(str(text).split())


class _OneLineFormatter(logging.Formatter):
    """``terraseg: <level>: <message>`` on one line (a traceback only with ``--debug``)."""

    def __init__(self, debug: bool) -> None:
        super().__init__()
        self.debug = debug

    def format(self, record: logging.LogRecord) -> str:
        line = f"terraseg: {record.levelname.lower()}: {one_line(record.getMessage())}"
        if self.debug and record.exc_info:
            return f"{line}\n{self.formatException(record.exc_info)}"
        return line


def _one_line_warning(settings: OutputSettings) -> Callable[..., None]:
    """A ``warnings.showwarning``: one line without source, or Python's format with ``--debug``."""

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        if settings.verbosity < 0 and not settings.debug:
            return
        stream = file if file is not None else sys.stderr
        if settings.debug:
            text = warnings.formatwarning(message, category, filename, lineno, line)
        else:
            text = f"terraseg: warning: {one_line(str(message))}\n"
        try:
            stream.write(text)
        except OSError:  # stderr closed: nowhere to warn
            pass

    return show


def install_output(settings: OutputSettings) -> Callable[[], None]:
    """Route warnings and ``terraseg`` log records to one-line messages on stderr.

    Returns
    -------
    callable
        Restores the previous warning display and logger state (so a command run
        in-process, e.g. by a test, leaves the interpreter as it found it).
    """
    old_show = warnings.showwarning
    logger = logging.getLogger("terraseg")
    old_level, old_propagate = logger.level, logger.propagate
    handler = logging.StreamHandler()  # sys.stderr as it is now (a test runner may swap it)
    handler.setFormatter(_OneLineFormatter(settings.debug))
    logger.addHandler(handler)
    logger.setLevel(settings.log_level)
    logger.propagate = False
    warnings.showwarning = _one_line_warning(settings)

    def restore() -> None:
        warnings.showwarning = old_show
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        logger.propagate = old_propagate

    return restore
