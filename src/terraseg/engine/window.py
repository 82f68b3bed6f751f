"""Predict a window of a scene into an array on the scene's grid (the notebook API's eager path).

:func:`predict_window` runs the chunks of the global lattice whose cores meet the
window, through the same :func:`~terraseg.engine.pipeline.iter_predictions` as a
whole-scene run, and pastes the finished regions into one array over the window.
An :class:`~terraseg.engine.adapt.AdaptedScene` on a model grid is predicted on
that grid and its regions come back to the scene's grid by nearest neighbour,
with nodata where the scene itself is invalid at its own resolution, as
:class:`~terraseg.io.warped.RegriddedSink` does for files.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from terraseg.core.grid import ChunkGrid, PixelWindow
from terraseg.core.stitch import labels_from_acc, normalize
from terraseg.engine.adapt import AdaptedScene
from terraseg.engine.chunk import NODATA
from terraseg.engine.inference import TilePredictor
from terraseg.engine.pipeline import iter_predictions
from terraseg.models.spec import ModelSpec

__all__ = ["predict_window"]


def predict_window(
    view: AdaptedScene,
    spec: ModelSpec,
    predictor: TilePredictor,
    window: PixelWindow,
    *,
    tile_px: int,
    overlap_px: int,
    chunk_px: int | None,
    probabilities: bool,
) -> npt.NDArray[Any]:
    """Labels ``(y, x)`` uint8 (255 = nodata) or probabilities ``(class, y, x)`` over ``window``.

    ``window`` is in pixels of the scene's own grid (``view.source``); tiles and
    chunks are planned on ``view``'s grid. ``chunk_px`` ``None``: the window's
    size on that grid, at least ``tile_px`` and at most 2048.
    """
    # the model-grid window whose results cover `window` (the same window without resampling)
    model_win = view.gridmap.cover(window) if view.gridmap is not None else window
    if chunk_px is None:
        chunk_px = max(tile_px, min(2048, max(model_win.height, model_win.width)))
    grid = ChunkGrid.from_shape(
        view.shape, tile_px=tile_px, overlap_px=overlap_px, chunk_px=chunk_px
    )
    chunks = [c for c in grid if not c.core.intersection(model_win).is_empty]
    out = (
        np.zeros((spec.n_classes, *window.shape), np.float32)
        if probabilities
        else np.full(window.shape, NODATA, np.uint8)
    )
    for region, acc, valid in iter_predictions(view, grid, predictor, spec, chunks=chunks):
        if acc is None:
            continue
        if probabilities:
            p, ok = normalize(acc)
            result = np.where(valid & ok, p, np.nan)
        else:
            result = labels_from_acc(acc, valid)[0][None]
        _paste(out, window, region, result, view)
    return out


def _paste(
    out: npt.NDArray[Any],
    window: PixelWindow,
    region: PixelWindow,
    result: npt.NDArray[Any],
    view: AdaptedScene,
) -> None:
    """Put ``result`` ``(band, y, x)`` over ``region`` (``view``'s grid) into ``out``."""
    rows = cols = None
    if view.gridmap is not None:
        region, rows, cols = view.gridmap.to_scene(region)
    inter = region.intersection(window)
    if inter.is_empty:
        return
    src_r, src_c = inter.relative_to(region).to_slices()
    dst = inter.relative_to(window).to_slices()
    if rows is not None and cols is not None:
        part = result[:, rows[src_r][:, None], cols[src_c][None, :]].astype(out.dtype)
        bands = sorted(set(view.input.bands))
        valid = view.source.read_window_with_mask(inter, bands=bands, pad="nodata")[1]
        part[:, ~valid] = NODATA if out.ndim == 2 else np.nan
    else:
        part = result[:, src_r, src_c]
    if out.ndim == 2:
        out[dst] = part[0]
    else:
        out[(slice(None), *dst)] = part
