"""Atomic output files: write to a temporary name beside the target, then rename.

A run that fails leaves neither a partial file nor a damaged previous output.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from terraseg.errors import ExportError, OutputExistsError

__all__ = ["atomic_output", "check_writable_dir", "tmp_name"]


def tmp_name(path: Path) -> Path:
    """Return a unique temporary sibling of ``path`` that keeps its suffix.

    Keeping the suffix lets GDAL/OGR pick the driver from the name.

    Examples
    --------
    >>> p = tmp_name(Path("/data/out/scene.tif"))
    >>> p.parent == Path("/data/out"), p.suffix, p.name.startswith(".scene.")
    (True, '.tif', True)
    """
    return path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")


def check_writable_dir(directory: Path, *, what: str = "output") -> None:
    """Raise :class:`ExportError` unless ``directory`` exists (or can be made) and is writable."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(
            f"cannot create {what} folder '{directory}': {exc.strerror or exc}; "
            "choose a writable location",
            path=directory,
        ) from exc
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ExportError(
            f"{what} folder '{directory}' is not writable; choose a writable location",
            path=directory,
        )


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path; on success rename it to ``path``, on failure remove it.

    Parameters
    ----------
    path
        Final output path (file or directory).
    overwrite
        Replace an existing ``path``. Without it an existing output raises
        :class:`~terraseg.errors.OutputExistsError` before anything is written.

    Raises
    ------
    OutputExistsError
        ``path`` exists and ``overwrite`` is false.
    ExportError
        The parent folder cannot be created or written.
    """
    final = Path(path)
    if final.exists() and not overwrite:
        raise OutputExistsError(
            f"output '{final}' already exists; pass --overwrite (overwrite=True) to replace it",
            path=final,
        )
    check_writable_dir(final.parent)
    tmp = tmp_name(final)
    try:
        yield tmp
        if not tmp.exists():
            raise ExportError(f"nothing was written to '{final}'", path=final)
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        raise
