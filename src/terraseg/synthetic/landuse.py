"""Land uses that fill a city block: houses with yards, terraces, apartments, shops, parks.

Each filler takes a :class:`~terraseg.synthetic.blocks.Builder` (whose RNG is the
block's), the block's free land and its street frontages, and places buildings,
ground materials, trees, cars and paint in lattice metres. :data:`FILLERS` maps
each land-use kind of :data:`terraseg.synthetic.fill.KINDS` to its filler.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeAlias

import numpy as np
import shapely
import shapely.affinity
from shapely.geometry import LineString, Point, Polygon
from shapely.geometry.base import BaseGeometry

from terraseg.synthetic.blocks import (
    L_BASE,
    ROOF_GABLE,
    Builder,
    Frontage,
    Mat,
    poly_of,
    rect,
)

__all__ = ["FILLERS", "Filler", "frontage_frame"]

Filler: TypeAlias = Callable[[Builder, BaseGeometry, list[Frontage]], None]
"""Fills ``land`` of a block, given its builder and street frontages."""


def frontage_frame(f: Frontage, s: float) -> tuple[float, float, float, float, float, float]:
    """Point on the street at ``s`` with the along axis ``a`` and the into-block normal."""
    u, v, tu, tv = f.line.pose(s)
    au, av = f.sign * tu, f.sign * tv
    return u, v, au, av, -av, au


def _parts(geom: BaseGeometry) -> list[Polygon]:
    if isinstance(geom, Polygon):
        return [] if geom.is_empty else [geom]
    return [g for g in getattr(geom, "geoms", []) if isinstance(g, Polygon) and not g.is_empty]


def _free(b: Builder, pad: float) -> BaseGeometry:
    """Land not covered by buildings padded by ``pad`` metres."""
    if not b.placed:
        return b.land
    return b.land.difference(shapely.union_all(shapely.buffer(np.asarray(b.placed), pad)))


def _fill_detached(b: Builder, land: BaseGeometry, frontages: list[Frontage]) -> None:
    rng = b.rng
    b.area(land, Mat.LAWN, L_BASE)
    pool_p = 0.25 if b.palette_index == 1 else 0.07
    hedges = rng.uniform(0.2, 0.9)
    lawns = (Mat.LAWN, Mat.LAWN2, Mat.LAWN2, Mat.DRYGRASS)
    for f in frontages:
        s = f.start
        while s < f.stop - 12.0:
            pw = rng.uniform(15.0, 25.0)
            w = rng.uniform(8.0, min(14.0, pw - 3.0))
            d = rng.uniform(8.0, 13.0)
            setback = rng.uniform(3.0, 8.0)
            u, v, au, av, nu, nv = frontage_frame(f, s + pw / 2)
            off = f.street_hw + setback + d / 2
            lateral = rng.uniform(-1.0, 1.0) * (pw - w) / 3
            cu, cv = u + nu * off + au * lateral, v + nv * off + av * lateral
            if b.try_house(cu, cv, au, av, nu, nv, w, d, rng.uniform(5.0, 8.5)):
                depth = rng.uniform(26.0, 40.0)
                mid = f.street_hw + depth / 2
                b.rect_area(
                    u + nu * mid,
                    v + nv * mid,
                    au,
                    av,
                    pw / 2,
                    depth / 2,
                    lawns[int(rng.integers(len(lawns)))],
                    L_BASE,
                )
                if rng.random() < hedges:  # hedge or fence on one side of the parcel
                    hu, hv = u + au * pw / 2 + nu * (mid + 0.5), v + av * pw / 2 + nv * (mid + 0.5)
                    kind = 1.0 if rng.random() < 0.6 else 2.0
                    width = 0.4 if kind == 1.0 else 0.1
                    b.out.paint.append(np.array([[hu, hv, nu, nv, depth / 2 - 1.0, width, kind]]))
                _yard(b, cu, cv, au, av, nu, nv, w, d, setback, pool_p)
            s += pw
    if b.bulb is not None:
        _fill_bulb(b)
    b.scatter_trees(land, 1 / 900, 2.0, 4.5, 2.0)


def _yard(
    b: Builder,
    cu: float,
    cv: float,
    au: float,
    av: float,
    nu: float,
    nv: float,
    w: float,
    d: float,
    setback: float,
    pool_p: float,
) -> None:
    """Driveway, patio, back-yard trees, a shed and maybe a pool around a house."""
    rng = b.rng
    side = 1.0 if rng.random() < 0.5 else -1.0
    lat = side * (w / 2 - 1.8)
    mid = -(d / 2 + setback / 2 + 0.3)
    b.rect_area(
        cu + au * lat + nu * mid,
        cv + av * lat + nv * mid,
        nu,
        nv,
        setback / 2 + 0.3,
        1.5,
        Mat.PAVED,
    )
    if rng.random() < 0.45:
        lat = rng.uniform(-w / 4, w / 4)
        b.rect_area(
            cu + au * lat + nu * (d / 2 + 1.6),
            cv + av * lat + nv * (d / 2 + 1.6),
            au,
            av,
            rng.uniform(1.5, 3.0),
            1.6,
            Mat.PAVED,
        )
    if rng.random() < 0.15:
        lat = rng.uniform(-w / 2, w / 2)
        back = d / 2 + rng.uniform(8.0, 14.0)
        b.rect_area(
            cu + au * lat + nu * back,
            cv + av * lat + nv * back,
            au,
            av,
            rng.uniform(2.0, 4.0),
            rng.uniform(1.5, 3.0),
            Mat.SOIL,
        )
    for _ in range(int(rng.poisson(1.8 * b.tree_share))):
        back = d / 2 + rng.uniform(2.0, 20.0)
        lat = rng.uniform(-w, w)
        tu, tv = cu + nu * back + au * lat, cv + nv * back + av * lat
        if shapely.contains_xy(b.land, tu, tv):
            b.tree(tu, tv, rng.uniform(1.8, 4.8))
    if rng.random() < 0.25 * b.tree_share:  # a tree by the house, over the roof edge
        corner = rect(cu, cv, au, av, w / 2, d / 2)[int(rng.integers(4))]
        b.tree(float(corner[0]), float(corner[1]), rng.uniform(3.0, 5.0))
    back = d / 2 + rng.uniform(4.0, 9.0)
    if rng.random() < pool_p:
        pool = poly_of(cu + nu * (back + 2), cv + nv * (back + 2), au, av, 4.0, 2.0)
        if b.inner.contains(pool) and b.fits(pool, 1.0):
            b.rect_area(cu + nu * (back + 2), cv + nv * (back + 2), au, av, 4.8, 2.8, Mat.PAVED)
            b.rect_area(cu + nu * (back + 2), cv + nv * (back + 2), au, av, 4.0, 2.0, Mat.POOL)
            b.placed.append(pool)
    elif rng.random() < 0.3:
        lat = rng.uniform(-w / 2, w / 2)
        b.try_box(
            cu + nu * (back + 3) + au * lat,
            cv + nv * (back + 3) + av * lat,
            math.atan2(av, au),
            rng.uniform(1.2, 2.0),
            rng.uniform(1.0, 1.5),
            2.5,
            1.0,
            ROOF_GABLE,
        )


def _fill_terrace(b: Builder, land: BaseGeometry, frontages: list[Frontage]) -> None:
    rng = b.rng
    b.area(land, Mat.LAWN, L_BASE)
    lawns = (Mat.LAWN, Mat.LAWN2, Mat.DRYGRASS, Mat.PAVED)
    for f in frontages:
        s = f.start - 4.0
        setback = rng.uniform(0.5, 5.0)
        garden = rng.uniform(7.0, 16.0)
        while s < f.stop - 10.0:
            n = int(rng.integers(3, 11))
            widths = list(rng.uniform(4.8, 7.5, n))
            while n > 2 and s + sum(widths) > f.stop + 4.0:
                widths.pop()
                n -= 1
            total = sum(widths)
            base_d = rng.uniform(8.5, 12.0)
            depths = list(
                base_d + (rng.uniform(-1.2, 1.2, n) if rng.random() < 0.5 else np.zeros(n))
            )
            heights = list(rng.uniform(7.0, 10.0) + rng.uniform(-1.0, 1.0, n))
            u, v, au, av, nu, nv = frontage_frame(f, s + total / 2)
            off = f.street_hw + setback
            placed = b.try_row(
                u + nu * off,
                v + nv * off,
                au,
                av,
                widths,
                depths,
                heights,
                rng.random() < 0.12,
                1.5,
            )
            if placed:  # a back garden per unit, fenced from its neighbours
                walls = np.concatenate([[0.0], np.cumsum(widths)]) - total / 2
                back = off + base_d + garden / 2
                for k in range(n):
                    mid = (walls[k] + walls[k + 1]) / 2
                    half = (walls[k + 1] - walls[k]) / 2
                    b.rect_area(
                        u + au * mid + nu * back,
                        v + av * mid + nv * back,
                        au,
                        av,
                        half,
                        garden / 2,
                        lawns[int(rng.integers(len(lawns)))],
                    )
                    if rng.random() < 0.5:
                        b.tree(
                            u + au * mid + nu * (back + rng.uniform(-2, 3)),
                            v + av * mid + nv * (back + rng.uniform(-2, 3)),
                            rng.uniform(1.5, 3.0),
                        )
                fences = np.array(
                    [
                        [
                            u + au * x + nu * back,
                            v + av * x + nv * back,
                            nu,
                            nv,
                            garden / 2,
                            0.1,
                            2.0,
                        ]
                        for x in walls.tolist()
                    ]
                )
                b.out.paint.append(fences)
            s += total + rng.uniform(3.0, 9.0) if placed else 5.0
    if b.bulb is not None:
        _fill_bulb(b)
    _fill_interior(b, frontages)


def _fill_interior(b: Builder, frontages: list[Frontage]) -> None:
    """What fills the middle of a deep block: trees, a parking court or allotments."""
    rng = b.rng
    inner = _free(b, 3.0)
    choice = rng.random()
    for part in _parts(inner):
        if part.area < 600:
            b.scatter_trees(part, 1 / 400, 1.8, 4.0)
        elif choice < 0.15:
            for p in _parts(part.buffer(-6.0)):
                b.parking_lot(p, _main_angle(frontages), rng.uniform(0.3, 0.9))
        elif choice < 0.45:
            u0, v0, u1, v1 = part.bounds
            angle = _main_angle(frontages)
            au, av = math.cos(angle), math.sin(angle)
            mats = (Mat.SOIL, Mat.LAWN2, Mat.DRYGRASS, Mat.LAWN)
            for _ in range(int(part.area / 120)):
                cu, cv = rng.uniform(u0, u1), rng.uniform(v0, v1)
                b.rect_area(
                    cu,
                    cv,
                    au,
                    av,
                    rng.uniform(3, 7),
                    rng.uniform(2.5, 5),
                    mats[int(rng.integers(len(mats)))],
                )
            b.scatter_trees(part, 1 / 900, 1.5, 3.0)
        else:
            b.scatter_trees(part, 1 / 300, 1.8, 4.5)


def _fill_bulb(b: Builder) -> None:
    """Houses around a cul-de-sac's turning circle, facing it."""
    if b.bulb is None:
        return
    bu, bv, br = b.bulb
    rng = b.rng
    for a in np.arange(rng.uniform(0, 0.6), 2 * math.pi, 0.9):
        nu, nv = math.cos(a), math.sin(a)
        w, d = rng.uniform(8.0, 12.0), rng.uniform(8.0, 11.0)
        off = br + rng.uniform(3.0, 6.0) + d / 2
        b.try_house(bu + nu * off, bv + nv * off, -nv, nu, nu, nv, w, d, rng.uniform(5, 8))


def _fill_apartment(b: Builder, land: BaseGeometry, frontages: list[Frontage]) -> None:
    rng = b.rng
    b.area(land, Mat.LAWN if rng.random() < 0.6 else Mat.PAVED, L_BASE)
    for f in frontages:
        s = f.start - 6.0
        setback = rng.uniform(0.5, 6.0)
        d = rng.uniform(11.0, 16.0)
        while s < f.stop - 15.0:
            length = min(rng.uniform(18.0, 60.0), f.stop + 6.0 - s)
            if length < 14.0:
                break
            u, v, au, av, nu, nv = frontage_frame(f, s + length / 2)
            off = f.street_hw + setback
            if rng.random() < 0.55:  # several touching buildings of different heights
                n = int(rng.integers(2, 5))
                widths = list(rng.dirichlet(np.ones(n) * 4) * length)
                heights = list(rng.uniform(12.0, 30.0, n))
                ok = b.try_row(
                    u + nu * off, v + nv * off, au, av, widths, [d] * n, heights, True, 3.0
                )
            else:
                ok = b.try_box(
                    u + nu * (off + d / 2),
                    v + nv * (off + d / 2),
                    math.atan2(av, au),
                    length / 2,
                    d / 2,
                    rng.uniform(12.0, 32.0),
                    3.0,
                )
            s += length + (rng.uniform(4.0, 16.0) if ok else 4.0)
    court = _free(b, 5.0)
    for part in _parts(court):
        if part.area > 1200 and rng.random() < 0.2:
            lot = part.buffer(-4.0)
            for p in _parts(lot):
                b.parking_lot(p, _main_angle(frontages), rng.uniform(0.3, 0.9))
        else:
            b.scatter_trees(part, 1 / 250, 2.0, 4.5)


def _main_angle(frontages: list[Frontage]) -> float:
    if not frontages:
        return 0.0
    f = max(frontages, key=lambda fr: fr.line.length)
    _, _, tu, tv = f.line.pose(f.line.length / 2)
    return math.atan2(tv, tu)


def _place_boxes(
    b: Builder,
    land: BaseGeometry,
    angle: float,
    n: int,
    size: tuple[float, float, float, float],
    height: tuple[float, float],
    gap: float,
) -> None:
    rng = b.rng
    u0, v0, u1, v1 = land.bounds
    placed = tries = 0
    while placed < n and tries < 40:
        tries += 1
        hl, hw = rng.uniform(size[0], size[1]), rng.uniform(size[2], size[3])
        a = angle + rng.normal(0.0, 0.02)
        if b.try_box(
            rng.uniform(u0, u1), rng.uniform(v0, v1), a, hl, hw, rng.uniform(*height), gap
        ):
            placed += 1


def _fill_commercial(b: Builder, land: BaseGeometry, frontages: list[Frontage]) -> None:
    rng = b.rng
    b.area(land, Mat.PAVED, L_BASE)
    angle = _main_angle(frontages)
    _place_boxes(
        b, land, angle, int(rng.integers(1, 4)), (14.0, 42.0, 10.0, 26.0), (5.0, 16.0), 8.0
    )
    for part in _parts(_free(b, 4.0)):
        for p in _parts(part.buffer(-1.0)):
            b.parking_lot(p, angle, rng.uniform(0.2, 0.85))
    b.scatter_trees(land, 1 / 1500, 2.0, 3.5, 3.0)


def _fill_industrial(b: Builder, land: BaseGeometry, frontages: list[Frontage]) -> None:
    rng = b.rng
    b.area(land, Mat.GRAVEL if rng.random() < 0.5 else Mat.SOIL, L_BASE)
    angle = _main_angle(frontages)
    _place_boxes(
        b, land, angle, int(rng.integers(1, 5)), (18.0, 60.0, 10.0, 30.0), (7.0, 13.0), 10.0
    )
    yard = _free(b, 5.0)
    for part in _parts(yard):
        if part.area > 800 and rng.random() < 0.5:
            b.area(part.buffer(-2.0), Mat.PAVED)
            u0, v0, u1, v1 = part.bounds
            for _ in range(int(rng.integers(0, 6))):
                u, v = rng.uniform(u0, u1), rng.uniform(v0, v1)
                if shapely.contains_xy(part.buffer(-4.0), u, v):
                    b.car(u, v, math.cos(angle), math.sin(angle), truck=True)
    b.scatter_trees(land, 1 / 3000, 1.5, 3.5, 3.0)


def _fill_park(b: Builder, land: BaseGeometry, frontages: list[Frontage]) -> None:
    rng = b.rng
    b.area(land, Mat.LAWN, L_BASE)
    c = land.representative_point()
    if rng.random() < 0.35:
        r = rng.uniform(10.0, 25.0)
        pond = shapely.affinity.scale(Point(c.x, c.y).buffer(r), rng.uniform(0.7, 1.6), 1.0)
        pond = pond.intersection(land.buffer(-6.0))
        b.area(pond, Mat.WATER)
        b.placed.extend(_parts(pond))
    for f in frontages[: int(rng.integers(1, 4))]:
        u, v, _, _, nu, nv = frontage_frame(f, f.line.length * rng.uniform(0.2, 0.8))
        path = LineString([(u, v), (c.x + rng.normal(0, 10), c.y + rng.normal(0, 10))])
        b.area(path.buffer(1.4).intersection(land), Mat.PATH)
    b.scatter_trees(land, 1 / 140, 2.5, 6.0, 2.0)


def _fill_parking(b: Builder, land: BaseGeometry, frontages: list[Frontage]) -> None:
    rng = b.rng
    b.area(land, Mat.PAVED, L_BASE)
    for p in _parts(land.buffer(-1.5)):
        b.parking_lot(p, _main_angle(frontages), rng.uniform(0.3, 0.95))


def _fill_bare(b: Builder, land: BaseGeometry, frontages: list[Frontage]) -> None:
    rng = b.rng
    b.area(land, Mat.SOIL if rng.random() < 0.5 else Mat.DRYGRASS, L_BASE)
    u0, v0, u1, v1 = land.bounds
    for _ in range(int(rng.integers(0, 4))):
        blob = Point(rng.uniform(u0, u1), rng.uniform(v0, v1)).buffer(rng.uniform(6, 25))
        b.area(blob.intersection(land), Mat.DRYGRASS if rng.random() < 0.5 else Mat.SOIL)
    b.scatter_trees(land, 1 / 2000, 1.0, 2.5)
    _place_boxes(b, land, _main_angle(frontages), int(rng.integers(0, 2)), (3, 8, 2, 5), (3, 5), 3)


FILLERS: dict[str, Filler] = {
    "detached": _fill_detached,
    "terrace": _fill_terrace,
    "apartment": _fill_apartment,
    "commercial": _fill_commercial,
    "industrial": _fill_industrial,
    "park": _fill_park,
    "parking": _fill_parking,
    "bare": _fill_bare,
}
