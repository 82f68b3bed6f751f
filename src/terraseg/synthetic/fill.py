"""Filling one city block: its streets, maybe a cul-de-sac, and one land use.

Pure geometry in lattice metres. :func:`build_block` is the entry point; all
randomness comes from an RNG seeded by ``(seed, i, j)``. The land uses
themselves (houses, terraces, apartments, shops, parks...) are in
:mod:`terraseg.synthetic.landuse`.
"""

from __future__ import annotations

import math

import numpy as np
import shapely
from shapely.geometry import LineString, Point, Polygon
from shapely.geometry.base import BaseGeometry

from terraseg.synthetic.blocks import (
    L_CAR,
    L_ROAD,
    L_SIDEWALK,
    BlockContent,
    Builder,
    Frontage,
    Mat,
    Polyline,
    clean_polygon,
)
from terraseg.synthetic.landuse import FILLERS, frontage_frame
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
    FILLERS[kind](b, land, frontages)
    return b.out


def _culdesac(b: Builder, cell: Polygon, frontages: list[Frontage]) -> list[BaseGeometry]:
    """A dead-end street with a turning circle from the middle of the longest side."""
    rng = b.rng
    f = max(frontages, key=lambda fr: fr.line.length)
    u, v, _, _, nu, nv = frontage_frame(f, f.line.length * rng.uniform(0.4, 0.6))
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
