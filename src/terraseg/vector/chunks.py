"""The polygons of one chunk window: pixel outlines with the internal chunk edges they touch.

:func:`polygonize_chunk` turns the labels of one chunk window into polygons, one
per instance id (``mode="instances"``) or per 4-connected region of each class
value (``mode="classes"``), with the numpy tracer of
:mod:`terraseg.vector.polygonize`, and flags each polygon with the internal chunk
edges it has pixels on (:class:`ChunkPolygons`): those wait for the chunk-edge
dissolve of :mod:`terraseg.vector.vectorization`. Pure module: numpy, shapely,
affine and scipy; it opens no file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import numpy as np
import shapely
from affine import Affine
from numpy.typing import NDArray
from scipy import ndimage

from terraseg.core.grid import PixelWindow
from terraseg.core.metric import _apply_affine
from terraseg.errors import ConfigError
from terraseg.vector.dissolve import _as_2d, _edge_flags, _internal_sides
from terraseg.vector.polygonize import polygonize_labels

__all__ = ["ChunkPolygons", "polygonize_chunk"]

Geoms: TypeAlias = "NDArray[np.object_]"


@dataclass(frozen=True, slots=True)
class ChunkPolygons:
    """The polygons of one chunk window.

    Attributes
    ----------
    window
        The chunk window, in scene pixels.
    values
        Per polygon: the instance id (``mode="instances"``) or the class value
        (``mode="classes"``), int64.
    geometry
        Per polygon: a shapely Polygon or MultiPolygon in the frame of the
        ``transform`` given to :func:`polygonize_chunk` (scene CRS, or scene
        pixels for ``Affine.identity()``). Holes are kept.
    edges
        Per polygon: bit mask of the internal chunk edges it has pixels on
        (:data:`EDGE_TOP` | :data:`EDGE_BOTTOM` | :data:`EDGE_LEFT` | :data:`EDGE_RIGHT`);
        scene edges are never flagged. 0 means the polygon is final.
    """

    window: PixelWindow
    values: NDArray[np.int64]
    geometry: Geoms
    edges: NDArray[np.uint8]

    def __len__(self) -> int:
        return len(self.values)

    @property
    def on_edge(self) -> NDArray[np.bool_]:
        """True for polygons touching at least one internal chunk edge."""
        out: NDArray[np.bool_] = self.edges != 0
        return out

    def touches(self, side: int) -> NDArray[np.bool_]:
        """True for polygons touching the internal edge ``side`` (an ``EDGE_*`` bit)."""
        out: NDArray[np.bool_] = (self.edges & side) != 0
        return out


def _to_int32(labels: NDArray[Any]) -> NDArray[Any]:
    """Labels in a dtype GDAL's polygonizer accepts (uint8, uint16, int16, int32).

    uint32 labels below 2**31 are viewed as int32 without a copy.
    """
    if labels.dtype in (np.uint8, np.uint16, np.int16, np.int32):
        return labels
    if labels.size == 0:
        return labels.astype(np.int32)
    if np.issubdtype(labels.dtype, np.integer) and int(labels.max()) < 2**31:
        if np.issubdtype(labels.dtype, np.unsignedinteger) or int(labels.min()) >= 0:
            if labels.dtype == np.uint32:
                return labels.view(np.int32)
            return labels.astype(np.int32)
    raise ConfigError(
        f"labels of dtype {labels.dtype} hold values outside [0, 2**31); instance ids must be "
        "non-negative integers below 2**31",
        dtype=str(labels.dtype),
    )


def _shapes_px(labels: NDArray[Any], window: PixelWindow) -> tuple[NDArray[np.int64], Geoms]:
    """One polygon per 4-connected region of equal non-zero value, in scene pixels.

    The polygons ``rasterio.features.shapes(labels, mask=labels != 0, connectivity=4)``
    gives (same rings once normalized), from the numpy tracer of
    :mod:`terraseg.vector.polygonize`, several times faster.
    """
    return polygonize_labels(labels, window.row_off, window.col_off)


def _group_parts(values: NDArray[np.int64], polys: Geoms) -> tuple[NDArray[np.int64], Geoms]:
    """One geometry per value: a Polygon, or a MultiPolygon of its disjoint regions."""
    if len(values) == 0:
        return values, polys
    order = np.argsort(values, kind="stable")
    values, polys = values[order], polys[order]
    uniq, start, counts = np.unique(values, return_index=True, return_counts=True)
    if np.all(counts == 1):
        return uniq, polys
    out = polys[start].copy()
    multi = np.flatnonzero(counts > 1)
    member = np.isin(values, uniq[multi])
    grouped = shapely.multipolygons(
        polys[member], indices=np.searchsorted(uniq[multi], values[member])
    )
    out[multi] = grouped
    return uniq, out


def _components(mask: NDArray[np.bool_]) -> tuple[NDArray[np.int32], int]:
    comp, n = ndimage.label(mask)
    return comp.astype(np.int32, copy=False), int(n)


def polygonize_chunk(
    labels: NDArray[Any],
    window: PixelWindow,
    transform: Affine,
    *,
    mode: Literal["instances", "classes"],
    classes: Sequence[int] | None = None,
    scene_shape: tuple[int, int] | None = None,
) -> ChunkPolygons:
    """Polygonize the labels of one chunk window.

    Parameters
    ----------
    labels
        ``(y, x)`` (or ``(1, y, x)``) labels of ``window``; 0 is background.
    window
        The chunk window in scene pixels.
    transform
        The SCENE's affine transform (pixel → CRS); the chunk's own is
        ``transform * Affine.translation(col_off, row_off)``. Pass
        ``Affine.identity()`` for geometries in scene pixel coordinates.
    mode
        ``"instances"``: one (multi)polygon per id present in the chunk.
        ``"classes"``: one polygon per 4-connected region of each class value.
    classes
        Class values to polygonize in ``"classes"`` mode (default: every non-zero value).
    scene_shape
        ``(rows, cols)`` of the scene, so that scene edges are not flagged; without it,
        the bottom and right chunk edges count as internal.

    Returns
    -------
    ChunkPolygons
        Polygons are 4-connected regions (pixels touching only at a corner are separate
        regions), with holes, vertices on pixel corners.

    Examples
    --------
    >>> import numpy as np
    >>> lab = np.zeros((4, 6), np.uint32); lab[1:3, 1:3] = 7; lab[0:2, 4:6] = 9
    >>> cp = polygonize_chunk(lab, PixelWindow(0, 0, 4, 6), Affine.identity(), mode="instances",
    ...                       scene_shape=(4, 8))
    >>> cp.values.tolist(), [g.area for g in cp.geometry], cp.edges.tolist()
    ([7, 9], [4.0, 4.0], [0, 8])
    """
    arr = _as_2d(labels, window)
    sides = _internal_sides(window, scene_shape)
    if mode == "instances":
        lab32 = _to_int32(arr)
        values, polys = _group_parts(*_shapes_px(lab32, window))
        edges = _edge_flags(lab32, values, sides)
    elif mode == "classes":
        wanted = [int(c) for c in (classes if classes is not None else np.unique(arr[arr != 0]))]
        vals, geoms, flags = [], [], []
        for cls in wanted:
            comp, n = _components(arr == cls)
            if n == 0:
                continue
            ids, polys = _group_parts(*_shapes_px(comp, window))
            vals.append(np.full(len(ids), cls, np.int64))
            geoms.append(polys)
            flags.append(_edge_flags(comp, ids, sides))
        values = np.concatenate(vals) if vals else np.empty(0, np.int64)
        polys = np.concatenate(geoms) if geoms else np.empty(0, object)
        edges = np.concatenate(flags) if flags else np.empty(0, np.uint8)
    else:
        raise ConfigError(f"mode must be 'instances' or 'classes', got {mode!r}", mode=mode)
    if transform != Affine.identity():
        polys = _apply_affine(polys, transform)
    return ChunkPolygons(window, values, polys, edges)
