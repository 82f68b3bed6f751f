"""Writing output files safely: temporary names, one rename at the end, no leftovers.

Every export file is written under a temporary name (:func:`_atomic`) and
renamed into place once all of them are written; existing outputs are refused
up front (:func:`_refuse_existing`) unless overwriting, and GDAL/OGR errors
become :class:`~terraseg.errors.ExportError` naming the file (:func:`_call_ogr`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from pyogrio.errors import DataLayerError, DataSourceError, FieldError, GeometryError

from terraseg.errors import ExportError, OutputExistsError
from terraseg.io.atomic import atomic_output

__all__: list[str] = []

_SQLITE_SIDECARS = ("-journal", "-wal", "-shm")


@contextlib.contextmanager
def _atomic(path: Path, *, overwrite: bool) -> Iterator[Path]:
    """:func:`atomic_output` that also removes SQLite sidecars of the temporary file."""
    with atomic_output(path, overwrite=overwrite) as tmp:
        try:
            yield tmp
        except BaseException:
            for suffix in _SQLITE_SIDECARS:
                with contextlib.suppress(FileNotFoundError):
                    tmp.with_name(tmp.name + suffix).unlink()
            raise


def _call_ogr(func: Callable[..., None], *args: object, target: Path) -> None:
    """Run a GDAL/OGR writer; its errors become :class:`ExportError` naming ``target``."""
    try:
        func(*args)
    except (DataSourceError, DataLayerError, FieldError, GeometryError, OSError) as exc:
        if isinstance(exc, ExportError):
            raise
        raise ExportError(
            f"cannot write '{target}': {exc}; check free disk space and the layer's columns",
            path=target,
        ) from exc


def _refuse_existing(paths: Sequence[Path], overwrite: bool) -> None:
    existing = [p for p in paths if p.exists()]
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise OutputExistsError(
            f"output '{existing[0]}' already exists{more}; pass --overwrite (overwrite=True) "
            "to replace it",
            path=existing[0],
        )


def _remove_all(paths: Sequence[Path]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
