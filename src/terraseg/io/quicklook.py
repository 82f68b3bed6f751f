"""Quick-look images of scenes: decimated reads and percentile stretches (for notebooks)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from terraseg.io.scene import Scene

__all__ = ["percentile_stretch", "plot_scene", "read_quicklook"]


def percentile_stretch(
    array: np.ndarray, valid: np.ndarray | None = None, percentiles: tuple[float, float] = (2, 98)
) -> np.ndarray:
    """Scale each band of ``(band, y, x)`` to 0..1 between its percentiles (of valid pixels).

    Examples
    --------
    >>> a = np.arange(100, dtype=float).reshape(1, 10, 10)
    >>> out = percentile_stretch(a, percentiles=(0, 100))
    >>> float(out.min()), float(out.max())
    (0.0, 1.0)
    """
    out = np.zeros(array.shape, np.float32)
    mask = np.ones(array.shape[1:], bool) if valid is None else valid
    for i, band in enumerate(array):
        vals = band[mask & np.isfinite(band)]
        if vals.size == 0:
            continue
        lo, hi = np.percentile(vals, percentiles)
        scale = hi - lo if hi > lo else 1.0
        out[i] = np.clip((band - lo) / scale, 0.0, 1.0)
    return out


def read_quicklook(
    scene: Scene, *, bands: Sequence[int] | None = None, max_px: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """A decimated ``(band, y, x)`` read (≤ ``max_px`` on the longer side) and its validity."""
    sel = list(bands) if bands is not None else ([1, 2, 3] if scene.count >= 3 else [1])
    factor = max(1, int(np.ceil(max(scene.shape) / max_px)))
    out_shape = (max(1, scene.shape[0] // factor), max(1, scene.shape[1] // factor))
    data, valid = scene.read_decimated(sel, out_shape, purpose="a quick-look")
    return data, valid


def plot_scene(
    scene: Scene,
    *,
    bands: Sequence[int] | None = None,
    max_px: int = 1024,
    percentiles: tuple[float, float] = (2.0, 98.0),
    ax: Any = None,
) -> Any:
    """Plot a stretched quick-look of ``scene`` on ``ax`` (a new figure if ``None``)."""
    import matplotlib.pyplot as plt

    data, valid = read_quicklook(scene, bands=bands, max_px=max_px)
    img = percentile_stretch(data.astype(np.float32), valid, percentiles)
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 7))
    left, bottom, right, top = scene.bounds
    rgba = np.concatenate([img, valid[None].astype(np.float32)]) if img.shape[0] == 3 else None
    if rgba is not None:
        ax.imshow(np.moveaxis(rgba, 0, -1), extent=(left, right, bottom, top))
    else:
        gray = np.ma.masked_array(img[0], ~valid)
        ax.imshow(gray, cmap="gray", extent=(left, right, bottom, top))
    ax.set_title(str(scene.path).rsplit("/", 1)[-1])
    ax.set_xlabel(f"x ({scene.crs.to_string()})")
    return ax
