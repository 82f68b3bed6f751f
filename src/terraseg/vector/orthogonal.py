"""Orthogonal outlines: building edges snapped to a dominant orientation and fitted as lines.

Steps 2 to 4 of :mod:`terraseg.vector.regularize`: the dominant orientation of each
building (:func:`_envelope_angle`, the minimum rotated rectangle's, or
:func:`_mean_angle`, the simplified edges' mean), each simplified edge snapped to
it or the perpendicular one (optionally also the diagonals), consecutive edges with
one direction merged into runs, each run placed as a straight line by a
length-weighted least-squares fit to the midpoints of the unsimplified edges it
covers (:class:`_Samples`), and the corners intersected from consecutive runs
(:func:`_fit`). Everything is vectorized over all the rings of an array of buildings.
Pure module: numpy and shapely.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import shapely
from numpy.typing import NDArray

from terraseg.vector.rings import _Edges, _Rings

Geoms = NDArray[np.object_]
_QUARTER = math.pi / 2
_EIGHTH = math.pi / 4


def _wrap(phi: NDArray[np.float64]) -> NDArray[np.float64]:
    """Angles modulo 90°, in ``[-pi/4, pi/4)``."""
    return np.mod(phi + _EIGHTH, _QUARTER) - _EIGHTH


def _mean_angle(e: _Edges, n: int) -> NDArray[np.float64]:
    """Length-weighted circular mean of the edge angles modulo 90°, per geometry."""
    c = np.bincount(e.owner, e.length * np.cos(4 * e.angle), minlength=n)
    s = np.bincount(e.owner, e.length * np.sin(4 * e.angle), minlength=n)
    w = np.bincount(e.owner, e.length, minlength=n)
    return np.where(w > 0, _wrap(np.arctan2(s, c) / 4), np.nan)


def _envelope_angle(arr: Geoms) -> NDArray[np.float64]:
    """Orientation of each minimum rotated rectangle, ``[-pi/4, pi/4)`` (NaN if degenerate)."""
    env = shapely.oriented_envelope(arr)
    out = np.full(len(arr), np.nan)
    is_poly = (shapely.get_type_id(env) == shapely.GeometryType.POLYGON) & ~shapely.is_empty(env)
    if not is_poly.any():
        return out
    coords, owner = shapely.get_coordinates(env[is_poly], return_index=True)
    _, first = np.unique(owner, return_index=True)
    d = coords[first + 1] - coords[first]
    out[np.flatnonzero(is_poly)] = _wrap(np.arctan2(d[:, 1], d[:, 0]))
    return out


@dataclass(frozen=True)
class _Samples:
    """Outline points used to place the run lines: midpoints of the unsimplified edges.

    ``edge`` is the simplified edge each one falls on (the one starting at or before it).
    """

    xy: NDArray[np.float64]
    weight: NDArray[np.float64]
    edge: NDArray[np.int64]


def _samples(src: _Rings, keep: NDArray[np.bool_], ring_ok: NDArray[np.bool_]) -> _Samples:
    """The edges of ``src`` as samples of the edges of ``src.select(keep).drop(ring_ok)``.

    Simplified vertices are vertices of ``src``, so every edge of ``src`` lies on
    exactly one simplified edge: the one starting at or before it.
    """
    ring = src.ring
    is_src = np.ones(len(src.xy), bool)
    is_src[src.offsets[1:] - 1] = False  # the closing vertex starts no edge
    is_src &= ring_ok[ring]
    first = np.flatnonzero(is_src)
    r = ring[first]
    p0, p1 = src.xy[first], src.xy[first + 1]
    d = p1 - p0
    length = np.hypot(d[:, 0], d[:, 1])
    kept_before = np.cumsum(keep) - 1  # kept-vertex index of the last kept one at or before
    n_edges = np.bincount(ring[keep], minlength=len(src.ring_part)) - 1
    first_kept = np.concatenate([[0], np.cumsum(n_edges + 1)[:-1]])
    edge_start = np.concatenate([[0], np.cumsum(np.where(ring_ok, n_edges, 0))[:-1]])
    local = np.minimum(kept_before[first] - first_kept[r], n_edges[r] - 1)
    edge = edge_start[r] + local
    return _Samples(0.5 * (p0 + p1), np.maximum(length, 1e-12), edge.astype(np.int64))


@dataclass(frozen=True)
class _Runs:
    """Runs: maximal chains of consecutive edges of one ring with one direction class.

    ``of_edge`` is the run of each edge. Per run: its ``ring``, ``owner`` (geometry)
    and direction class ``cls`` (0 along the orientation, 2 across it, 1 and 3 the
    diagonals). ``head`` marks, in the rolled edge order (each ring rotated to start
    with a change of direction), the edges that start a run. ``ring_ok`` is False for
    a ring whose edges all have one direction class.
    """

    of_edge: NDArray[np.int64]
    ring: NDArray[np.int64]
    owner: NDArray[np.int64]
    cls: NDArray[np.int64]
    head: NDArray[np.bool_]
    n: int
    ring_ok: NDArray[np.bool_]


def _edge_classes(
    e: _Edges, ph: NDArray[np.float64], allow_diagonal: bool, diagonal_min_m: float
) -> NDArray[np.int64]:
    """Direction class of each edge against its geometry's orientation ``ph``.

    0: along ``ph``, 2: across it; with ``allow_diagonal``, 1 and 3 for the edges
    within 15° of a diagonal and at least ``diagonal_min_m`` long.
    """
    rel = np.mod(e.angle - ph, math.pi)
    cls = (np.rint(rel / _QUARTER).astype(np.int64) % 2) * 2  # 0: along phi, 2: across
    if allow_diagonal:
        off = np.abs(np.mod(rel, _QUARTER) - _EIGHTH)
        diag = (off < math.radians(15)) & (e.length >= diagonal_min_m)
        dcls = (np.rint((rel - _EIGHTH) / _QUARTER).astype(np.int64) % 2) * 2 + 1
        cls = np.where(diag, dcls, cls)
    return cls


def _runs(e: _Edges, cls: NDArray[np.int64]) -> _Runs:
    """Merge the consecutive edges of each ring with one direction class into runs."""
    n_rings = len(e.count)
    prev = np.empty_like(e.next)
    prev[e.next] = np.arange(len(e.next))
    change = cls != cls[prev]
    ring_ok = np.zeros(n_rings, bool)
    first = np.zeros(n_rings, np.int64)
    ch = np.flatnonzero(change)
    ring_ch, first_at = np.unique(e.ring[ch], return_index=True)
    ring_ok[ring_ch] = True
    first[ring_ch] = e.pos[ch[first_at]]
    # roll each ring so that it starts with a change of direction
    cnt = np.maximum(e.count[e.ring], 1)
    perm = e.start[e.ring] + (e.pos + first[e.ring]) % cnt
    cls, change = cls[perm], change[perm]
    change[e.pos == 0] = True
    run_of_pos = np.cumsum(change) - 1
    run_of_edge = np.empty_like(run_of_pos)
    run_of_edge[perm] = run_of_pos
    n_runs = int(run_of_pos[-1]) + 1
    return _Runs(run_of_edge, e.ring[change], e.owner[change], cls[change], change, n_runs, ring_ok)


def _run_normals(
    ph: NDArray[np.float64], run_cls: NDArray[np.int64], allow_diagonal: bool
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Unit normal ``(nx, ny)`` of each run, from its orientation ``ph`` and class.

    The run direction ``(c, s)`` is ``ph`` turned by ``run_cls * 45°``, quarter turns
    done exactly so that an axis-aligned building keeps exact coordinates.
    """
    c0, s0 = np.cos(ph), np.sin(ph)
    r2 = math.sqrt(0.5)
    if allow_diagonal:
        c = np.select(
            [run_cls == 0, run_cls == 1, run_cls == 2], [c0, r2 * (c0 - s0), -s0], -r2 * (c0 + s0)
        )
        s = np.select(
            [run_cls == 0, run_cls == 1, run_cls == 2], [s0, r2 * (s0 + c0), c0], r2 * (c0 - s0)
        )
    else:  # along (0) or across (2) only
        along = run_cls == 0
        c, s = np.where(along, c0, -s0), np.where(along, s0, c0)
    return -s, c


def _run_offsets(
    e: _Edges,
    smp: _Samples,
    runs: _Runs,
    origin: NDArray[np.float64],
    nx: NDArray[np.float64],
    ny: NDArray[np.float64],
    n: int,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Offset ``d`` of each run line along its normal (relative to ``origin``), and the
    area swept between the samples and their run lines, per geometry.

    Each run line is the length-weighted least-squares fit to the samples on the run.
    """
    n_runs = runs.n
    run = runs.of_edge[smp.edge]
    pts = smp.xy - origin[runs.owner[run]]
    w = smp.weight
    along_normal = pts[:, 0] * nx[run] + pts[:, 1] * ny[run]
    den: NDArray[np.float64] = np.asarray(np.bincount(run, w, minlength=n_runs), np.float64)
    d: NDArray[np.float64] = np.asarray(
        np.bincount(run, w * along_normal, minlength=n_runs), np.float64
    )
    # a run with no sample (possible only when rings were dropped) uses its edges' midpoints
    empty = den <= 0
    if empty.any():
        mid = 0.5 * (e.p0 + e.p1) - origin[e.owner]
        rr = runs.of_edge
        d_e = np.bincount(
            rr, e.length * (mid[:, 0] * nx[rr] + mid[:, 1] * ny[rr]), minlength=n_runs
        )
        den_e = np.bincount(rr, e.length, minlength=n_runs)
        d = np.where(empty, d_e, d)
        den = np.where(empty, den_e, den)
    d = d / np.maximum(den, 1e-300)
    resid = along_normal - d[run]
    swept: NDArray[np.float64] = np.asarray(
        np.bincount(runs.owner[run], w * np.abs(resid), minlength=n), np.float64
    )
    return d, swept


def _corners(
    e: _Edges,
    runs: _Runs,
    origin: NDArray[np.float64],
    nx: NDArray[np.float64],
    ny: NDArray[np.float64],
    d: NDArray[np.float64],
    oriented: NDArray[np.bool_],
    allow_diagonal: bool,
) -> tuple[_Rings, NDArray[np.bool_]]:
    """The rings whose corners are the intersections of consecutive run lines.

    Returns them (only for the geometries rebuilt) and, per geometry, whether it was
    rebuilt: it has rings, an orientation (``oriented``), and every ring has enough
    runs and no two consecutive parallel ones.
    """
    n = len(origin)
    n_rings = len(e.count)
    n_runs = runs.n
    run_ring = runs.ring
    runs_per_ring = np.bincount(run_ring, minlength=n_rings)
    ring_ok = runs.ring_ok & (runs_per_ring >= (3 if allow_diagonal else 4))
    # corner k = intersection of run k and the next run of the same ring
    run_start = np.concatenate([[0], np.cumsum(runs_per_ring)[:-1]])
    run_pos = np.arange(n_runs) - run_start[run_ring]
    nxt = np.where(
        run_pos == runs_per_ring[run_ring] - 1, run_start[run_ring], np.arange(n_runs) + 1
    )
    det = nx * ny[nxt] - ny * nx[nxt]
    safe = np.where(np.abs(det) > 1e-9, det, 1.0)
    cx = (d * ny[nxt] - d[nxt] * ny) / safe
    cy = (nx * d[nxt] - nx[nxt] * d) / safe
    ring_ok[run_ring[np.abs(det) <= 1e-9]] = False
    corners = np.column_stack([cx, cy]) + origin[runs.owner]
    # close each ring: repeat its first corner after its last
    closed = np.insert(corners, run_start + runs_per_ring, corners[run_start], axis=0)
    offsets = np.concatenate([[0], np.cumsum(runs_per_ring + 1)]).astype(np.int64)
    src = e.rings
    rebuilt = _Rings(closed, offsets, src.ring_part, src.part_owner, n)
    bad_owner = np.zeros(n, bool)
    bad_owner[src.part_owner[src.ring_part[~ring_ok]]] = True
    has = np.zeros(n, bool)
    has[src.part_owner] = True
    ok = has & ~bad_owner & oriented
    rebuilt = rebuilt.drop(ok[src.part_owner[src.ring_part]])
    return rebuilt, ok


def _fit(
    e: _Edges,
    smp: _Samples,
    n: int,
    phi: NDArray[np.float64],
    allow_diagonal: bool,
    diagonal_min_m: float,
) -> tuple[_Rings, NDArray[np.bool_], NDArray[np.float64]]:
    """Snap edges to ``phi``, merge runs, fit run lines, intersect consecutive runs.

    Returns the rebuilt rings, whether each geometry was rebuilt (all its rings), and
    per geometry the area swept between the samples and their run lines.
    """
    phi = np.where(np.abs(phi) < 1e-9, 0.0, phi)
    ph = np.nan_to_num(phi)[e.owner]
    runs = _runs(e, _edge_classes(e, ph, allow_diagonal, diagonal_min_m))
    # coordinates relative to each geometry's first vertex keep the arithmetic exact enough
    origin = np.zeros((n, 2))
    owners, first_edge = np.unique(e.owner, return_index=True)
    origin[owners] = e.p0[first_edge]
    nx, ny = _run_normals(ph[runs.head], runs.cls, allow_diagonal)
    d, swept = _run_offsets(e, smp, runs, origin, nx, ny, n)
    rebuilt, ok = _corners(e, runs, origin, nx, ny, d, np.isfinite(phi), allow_diagonal)
    return rebuilt, ok, swept
