"""Filling one city block by land use: houses, terraces, apartments, shops, parks.

Pure geometry in lattice metres. :func:`build_block` is the entry point; all
randomness comes from an RNG seeded by ``(seed, i, j)``.
"""

from __future__ import annotations

import math

import numpy as np
import shapely
import shapely.affinity
from shapely.geometry import LineString, Point, Polygon
from shapely.geometry.base import BaseGeometry

from terraseg.synthetic.blocks import (
    L_BASE,
    L_CAR,
    L_ROAD,
    L_SIDEWALK,
    ROOF_GABLE,
    BlockContent,
    Builder,
    Frontage,
    Mat,
    Polyline,
    clean_polygon,
    poly_of,
    rect,
)
from terraseg.synthetic.noise import hash_u64, key_of
from terraseg.synthetic.streets import Segment, Streets, unit

__all__ = ["build_block", "KINDS"]

KINDS = ("detached", "terrace", "apartment", "commercial", "industrial", "park", "parking", "bare")
_WEIGHTS = (
    (0.62, 0.12, 0.0, 0.05, 0.09, 0.07, 0.0, 0.05),
    (0.3, 0.35, 0.17, 0.07, 0.03, 0.06, 0.01, 0.01),
    (0.02, 0.22, 0.5, 0.16, 0.0, 0.06, 0.04, 0.0),
)
_CORNER_M = 16.0


def _urbanity(seed: int, i: int, j: int, bias: float) -> float:
    """Smooth district value in ``[0, 1]`` over block indices (about 5 blocks across)."""
    k = key_of(seed, "urban")
    x, y = i / 5.0, j / 5.0
    x0, y0 = math.floor(x), math.floor(y)
    fx, fy = x - x0, y - y0
    fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
    top = unit(k, x0, y0) + (unit(k, x0 + 1, y0) - unit(k, x0, y0)) * fx
    bottom = unit(k, x0, y0 + 1) + (unit(k, x0 + 1, y0 + 1) - unit(k, x0, y0 + 1)) * fx
    return min(max(top + (bottom - top) * fy + bias, 0.0), 1.0)


def _frame(f: Frontage, s: float) -> tuple[float, float, float, float, float, float]:
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


def _owned_street(b: Builder, seg: Segment, streets: Streets) -> None:
    """Road, centreline, sidewalk, markings, street trees and cars of a segment."""
    if not seg.present:
        return
    line = LineString(seg.coords)
    hw = seg.width_m / 2
    road = line.buffer(hw, quad_segs=6)
    b.out.roads.append((road, seg.road_class, seg.width_m))
    b.out.centerlines.append((line, seg.width_m))
    b.out.ground.append((line.buffer(hw + seg.sidewalk_m, quad_segs=6), Mat.SIDEWALK, L_SIDEWALK))
    b.out.ground.append((road, Mat.ROAD_DARK if seg.road_class == 0 else Mat.ROAD, L_ROAD))
    poly = Polyline(seg.coords)
    margin = 15.0 if seg.road_class == 0 else 10.0
    s0, s1 = margin, poly.length - margin
    if s1 <= s0:
        return
    rng = b.rng
    lanes: list[tuple[float, float]] = []  # (offset across, gap between 3 m dashes; 0 = solid)
    if seg.road_class == 0:
        lanes = [(-0.2, 0.0), (0.2, 0.0), (-hw / 2, 6.0), (hw / 2, 6.0)]
    elif seg.road_class == 1:
        lanes = [(0.0, 6.0)]
    marks: list[tuple[float, float, float, float, float, float, float]] = []
    centre_kind = 3.0 if b.palette_index == 2 else 0.0  # yellow centre lines in "suburban"
    for off, gap in lanes:
        kind = centre_kind if abs(off) < 0.5 else 0.0
        if gap == 0.0:  # solid line following the street, as short straight pieces
            ss = np.linspace(s0, s1, max(2, int((s1 - s0) / 6.0) + 2)).tolist()
            pts = []
            for x in ss:
                u, v, tu, tv = poly.pose(x)
                pts.append((u - tv * off, v + tu * off))
            for (ua, va), (ub, vb) in zip(pts[:-1], pts[1:], strict=True):
                half = math.hypot(ub - ua, vb - va) / 2
                if half > 0:
                    au, av = (ub - ua) / (2 * half), (vb - va) / (2 * half)
                    marks.append(((ua + ub) / 2, (va + vb) / 2, au, av, half, 0.08, kind))
            continue
        for x in np.arange(s0 + 1.5, s1 - 1.5, 3.0 + gap).tolist():
            u, v, tu, tv = poly.pose(x)
            marks.append((u - tv * off, v + tu * off, tu, tv, 1.5, 0.08, kind))
    if seg.road_class == 0:  # zebra crossings near both ends
        for s in (s0 - 6.0, s1 + 6.0):
            u, v, tu, tv = poly.pose(s)
            k = -hw + 0.6
            while k < hw - 0.4:
                marks.append((u - tv * k, v + tu * k, tu, tv, 1.6, 0.25, 0.0))
                k += 1.0
    if marks:
        b.out.paint.append(np.asarray(marks, dtype=np.float64))
    kt = key_of(streets.seed, "street-trees", seg.kind)
    with_trees = unit(kt, seg.i if seg.kind == "v" else seg.j) < 0.5 * b.tree_share
    for side in (-1.0, 1.0):
        s = s0 + rng.uniform(0.0, 5.0)
        while with_trees and s < s1:
            u, v, tu, tv = poly.pose(s)
            off = side * (hw + seg.sidewalk_m * 0.5)
            b.tree(u - tv * off, v + tu * off, rng.uniform(2.2, 4.0))
            s += rng.uniform(8.0, 12.0)
        s = s0 + rng.uniform(0.0, 8.0)
        while s < s1:
            u, v, tu, tv = poly.pose(s)
            if seg.road_class == 0:
                off = side * hw * (0.25 if rng.random() < 0.5 else 0.75)
                if rng.random() < 0.3:
                    b.car(u - tv * off, v + tu * off, tu, tv, truck=rng.random() < 0.1)
                s += rng.uniform(8.0, 30.0)
            else:
                off = side * (hw - 1.1)
                if rng.random() < 0.3:
                    b.car(u - tv * off, v + tu * off, tu, tv)
                s += rng.uniform(5.5, 9.0)


def build_block(streets: Streets, i: int, j: int) -> BlockContent:
    """Generate block ``(i, j)``: owned streets and content, in lattice metres."""
    seed, style = streets.seed, streets.style
    words = np.asarray(hash_u64(seed, i, j, 0xB10C)).reshape(1).view(np.uint32)
    rng = np.random.default_rng([int(w) for w in words])
    top, bottom = streets.segment("h", i, j), streets.segment("h", i, j + 1)
    left, right = streets.segment("v", i, j), streets.segment("v", i + 1, j)
    ring = np.concatenate(
        [top.coords, right.coords[1:], bottom.coords[::-1][1:], left.coords[::-1][1:]]
    )
    cell = clean_polygon(Polygon(ring)) or Polygon()
    near = [("h", a, c) for a in (i - 1, i, i + 1) for c in (j, j + 1)]
    near += [("v", a, c) for a in (i, i + 1) for c in (j - 1, j, j + 1)]
    zones = [streets.zone(*n) for n in near if streets.segment(*n).present]
    b = Builder(rng, style.palette, style.tree_share)
    for seg in (top, left):
        _owned_street(b, seg, streets)
    tier = np.searchsorted([0.36, 0.66], _urbanity(seed, i, j, style.urban_bias))
    weights = np.asarray(_WEIGHTS[int(tier)])
    kind = KINDS[int(rng.choice(len(KINDS), p=weights / weights.sum()))]
    frontages: list[Frontage] = []
    if cell.is_empty:
        return b.out
    cu, cv = cell.centroid.x, cell.centroid.y
    for seg in (top, bottom, left, right):
        if seg.present:
            line = Polyline(seg.coords)
            u, v, tu, tv = line.pose(line.length / 2)
            sign = 1.0 if (-tv * (cu - u) + tu * (cv - v)) > 0 else -1.0
            hw = seg.width_m / 2 + seg.sidewalk_m
            frontages.append(Frontage(line, sign, hw, _CORNER_M, line.length - _CORNER_M))
    if (
        kind in ("detached", "terrace")
        and cell.area > 11000
        and frontages
        and rng.random() < style.culdesac_share
    ):
        zones.extend(_culdesac(b, cell, frontages))
    land = cell.difference(shapely.union_all(zones)) if zones else cell
    if land.is_empty:
        return b.out
    b.set_land(land)
    _FILL[kind](b, land, frontages)
    return b.out


def _culdesac(b: Builder, cell: Polygon, frontages: list[Frontage]) -> list[BaseGeometry]:
    """A dead-end street with a turning circle from the middle of the longest side."""
    rng = b.rng
    f = max(frontages, key=lambda fr: fr.line.length)
    u, v, _, _, nu, nv = _frame(f, f.line.length * rng.uniform(0.4, 0.6))
    ray = LineString([(u, v), (u + nu * 2000.0, v + nv * 2000.0)]).intersection(cell)
    length = float(ray.length) * rng.uniform(0.45, 0.62)
    if length < 45.0:
        return []
    end = (u + nu * length, v + nv * length)
    line = LineString([(u, v), end])
    radius = rng.uniform(8.0, 10.5)
    road = shapely.union(line.buffer(3.25, quad_segs=6), Point(end).buffer(radius, quad_segs=8))
    b.out.roads.append((road, 3, 6.5))
    b.out.centerlines.append((line, 6.5))
    walk = road.buffer(1.5, quad_segs=6)
    b.out.ground.append((walk, Mat.SIDEWALK, L_SIDEWALK))
    b.out.ground.append((road, Mat.ROAD, L_ROAD))
    b.out.ground.append((Point(end).buffer(radius * 0.35, quad_segs=6), Mat.LAWN, L_CAR))
    start = f.street_hw
    spine = Polyline(np.array([(u + nu * start, v + nv * start), end]))
    for sign in (-1.0, 1.0):
        frontages.append(Frontage(spine, sign, 4.75, 6.0, spine.length - radius - 4.0))
    b.bulb = (end[0], end[1], radius + 1.5)
    return [walk]


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
            u, v, au, av, nu, nv = _frame(f, s + pw / 2)
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
            u, v, au, av, nu, nv = _frame(f, s + total / 2)
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
            u, v, au, av, nu, nv = _frame(f, s + length / 2)
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
        u, v, _, _, nu, nv = _frame(f, f.line.length * rng.uniform(0.2, 0.8))
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


_FILL = {
    "detached": _fill_detached,
    "terrace": _fill_terrace,
    "apartment": _fill_apartment,
    "commercial": _fill_commercial,
    "industrial": _fill_industrial,
    "park": _fill_park,
    "parking": _fill_parking,
    "bare": _fill_bare,
}
