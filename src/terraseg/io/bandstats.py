"""Per-band scene statistics from a decimated read, and per-band normalisation.

Statistics are computed ONCE per scene (from overviews or a decimated read,
never a full-resolution full-scene array) and cached per (path, mtime, bands).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, TypeAlias

import numpy as np
import numpy.typing as npt

from terraseg.errors import BandError
from terraseg.io.scene import Scene

__all__ = ["BandStats", "compute_band_stats", "normalize"]

NormalizeMethod: TypeAlias = Literal["meanstd", "minmax", "percentile", "scale"]


@dataclass(frozen=True, slots=True)
class BandStats:
    """Per-band statistics of valid pixels (nodata, alpha 0, NaN ignored).

    Every tuple has one entry per band of :attr:`bands`, in that order.
    ``decimation`` is the read's decimation factor (1 = full resolution) and
    ``count`` the number of valid pixels sampled.
    """

    bands: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    min: tuple[float, ...]
    max: tuple[float, ...]
    p2: tuple[float, ...]
    p98: tuple[float, ...]
    count: int
    decimation: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (lists of floats)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BandStats:
        """Rebuild from :meth:`to_dict` output."""
        return cls(
            bands=tuple(int(b) for b in data["bands"]),
            **{
                k: tuple(float(v) for v in data[k])
                for k in ("mean", "std", "min", "max", "p2", "p98")
            },
            count=int(data["count"]),
            decimation=int(data["decimation"]),
        )


_STATS_CACHE: dict[tuple[Any, ...], BandStats] = {}
_STATS_LOCK = threading.Lock()


def compute_band_stats(
    scene: Scene, bands: Sequence[int] | None = None, *, max_pixels: int = 4_000_000
) -> BandStats:
    """Per-band statistics from ONE decimated read of the whole scene.

    The read asks GDAL for at most ``max_pixels`` pixels per band (nearest
    neighbour), so GDAL uses overviews when the file has them and otherwise
    decimates block by block; no full-resolution scene array is ever built.
    Results are cached in-process per ``(path, mtime, bands, max_pixels)``.

    Raises
    ------
    BandError
        A band is out of range, or no pixel is valid.
    SceneReadError
        The file cannot be read.
    """
    selected = scene.check_bands(bands)
    key = (scene.path, scene.mtime_ns, tuple(selected), max_pixels)
    with _STATS_LOCK:
        if key in _STATS_CACHE:
            return _STATS_CACHE[key]
    rows, cols = scene.shape
    factor = max(1, math.ceil(math.sqrt(rows * cols / max(1, max_pixels))))
    out_shape = (math.ceil(rows / factor), math.ceil(cols / factor))
    data, valid = scene.read_decimated(selected, out_shape, purpose="band statistics")
    unique = list(dict.fromkeys(selected))
    n = int(valid.sum())
    if n == 0:
        raise BandError(
            f"scene '{scene.path}' has no valid pixels in bands {selected} (all nodata/alpha 0); "
            "check the nodata value and the band selection",
            path=scene.path,
        )
    per_band: dict[str, list[float]] = {k: [] for k in ("mean", "std", "min", "max", "p2", "p98")}
    for b in selected:
        v = data[unique.index(b)][valid].astype(np.float64)
        p2, p98 = np.percentile(v, [2.0, 98.0])
        for k, val in zip(per_band, (v.mean(), v.std(), v.min(), v.max(), p2, p98), strict=True):
            per_band[k].append(float(val))
    stats = BandStats(
        bands=tuple(selected),
        **{k: tuple(v) for k, v in per_band.items()},
        count=n,
        decimation=factor,
    )
    with _STATS_LOCK:
        _STATS_CACHE[key] = stats
    return stats


def normalize(
    array: npt.ArrayLike,
    stats: BandStats | None,
    *,
    method: NormalizeMethod,
    scale: float = 255.0,
) -> npt.NDArray[np.float32]:
    """Normalise a ``(band, y, x)`` array per band; pure numpy, returns float32.

    Methods: ``"meanstd"`` ``(x - mean) / std``; ``"minmax"`` ``(x - min) / (max - min)``;
    ``"percentile"`` clip to ``[p2, p98]`` then map it to ``[0, 1]``; ``"scale"``
    ``x / scale`` (``stats`` may be ``None``). A zero spread is treated as 1.

    Examples
    --------
    >>> s = BandStats((1,), (10.0,), (2.0,), (0.0,), (20.0,), (1.0,), (19.0,), 1, 1)
    >>> normalize(np.array([[[10, 14]]]), s, method="meanstd").tolist()
    [[[0.0, 2.0]]]
    >>> normalize(np.array([[[0, 255]]]), None, method="scale").tolist()
    [[[0.0, 1.0]]]
    """
    x = np.asarray(array, dtype=np.float32)
    if x.ndim != 3:
        raise BandError(f"expected a (band, y, x) array, got shape {x.shape}", shape=x.shape)
    if method == "scale":
        if scale == 0:
            raise ValueError("scale must be non-zero")
        return x / np.float32(scale)
    if stats is None:
        raise ValueError(f"method {method!r} needs band statistics (compute_band_stats)")
    if len(stats.bands) != x.shape[0]:
        raise BandError(
            f"array has {x.shape[0]} band(s) but the statistics cover {len(stats.bands)} "
            f"(bands {list(stats.bands)}); compute statistics for the same bands",
            shape=x.shape,
        )

    def col(values: tuple[float, ...]) -> npt.NDArray[np.float32]:
        return np.asarray(values, dtype=np.float32)[:, None, None]

    if method == "meanstd":
        lo, spread = col(stats.mean), col(stats.std)
    elif method == "minmax":
        lo, spread = col(stats.min), col(stats.max) - col(stats.min)
    elif method == "percentile":
        lo, spread = col(stats.p2), col(stats.p98) - col(stats.p2)
        x = np.clip(x, lo, col(stats.p98))
    else:
        raise ValueError(f"unknown method {method!r}; use meanstd, minmax, percentile or scale")
    spread = np.where(spread == 0, np.float32(1), spread)
    return ((x - lo) / spread).astype(np.float32, copy=False)
