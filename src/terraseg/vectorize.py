"""Mask → polygons, chunk by chunk, with a dissolve of what touches chunk edges.

The scene is never held whole: a caller-supplied ``read(window)`` returns the
labels of one chunk window (``(y, x)`` or ``(1, y, x)``), each chunk is
polygonized on its own, and a polygon that touches no internal chunk edge is
final at once. Only the parts that touch an internal edge wait, and they are
dissolved with their neighbours as soon as every chunk they can continue into
has been read (buildings: parts with the same global instance id; roads: parts
whose pixels are 4-adjacent across the shared edge). Peak memory therefore
depends on the chunk size and on the parts waiting along chunk edges (in
row-major order, about one row of chunks' worth), not on the scene area, when
the ``iter_*`` generators are consumed batch by batch.

All dissolving happens in the scene's pixel frame, where every vertex is an
integer, so unions are exact; geometries move to the scene CRS only when
emitted. Areas and lengths are in metres whatever the CRS: a geographic CRS is
measured in the local UTM zone of the scene. Outputs are in the scene CRS.
Pure module: numpy, shapely, affine, pyproj, scipy and rasterio's in-memory
``rasterio.features``; it opens no file.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

import geopandas as gpd
import numpy as np
import pandas as pd
import pyproj
import shapely
from affine import Affine
from numpy.typing import NDArray
from rasterio import features
from scipy import ndimage

from terraseg.errors import ConfigError, CRSError
from terraseg.grid import PixelWindow
from terraseg.regularize import regularize_polygons

__all__ = [
    "EDGE_BOTTOM",
    "EDGE_LEFT",
    "EDGE_RIGHT",
    "EDGE_TOP",
    "ChunkLayout",
    "ChunkPolygons",
    "GeometryDropWarning",
    "MetricFrame",
    "PolygonMatch",
    "iter_buildings",
    "iter_roads",
    "match_polygons",
    "polygonize_chunk",
    "vectorize_buildings",
    "vectorize_roads",
]

EDGE_TOP, EDGE_BOTTOM, EDGE_LEFT, EDGE_RIGHT = 1, 2, 4, 8
"""Bits of :attr:`ChunkPolygons.edges`: the internal chunk edges a polygon touches."""

_SIDES: tuple[int, ...] = (EDGE_TOP, EDGE_BOTTOM, EDGE_LEFT, EDGE_RIGHT)
_OPPOSITE = {
    EDGE_TOP: EDGE_BOTTOM,
    EDGE_BOTTOM: EDGE_TOP,
    EDGE_LEFT: EDGE_RIGHT,
    EDGE_RIGHT: EDGE_LEFT,
}

SomeCRS: TypeAlias = "str | int | pyproj.CRS | Any"
ReadFn: TypeAlias = Callable[[PixelWindow], "NDArray[Any]"]
Geoms: TypeAlias = "NDArray[np.object_]"


class GeometryDropWarning(UserWarning):
    """Some geometries were dropped (empty, invalid beyond repair, or too small)."""


# --------------------------------------------------------------------------- chunk polygons


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


def _as_2d(labels: NDArray[Any], window: PixelWindow) -> NDArray[Any]:
    arr = np.asarray(labels)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.shape != window.shape:
        raise ConfigError(
            f"read function returned an array of shape {arr.shape} for window {window}; "
            f"expected {window.shape} (rows, cols) or (1, rows, cols)",
            shape=arr.shape,
            window=window,
        )
    return arr


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


def _internal_sides(window: PixelWindow, scene_shape: tuple[int, int] | None) -> list[int]:
    sides = []
    if window.row_off > 0:
        sides.append(EDGE_TOP)
    if scene_shape is None or window.row_stop < scene_shape[0]:
        sides.append(EDGE_BOTTOM)
    if window.col_off > 0:
        sides.append(EDGE_LEFT)
    if scene_shape is None or window.col_stop < scene_shape[1]:
        sides.append(EDGE_RIGHT)
    return sides


def _strip(arr: NDArray[Any], side: int) -> NDArray[Any]:
    if side == EDGE_TOP:
        return arr[0, :]
    if side == EDGE_BOTTOM:
        return arr[-1, :]
    if side == EDGE_LEFT:
        return arr[:, 0]
    return arr[:, -1]


def _edge_flags(
    labels: NDArray[Any], values: NDArray[np.int64], sides: Iterable[int]
) -> NDArray[np.uint8]:
    flags = np.zeros(len(values), np.uint8)
    for side in sides:
        strip = _strip(labels, side)
        on = np.unique(strip[strip != 0])
        if on.size:
            flags[np.isin(values, on)] |= np.uint8(side)
    return flags


def _shapes_px(labels: NDArray[np.int32], window: PixelWindow) -> tuple[NDArray[np.int64], Geoms]:
    """One polygon per 4-connected region of equal non-zero value, in scene pixels."""
    coords: list[tuple[float, float]] = []
    ring_off = [0]
    poly_off = [0]
    vals: list[float] = []
    shift = Affine.translation(window.col_off, window.row_off)
    for geom, val in features.shapes(labels, mask=labels != 0, connectivity=4, transform=shift):
        for ring in geom["coordinates"]:
            coords.extend(ring)
            ring_off.append(len(coords))
        poly_off.append(len(ring_off) - 1)
        vals.append(val)
    values = np.asarray(vals, np.float64).astype(np.int64)
    if not vals:
        return values, np.empty(0, object)
    polys = shapely.from_ragged_array(
        shapely.GeometryType.POLYGON,
        np.asarray(coords, np.float64),
        (np.asarray(ring_off, np.int64), np.asarray(poly_off, np.int64)),
    )
    return values, np.asarray(polys, object)


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


def _apply_affine(geoms: Geoms, aff: Affine) -> Geoms:
    if aff == Affine.identity():
        return geoms
    a, b, c, d, e, f = aff.a, aff.b, aff.c, aff.d, aff.e, aff.f

    def fn(xy: NDArray[np.float64]) -> NDArray[np.float64]:
        x, y = xy[:, 0], xy[:, 1]
        return np.column_stack([a * x + b * y + c, d * x + e * y + f])

    return np.asarray(shapely.transform(geoms, fn), object)


def _xy(t: Affine, col: float, row: float) -> tuple[float, float]:
    """``t`` applied to the pixel point ``(col, row)``."""
    return (t.a * col + t.b * row + t.c, t.d * col + t.e * row + t.f)


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


# --------------------------------------------------------------------------- metric frame


@dataclass(frozen=True)
class MetricFrame:
    """Converts scene-pixel geometries to the scene CRS and to a metric frame.

    The metric frame is the scene CRS scaled to metres when it is projected, and
    the UTM zone of the scene centre (WGS 84) when it is geographic.

    Attributes
    ----------
    transform
        Scene affine transform (pixel → CRS).
    crs
        Scene CRS.
    pixel_m
        Approximate size of a pixel in metres (square root of its area).
    """

    transform: Affine
    crs: pyproj.CRS
    pixel_m: float
    _unit_m: float | None = None
    _to_m: pyproj.Transformer | None = field(default=None, repr=False)
    _from_m: pyproj.Transformer | None = field(default=None, repr=False)

    @classmethod
    def from_scene(
        cls, transform: Affine, crs: SomeCRS, scene_shape: tuple[int, int]
    ) -> MetricFrame:
        """Frame for a scene of ``scene_shape = (rows, cols)`` with ``transform`` and ``crs``."""
        if crs is None:
            raise CRSError(
                "scene has no CRS; pass the scene's CRS (e.g. crs='EPSG:32633')", crs=crs
            )
        try:
            pcrs = pyproj.CRS.from_user_input(crs)
        except pyproj.exceptions.CRSError as exc:
            raise CRSError(
                f"unknown CRS {crs!r}; pass an EPSG code or WKT, e.g. 'EPSG:32633'", crs=crs
            ) from exc
        det = abs(transform.determinant)
        if pcrs.is_geographic:
            cx, cy = _xy(transform, scene_shape[1] / 2.0, scene_shape[0] / 2.0)
            lonlat = pyproj.Transformer.from_crs(pcrs, "EPSG:4326", always_xy=True)
            lon, lat = lonlat.transform(cx, cy)
            infos = pyproj.database.query_utm_crs_info(
                datum_name="WGS 84",
                area_of_interest=pyproj.aoi.AreaOfInterest(lon, lat, lon, lat),
            )
            if not infos:
                raise CRSError(
                    f"no UTM zone covers the scene centre ({lon:.4f}, {lat:.4f}); "
                    "reproject the scene to a projected CRS",
                    crs=crs,
                )
            utm = pyproj.CRS.from_epsg(int(infos[0].code))
            to_m = pyproj.Transformer.from_crs(pcrs, utm, always_xy=True)
            from_m = pyproj.Transformer.from_crs(utm, pcrs, always_xy=True)
            x0, y0 = to_m.transform(cx, cy)
            x1, y1 = to_m.transform(*_xy(transform, scene_shape[1] / 2.0 + 1, scene_shape[0] / 2.0))
            x2, y2 = to_m.transform(*_xy(transform, scene_shape[1] / 2.0, scene_shape[0] / 2.0 + 1))
            pixel_m = math.sqrt(abs((x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)))
            return cls(transform, pcrs, pixel_m, None, to_m, from_m)
        unit = float(pcrs.axis_info[0].unit_conversion_factor) if pcrs.axis_info else 1.0
        return cls(transform, pcrs, math.sqrt(det) * unit, unit)

    @property
    def is_geographic(self) -> bool:
        """True when the metric frame is a UTM zone, not the scene CRS itself."""
        return self._unit_m is None

    def px_to_crs(self, geoms: Geoms) -> Geoms:
        """Scene-pixel geometries → scene CRS."""
        return _apply_affine(geoms, self.transform)

    def px_to_metric(self, geoms: Geoms) -> Geoms:
        """Scene-pixel geometries → metric frame (metres)."""
        if self._unit_m is not None:
            t, u = self.transform, self._unit_m
            return _apply_affine(
                geoms, Affine(t.a * u, t.b * u, t.c * u, t.d * u, t.e * u, t.f * u)
            )
        return self._pyproj(self.px_to_crs(geoms), self._to_m)

    def metric_to_crs(self, geoms: Geoms) -> Geoms:
        """Metric-frame geometries → scene CRS."""
        if self._unit_m is not None:
            return _apply_affine(geoms, Affine.scale(1.0 / self._unit_m))
        return self._pyproj(geoms, self._from_m)

    @staticmethod
    def _pyproj(geoms: Geoms, tr: pyproj.Transformer | None) -> Geoms:
        assert tr is not None

        def fn(xy: NDArray[np.float64]) -> NDArray[np.float64]:
            x, y = tr.transform(xy[:, 0], xy[:, 1])
            return np.column_stack([x, y])

        return np.asarray(shapely.transform(geoms, fn), object)


# --------------------------------------------------------------------------- chunk layout


class ChunkLayout:
    """Chunk windows that partition a scene, and the windows across each chunk edge.

    Parameters
    ----------
    windows
        Chunk core windows (scene pixels); empty ones are ignored. Together they must
        cover ``[0, rows) x [0, cols)`` exactly once, where ``rows``/``cols`` are the
        largest stops.

    Attributes
    ----------
    windows
        The non-empty windows, in the given order (the processing order).
    scene_shape
        ``(rows, cols)`` of the scene.
    neighbours
        Per window, ``{EDGE_*: [indices of the windows across that edge]}``.

    Raises
    ------
    ConfigError
        If the windows do not partition the scene.

    Examples
    --------
    >>> lay = ChunkLayout([PixelWindow(0, 0, 4, 3), PixelWindow(0, 3, 4, 2)])
    >>> lay.scene_shape, lay.neighbours[0][EDGE_RIGHT], lay.neighbours[0][EDGE_LEFT]
    ((4, 5), [1], [])
    """

    def __init__(self, windows: Sequence[PixelWindow]) -> None:
        self.windows = [w for w in windows if not w.is_empty]
        if not self.windows:
            raise ConfigError("no chunk windows given; pass the chunk core windows", windows=[])
        rows = max(w.row_stop for w in self.windows)
        cols = max(w.col_stop for w in self.windows)
        self.scene_shape = (rows, cols)
        if (
            min(w.row_off for w in self.windows) != 0
            or min(w.col_off for w in self.windows) != 0
            or (sum(w.size for w in self.windows) != rows * cols)
        ):
            raise ConfigError(
                f"chunk windows must partition the scene ({rows} x {cols} px) exactly once; "
                "pass the chunk cores (e.g. ChunkGrid cores), not read windows",
                scene_shape=self.scene_shape,
            )
        by_row_stop: dict[int, list[int]] = {}
        by_row_off: dict[int, list[int]] = {}
        by_col_stop: dict[int, list[int]] = {}
        by_col_off: dict[int, list[int]] = {}
        for i, w in enumerate(self.windows):
            by_row_stop.setdefault(w.row_stop, []).append(i)
            by_row_off.setdefault(w.row_off, []).append(i)
            by_col_stop.setdefault(w.col_stop, []).append(i)
            by_col_off.setdefault(w.col_off, []).append(i)
        self.neighbours: list[dict[int, list[int]]] = []
        for w in self.windows:
            nb = {
                EDGE_TOP: [
                    j for j in by_row_stop.get(w.row_off, []) if _overlap_cols(w, self.windows[j])
                ],
                EDGE_BOTTOM: [
                    j for j in by_row_off.get(w.row_stop, []) if _overlap_cols(w, self.windows[j])
                ],
                EDGE_LEFT: [
                    j for j in by_col_stop.get(w.col_off, []) if _overlap_rows(w, self.windows[j])
                ],
                EDGE_RIGHT: [
                    j for j in by_col_off.get(w.col_stop, []) if _overlap_rows(w, self.windows[j])
                ],
            }
            self.neighbours.append(nb)

    def needs(self, i: int, edges: int) -> set[int]:
        """Chunks across the edges flagged in ``edges`` of chunk ``i``."""
        out: set[int] = set()
        for side in _SIDES:
            if edges & side:
                out.update(self.neighbours[i][side])
        return out


def _overlap_cols(a: PixelWindow, b: PixelWindow) -> bool:
    return a.col_off < b.col_stop and b.col_off < a.col_stop


def _overlap_rows(a: PixelWindow, b: PixelWindow) -> bool:
    return a.row_off < b.row_stop and b.row_off < a.row_stop


# --------------------------------------------------------------------------- dissolve


class _Dissolver:
    """Union-find over waiting parts; a group is done when no neighbour it needs is unread."""

    def __init__(self, layout: ChunkLayout) -> None:
        self.layout = layout
        self.parent: dict[int, int] = {}
        self.members: dict[int, list[int]] = {}
        self.outstanding: dict[int, set[int]] = {}
        self.value: dict[int, int] = {}
        self.geom: dict[int, Any] = {}
        self.waiting: dict[int, list[int]] = {}
        self.done: set[int] = set()
        self._next = 0

    def find(self, key: int) -> int:
        root = key
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[key] != root:
            self.parent[key], key = root, self.parent[key]
        return root

    def add(self, chunk: int, geom: Any, value: int, edges: int) -> int:
        key = self._next
        self._next += 1
        self.parent[key] = key
        self.members[key] = [key]
        self.geom[key] = geom
        self.value[key] = value
        need = self.layout.needs(chunk, edges) - self.done
        self.outstanding[key] = need
        for j in need:
            self.waiting.setdefault(j, []).append(key)
        return key

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if len(self.members[ra]) < len(self.members[rb]):
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.members[ra].extend(self.members.pop(rb))
        self.outstanding[ra] |= self.outstanding.pop(rb)
        return ra

    def finish(self, chunk: int, touched: Iterable[int]) -> list[tuple[int, list[Any]]]:
        """Mark ``chunk`` read; return ``(value, parts)`` of the groups now complete."""
        roots = {self.find(k) for k in self.waiting.pop(chunk, [])}
        roots.update(self.find(k) for k in touched)
        out = []
        for root in roots:
            need = self.outstanding[root]
            need.discard(chunk)
            need -= self.done
            if not need:
                keys = self.members.pop(root)
                del self.outstanding[root]
                out.append((self.value[root], [self.geom.pop(k) for k in keys]))
                for k in keys:
                    del self.parent[k]
                    del self.value[k]
        return out

    def __len__(self) -> int:
        return len(self.geom)


def _dissolve(groups: list[tuple[int, list[Any]]]) -> Geoms:
    """Union each group's parts (exact: pixel-frame vertices are integers)."""
    out = np.empty(len(groups), object)
    for k, (_, parts) in enumerate(groups):
        out[k] = parts[0] if len(parts) == 1 else shapely.union_all(parts)
    # drop the collinear vertices left on chunk seams, so the outline is the one an
    # unchunked polygonization gives
    return np.asarray(shapely.simplify(out, 0.0, preserve_topology=False), object)


# --------------------------------------------------------------------------- emission


@dataclass
class _Drops:
    small: int = 0
    empty: int = 0

    def warn(self, what: str, min_area_m2: float) -> None:
        total = self.small + self.empty
        if total:
            warnings.warn(
                f"{what}: dropped {total} geometries ({self.small} smaller than "
                f"min_area_m2={min_area_m2:g}, {self.empty} empty or invalid beyond repair)",
                GeometryDropWarning,
                stacklevel=3,
            )


def _polygonal(geoms: Geoms) -> Geoms:
    """Repair invalid geometries and keep only their polygonal parts (empty if none)."""
    geoms = np.asarray(geoms, object)
    bad = ~shapely.is_valid(geoms)
    if bad.any():
        fixed = shapely.make_valid(geoms[bad])
        types = shapely.get_type_id(fixed)
        coll = types == shapely.GeometryType.GEOMETRYCOLLECTION
        if coll.any():
            fixed[coll] = [
                shapely.union_all(
                    [p for p in shapely.get_parts(g) if p.geom_type in ("Polygon", "MultiPolygon")]
                )
                for g in fixed[coll]
            ]
        nonpoly = ~np.isin(
            shapely.get_type_id(fixed),
            [shapely.GeometryType.POLYGON, shapely.GeometryType.MULTIPOLYGON],
        )
        fixed[nonpoly] = shapely.Polygon()
        geoms = geoms.copy()
        geoms[bad] = fixed
    return geoms


@dataclass(frozen=True)
class _PolygonOptions:
    frame: MetricFrame
    scene_shape: tuple[int, int]
    min_area_m2: float
    simplify_m: float
    regularize: bool
    regularize_tolerance_m: float
    min_iou: float


def _finish_polygons(
    geoms_px: Geoms, opts: _PolygonOptions, drops: _Drops
) -> tuple[Geoms, NDArray[np.float64], NDArray[np.bool_]]:
    """Filter, simplify/regularize and move to the scene CRS; returns ``(geoms, area_m2, kept)``."""
    geoms_px = np.asarray(shapely.normalize(_polygonal(geoms_px)), object)
    metric = opts.frame.px_to_metric(geoms_px)
    area = shapely.area(metric)
    empty = shapely.is_empty(geoms_px)
    small = ~empty & (area < opts.min_area_m2)
    kept = ~(empty | small)
    drops.empty += int(empty.sum())
    drops.small += int(small.sum())
    metric = metric[kept]
    if opts.regularize:
        # a building cut by the scene edge has the scene's outline there, not its own:
        # it keeps its pixel outline
        bounds = shapely.bounds(geoms_px[kept])
        rows, cols = opts.scene_shape
        cut = (
            (bounds[:, 0] <= 0)
            | (bounds[:, 1] <= 0)
            | (bounds[:, 2] >= cols)
            | (bounds[:, 3] >= rows)
        )
        metric = metric.copy()
        metric[~cut] = regularize_polygons(
            metric[~cut], tolerance_m=opts.regularize_tolerance_m, min_iou=opts.min_iou
        )
    elif opts.simplify_m > 0:
        metric = shapely.simplify(metric, opts.simplify_m, preserve_topology=True)
        metric = _polygonal(metric)
    if opts.regularize or opts.simplify_m > 0:
        # regularize_polygons returns valid polygons (its fallbacks included)
        out = opts.frame.metric_to_crs(metric)
        area = shapely.area(metric)
    else:
        out = opts.frame.px_to_crs(geoms_px[kept])
        area = area[kept]
    return np.asarray(shapely.normalize(out), object), np.asarray(area, np.float64), kept


def _check_options(min_area_m2: float, simplify_m: float) -> None:
    if not (min_area_m2 >= 0 and math.isfinite(min_area_m2)):
        raise ConfigError(
            f"min_area_m2 must be a finite number >= 0, got {min_area_m2}", min_area_m2=min_area_m2
        )
    if not (simplify_m >= 0 and math.isfinite(simplify_m)):
        raise ConfigError(
            f"simplify_m must be a finite number >= 0, got {simplify_m}", simplify_m=simplify_m
        )


def _options(
    frame: MetricFrame,
    scene_shape: tuple[int, int],
    min_area_m2: float,
    simplify_m: float,
    regularize: bool,
    regularize_tolerance_m: float | None,
    min_iou: float,
) -> _PolygonOptions:
    _check_options(min_area_m2, simplify_m)
    tol = regularize_tolerance_m
    if tol is None:
        tol = max(simplify_m, 1.5 * frame.pixel_m)
    return _PolygonOptions(
        frame, scene_shape, min_area_m2, simplify_m, regularize, float(tol), min_iou
    )


# --------------------------------------------------------------------------- buildings


def iter_buildings(
    read_instances: ReadFn,
    windows: Sequence[PixelWindow],
    transform: Affine,
    crs: SomeCRS,
    *,
    scores: dict[int, float] | None = None,
    min_area_m2: float = 2.0,
    simplify_m: float = 0.0,
    regularize: bool = True,
    regularize_tolerance_m: float | None = None,
    min_iou: float = 0.8,
) -> Iterator[gpd.GeoDataFrame]:
    """Vectorize a building instance raster chunk by chunk, yielding batches.

    Same parameters and columns as :func:`vectorize_buildings`. After each chunk, the
    buildings it completed (if any) are yielded as one GeoDataFrame, so a consumer
    that writes batches out keeps memory flat in the scene size. Instance ids are
    expected to be 4-connected (as instance stitching makes them); an id whose parts
    no chunk edge joins comes out in more than one row (:func:`vectorize_buildings`
    dissolves those).
    """
    layout = ChunkLayout(windows)
    frame = MetricFrame.from_scene(transform, crs, layout.scene_shape)
    opts = _options(
        frame,
        layout.scene_shape,
        min_area_m2,
        simplify_m,
        regularize,
        regularize_tolerance_m,
        min_iou,
    )
    dis = _Dissolver(layout)
    live: dict[int, int] = {}
    drops = _Drops()
    for i, window in enumerate(layout.windows):
        labels = _as_2d(read_instances(window), window)
        cp = polygonize_chunk(
            labels, window, Affine.identity(), mode="instances", scene_shape=layout.scene_shape
        )
        dis.done.add(i)
        if live:
            waiting = cp.on_edge | np.isin(cp.values, np.fromiter(live, np.int64, len(live)))
        else:
            waiting = cp.on_edge
        touched = []
        for k in np.flatnonzero(waiting):
            value = int(cp.values[k])
            key = dis.add(i, cp.geometry[k], value, int(cp.edges[k]))
            if value in live:
                dis.union(key, live[value])
            live[value] = key
            touched.append(key)
        groups = dis.finish(i, touched)
        ids = [cp.values[~waiting]]
        geoms = [cp.geometry[~waiting]]
        if groups:
            ids.append(np.asarray([v for v, _ in groups], np.int64))
            geoms.append(_dissolve(groups))
            for v, _ in groups:
                del live[v]
        batch_ids = np.concatenate(ids)
        if len(batch_ids):
            batch = _building_frame(batch_ids, np.concatenate(geoms), scores, opts, drops)
            if len(batch):
                yield batch
    if len(dis):
        raise AssertionError("internal error: building parts left undissolved")  # pragma: no cover
    drops.warn("vectorize_buildings", min_area_m2)


def _building_frame(
    ids: NDArray[np.int64],
    geoms_px: Geoms,
    scores: dict[int, float] | None,
    opts: _PolygonOptions,
    drops: _Drops,
) -> gpd.GeoDataFrame:
    geoms, area, kept = _finish_polygons(geoms_px, opts, drops)
    ids = ids[kept]
    if scores is None:
        score = np.full(len(ids), np.nan)
    else:
        score = np.asarray([scores.get(int(i), np.nan) for i in ids], np.float64)
    return gpd.GeoDataFrame(
        {
            "building_id": ids.astype(np.int64),
            "score": score,
            "area_m2": area,
            "class": pd.Series(["building"] * len(ids), dtype=object),
        },
        geometry=gpd.GeoSeries(geoms, crs=opts.frame.crs),
    )


def vectorize_buildings(
    read_instances: ReadFn,
    windows: Sequence[PixelWindow],
    transform: Affine,
    crs: SomeCRS,
    *,
    scores: dict[int, float] | None = None,
    min_area_m2: float = 2.0,
    simplify_m: float = 0.0,
    regularize: bool = True,
    regularize_tolerance_m: float | None = None,
    min_iou: float = 0.8,
) -> gpd.GeoDataFrame:
    """Building polygons from a global instance-id raster, read chunk by chunk.

    Parameters
    ----------
    read_instances
        ``read(window) -> labels``: the ``(y, x)`` (or ``(1, y, x)``) instance ids of a
        window of the scene (0 = background). Ids are global: the same building has
        the same id in every chunk.
    windows
        Chunk core windows that partition the scene exactly once (scene pixels).
    transform, crs
        Scene affine transform (pixel → CRS) and CRS; outputs are in this CRS.
    scores
        Optional ``{building_id: score}``; missing ids get NaN.
    min_area_m2
        Buildings whose pixel polygon is smaller than this (m²) are dropped, with a
        :class:`GeometryDropWarning` giving the count.
    simplify_m
        Douglas-Peucker tolerance in metres when ``regularize`` is False (0: keep the
        exact pixel outline).
    regularize
        Square corners and align edges to each building's dominant orientation
        (:func:`terraseg.regularize.regularize_polygons`, in the metric frame). A
        building cut by the scene edge keeps its pixel outline (its outline there is
        the scene's, not its own).
    regularize_tolerance_m
        Simplification tolerance of the regularizer, metres (default: the larger of
        ``simplify_m`` and 1.5 pixels; raise it for noisy model output).
    min_iou
        A regularized building whose IoU with its simplified outline is below this
        falls back to the simplified outline.

    Returns
    -------
    geopandas.GeoDataFrame
        Columns ``building_id`` (int64), ``score`` (float), ``area_m2`` (of the output
        geometry, m²), ``class`` (``"building"``), ``geometry`` (Polygon or MultiPolygon,
        valid, holes kept), in the scene CRS, sorted by ``building_id``; one row per
        id. A building crossing chunk edges comes out whole, and the output does not
        depend on the chunking (for 4-connected ids).

    Notes
    -----
    Without simplification or regularization, rasterizing the output on the scene
    grid (``rasterio.features.rasterize`` with ``transform``) gives the instance
    raster back exactly.
    """
    batches = list(
        iter_buildings(
            read_instances,
            windows,
            transform,
            crs,
            scores=scores,
            min_area_m2=min_area_m2,
            simplify_m=simplify_m,
            regularize=regularize,
            regularize_tolerance_m=regularize_tolerance_m,
            min_iou=min_iou,
        )
    )
    if not batches:
        return _empty_buildings(crs)
    out = gpd.GeoDataFrame(
        pd.concat(batches, ignore_index=True), geometry="geometry", crs=batches[0].crs
    )
    out = out.sort_values("building_id", kind="stable", ignore_index=True)
    dup = out["building_id"].duplicated(keep=False).to_numpy()
    if dup.any():  # an id split into parts that no chunk edge joins: one row per id
        merged = out[dup].dissolve(by="building_id", aggfunc={"score": "first", "area_m2": "sum"})
        merged["class"] = "building"
        merged = merged.set_geometry(shapely.normalize(merged.geometry.array))
        merged = merged.reset_index()[list(out.columns)]
        out = pd.concat([out[~dup], merged], ignore_index=True)
        out = out.sort_values("building_id", kind="stable", ignore_index=True)
        out = gpd.GeoDataFrame(out, geometry="geometry", crs=batches[0].crs)
    return out


def _empty_buildings(crs: SomeCRS) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(
        {
            "building_id": np.empty(0, np.int64),
            "score": np.empty(0),
            "area_m2": np.empty(0),
            "class": pd.Series([], dtype=object),
        },
        geometry=gpd.GeoSeries([], crs=pyproj.CRS.from_user_input(crs)),
    )


# --------------------------------------------------------------------------- roads


def iter_roads(
    read_classes: ReadFn,
    windows: Sequence[PixelWindow],
    transform: Affine,
    crs: SomeCRS,
    *,
    road_class: int = 2,
    min_area_m2: float = 0.0,
    simplify_m: float = 0.0,
) -> Iterator[gpd.GeoDataFrame]:
    """Vectorize the road class of a class raster chunk by chunk, yielding batches.

    Same parameters and columns as :func:`vectorize_roads`; after each chunk, the
    road regions it completed (if any) are yielded as one GeoDataFrame.
    """
    layout = ChunkLayout(windows)
    frame = MetricFrame.from_scene(transform, crs, layout.scene_shape)
    opts = _options(frame, layout.scene_shape, min_area_m2, simplify_m, False, None, 0.0)
    dis = _Dissolver(layout)
    strips: dict[tuple[int, int], tuple[NDArray[np.int32], dict[int, int]]] = {}
    drops = _Drops()
    for i, window in enumerate(layout.windows):
        labels = _as_2d(read_classes(window), window)
        comp, n = _components(labels == road_class)
        dis.done.add(i)
        sides = _internal_sides(window, layout.scene_shape)
        if n:
            comp_ids, polys = _group_parts(*_shapes_px(comp, window))
            edges = _edge_flags(comp, comp_ids, sides)
        else:
            comp_ids, polys, edges = (
                np.empty(0, np.int64),
                np.empty(0, object),
                np.empty(0, np.uint8),
            )
        keys: dict[int, int] = {}
        for k in np.flatnonzero(edges):
            keys[int(comp_ids[k])] = dis.add(i, polys[k], road_class, int(edges[k]))
        for side in sides:
            strip = _strip(comp, side).copy()
            for j in layout.neighbours[i][side]:
                other = strips.get((j, _OPPOSITE[side]))
                if other is not None:
                    _connect(dis, window, side, strip, keys, layout.windows[j], *other)
            strips[(i, side)] = (strip, keys)
        for side in sides:  # free the strips whose neighbours are all read
            opp = _OPPOSITE[side]
            for j in layout.neighbours[i][side]:
                if all(k in dis.done for k in layout.neighbours[j][opp]):
                    strips.pop((j, opp), None)
            if all(j in dis.done for j in layout.neighbours[i][side]):
                strips.pop((i, side), None)
        groups = dis.finish(i, keys.values())
        geoms = [polys[edges == 0]]
        if groups:
            geoms.append(_dissolve(groups))
        batch_geoms = np.concatenate(geoms)
        if len(batch_geoms):
            batch = _road_frame(batch_geoms, opts, drops)
            if len(batch):
                yield batch
    drops.warn("vectorize_roads", min_area_m2)


def _connect(
    dis: _Dissolver,
    window: PixelWindow,
    side: int,
    strip: NDArray[np.int32],
    keys: dict[int, int],
    other_window: PixelWindow,
    other_strip: NDArray[np.int32],
    other_keys: dict[int, int],
) -> None:
    """Union the parts whose edge pixels are 4-adjacent across the shared edge."""
    if side in (EDGE_TOP, EDGE_BOTTOM):
        lo, hi = (
            max(window.col_off, other_window.col_off),
            min(window.col_stop, other_window.col_stop),
        )
        a = strip[lo - window.col_off : hi - window.col_off]
        b = other_strip[lo - other_window.col_off : hi - other_window.col_off]
    else:
        lo, hi = (
            max(window.row_off, other_window.row_off),
            min(window.row_stop, other_window.row_stop),
        )
        a = strip[lo - window.row_off : hi - window.row_off]
        b = other_strip[lo - other_window.row_off : hi - other_window.row_off]
    both = (a != 0) & (b != 0)
    if not both.any():
        return
    pairs = np.unique(np.column_stack([a[both], b[both]]), axis=0)
    for ca, cb in pairs.tolist():
        dis.union(keys[ca], other_keys[cb])


def _road_frame(geoms_px: Geoms, opts: _PolygonOptions, drops: _Drops) -> gpd.GeoDataFrame:
    geoms, area, _ = _finish_polygons(geoms_px, opts, drops)
    return gpd.GeoDataFrame(
        {"area_m2": area, "class": pd.Series(["road"] * len(area), dtype=object)},
        geometry=gpd.GeoSeries(geoms, crs=opts.frame.crs),
    )


def vectorize_roads(
    read_classes: ReadFn,
    windows: Sequence[PixelWindow],
    transform: Affine,
    crs: SomeCRS,
    *,
    road_class: int = 2,
    min_area_m2: float = 0.0,
    simplify_m: float = 0.0,
) -> gpd.GeoDataFrame:
    """Road polygons from a class raster, read chunk by chunk.

    Parameters
    ----------
    read_classes
        ``read(window) -> labels``: ``(y, x)`` (or ``(1, y, x)``) class values of a window.
    windows
        Chunk core windows that partition the scene exactly once (scene pixels).
    transform, crs
        Scene affine transform and CRS; outputs are in this CRS.
    road_class
        Class value of roads.
    min_area_m2
        Road regions smaller than this (m²) are dropped, with a warning giving the count.
    simplify_m
        Douglas-Peucker tolerance in metres (0: the exact pixel outline).

    Returns
    -------
    geopandas.GeoDataFrame
        One row per 4-connected road region, whole however many chunks it crosses:
        ``area_m2`` (m²), ``class`` (``"road"``), ``geometry`` (valid Polygon, holes
        kept), in the scene CRS, sorted by the lower-left corner of their bounds.
    """
    batches = list(
        iter_roads(
            read_classes,
            windows,
            transform,
            crs,
            road_class=road_class,
            min_area_m2=min_area_m2,
            simplify_m=simplify_m,
        )
    )
    if not batches:
        return gpd.GeoDataFrame(
            {"area_m2": np.empty(0), "class": pd.Series([], dtype=object)},
            geometry=gpd.GeoSeries([], crs=pyproj.CRS.from_user_input(crs)),
        )
    out = gpd.GeoDataFrame(
        pd.concat(batches, ignore_index=True), geometry="geometry", crs=batches[0].crs
    )
    if len(out):
        b = out.geometry.bounds
        out = out.iloc[np.lexsort((b["miny"].to_numpy(), b["minx"].to_numpy()))].reset_index(
            drop=True
        )
    return out


# --------------------------------------------------------------------------- matching


@dataclass(frozen=True)
class PolygonMatch:
    """Greedy one-to-one matching of predicted to true polygons by IoU.

    Attributes
    ----------
    pred_index, truth_index
        Positions of the matched pairs (IoU at least the threshold).
    iou
        IoU of each matched pair.
    n_pred, n_truth
        Number of predicted and true polygons.
    """

    pred_index: NDArray[np.int64]
    truth_index: NDArray[np.int64]
    iou: NDArray[np.float64]
    n_pred: int
    n_truth: int

    @property
    def precision(self) -> float:
        """Matched / predicted (1.0 when nothing was predicted)."""
        return len(self.iou) / self.n_pred if self.n_pred else 1.0

    @property
    def recall(self) -> float:
        """Matched / true (1.0 when there is no truth)."""
        return len(self.iou) / self.n_truth if self.n_truth else 1.0

    @property
    def f1(self) -> float:
        """Harmonic mean of precision and recall."""
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def match_polygons(
    pred: Sequence[Any] | Geoms, truth: Sequence[Any] | Geoms, *, iou_threshold: float = 0.5
) -> PolygonMatch:
    """Match predicted to true polygons one-to-one, greedily by decreasing IoU.

    Both must be in the same CRS. Candidate pairs come from an STRtree on ``truth``.

    Examples
    --------
    >>> from shapely import box
    >>> m = match_polygons([box(0, 0, 2, 2), box(5, 5, 6, 6)], [box(0, 0, 2, 1.8)])
    >>> m.pred_index.tolist(), round(float(m.iou[0]), 2), m.f1
    ([0], 0.9, 0.6666666666666666)
    """
    p = np.asarray(pred, object)
    t = np.asarray(truth, object)
    empty = PolygonMatch(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0), len(p), len(t))
    if len(p) == 0 or len(t) == 0:
        return empty
    pi, ti = shapely.STRtree(t).query(p, predicate="intersects")
    if len(pi) == 0:
        return empty
    inter = shapely.area(shapely.intersection(p[pi], t[ti]))
    iou = inter / (shapely.area(p[pi]) + shapely.area(t[ti]) - inter)
    order = np.argsort(-iou, kind="stable")
    used_p: set[int] = set()
    used_t: set[int] = set()
    rows = []
    for k in order:
        if iou[k] < iou_threshold:
            break
        a, b = int(pi[k]), int(ti[k])
        if a in used_p or b in used_t:
            continue
        used_p.add(a)
        used_t.add(b)
        rows.append(k)
    sel = np.asarray(rows, np.int64)
    return PolygonMatch(
        pi[sel].astype(np.int64), ti[sel].astype(np.int64), iou[sel], len(p), len(t)
    )
