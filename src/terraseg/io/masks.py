"""Masks from any tool: one-band integer rasters, checked once, read window by window.

terraseg's own masks are COGs (:class:`~terraseg.io.raster_sink.RasterSink`), but
a class or instance mask may come from any other tool: a striped or untiled
GeoTIFF, uncompressed, a VRT, any integer type from int8 to uint32 (int64 too).
:func:`open_mask` checks such a file once (readable, georeferenced, one band of
integer ids) and returns it as a :class:`~terraseg.io.scene.Scene`, whose
windowed reads work at any layout: GDAL decodes only the strips or tiles a
window crosses, so no step reads the whole raster at once.
:func:`copy_as_cog` rewrites a mask as a COG, streamed by GDAL block by block,
for an export folder.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Literal

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.errors import RasterioError

from terraseg.errors import BandError, CRSError, ExportError, SceneReadError
from terraseg.io.scene import Scene, open_scene

__all__ = ["INTEGER_DTYPES", "copy_as_cog", "ids_without_nodata", "open_mask"]

#: Pixel types a mask may have (class or instance ids).
INTEGER_DTYPES = frozenset(
    {"uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64"}
)

MaskKind = Literal["class mask", "instance mask"]


def open_mask(path: str | os.PathLike[str], *, what: MaskKind = "class mask") -> Scene:
    """Open a class or instance mask written by any tool, after checking it.

    Parameters
    ----------
    path
        Any raster GDAL reads: striped, tiled or COG GeoTIFF, compressed or
        not, VRT...
    what
        ``"class mask"`` (class ids, e.g. ``classes.tif``) or ``"instance mask"``
        (building ids, 0 = none); names the file in error messages.

    Returns
    -------
    Scene
        The mask; read it with :meth:`~terraseg.io.scene.Scene.read_window`.

    Raises
    ------
    SceneReadError
        The file is missing, corrupt or not a raster.
    CRSError
        The file has no CRS.
    BandError
        The file has more than one band, or holds non-integer values.
    """
    name = os.fspath(path)
    try:
        scene = open_scene(name)
    except CRSError:
        raise CRSError(
            f"{what} '{name}' has no CRS; set it (gdal_edit.py -a_srs EPSG:<code> {name})",
            path=name,
        ) from None
    except SceneReadError as exc:
        raise SceneReadError(
            str(exc).replace(f"cannot read scene '{name}'", f"cannot read {what} '{name}'", 1),
            path=name,
        ) from None
    if scene.count != 1:
        raise BandError(
            f"{what} '{name}' has {scene.count} bands, a mask has one band of integer ids; "
            f"take the band that holds them (gdal_translate -b 1 {name} mask.tif)",
            path=name,
            count=scene.count,
        )
    dtype = str(scene.dtypes[0])
    if dtype not in INTEGER_DTYPES:
        target = "Byte" if what == "class mask" else "UInt32"
        raise BandError(
            f"{what} '{name}' holds {dtype} values, a mask holds integer ids; convert it "
            f"(gdal_translate -ot {target} {name} mask.tif)",
            path=name,
            dtype=dtype,
        )
    return scene


def ids_without_nodata(scene: Scene, array: np.ndarray) -> np.ndarray:
    """``array`` (integer ids read from ``scene``) with the scene's nodata pixels set to 0.

    For instance masks, where 0 means "no building": a tool that marks nodata
    with, say, -1 or 65535 must not make those pixels one huge building.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> ids_without_nodata(SimpleNamespace(nodata=-1), np.array([-1, 0, 3], np.int16)).tolist()
    [0, 0, 3]
    """
    nodata = scene.nodata
    if nodata is None or not np.isfinite(nodata) or not float(nodata).is_integer():
        return array
    info = np.iinfo(array.dtype)
    if not info.min <= nodata <= info.max:
        return array
    return np.where(array == int(nodata), array.dtype.type(0), array)


def copy_as_cog(
    source: str | os.PathLike[str], dest: str | os.PathLike[str], *, blocksize: int = 512
) -> Path:
    """Rewrite the raster ``source`` as a Cloud-Optimized GeoTIFF ``dest``.

    GDAL's COG driver streams the copy block by block (overviews by nearest
    neighbour, right for ids) and keeps nodata, colour table and metadata tags.
    A ``.aux.xml`` sidecar that GDAL writes beside ``dest`` is removed: the
    caller copies the source's own sidecar.

    Raises
    ------
    ExportError
        GDAL cannot read ``source`` or write ``dest``.
    """
    out = Path(dest)
    try:
        rasterio.shutil.copy(
            os.fspath(source), os.fspath(out), driver="COG", COMPRESS="DEFLATE",
            BLOCKSIZE=blocksize, OVERVIEW_RESAMPLING="NEAREST", BIGTIFF="IF_SAFER",
        )
    except (RasterioError, OSError) as exc:
        with contextlib.suppress(FileNotFoundError):
            out.unlink()
        raise ExportError(
            f"cannot rewrite mask '{source}' as a COG '{out}': {exc}; check the file and free "
            "disk space",
            path=str(out),
        ) from exc
    with contextlib.suppress(FileNotFoundError):
        out.with_name(out.name + ".aux.xml").unlink()
    return out
