"""Polygon rings as flat arrays, and a Douglas-Peucker run on all of them at once.

:class:`_Rings` holds the closed rings of an array of (multi)polygons as one
coordinate array with offsets (ring → part → geometry), :class:`_Edges` the edges
of such rings, and :func:`_douglas_peucker` simplifies every ring together, one
numpy pass per recursion level. :mod:`terraseg.vector.regularize` builds on them;
no Python loop runs per building. Pure module: numpy and shapely.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely
from numpy.typing import NDArray

Geoms = NDArray[np.object_]


@dataclass(frozen=True)
class _Rings:
    """Closed rings of an array of (multi)polygons as flat arrays.

    Ring ``k`` is ``xy[offsets[k]:offsets[k + 1]]`` (its last vertex repeats the first);
    it belongs to part ``ring_part[k]``, which belongs to geometry ``part_owner[part]``.
    The first ring of each part is its exterior.
    """

    xy: NDArray[np.float64]
    offsets: NDArray[np.int64]
    ring_part: NDArray[np.int64]
    part_owner: NDArray[np.int64]
    n: int

    @classmethod
    def from_geoms(cls, arr: Geoms) -> _Rings:
        parts, part_owner = shapely.get_parts(arr, return_index=True)
        rings, ring_part = shapely.get_rings(parts, return_index=True)
        xy, vert_ring = shapely.get_coordinates(rings, return_index=True)
        count = np.bincount(vert_ring, minlength=len(rings))
        offsets = np.concatenate([[0], np.cumsum(count)]).astype(np.int64)
        out = cls(xy, offsets, ring_part.astype(np.int64), part_owner.astype(np.int64), len(arr))
        return out.drop(count >= 4)

    @property
    def count(self) -> NDArray[np.int64]:
        """Vertices per ring, the closing one included."""
        return np.diff(self.offsets)

    @property
    def ring(self) -> NDArray[np.int64]:
        """Ring index of each vertex."""
        return np.repeat(np.arange(len(self.ring_part)), self.count)

    @property
    def is_exterior(self) -> NDArray[np.bool_]:
        rp = self.ring_part
        return np.concatenate([[True], rp[1:] != rp[:-1]]) if len(rp) else np.empty(0, bool)

    def select(self, keep: NDArray[np.bool_]) -> _Rings:
        """The same rings with only the ``keep`` vertices (first and closing kept)."""
        count = np.bincount(self.ring[keep], minlength=len(self.ring_part))
        offsets = np.concatenate([[0], np.cumsum(count)]).astype(np.int64)
        return _Rings(self.xy[keep], offsets, self.ring_part, self.part_owner, self.n)

    def final_mask(self, ring_ok: NDArray[np.bool_]) -> NDArray[np.bool_]:
        """``ring_ok`` less the holes of the parts whose exterior is not ok."""
        part_ok = np.zeros(len(self.part_owner), bool)
        part_ok[self.ring_part[self.is_exterior & ring_ok]] = True
        return ring_ok & part_ok[self.ring_part]

    def drop(self, ring_ok: NDArray[np.bool_]) -> _Rings:
        """Only the rings in ``ring_ok``; a part whose exterior goes loses its holes too."""
        ring_ok = self.final_mask(ring_ok)
        part_ok = np.zeros(len(self.part_owner), bool)
        part_ok[self.ring_part[ring_ok]] = True
        if ring_ok.all():
            return self
        vert_ok = np.repeat(ring_ok, self.count)
        count = self.count[ring_ok]
        offsets = np.concatenate([[0], np.cumsum(count)]).astype(np.int64)
        parts = np.flatnonzero(part_ok)
        new_part = np.cumsum(part_ok) - 1
        return _Rings(
            self.xy[vert_ok],
            offsets,
            new_part[self.ring_part[ring_ok]],
            self.part_owner[parts],
            self.n,
        )

    def areas(self) -> NDArray[np.float64]:
        """Area of each geometry (shoelace: exteriors less holes), 0 where none is left."""
        xy = self.xy
        out = np.zeros(self.n)
        if len(xy) == 0:
            return out
        ring = self.ring
        rel = xy - xy[self.offsets[:-1]][ring]  # relative to each ring's first vertex
        nxt = np.minimum(np.arange(len(xy)) + 1, len(xy) - 1)
        cross = rel[:, 0] * rel[nxt, 1] - rel[nxt, 0] * rel[:, 1]
        cross[self.offsets[1:] - 1] = 0.0  # the closing vertex starts no edge
        ring_area = np.abs(np.bincount(ring, cross, minlength=len(self.ring_part))) / 2
        signed = np.where(self.is_exterior, ring_area, -ring_area)
        np.add.at(out, self.part_owner[self.ring_part], signed)
        return out

    def subset(self, owners: NDArray[np.bool_]) -> _Rings:
        """The rings of the geometries in ``owners``, renumbered ``0 .. owners.sum() - 1``."""
        kept = self.drop(owners[self.part_owner[self.ring_part]])
        new_owner = np.cumsum(owners) - 1
        return _Rings(
            kept.xy, kept.offsets, kept.ring_part, new_owner[kept.part_owner], int(owners.sum())
        )

    def to_geoms(self) -> Geoms:
        """One Polygon or MultiPolygon per geometry; ``None`` where no ring is left."""
        out = np.full(self.n, None, object)
        if len(self.ring_part) == 0:
            return out
        _, part_first = np.unique(self.ring_part, return_index=True)
        poly_offsets = np.concatenate([part_first, [len(self.ring_part)]])
        polys = shapely.from_ragged_array(
            shapely.GeometryType.POLYGON, self.xy, (self.offsets, poly_offsets)
        )
        owners = self.part_owner
        uniq, first, counts = np.unique(owners, return_index=True, return_counts=True)
        out[uniq] = polys[first]
        multi = counts > 1
        if multi.any():
            member = np.isin(owners, uniq[multi])
            out[uniq[multi]] = shapely.multipolygons(
                polys[member], indices=np.searchsorted(uniq[multi], owners[member])
            )
        return out


def _douglas_peucker(rings: _Rings, tolerance: float) -> NDArray[np.bool_]:
    """Douglas-Peucker on every ring at once; returns the mask of kept vertices.

    Each ring keeps its first (and closing) vertex and the vertex farthest from it,
    then every interval is split at its farthest vertex while that lies more than
    ``tolerance`` from the interval's chord. The intervals of all rings advance
    together, one numpy pass per recursion level.
    """
    xy = rings.xy
    m = len(xy)
    keep = np.zeros(m, bool)
    if m == 0:
        return keep
    x, y = np.ascontiguousarray(xy[:, 0]), np.ascontiguousarray(xy[:, 1])
    first = rings.offsets[:-1]
    last = rings.offsets[1:] - 1
    ring = rings.ring
    keep[first] = True
    keep[last] = True
    start = first[ring]
    d0 = np.hypot(x - x[start], y - y[start])
    far = first + _group_argmax(d0, rings.offsets)
    keep[far] = True
    act = np.flatnonzero(~keep)
    r = ring[act]
    below = act < far[r]
    s = np.where(below, first[r], far[r])
    e = np.where(below, far[r], last[r])
    while len(act):
        # intervals (groups of consecutive active vertices with one start): their chords
        bound = np.empty(len(s), bool)
        bound[0] = True
        np.not_equal(s[1:], s[:-1], out=bound[1:])
        starts = np.flatnonzero(bound)
        gid = np.cumsum(bound) - 1
        px, py = x[s[starts]], y[s[starts]]
        dx, dy = x[e[starts]] - px, y[e[starts]] - py
        den = dx * dx + dy * dy
        den = np.where(den > 0, den, 1.0)
        # distance of each active vertex to its interval's chord (segment)
        ax, ay = x[act] - px[gid], y[act] - py[gid]
        gdx, gdy = dx[gid], dy[gid]
        t = np.clip((ax * gdx + ay * gdy) / den[gid], 0.0, 1.0)
        d = np.hypot(ax - t * gdx, ay - t * gdy)
        gmax = np.maximum.reduceat(d, starts)
        split = gmax > tolerance
        firsts = _first_per_group(np.flatnonzero((d == gmax[gid]) & split[gid]), gid)
        mv = np.full(len(gmax), -1)
        mv[gid[firsts]] = act[firsts]
        keep[act[firsts]] = True
        mvv = mv[gid]
        stay = split[gid] & (act != mvv)
        e = np.where(act < mvv, mvv, e)[stay]
        s = np.where(act > mvv, mvv, s)[stay]
        act = act[stay]
    return keep


def _first_per_group(cand: NDArray[np.int64], gid: NDArray[np.int64]) -> NDArray[np.int64]:
    """The first of the sorted positions ``cand`` in each group ``gid[cand]``."""
    if len(cand) == 0:
        return cand
    g = gid[cand]
    out: NDArray[np.int64] = cand[np.concatenate([[True], g[1:] != g[:-1]])]
    return out


def _group_argmax(values: NDArray[np.float64], offsets: NDArray[np.int64]) -> NDArray[np.int64]:
    """Per contiguous group ``[offsets[k], offsets[k + 1])``, the position of its first maximum."""
    starts = offsets[:-1]
    gmax = np.maximum.reduceat(values, starts)
    gid = np.repeat(np.arange(len(starts)), np.diff(offsets))
    firsts = _first_per_group(np.flatnonzero(values == gmax[gid]), gid)
    return (firsts - starts[gid[firsts]]).astype(np.int64)


class _Edges:
    """The edges of rings: edge ``i`` runs from vertex ``src[i]`` to ``src[i] + 1``."""

    def __init__(self, rings: _Rings) -> None:
        closing = rings.offsets[1:] - 1
        is_src = np.ones(len(rings.xy), bool)
        is_src[closing] = False
        self.src = np.flatnonzero(is_src)
        self.ring = rings.ring[self.src]
        self.count = rings.count - 1
        self.start = np.concatenate([[0], np.cumsum(self.count)[:-1]]).astype(np.int64)
        self.pos = np.arange(len(self.src)) - self.start[self.ring]
        last = self.pos == self.count[self.ring] - 1
        self.next = np.where(last, self.start[self.ring], np.arange(len(self.src)) + 1)
        self.owner = rings.part_owner[rings.ring_part[self.ring]]
        self.p0 = rings.xy[self.src]
        self.p1 = rings.xy[self.src + 1]
        d = self.p1 - self.p0
        self.length = np.hypot(d[:, 0], d[:, 1])
        self.angle = np.arctan2(d[:, 1], d[:, 0])
        self.rings = rings


def _merge(a: _Rings, b: _Rings, take_b: NDArray[np.bool_]) -> _Rings:
    """Rings of ``a`` for geometries not in ``take_b``, and of ``b`` for those in it."""
    ra = a.drop(~take_b[a.part_owner[a.ring_part]])
    rb = b.drop(take_b[b.part_owner[b.ring_part]])
    owner = np.concatenate([ra.part_owner, rb.part_owner])
    ring_part = np.concatenate([ra.ring_part, rb.ring_part + len(ra.part_owner)])
    count = np.concatenate([ra.count, rb.count])
    xy = np.concatenate([ra.xy, rb.xy])
    # to_geoms wants the parts of a geometry together: reorder the rings by owner
    ring_order = np.argsort(owner[ring_part], kind="stable")
    starts = np.concatenate([ra.offsets[:-1], rb.offsets[:-1] + len(ra.xy)])[ring_order]
    count = count[ring_order]
    new_off = np.concatenate([[0], np.cumsum(count)]).astype(np.int64)
    idx = np.repeat(starts - new_off[:-1], count) + np.arange(int(new_off[-1]))
    part_order = np.argsort(owner, kind="stable")
    part_rank = np.empty_like(part_order)
    part_rank[part_order] = np.arange(len(part_order))
    return _Rings(xy[idx], new_off, part_rank[ring_part[ring_order]], owner[part_order], a.n)
