"""Exception hierarchy.

Every error terraseg raises on purpose derives from :class:`TerrasegError` and
also from the nearest builtin exception, so ``except ValueError`` or
``except OSError`` keep working for callers who do not know terraseg's types
(the pattern of rasterio's ``InvalidShapeError(RasterioError, ValueError)``).

Messages name the offending value, what was expected and the fix, in one line.
The CLI prints ``terraseg: error: <message>`` and exits with status 2.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "TerrasegError",
    "ConfigError",
    "CRSError",
    "CRSMismatchError",
    "SceneReadError",
    "BandError",
    "GridError",
    "ModelLoadError",
    "ExportError",
    "OutputExistsError",
    "ChunkFailedError",
    "EmptySceneError",
    "ResumeMismatchError",
    "TrainingPaused",
]


class TerrasegError(Exception):
    """Root of all terraseg errors.

    Parameters
    ----------
    message
        One line: the offending value, what was expected, and the fix.
    **details
        Offending values, kept as attributes for programmatic handling
        (e.g. ``err.path``, ``err.crs``).
    """

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        for key, value in details.items():
            setattr(self, key, value)

    def __str__(self) -> str:
        return self.message


class ConfigError(TerrasegError, ValueError):
    """A workflow file, option or argument is invalid."""


class CRSError(TerrasegError, ValueError):
    """A CRS is unknown, missing, or unusable for the operation."""


class CRSMismatchError(CRSError):
    """Two inputs that must share a CRS do not."""


class SceneReadError(TerrasegError, OSError):
    """A raster cannot be opened or read (missing, corrupt, not a raster)."""


class BandError(TerrasegError, ValueError):
    """A raster's bands do not fit what the model or operation needs."""


class GridError(TerrasegError, ValueError):
    """Tile, overlap or chunk sizes that make no sense together."""


class ModelLoadError(TerrasegError):
    """A model checkpoint or card cannot be loaded safely."""


class ExportError(TerrasegError, OSError):
    """An output cannot be written."""


class OutputExistsError(ExportError, FileExistsError):
    """An output exists and ``overwrite`` was not given."""


class ChunkFailedError(TerrasegError, RuntimeError):
    """Some chunks of a run failed; see ``failures.jsonl`` and rerun with ``--resume``."""


class EmptySceneError(SceneReadError):
    """A scene holds no valid pixel (all nodata / alpha 0): nothing to predict."""


class ResumeMismatchError(TerrasegError, ValueError):
    """``--resume`` of a run whose stored chunks were made by another model, tiling or scene."""


class TrainingPaused(TerrasegError):
    """Training stopped at ``max_minutes`` with its state saved: run it again with ``resume``.

    Not a failure: the CLI prints the message and exits with status 75
    (``EX_TEMPFAIL``: try again), so a script can loop until the run finishes.
    ``err.path`` is the state file.
    """
