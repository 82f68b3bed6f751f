"""Primitives for the content of a city block: features and their placement.

Pure geometry in lattice metres (see :mod:`terraseg.synthetic.streets`).
Everything about block ``(i, j)`` comes from an RNG seeded by
``(seed, i, j)``, so a block is generated identically whichever window asks.
Buildings never overlap each other or a road; terrace units share walls
exactly (their polygons are built from the same corner coordinates).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

import numpy as np
import shapely
from numpy.typing import NDArray
from shapely.geometry import LineString, Polygon
from shapely.geometry.base import BaseGeometry

__all__ = [
    "BlockContent",
    "Builder",
    "Frontage",
    "Polyline",
    "Mat",
    "rect",
    "clean_polygon",
    "MAX_BUILDINGS_PER_BLOCK",
    "ROOF_FLAT",
    "ROOF_GABLE",
    "ROOF_HIP",
    "rect_arrays",
    "poly_of",
    "L_BASE",
    "L_AREA",
    "L_SIDEWALK",
    "L_ROAD",
    "L_CAR",
]

MAX_BUILDINGS_PER_BLOCK = 255

ROOF_FLAT, ROOF_GABLE, ROOF_HIP = 0, 1, 2


_CAR_CDF = np.cumsum([0.3, 0.22, 0.22, 0.1, 0.1, 0.06])[:-1]


class Mat:
    """Ground material codes (index the render's colour table)."""

    BACKGROUND, LAWN, SOIL, SIDEWALK, ROAD_DARK, ROAD, PARKING, PAVED = range(8)
    WATER, POOL, PATH, DRYGRASS, GRAVEL, ROOF_UNIT, SOLAR, LAWN2 = range(8, 16)
    CAR0 = 16  # CAR0 .. CAR0 + 5 are car colours
    N = 24


# ground drawing layers (later layers are drawn over earlier ones)
L_BASE, L_AREA, L_SIDEWALK, L_ROAD, L_CAR = range(5)

_PALETTES: tuple[tuple[tuple[int, int, int], ...], ...] = (
    # temperate: slate, dark grey, red-brown tiles, brown
    ((78, 80, 86), (98, 96, 98), (142, 74, 58), (120, 86, 66), (60, 62, 70), (160, 96, 72)),
    # mediterranean: terracotta, cream, light grey
    ((172, 96, 70), (186, 110, 80), (204, 198, 184), (156, 86, 62), (184, 180, 172)),
    # suburban: shingle greys and browns
    ((112, 108, 104), (92, 84, 78), (136, 122, 104), (72, 72, 78), (150, 140, 128)),
)
_FLAT_ROOFS: tuple[tuple[int, int, int], ...] = (
    (196, 196, 192),
    (168, 168, 166),
    (120, 122, 124),
    (88, 90, 94),
    (214, 212, 204),
)


@dataclass(slots=True)
class BlockContent:
    """What one block adds to the scene, in lattice metres.

    ``parts`` rows are roof rectangles ``(cu, cv, au, av, half_len, half_wid)``
    with the ridge along ``(au, av)``; ``part_building`` indexes ``buildings``.
    """

    buildings: list[Polygon] = field(default_factory=list)
    heights_m: list[float] = field(default_factory=list)
    colours: list[tuple[float, float, float, float]] = field(default_factory=list)
    parts: list[tuple[float, float, float, float, float, float]] = field(default_factory=list)
    part_kind: list[int] = field(default_factory=list)
    part_building: list[int] = field(default_factory=list)
    ground: list[tuple[BaseGeometry, int, int]] = field(default_factory=list)
    paint: list[NDArray[np.float64]] = field(default_factory=list)  # (n, 7) frames + kind
    trees: list[tuple[float, float, float, float, float]] = field(default_factory=list)
    roads: list[tuple[BaseGeometry, int, float]] = field(default_factory=list)
    centerlines: list[tuple[LineString, float]] = field(default_factory=list)
    cars: list[tuple[float, float, float, float, float, float, float]] = field(default_factory=list)
    rect_areas: list[tuple[float, float, float, float, float, float, float, float]] = field(
        default_factory=list
    )  # rectangles of ground: frame, material, layer


def rect(cu: float, cv: float, au: float, av: float, hl: float, hw: float) -> NDArray[np.float64]:
    """Corners ``(4, 2)`` of a rectangle with centre, unit axis and half sizes."""
    pu, pv = -av, au
    return np.array(
        [
            [cu + au * hl + pu * hw, cv + av * hl + pv * hw],
            [cu - au * hl + pu * hw, cv - av * hl + pv * hw],
            [cu - au * hl - pu * hw, cv - av * hl - pv * hw],
            [cu + au * hl - pu * hw, cv + av * hl - pv * hw],
        ]
    )


def rect_arrays(frames: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Corner coordinates ``(us, vs)``, each ``(n, 4)``, of rows ``(cu, cv, au, av, hl, hw)``."""
    cu, cv, au, av, hl, hw = (frames[:, k] for k in range(6))
    pu, pv = -av, au
    us = np.stack(
        [
            cu + au * hl + pu * hw,
            cu - au * hl + pu * hw,
            cu - au * hl - pu * hw,
            cu + au * hl - pu * hw,
        ],
        1,
    )
    vs = np.stack(
        [
            cv + av * hl + pv * hw,
            cv - av * hl + pv * hw,
            cv - av * hl - pv * hw,
            cv + av * hl - pv * hw,
        ],
        1,
    )
    return us, vs


def poly_of(cu: float, cv: float, au: float, av: float, hl: float, hw: float) -> Polygon:
    """A rectangle polygon (faster than ``Polygon(rect(...))``)."""
    poly: Polygon = shapely.polygons(rect(cu, cv, au, av, hl, hw))
    return poly


class Polyline:
    """Arc-length access to a polyline: position and unit tangent at distance ``s``."""

    def __init__(self, coords: NDArray[np.float64]) -> None:
        self.coords = coords
        d = np.hypot(*np.diff(coords, axis=0).T)
        self.cum = np.concatenate([[0.0], np.cumsum(d)])
        self.length = float(self.cum[-1])
        self.cum_list: list[float] = self.cum.tolist()
        self.pts: list[list[float]] = coords.tolist()

    def pose(self, s: float) -> tuple[float, float, float, float]:
        """``(u, v, tu, tv)`` at arc length ``s`` (clamped to the line)."""
        cum = self.cum_list
        s = min(max(s, 0.0), self.length)
        k = min(max(bisect.bisect_right(cum, s) - 1, 0), len(cum) - 2)
        (au, av), (bu, bv) = self.pts[k], self.pts[k + 1]
        seg = max(cum[k + 1] - cum[k], 1e-9)
        t = (s - cum[k]) / seg
        return au + t * (bu - au), av + t * (bv - av), (bu - au) / seg, (bv - av) / seg


@dataclass(slots=True)
class Frontage:
    line: Polyline
    sign: float  # normal = sign * (-tv, tu) points into the block
    street_hw: float  # half carriageway + sidewalk (metres)
    start: float
    stop: float


class Builder:
    """Places features of one block, rejecting overlaps."""

    def __init__(self, rng: np.random.Generator, style_palette: int, tree_share: float) -> None:
        self.rng = rng
        self.land: BaseGeometry = Polygon()
        self.inner: BaseGeometry = Polygon()
        self.placed: list[Polygon] = []
        self.palette = _PALETTES[style_palette]
        self.palette_index = style_palette
        self.tree_share = tree_share
        self.out = BlockContent()
        self.bulb: tuple[float, float, float] | None = None

    def set_land(self, land: BaseGeometry) -> None:
        """Where buildings may stand (block minus streets and sidewalks)."""
        self.land = land
        self.inner = land.buffer(-0.6)
        shapely.prepare(self.inner)

    # -- buildings -------------------------------------------------------------------
    def fits(self, poly: BaseGeometry, gap: float) -> bool:
        if len(self.out.buildings) >= MAX_BUILDINGS_PER_BLOCK or not self.inner.contains(poly):
            return False
        if not self.placed:
            return True
        return not bool(shapely.dwithin(np.asarray(self.placed), poly, gap).any())

    def colour(self, flat: bool, jitter: float = 0.09) -> tuple[float, float, float, float]:
        """A roof colour from the palette: brightness varies, hue barely."""
        base = _FLAT_ROOFS if flat else self.palette
        r, g, b = base[int(self.rng.integers(len(base)))]
        k = 1.0 + self.rng.normal(0.0, jitter)
        d = self.rng.normal(0.0, 3.0, 3)
        rgb = (r * k + d[0], g * k + d[1], b * k + d[2])
        nir = 0.55 * (rgb[0] + rgb[1] + rgb[2]) / 3.0 + 30.0
        return (rgb[0], rgb[1], rgb[2], nir)

    def add_building(
        self,
        poly: Polygon,
        parts: list[tuple[float, float, float, float, float, float]],
        kind: int,
        height: float,
        colour: tuple[float, float, float, float],
    ) -> None:
        index = len(self.out.buildings)
        self.out.buildings.append(poly)
        self.out.heights_m.append(height)
        self.out.colours.append(colour)
        for frame in parts:
            self.out.parts.append(frame)
            self.out.part_kind.append(kind)
            self.out.part_building.append(index)
        self.placed.append(poly)

    @staticmethod
    def _wing(
        cu: float,
        cv: float,
        au: float,
        av: float,
        nu: float,
        nv: float,
        at: float,
        d: float,
        ww: float,
        wl: float,
    ) -> tuple[float, float, float, float, float, float]:
        """A wing from the middle of a house to ``wl`` behind it, centred ``at`` along it."""
        half = (d / 2 + wl) / 2
        return (cu + au * at + nu * half, cv + av * at + nv * half, nu, nv, half, ww / 2)

    def try_house(
        self,
        cu: float,
        cv: float,
        au: float,
        av: float,
        nu: float,
        nv: float,
        w: float,
        d: float,
        height: float,
    ) -> bool:
        """A detached house: rectangle, L- or U-shape; ``(nu, nv)`` points away from the street."""
        rng = self.rng
        shape = rng.random()
        parts = [(cu, cv, au, av, w / 2, d / 2)]
        if shape < 0.3:  # L: a wing behind one end
            ww = rng.uniform(3.5, min(6.5, w * 0.5))
            wl = rng.uniform(4.0, 8.0)
            side = 1.0 if rng.random() < 0.5 else -1.0
            parts.append(self._wing(cu, cv, au, av, nu, nv, side * (w / 2 - ww / 2), d, ww, wl))
        elif shape < 0.38 and w > 11:  # U: wings behind both ends
            ww = rng.uniform(3.0, w * 0.3)
            wl = rng.uniform(4.0, 7.0)
            for side in (-1.0, 1.0):
                parts.append(self._wing(cu, cv, au, av, nu, nv, side * (w / 2 - ww / 2), d, ww, wl))
        polys = [poly_of(*p) for p in parts]
        poly = polys[0] if len(polys) == 1 else shapely.union_all(polys)
        poly = clean_polygon(poly)
        if poly is None or not self.fits(poly, 1.5):
            return False
        kind = [1, 2, 2, 0][int(rng.integers(4))] if len(parts) == 1 else int(rng.integers(1, 3))
        self.add_building(poly, parts, kind, height, self.colour(kind == 0))
        return True

    def try_row(
        self,
        cu: float,
        cv: float,
        au: float,
        av: float,
        widths: list[float],
        depths: list[float],
        heights: list[float],
        flat: bool,
        gap: float,
    ) -> int:
        """A row of buildings sharing walls (terraces); returns how many were placed.

        Units are built from one array of wall positions along the row, so
        neighbours share their wall coordinates exactly and touch without
        overlapping.
        """
        nu, nv = -av, au
        walls = np.concatenate([[0.0], np.cumsum(widths)])
        walls -= walls[-1] / 2
        front_u, front_v = cu, cv
        max_d = max(depths)
        outline = poly_of(cu + nu * max_d / 2, cv + nv * max_d / 2, au, av, walls[-1], max_d / 2)
        if len(self.out.buildings) + len(widths) > MAX_BUILDINGS_PER_BLOCK or not self.fits(
            outline, gap
        ):
            return 0
        base = self.colour(flat)
        a, b = walls[:-1], walls[1:]
        d = np.asarray(depths)
        corners = np.stack(
            [
                np.stack([front_u + au * a, front_v + av * a], 1),
                np.stack([front_u + au * b, front_v + av * b], 1),
                np.stack([front_u + au * b + nu * d, front_v + av * b + nv * d], 1),
                np.stack([front_u + au * a + nu * d, front_v + av * a + nv * d], 1),
            ],
            1,
        )
        units = shapely.polygons(corners)
        mids = (a + b) / 2
        for k in range(len(widths)):
            if self.rng.random() < 0.15:
                colour = self.colour(flat)
            else:
                j = 1.0 + self.rng.normal(0.0, 0.05)
                colour = (base[0] * j, base[1] * j, base[2] * j, base[3] * j)
            frame = (
                front_u + au * mids[k] + nu * d[k] / 2,
                front_v + av * mids[k] + nv * d[k] / 2,
                au,
                av,
                (b[k] - a[k]) / 2,
                d[k] / 2,
            )
            self.out.buildings.append(units[k])
            self.out.heights_m.append(heights[k])
            self.out.colours.append(colour)
            self.out.parts.append(frame)
            self.out.part_kind.append(ROOF_FLAT if flat else ROOF_GABLE)
            self.out.part_building.append(len(self.out.buildings) - 1)
        self.placed.append(outline)
        return len(widths)

    def try_box(
        self,
        cu: float,
        cv: float,
        angle: float,
        hl: float,
        hw: float,
        height: float,
        gap: float,
        kind: int = ROOF_FLAT,
    ) -> bool:
        au, av = math.cos(angle), math.sin(angle)
        frame = (cu, cv, au, av, hl, hw)
        poly = poly_of(*frame)
        if not self.fits(poly, gap):
            return False
        self.add_building(poly, [frame], kind, height, self.colour(kind == ROOF_FLAT, 0.06))
        if kind == ROOF_FLAT and hl * hw > 150 and self.rng.random() < 0.8:
            self.roof_units(frame)
        return True

    def roof_units(self, frame: tuple[float, float, float, float, float, float]) -> None:
        """Small rooftop boxes (HVAC) or solar panels: image only."""
        cu, cv, au, av, hl, hw = frame
        n = int(self.rng.integers(1, 6))
        solar = self.rng.random() < 0.3
        for _ in range(n):
            x = self.rng.uniform(-hl + 3, hl - 3)
            y = self.rng.uniform(-hw + 3, hw - 3)
            sl, sw = (
                (self.rng.uniform(3, 8), self.rng.uniform(1.5, 3))
                if solar
                else (
                    self.rng.uniform(1.0, 2.5),
                    self.rng.uniform(1.0, 2.0),
                )
            )
            sl, sw = min(sl, hl - abs(x) - 0.5), min(sw, hw - abs(y) - 0.5)
            if sl <= 0.5 or sw <= 0.5:
                continue
            self.rect_area(
                cu + au * x - av * y,
                cv + av * x + au * y,
                au,
                av,
                sl,
                sw,
                Mat.SOLAR if solar else Mat.ROOF_UNIT,
                99,
            )

    # -- trees and ground -------------------------------------------------------------
    def tree(self, u: float, v: float, r: float, h: float | None = None) -> None:
        if h is None:
            h = r * self.rng.uniform(1.6, 2.6)
        self.out.trees.append((u, v, r, h, float(self.rng.random())))

    def scatter_trees(
        self, area: BaseGeometry, per_m2: float, r_lo: float, r_hi: float, avoid_m: float = 0.0
    ) -> None:
        """Trees in ``area``, half of them in clumps; none within ``avoid_m`` of a building."""
        if area.is_empty:
            return
        n = int(self.rng.poisson(max(area.area * per_m2 * self.tree_share, 0.0)))
        if n == 0:
            return
        u0, v0, u1, v1 = area.bounds
        us = self.rng.uniform(u0, u1, n)
        vs = self.rng.uniform(v0, v1, n)
        n_cl = n // 2
        if n_cl:
            centres = self.rng.integers(0, n, max(1, n // 8))
            pick = self.rng.choice(centres, n_cl)
            us[:n_cl] = us[pick] + self.rng.normal(0, 6.0, n_cl)
            vs[:n_cl] = vs[pick] + self.rng.normal(0, 6.0, n_cl)
        radii = self.rng.uniform(r_lo, r_hi, n)
        heights = radii * self.rng.uniform(1.6, 2.6, n)
        tones = self.rng.random(n)
        keep = shapely.contains_xy(area, us, vs)
        if avoid_m > 0 and self.placed and keep.any():
            tree = shapely.STRtree(self.placed)
            pts = shapely.points(us, vs)
            near, _ = tree.query(pts, predicate="dwithin", distance=avoid_m)
            keep[near] = False
        for k in np.flatnonzero(keep).tolist():
            self.out.trees.append(
                (float(us[k]), float(vs[k]), float(radii[k]), float(heights[k]), float(tones[k]))
            )

    def rect_area(
        self,
        cu: float,
        cv: float,
        au: float,
        av: float,
        hl: float,
        hw: float,
        mat: int,
        layer: int = L_AREA,
    ) -> None:
        """A rectangle of ground material (built as a polygon later, in bulk)."""
        self.out.rect_areas.append((cu, cv, au, av, hl, hw, float(mat), float(layer)))

    def area(self, geom: BaseGeometry, mat: int, layer: int = L_AREA) -> None:
        if not geom.is_empty:
            self.out.ground.append((geom, mat, layer))

    def car(self, u: float, v: float, au: float, av: float, truck: bool = False) -> None:
        """A parked or moving car (or truck), image only; it casts a small shadow."""
        rng = self.rng
        hl, hw = (4.5, 1.25) if truck else (rng.uniform(2.0, 2.5), rng.uniform(0.85, 1.0))
        colour = Mat.CAR0 + int(np.searchsorted(_CAR_CDF, rng.random()))
        self.out.cars.append((u, v, au, av, hl, hw, float(colour)))

    def parking_lot(self, lot: BaseGeometry, angle: float, occupancy: float) -> None:
        """Paved lot with stall lines and parked cars, rows along ``angle``."""
        if lot.is_empty or lot.area < 150:
            return
        self.area(lot, Mat.PARKING)
        au, av = math.cos(angle), math.sin(angle)
        nu, nv = -av, au
        c = lot.centroid
        pts = shapely.get_coordinates(lot)
        along = (pts[:, 0] - c.x) * au + (pts[:, 1] - c.y) * av
        across = (pts[:, 0] - c.x) * nu + (pts[:, 1] - c.y) * nv
        rows_y = np.arange(float(across.min()) + 1.0, float(across.max()) - 5.0, 16.0)
        rows_y = np.concatenate([rows_y, rows_y + 11.0])
        xs = np.arange(float(along.min()), float(along.max()), 2.6)
        if len(rows_y) == 0 or len(xs) == 0:
            return
        gx, gy = np.meshgrid(xs, rows_y)
        gx, gy = gx.ravel(), gy.ravel()
        bu = c.x + au * gx + nu * gy
        bv = c.y + av * gx + nv * gy
        inner = lot.buffer(-0.3)
        ok = shapely.contains_xy(inner, bu, bv) & shapely.contains_xy(
            inner, bu + nu * 5, bv + nv * 5
        )
        n = int(ok.sum())
        if n:
            ones = np.ones(n)
            self.out.paint.append(
                np.stack(
                    [
                        bu[ok] + nu * 2.5,
                        bv[ok] + nv * 2.5,
                        ones * nu,
                        ones * nv,
                        ones * 2.5,
                        ones * 0.08,
                        ones * 0.0,
                    ],
                    1,
                )
            )
        cu, cv = bu + au * 1.3 + nu * 2.5, bv + av * 1.3 + nv * 2.5
        parked = (self.rng.random(len(cu)) < occupancy) & shapely.contains_xy(
            lot.buffer(-1.2), cu, cv
        )
        for u, v in zip(cu[parked].tolist(), cv[parked].tolist(), strict=True):
            self.car(u, v, nu, nv)


def clean_polygon(geom: BaseGeometry) -> Polygon | None:
    """A single valid polygon, or ``None``."""
    if geom.is_empty:
        return None
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
    if isinstance(geom, Polygon):
        return geom
    polys = [g for g in getattr(geom, "geoms", []) if isinstance(g, Polygon)]
    return max(polys, key=lambda p: p.area) if polys else None
