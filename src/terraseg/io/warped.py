"""Read a scene on a model-GSD grid, and write model-grid results back on the scene grid.

:func:`read_model_window` reads a window of the model grid of a
:class:`~terraseg.core.regrid.GridMap` through a GDAL warped VRT over the scene
file (``average`` when the model's pixels are coarser, ``bilinear`` when they
are finer), never the whole scene. The VRT is read in fixed blocks of
:data:`BLOCK_PX` aligned to the model grid, one warp per block: GDAL warps a
request as one operation whose rounding depends on the request's origin
(bilinear values differed by 1 at a few pixels between two windows), so a
model pixel is always computed within the same block, and the values do not
depend on which chunk asked for them.

:class:`RegriddedSink` writes a model-grid window into a scene-grid
:class:`~terraseg.io.raster_sink.RasterSink` by nearest neighbour
(:meth:`GridMap.to_scene`), and sets nodata where the scene itself is invalid
at its own resolution (alpha 0, nodata), so outputs keep the scene's footprint.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt
from affine import Affine
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from terraseg.core.grid import PixelWindow
from terraseg.core.regrid import GridMap
from terraseg.errors import SceneReadError
from terraseg.io.handles import FILE_FIX, HANDLES, failure_reason, valid_mask
from terraseg.io.remote import is_remote, remote_env, remote_failure

if TYPE_CHECKING:
    from terraseg.io.raster_sink import RasterSink
    from terraseg.io.scene import Scene

__all__ = [
    "BLOCK_PX",
    "STRIP_PX",
    "RegriddedSink",
    "WarpResampling",
    "model_transform",
    "read_model_window",
    "scene_validity",
    "warp_resampling",
]

BLOCK_PX = 256
"""Side of the model-grid blocks the warped VRT is read in (see the module docstring)."""

STRIP_PX = 4_000_000
"""Scene pixels per write of a :class:`RegriddedSink` (a strip of whole rows)."""

WarpResampling = Literal["average", "bilinear"]


def model_transform(scene_transform: Affine, gridmap: GridMap) -> Affine:
    """The model grid's transform: the scene's origin, pixels ``(fx, fy)`` times larger."""
    return scene_transform * Affine.scale(gridmap.fx, gridmap.fy)


def warp_resampling(gridmap: GridMap) -> WarpResampling:
    """``"average"`` when the model's pixels are coarser than the scene's, else ``"bilinear"``."""
    return "average" if min(gridmap.fx, gridmap.fy) >= 1.0 else "bilinear"


def _blocks(window: PixelWindow, shape: tuple[int, int]) -> list[PixelWindow]:
    """The :data:`BLOCK_PX` blocks of a ``shape`` grid that ``window`` touches (clipped)."""
    rows, cols = shape
    out = []
    for r in range(window.row_off // BLOCK_PX, (window.row_stop - 1) // BLOCK_PX + 1):
        for c in range(window.col_off // BLOCK_PX, (window.col_stop - 1) // BLOCK_PX + 1):
            r0, c0 = r * BLOCK_PX, c * BLOCK_PX
            out.append(PixelWindow(r0, c0, min(BLOCK_PX, rows - r0), min(BLOCK_PX, cols - c0)))
    return out


def read_model_window(
    scene: Scene,
    gridmap: GridMap,
    window: PixelWindow,
    bands: Sequence[int],
    *,
    with_mask: bool,
) -> tuple[npt.NDArray[Any], npt.NDArray[np.bool_] | None]:
    """Read ``window`` (inside the model grid) of ``scene`` resampled onto ``gridmap``.

    Parameters
    ----------
    scene
        The scene on its own grid.
    gridmap
        The model grid (``gridmap.scene_shape == scene.shape``).
    window
        Pixel window of the model grid, inside it.
    bands
        Distinct 1-based scene bands to read.
    with_mask
        Also return the validity ``(y, x)`` on the model grid: the warped alpha,
        nodata and per-band masks (a model pixel is valid where a valid scene
        pixel contributed to it).

    Returns
    -------
    (data, valid)
        ``(band, y, x)`` in the scene's dtype, and the validity or ``None``.

    Raises
    ------
    SceneReadError
        The file cannot be read (names the file and the window).
    """
    rows, cols = gridmap.model_shape
    data = np.empty((len(bands), *window.shape), dtype=scene.dtype)
    valid = np.empty(window.shape, dtype=bool) if with_mask else None
    kw: dict[str, Any] = {
        "crs": scene.crs,
        "transform": model_transform(scene.transform, gridmap),
        "width": cols,
        "height": rows,
        "resampling": Resampling[warp_resampling(gridmap)],
    }
    if scene.crs_assumed:
        kw["src_crs"] = scene.crs
    try:
        with remote_env(scene.path):
            ds = HANDLES.get((scene.path, scene.mtime_ns))
            if ds.transform != scene.transform:  # an assumed transform (STAC proj:transform)
                kw["src_transform"] = scene.transform
            with WarpedVRT(ds, **kw) as vrt:
                for block in _blocks(window, (rows, cols)):
                    win = Window(block.col_off, block.row_off, block.width, block.height)
                    arr = vrt.read(indexes=list(bands), window=win)
                    part = block.intersection(window)
                    src = part.relative_to(block).to_slices()
                    dst = part.relative_to(window).to_slices()
                    data[(slice(None), *dst)] = arr[(slice(None), *src)]
                    if valid is not None:
                        valid[dst] = valid_mask(vrt, list(bands), arr, window=win)[src]
    except (RasterioError, OSError) as exc:
        HANDLES.discard((scene.path, scene.mtime_ns))
        why = (
            remote_failure(scene.path, exc)
            if is_remote(scene.path)
            else f"{failure_reason(exc)}; {FILE_FIX}"
        )
        raise SceneReadError(
            f"cannot read window {window} of scene '{scene.path}' resampled to the model's "
            f"GSD: {why}",
            path=scene.path,
            window=window,
        ) from exc
    return data, valid


class RegriddedSink:
    """A scene-grid sink that takes model-grid windows (nearest neighbour back to the scene).

    Parameters
    ----------
    sink
        The open sink on the scene's grid.
    gridmap
        The model grid the windows are in.
    scene_valid
        Validity ``(y, x)`` of a scene-grid window at the scene's own
        resolution, or ``None`` when every scene pixel is valid. Pixels it
        marks invalid are written as ``nodata``.
    nodata
        The sink's nodata value.

    Notes
    -----
    Windows that partition the model grid map to windows that partition the
    scene grid (:meth:`GridMap.to_scene`), so each scene pixel is written once.
    """

    def __init__(
        self,
        sink: RasterSink,
        gridmap: GridMap,
        scene_valid: Callable[[PixelWindow], npt.NDArray[np.bool_]] | None,
        nodata: int,
    ) -> None:
        self.sink = sink
        self.gridmap = gridmap
        self.scene_valid = scene_valid
        self.nodata = nodata

    @property
    def count(self) -> int:
        """Bands of the underlying sink."""
        return self.sink.count

    def write(self, window: PixelWindow, array: npt.ArrayLike) -> None:
        """Write ``array`` ``(band, y, x)`` over model-grid ``window`` onto the scene grid.

        In strips of at most :data:`STRIP_PX` scene pixels: a model-grid chunk
        covers ``fy·fx`` times as many scene pixels (45× from 7.5 cm to 0.5 m), and
        neither its upsampled labels nor the scene's validity are held whole.
        """
        scene_window, rows, cols = self.gridmap.to_scene(window)
        if scene_window.is_empty:
            return
        arr = np.asarray(array)
        if arr.ndim == 2:
            arr = arr[None]
        step = max(1, STRIP_PX // scene_window.width)
        for r0 in range(0, scene_window.height, step):
            r1 = min(r0 + step, scene_window.height)
            strip = PixelWindow(
                scene_window.row_off + r0, scene_window.col_off, r1 - r0, scene_window.width
            )
            out = arr[:, rows[r0:r1, None], cols[None, :]]
            if self.scene_valid is not None:
                out[:, ~self.scene_valid(strip)] = self.nodata
            self.sink.write(strip, out)

    def finish(self) -> None:
        """Finish the underlying sink."""
        self.sink.finish()


def scene_validity(
    scene: Scene, bands: Sequence[int]
) -> Callable[[PixelWindow], npt.NDArray[np.bool_]] | None:
    """A reader of ``scene``'s validity at its own resolution, or ``None`` when it has no mask.

    ``None`` when every band's GDAL mask flag is ``all_valid`` (no nodata, alpha,
    ``.msk`` or per-band mask) and the dtype has no NaN, so nothing is read again.
    """
    from rasterio.enums import MaskFlags

    try:
        with remote_env(scene.path):
            flags = HANDLES.get((scene.path, scene.mtime_ns)).mask_flag_enums
    except (RasterioError, OSError):
        flags = ()  # the reads below raise the one-line error
    floating = np.issubdtype(scene.dtype, np.floating)
    if flags and not floating and all(MaskFlags.all_valid in f for f in flags):
        return None

    def read(window: PixelWindow) -> npt.NDArray[np.bool_]:
        return scene.read_window_with_mask(window, bands=list(bands), pad="nodata")[1]

    return read
