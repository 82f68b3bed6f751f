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

__all__ = ["atomic_output", "check_writable_dir", "remove_stale_temps", "tmp_name"]


def tmp_name(path: Path) -> Path:
    """Return a unique temporary sibling of ``path`` that keeps its suffix.

    Keeping the suffix lets GDAL/OGR pick the driver from the name.

    Examples
    --------
    >>> p = tmp_name(Path("/data/out/scene.tif"))
    >>> p.parent == Path("/data/out"), p.suffix, p.name.startswith(f".scene.{os.getpid()}-")
    (True, '.tif', True)
    """
    return path.with_name(f".{path.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{path.suffix}")


def remove_stale_temps(path: Path) -> list[Path]:
    """Remove temporaries of ``path`` left by killed runs (their process is gone).

    Temporary names carry the writer's pid (:func:`tmp_name`); those of a live
    process are kept, so concurrent writers never lose each other's files.
    """
    removed = []
    for cand in path.parent.glob(f".{glob_escape(path.stem)}.*.tmp{glob_escape(path.suffix)}*"):
        pid_part = cand.name[len(path.stem) + 2 :].split("-", 1)[0]
        if not pid_part.isdigit() or _alive(int(pid_part)):
            continue
        if cand.is_dir():
            shutil.rmtree(cand, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                cand.unlink()
        removed.append(cand)
    return removed


def glob_escape(text: str) -> str:
    import glob

    return glob.escape(text)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
    remove_stale_temps(final)
    tmp = tmp_name(final)
    try:
        try:
            yield tmp
            if not tmp.exists():
                raise ExportError(f"nothing was written to '{final}'", path=final)
            if final.is_dir() and not final.is_symlink():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except OSError as exc:
            if isinstance(exc, ExportError):
                raise
            raise ExportError(
                f"cannot write '{final}': {exc}; check free disk space and permissions",
                path=final,
            ) from exc
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        raise
