"""The seed-determined layout of a synthetic city, and its features per region.

A :class:`CityLayout` is a handful of numbers (shape, seed, ground sample
distance, transform, style); everything else is computed on demand, block by
block, and memoised in a small bounded cache. Pixel space has ``x = col`` and
``y = row`` (global scene pixels); truth geometry is in the scene CRS.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import shapely
from affine import Affine
from numpy.typing import NDArray
from shapely.geometry import box

from terraseg.core.grid import PixelWindow
from terraseg.synthetic.blocks import MAX_BUILDINGS_PER_BLOCK, BlockContent, rect_arrays
from terraseg.synthetic.fill import build_block
from terraseg.synthetic.noise import key_of
from terraseg.synthetic.streets import CityStyle, Streets, unit

__all__ = ["CityLayout", "PixelBlock", "TruthFeatures", "SPILL_M"]

SPILL_M = 70.0
"""How far (metres) a block's features can reach beyond its cell: roads,
street trees and the longest shadows."""

_TRUTH_MARGIN_M = 30.0
GeomArray = NDArray[np.object_]


def _geoms(items: list[object]) -> GeomArray:
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


@dataclass(frozen=True, slots=True)
class TruthFeatures:
    """Ground-truth vectors in the scene CRS, clipped to the scene.

    ``buildings`` are Polygons with ``building_id`` (ascending); ``roads`` are
    (Multi)Polygons with ``road_class`` (index into ``ROAD_CLASSES``) and
    ``road_width_m``; ``centerlines`` are LineStrings with ``width_m``.
    """

    buildings: GeomArray
    building_id: NDArray[np.int64]
    roads: GeomArray
    road_class: NDArray[np.int8]
    road_width_m: NDArray[np.float32]
    centerlines: GeomArray
    width_m: NDArray[np.float32]

    @classmethod
    def concat(cls, parts: list[TruthFeatures]) -> TruthFeatures:
        def cat(name: str, dtype: type) -> NDArray[Any]:
            arrays = [getattr(p, name) for p in parts]
            return np.concatenate(arrays) if arrays else np.empty(0, dtype=dtype)

        return cls(
            cat("buildings", object),
            cat("building_id", np.int64),
            cat("roads", object),
            cat("road_class", np.int8),
            cat("road_width_m", np.float32),
            cat("centerlines", object),
            cat("width_m", np.float32),
        )


@dataclass(slots=True)
class PixelBlock:
    """One block's features in global pixel space, plus its clipped CRS truth.

    Frames are rows ``(cx, cy, ax, ay, half_len, half_wid)`` in pixels with a
    unit axis; ``cars`` add a material code, ``trees`` are ``(x, y, radius_px,
    height_m, tone)``.
    """

    key: tuple[int, int]
    bld_colour: NDArray[np.float32]
    part_geom: GeomArray
    part_bld: NDArray[np.int64]
    part_frame: NDArray[np.float64]
    part_kind: NDArray[np.int8]
    ground_geom: GeomArray
    ground_mat: NDArray[np.uint8]
    ground_layer: NDArray[np.int16]
    overlay_geom: GeomArray
    overlay_mat: NDArray[np.uint8]
    paint: NDArray[np.float64]
    cars: NDArray[np.float64]
    trees: NDArray[np.float64]
    shadow_geom: GeomArray
    truth: TruthFeatures


class _LRU:
    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.data: OrderedDict[tuple[int, int], PixelBlock] = OrderedDict()

    def get(self, key: tuple[int, int]) -> PixelBlock | None:
        item = self.data.get(key)
        if item is not None:
            self.data.move_to_end(key)
        return item

    def put(self, key: tuple[int, int], value: PixelBlock) -> None:
        self.data[key] = value
        while len(self.data) > self.maxsize:
            self.data.popitem(last=False)


@dataclass(frozen=True, slots=True)
class CityLayout:
    """The global, seed-determined layout of a synthetic city.

    Parameters
    ----------
    shape
        Scene ``(rows, cols)`` in pixels.
    seed
        The city; the same seed and ground sample distance give the same
        city (a smaller scene is the top-left part of a larger one).
    gsd_m
        Ground sample distance, metres per pixel.
    transform
        Pixel-to-CRS affine transform of the scene (truth vectors use it).
    style
        Look of the city; drawn from ``seed`` by :meth:`from_seed`.
    """

    shape: tuple[int, int]
    seed: int
    gsd_m: float
    transform: Affine
    style: CityStyle
    offset_m: tuple[float, float]
    cache_blocks: int = 192
    _cache: _LRU = field(default_factory=lambda: _LRU(192), compare=False, hash=False, repr=False)
    _streets: list[Streets] = field(default_factory=list, compare=False, hash=False, repr=False)

    @classmethod
    def from_seed(
        cls,
        shape: tuple[int, int],
        seed: int,
        gsd_m: float,
        *,
        transform: Affine | None = None,
        style: CityStyle | None = None,
        cache_blocks: int = 192,
    ) -> CityLayout:
        """Lay out the city of ``seed`` over a scene of ``shape`` pixels.

        ``transform`` defaults to pixel coordinates (``x = col``, ``y = row``).

        Examples
        --------
        >>> lay = CityLayout.from_seed((256, 300), seed=3, gsd_m=0.5)
        >>> lay.shape, lay == CityLayout.from_seed((256, 300), seed=3, gsd_m=0.5)
        ((256, 300), True)
        """
        st = style or CityStyle.from_seed(seed)
        k = key_of(seed, "offset")
        offset = (unit(k, 0) * st.pitch_m[0], unit(k, 1) * st.pitch_m[1])
        lay = cls(
            shape=(int(shape[0]), int(shape[1])),
            seed=int(seed),
            gsd_m=float(gsd_m),
            transform=transform if transform is not None else Affine.identity(),
            style=st,
            offset_m=offset,
            cache_blocks=cache_blocks,
            _cache=_LRU(cache_blocks),
        )
        lay._streets.append(Streets(int(seed), st))
        return lay

    def __dask_tokenize__(self) -> tuple[object, ...]:
        return ("CityLayout", self.shape, self.seed, self.gsd_m, tuple(self.transform), self.style)

    # -- frames ----------------------------------------------------------------------
    @property
    def streets(self) -> Streets:
        """The street network (computed on demand)."""
        return self._streets[0]

    def _to_pixel_matrix(self) -> tuple[float, float, float, float, float, float]:
        """``(a, b, c, d, e, f)``: ``x = a u + b v + c``, ``y = d u + e v + f``."""
        th = math.radians(self.style.rotation_deg)
        g = self.gsd_m
        a, b = math.cos(th) / g, -math.sin(th) / g
        d, e = math.sin(th) / g, math.cos(th) / g
        du, dv = self.offset_m
        return a, b, -(a * du + b * dv), d, e, -(d * du + e * dv)

    def _to_lattice(self, x: NDArray[np.float64], y: NDArray[np.float64]) -> NDArray[np.float64]:
        th = math.radians(self.style.rotation_deg)
        g = self.gsd_m
        u = (math.cos(th) * x + math.sin(th) * y) * g + self.offset_m[0]
        v = (-math.sin(th) * x + math.cos(th) * y) * g + self.offset_m[1]
        return np.stack([u, v])

    def _lattice_box(
        self, x0: float, y0: float, x1: float, y1: float, margin_m: float
    ) -> tuple[float, float, float, float]:
        uv = self._to_lattice(np.array([x0, x1, x0, x1]), np.array([y0, y0, y1, y1]))
        return (
            float(uv[0].min()) - margin_m,
            float(uv[1].min()) - margin_m,
            float(uv[0].max()) + margin_m,
            float(uv[1].max()) + margin_m,
        )

    def blocks_near(
        self, x0: float, y0: float, x1: float, y1: float, margin_m: float
    ) -> list[tuple[int, int]]:
        """Blocks ``(i, j)`` whose cells come within ``margin_m`` of a pixel box, row-major."""
        u0, v0, u1, v1 = self._lattice_box(x0, y0, x1, y1, margin_m)
        out = []
        for j in self.streets.index_range("h", v0, v1):
            for i in self.streets.index_range("v", u0, u1):
                b = self.streets.cell_bounds(i, j)
                if b[0] <= u1 and b[2] >= u0 and b[1] <= v1 and b[3] >= v0:
                    out.append((i, j))
        return out

    def _truth_range(self) -> tuple[range, range]:
        rows, cols = self.shape
        u0, v0, u1, v1 = self._lattice_box(0, 0, cols, rows, _TRUTH_MARGIN_M)
        return self.streets.index_range("v", u0, u1), self.streets.index_range("h", v0, v1)

    def _id_base(self, i: int, j: int) -> int | None:
        ri, rj = self._truth_range()
        if i not in ri or j not in rj:
            return None
        return ((j - rj.start) * len(ri) + (i - ri.start)) * MAX_BUILDINGS_PER_BLOCK

    # -- blocks ----------------------------------------------------------------------
    def block(self, i: int, j: int) -> PixelBlock:
        """Block ``(i, j)`` in pixel space (memoised)."""
        cached = self._cache.get((i, j))
        if cached is not None:
            return cached
        content = build_block(self.streets, i, j)
        pb = self._to_pixel_block((i, j), content)
        self._cache.put((i, j), pb)
        return pb

    def _tx(self, geoms: list[object]) -> GeomArray:
        """Lattice-metre geometries to global pixel space."""
        a, b, c, d, e, f = self._to_pixel_matrix()
        arr = _geoms(geoms)
        if len(arr) == 0:
            return arr

        def move(p: NDArray[np.float64]) -> NDArray[np.float64]:
            return np.stack([a * p[:, 0] + b * p[:, 1] + c, d * p[:, 0] + e * p[:, 1] + f], 1)

        return np.asarray(shapely.transform(arr, move), dtype=object)

    def sun_px(self) -> tuple[float, float]:
        """Shadow offset in pixels per metre of height, ``(dx, dy)``."""
        st = self.style
        az, el = math.radians(st.sun_azimuth_deg), math.radians(st.sun_elevation_deg)
        g = self.gsd_m
        return -math.sin(az) / math.tan(el) / g, math.cos(az) / math.tan(el) / g

    def _to_pixel_block(self, key: tuple[int, int], c: BlockContent) -> PixelBlock:
        a, b, cc, d, e, f = self._to_pixel_matrix()
        g = self.gsd_m

        def frames_px(fr: NDArray[np.float64], width: int) -> NDArray[np.float64]:
            fr = fr.reshape(-1, width)
            out = fr.copy()
            out[:, 0] = a * fr[:, 0] + b * fr[:, 1] + cc
            out[:, 1] = d * fr[:, 0] + e * fr[:, 1] + f
            if width >= 6:
                out[:, 2] = (a * fr[:, 2] + b * fr[:, 3]) * g
                out[:, 3] = (d * fr[:, 2] + e * fr[:, 3]) * g
                out[:, 4:6] = fr[:, 4:6] / g
            else:
                out[:, 2] = fr[:, 2] / g
            return out

        parts = frames_px(np.asarray(c.parts, dtype=np.float64), 6)
        part_geom = _rect_polygons(parts)
        heights = np.asarray(c.heights_m, dtype=np.float64)[
            np.asarray(c.part_building, dtype=np.int64)
        ]
        sx, sy = self.sun_px()
        rects = frames_px(np.asarray(c.rect_areas, dtype=np.float64), 8)
        ground = np.concatenate([self._tx([gm for gm, _, _ in c.ground]), _rect_polygons(rects)])
        layer = np.concatenate(
            [
                np.asarray([lay for _, _, lay in c.ground], dtype=np.int16),
                rects[:, 7].astype(np.int16),
            ]
        )
        mat = np.concatenate(
            [np.asarray([m for _, m, _ in c.ground], dtype=np.uint8), rects[:, 6].astype(np.uint8)]
        )
        order = np.argsort(layer, kind="stable")
        normal = order[layer[order] < 99]
        over = order[layer[order] >= 99]
        paint = np.concatenate(c.paint) if c.paint else np.zeros((0, 7))
        return PixelBlock(
            key=key,
            bld_colour=np.asarray(c.colours, dtype=np.float32).reshape(-1, 4),
            part_geom=part_geom,
            part_bld=np.asarray(c.part_building, dtype=np.int64),
            part_frame=parts,
            part_kind=np.asarray(c.part_kind, dtype=np.int8),
            ground_geom=ground[normal],
            ground_mat=mat[normal],
            ground_layer=layer[normal],
            overlay_geom=ground[over],
            overlay_mat=mat[over],
            paint=frames_px(paint, 7),
            cars=frames_px(np.asarray(c.cars, dtype=np.float64), 7),
            trees=frames_px(np.asarray(c.trees, dtype=np.float64), 5),
            shadow_geom=_sweep(part_geom, heights * sx, heights * sy),
            truth=self._truth(key, self._tx(list(c.buildings)), c),
        )

    def _truth(self, key: tuple[int, int], bld_px: GeomArray, c: BlockContent) -> TruthFeatures:
        base = self._id_base(*key)
        if base is None:
            return TruthFeatures.concat([])
        tx = self._tx
        rows, cols = self.shape
        scene = box(0.0, 0.0, float(cols), float(rows))
        ids = base + 1 + np.arange(len(bld_px), dtype=np.int64)
        bld, keep = _clip_polygons(bld_px, scene, min_area=1.0)
        roads, rkeep = _clip_polygons(
            tx([r for r, _, _ in c.roads]), scene, min_area=0.5, multi=True
        )
        lines = _clip_lines(tx([ln for ln, _ in c.centerlines]), scene)
        t = self.transform

        def to_crs(p: NDArray[np.float64]) -> NDArray[np.float64]:
            return np.stack(
                [t.a * p[:, 0] + t.b * p[:, 1] + t.c, t.d * p[:, 0] + t.e * p[:, 1] + t.f], 1
            )

        widths = np.asarray([w for _, w in c.centerlines], dtype=np.float32)
        line_idx = np.zeros(0, dtype=np.int64)
        line_geoms = lines
        if len(lines):
            parts, line_idx = shapely.get_parts(lines, return_index=True)
            line_geoms = np.asarray(parts, dtype=object)
        ok = ~np.asarray(shapely.is_empty(line_geoms), dtype=bool)
        return TruthFeatures(
            buildings=np.asarray(shapely.transform(bld[keep], to_crs), dtype=object),
            building_id=ids[keep],
            roads=np.asarray(shapely.transform(roads[rkeep], to_crs), dtype=object),
            road_class=np.asarray([r for _, r, _ in c.roads], dtype=np.int8)[rkeep],
            road_width_m=np.asarray([w for _, _, w in c.roads], dtype=np.float32)[rkeep],
            centerlines=np.asarray(shapely.transform(line_geoms[ok], to_crs), dtype=object),
            width_m=widths[line_idx][ok],
        )

    # -- queries ---------------------------------------------------------------------
    def blocks_for_window(self, window: PixelWindow, margin_px: int = 0) -> list[PixelBlock]:
        """Blocks whose features may show in ``window`` grown by ``margin_px``."""
        m = margin_px
        keys = self.blocks_near(
            window.col_off - m,
            window.row_off - m,
            window.col_stop + m,
            window.row_stop + m,
            SPILL_M,
        )
        return [self.block(i, j) for i, j in keys]

    def features_in(self, window: PixelWindow) -> TruthFeatures:
        """Truth vectors (scene CRS, clipped to the scene) that intersect ``window``."""
        blocks = self.blocks_for_window(window)
        t = self.transform
        x0, y0 = t * (window.col_off, window.row_off)
        x1, y1 = t * (window.col_stop, window.row_stop)
        region = box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
        parts = []
        for blk in blocks:
            tr = blk.truth
            kb = (
                shapely.intersects(tr.buildings, region) if len(tr.buildings) else np.empty(0, bool)
            )
            kr = shapely.intersects(tr.roads, region) if len(tr.roads) else np.empty(0, bool)
            kl = (
                shapely.intersects(tr.centerlines, region)
                if len(tr.centerlines)
                else np.empty(0, bool)
            )
            parts.append(
                TruthFeatures(
                    tr.buildings[kb],
                    tr.building_id[kb],
                    tr.roads[kr],
                    tr.road_class[kr],
                    tr.road_width_m[kr],
                    tr.centerlines[kl],
                    tr.width_m[kl],
                )
            )
        return TruthFeatures.concat(parts)

    def iter_truth_rows(self) -> Iterator[TruthFeatures]:
        """Truth of the whole scene, one lattice row of blocks at a time, ids ascending.

        Every truth feature belongs to exactly one block, so the rows partition
        the scene's truth.
        """
        rows, cols = self.shape
        keys = self.blocks_near(0, 0, cols, rows, _TRUTH_MARGIN_M)
        for j in self._truth_range()[1]:
            row = [self.block(i, jj).truth for i, jj in keys if jj == j]
            yield TruthFeatures.concat(row)

    def n_truth_rows(self) -> int:
        return len(self._truth_range()[1])


def _rect_polygons(frames: NDArray[np.float64]) -> GeomArray:
    """Rectangles from rows ``(cx, cy, ax, ay, half_len, half_wid, ...)``, vectorised."""
    if len(frames) == 0:
        return _geoms([])
    xs, ys = rect_arrays(frames[:, :6])
    return np.asarray(shapely.polygons(np.stack([xs, ys], 2)), dtype=object)


def _sweep(geoms: GeomArray, dx: NDArray[np.float64], dy: NDArray[np.float64]) -> GeomArray:
    """Convex hull of each geometry and its copy moved by ``(dx, dy)`` (shadow of a box)."""
    if len(geoms) == 0:
        return _geoms([])
    coords, index = shapely.get_coordinates(geoms, return_index=True)
    moved = coords + np.stack([dx[index], dy[index]], 1)
    pts = np.concatenate([coords, moved])
    idx = np.concatenate([index, index])
    order = np.argsort(idx, kind="stable")
    mp = shapely.multipoints(pts[order], indices=idx[order])
    return np.asarray(shapely.convex_hull(mp), dtype=object)


def _clip_polygons(
    geoms: GeomArray, scene: shapely.Geometry, *, min_area: float, multi: bool = False
) -> tuple[GeomArray, NDArray[np.bool_]]:
    """Clip polygons to the scene box; returns the geometries and which to keep."""
    if len(geoms) == 0:
        return geoms, np.zeros(0, dtype=bool)
    out = geoms.copy()
    inside = shapely.contains(scene, geoms)
    for k in np.flatnonzero(~inside):
        g = shapely.intersection(geoms[k], scene)
        polys = [
            p for p in shapely.get_parts(g) if isinstance(p, shapely.Polygon) and not p.is_empty
        ]
        if not polys:
            out[k] = None
        elif multi:
            out[k] = shapely.MultiPolygon(polys) if len(polys) > 1 else polys[0]
        else:
            out[k] = max(polys, key=lambda p: p.area)
    keep = np.array([g is not None and g.area >= min_area for g in out], dtype=bool)
    return out, keep


def _clip_lines(geoms: GeomArray, scene: shapely.Geometry) -> GeomArray:
    if len(geoms) == 0:
        return geoms
    out = geoms.copy()
    inside = shapely.contains(scene, geoms)
    for k in np.flatnonzero(~inside):
        out[k] = shapely.intersection(geoms[k], scene)
    return out
