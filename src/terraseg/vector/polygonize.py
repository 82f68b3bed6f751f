"""Label image → pixel-outline polygons, vectorized in numpy (no GDAL, no loop per polygon).

:func:`polygonize_labels` gives what ``rasterio.features.shapes(labels, mask=labels != 0,
connectivity=4)`` gives: one polygon per 4-connected region of equal non-zero value,
vertices on pixel corners (only where the outline turns), holes kept, in the
representation GEOS calls valid (a hole touching the outline at a point is a hole,
two regions of one value touching at a corner are two polygons). It differs only in
the order of the polygons and of their vertices (``shapely.normalize`` makes them
identical) and is several times faster: every step is a numpy pass over the image or
over the outline, never a Python loop per polygon.

How:

1. Boundary unit edges are where 4-adjacent pixels differ; each is directed so that
   its region (the non-zero pixel beside it) lies on its right, in the pixel frame
   (x right, y down). Maximal runs of collinear edges of one region along a row or
   column are *segments*; an outline alternates horizontal and vertical segments.
2. Each segment's successor starts where it ends: the right turn if there is one,
   else the left turn. Preferring the right turn keeps two pixels that touch only at
   a corner apart (4-connectivity). The successors form cycles: the rings.
3. Where a ring passes a corner twice (two diagonal pixels of one region joined
   elsewhere), it is split there by taking the left turn instead: the hole it
   enclosed becomes a ring of its own, as GEOS wants.
4. Rings are ordered by pointer jumping (rank in the cycle), exteriors told from
   holes by the sign of their area, and holes given to the exterior of their value
   (the one containing their region when the value has several).

Large images are scanned for row and column edges on two threads (numpy releases
the GIL). Pure module: numpy and shapely.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeAlias

import numpy as np
import shapely
from numpy.typing import NDArray

__all__ = ["cpu_threads", "polygonize_labels"]

Geoms: TypeAlias = "NDArray[np.object_]"
Ints: TypeAlias = "NDArray[np.int64]"
Segments: TypeAlias = "list[tuple[Ints, Ints, Ints, Ints, NDArray[Any]]]"
"""Per direction (E, S, W, N): ``(start y, start x, end y, end x, label)`` of its segments."""


# segment directions; the region lies on the right of the direction (y down)
_E, _S, _W, _N = 0, 1, 2, 3


def _runs(pos: Ints, lab: NDArray[Any]) -> tuple[Ints, Ints, NDArray[Any]]:
    """Maximal runs of consecutive positions with one label.

    ``pos`` are sorted edge keys (row- or column-major) in which consecutive keys
    never wrap from one line to the next (each line has one key more than it has
    edges). Returns per run ``(first key, last key, label)``.
    """
    n = len(pos)
    start = np.ones(n, bool)
    start[1:] = (pos[1:] != pos[:-1] + 1) | (lab[1:] != lab[:-1])
    first = np.flatnonzero(start)
    last = np.empty_like(first)
    last[:-1] = first[1:] - 1
    if len(first):
        last[-1] = n - 1
    return pos[first], pos[last], lab[first]


def _cycle_min(nxt: Ints) -> Ints:
    """Per element of the permutation ``nxt``, the smallest index of its cycle."""
    rep = np.arange(len(nxt))
    jump = nxt.copy()
    while True:
        new = np.minimum(rep, rep[jump])
        if np.array_equal(new, rep):
            return rep
        rep = new
        jump = jump[jump]


def _rank(nxt: Ints, rep: Ints) -> Ints:
    """Per element, its number of steps from its cycle's smallest index (pointer jumping)."""
    idx = np.arange(len(nxt))
    last = nxt == rep  # the element just before the cycle's start
    succ = np.where(last, idx, nxt)
    dist = (~last).astype(np.int64)
    while True:
        nsucc = succ[succ]
        if np.array_equal(nsucc, succ):
            break
        dist = dist + dist[succ]
        succ = nsucc
    length = dist[rep] + 1
    out: Ints = length - 1 - dist
    return out


_MIN_PX_THREADED = 1 << 20
"""Pixels from which :func:`polygonize_labels` scans rows and columns on two threads."""


def cpu_threads() -> int:
    """The threads worth splitting work over: the CPUs this process may run on, capped by
    ``OMP_NUM_THREADS`` when it is set.

    A Dask worker's nanny sets ``OMP_NUM_THREADS=1`` (its parallelism is its task
    threads), so a task there polygonizes on one thread, as numpy and torch do.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    try:
        cap = int(os.environ.get("OMP_NUM_THREADS", "0"))
    except ValueError:
        cap = 0
    return max(1, min(cpus, cap)) if cap > 0 else cpus


def _horizontal_edges(lab: NDArray[Any]) -> tuple[Ints, NDArray[Any], NDArray[Any]]:
    """Unit edges between vertically adjacent pixels of different values (and the scene
    border): sorted keys ``y * (w + 1) + x`` of the edge from corner ``(y, x)`` to
    ``(y, x + 1)``, and the values above and below it (0 outside)."""
    h, w = lab.shape
    flat = lab.ravel()
    top = np.flatnonzero(lab[0])
    inner = np.flatnonzero(flat[w:] != flat[:-w])  # between flat[k] and flat[k + w]
    bottom = np.flatnonzero(lab[-1])
    y = inner // w + 1
    keys = np.concatenate([top, y * (w + 1) + (inner - (y - 1) * w), h * (w + 1) + bottom])
    above = np.concatenate([np.zeros(len(top), lab.dtype), flat[inner], lab[-1][bottom]])
    below = np.concatenate([lab[0][top], flat[inner + w], np.zeros(len(bottom), lab.dtype)])
    return keys, above, below


def _vertical_edges(lab: NDArray[Any]) -> tuple[Ints, NDArray[Any], NDArray[Any]]:
    """Unit edges between horizontally adjacent pixels of different values (and the scene
    border): sorted keys ``x * (h + 1) + y`` of the edge from corner ``(y, x)`` to
    ``(y + 1, x)``, and the values left and right of it (0 outside)."""
    h, w = lab.shape
    flat = lab.ravel()
    first = np.flatnonzero(lab[:, 0])
    inner = np.flatnonzero(flat[1:] != flat[:-1])  # between flat[k] and flat[k + 1]
    inner = inner[inner % w != w - 1]  # not from the end of a row to the next
    last = np.flatnonzero(lab[:, -1])
    y, x = np.divmod(inner, w)
    x += 1
    # column-major order: a stable (radix) sort by column of the row-major edges
    order = np.argsort(x.astype(np.uint16) if w < 2**16 else x, kind="stable")
    y, x, inner = y[order], x[order], inner[order]
    keys = np.concatenate([first, x * (h + 1) + y, w * (h + 1) + last])
    left = np.concatenate([np.zeros(len(first), lab.dtype), flat[inner], lab[:, -1][last]])
    right = np.concatenate([lab[:, 0][first], flat[inner + 1], np.zeros(len(last), lab.dtype)])
    return keys, left, right


def _pixel(flat: NDArray[Any], h: int, w: int, y: Ints, x: Ints) -> NDArray[Any]:
    """The values of pixels ``(y, x)`` of the ``(h, w)`` image ``flat``; 0 outside it."""
    inside = (y >= 0) & (y < h) & (x >= 0) & (x < w)
    out: NDArray[Any] = np.where(inside, flat[np.where(inside, y * w + x, 0)], 0)
    return out


def polygonize_labels(
    labels: NDArray[Any], row_off: int = 0, col_off: int = 0
) -> tuple[Ints, Geoms]:
    """One polygon per 4-connected region of equal non-zero value.

    Parameters
    ----------
    labels
        ``(rows, cols)`` integer labels; 0 is background.
    row_off, col_off
        Added to the pixel coordinates (``x = col + col_off``, ``y = row + row_off``).

    Returns
    -------
    values, polygons
        The value of each region (int64) and its Polygon (valid, holes kept, vertices
        on the pixel corners where the outline turns), in no particular order.

    Examples
    --------
    >>> lab = np.array([[1, 1, 0], [1, 0, 2], [0, 2, 2]])
    >>> values, polys = polygonize_labels(lab)
    >>> sorted(zip(values.tolist(), [p.area for p in polys]))
    [(1, 3.0), (2, 3.0)]
    """
    h, w = labels.shape
    empty = np.empty(0, np.int64), np.empty(0, object)
    if h == 0 or w == 0:
        return empty
    lab2d = np.ascontiguousarray(labels)
    flat = lab2d.ravel()
    segs = _segments(*_unit_edges(lab2d), h, w)
    counts = [len(sg[0]) for sg in segs]
    if sum(counts) == 0:
        return empty
    base = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    turns_right, saddle = _turns(segs, flat, h, w)
    nxt = _successors(segs, turns_right, base, h, w)
    rep = _split_saddles(nxt, _cycle_min(nxt), saddle, base)
    return _assemble(segs, nxt, rep, base, row_off, col_off)


def _unit_edges(
    lab2d: NDArray[Any],
) -> tuple[Ints, NDArray[Any], NDArray[Any], Ints, NDArray[Any], NDArray[Any]]:
    """Unit edges between pixels of different values, as sorted keys and the values on
    either side: ``(kh, above, below, kv, left, right)``.

    Horizontal ones row-major (key ``y * (w + 1) + x`` for the edge from ``(y, x)`` to
    ``(y, x + 1)``), vertical ones column-major (key ``x * (h + 1) + y`` for the edge
    from ``(y, x)`` to ``(y + 1, x)``); the extra key per line keeps lines apart.
    """
    if lab2d.size >= _MIN_PX_THREADED and cpu_threads() > 1:
        with ThreadPoolExecutor(1) as pool:  # numpy releases the GIL for these passes
            vertical = pool.submit(_vertical_edges, lab2d)
            kh, above, below = _horizontal_edges(lab2d)
            kv, left, right = vertical.result()
    else:
        kh, above, below = _horizontal_edges(lab2d)
        kv, left, right = _vertical_edges(lab2d)
    return kh, above, below, kv, left, right


def _segments(
    kh: Ints,
    above: NDArray[Any],
    below: NDArray[Any],
    kv: Ints,
    left: NDArray[Any],
    right: NDArray[Any],
    h: int,
    w: int,
) -> Segments:
    """Segments (maximal runs) per direction; the region lies on the right of the
    direction of travel (y down)."""
    segs: Segments = []
    sel = below != 0  # E: region below, left to right
    k0, k1, lab = _runs(kh[sel], below[sel])
    y, x0 = np.divmod(k0, w + 1)
    segs.append((y, x0, y, k1 - y * (w + 1) + 1, lab))
    sel = left != 0  # S: region on the left, downwards
    k0, k1, lab = _runs(kv[sel], left[sel])
    x, y0 = np.divmod(k0, h + 1)
    segs.append((y0, x, k1 - x * (h + 1) + 1, x, lab))
    sel = above != 0  # W: region above, right to left
    k0, k1, lab = _runs(kh[sel], above[sel])
    y, x0 = np.divmod(k0, w + 1)
    segs.append((y, k1 - y * (w + 1) + 1, y, x0, lab))
    sel = right != 0  # N: region on the right, upwards
    k0, k1, lab = _runs(kv[sel], right[sel])
    x, y0 = np.divmod(k0, h + 1)
    segs.append((k1 - x * (h + 1) + 1, x, y0, x, lab))
    return segs


def _turns(
    segs: Segments, flat: NDArray[Any], h: int, w: int
) -> tuple[list[NDArray[np.bool_]], list[Ints]]:
    """Per direction, whether each segment turns right at its end, and the saddles.

    At its end a segment turns right when the pixel ahead on its right is not its
    region, else left. A saddle is a right turn with the ahead-left pixel in the
    region: two segments of the region arrive at that corner.
    """
    # ahead-right and ahead-left pixels as (dy, dx) from the corner
    ahead_right = ((0, 0), (0, -1), (-1, -1), (-1, 0))
    ahead_left = ((-1, 0), (0, 0), (0, -1), (-1, -1))
    turns_right = []
    saddle = []
    for d, (_, _, ey, ex, lab) in enumerate(segs):
        dy, dx = ahead_right[d]
        tr = _pixel(flat, h, w, ey + dy, ex + dx) != lab
        turns_right.append(tr)
        dy, dx = ahead_left[d]
        left_in = _pixel(flat, h, w, ey + dy, ex + dx) == lab
        saddle.append(np.flatnonzero(tr & left_in))
    return turns_right, saddle


def _successors(
    segs: Segments, turns_right: list[NDArray[np.bool_]], base: Ints, h: int, w: int
) -> Ints:
    """The segment that follows each one (indices into the concatenated directions).

    The segments arriving at the start corners of direction t are the right-turners
    of t - 1 and the left-turners of t + 1, one each; matched by sorting.
    """

    def key(t: int, y: Ints, x: Ints) -> Ints:
        out: Ints = y * (w + 1) + x if t in (_E, _W) else x * (h + 1) + y
        return out

    nxt = np.empty(int(base[-1]), np.int64)
    for t in range(4):
        a, b = (t + 3) % 4, (t + 1) % 4
        ia = np.flatnonzero(turns_right[a])
        ib = np.flatnonzero(~turns_right[b])
        keys = np.concatenate(
            [key(t, segs[a][2][ia], segs[a][3][ia]), key(t, segs[b][2][ib], segs[b][3][ib])]
        )
        src = np.concatenate([ia + base[a], ib + base[b]])
        order = np.argsort(keys)
        if not np.array_equal(keys[order], key(t, segs[t][0], segs[t][1])):
            raise AssertionError("internal error: pixel outline segments do not chain")
        nxt[src[order]] = np.arange(base[t], base[t + 1])
    return nxt


def _split_saddles(nxt: Ints, rep: Ints, saddle: list[Ints], base: Ints) -> Ints:
    """Split the rings through a corner twice; updates ``nxt`` in place, returns the new ``rep``.

    A ring through a corner twice (E and W, or S and N, of one value arriving there)
    takes the left turns there instead, which splits off the hole it encloses. Both
    arrivals' lists are sorted by corner (E and W row-major, S and N column-major).
    """
    if any(len(sd) for sd in saddle):
        ia = np.concatenate([saddle[_E] + base[_E], saddle[_S] + base[_S]])
        ib = np.concatenate([saddle[_W] + base[_W], saddle[_N] + base[_N]])
        if len(ia) != len(ib):
            raise AssertionError("internal error: unpaired saddle corners")
        same = rep[ia] == rep[ib]
        if same.any():
            ia, ib = ia[same], ib[same]
            nxt[ia], nxt[ib] = nxt[ib], nxt[ia].copy()
            rep = _cycle_min(nxt)
    return rep


def _assemble(
    segs: Segments, nxt: Ints, rep: Ints, base: Ints, row_off: int, col_off: int
) -> tuple[Ints, Geoms]:
    """The polygons of the rings (cycles of ``nxt`` with smallest member ``rep``) and their values.

    Rings are ordered by pointer jumping, exteriors told from holes by the sign of
    their area, and holes given to their exterior (:func:`_hole_owners`).
    """
    n = int(base[-1])
    label = np.concatenate([sg[4] for sg in segs]).astype(np.int64)
    pos = _rank(nxt, rep)
    row = np.concatenate([sg[0] for sg in segs])
    col = np.concatenate([sg[1] for sg in segs])
    is_rep = rep == np.arange(n)
    ring = (np.cumsum(is_rep) - 1)[rep]
    n_rings = int(is_rep.sum())
    ring_label = label[is_rep]
    # signed area (shoelace over the corners); exteriors > 0 with the region on the right
    cross = col * row[nxt] - col[nxt] * row
    area = np.bincount(ring, cross.astype(np.float64), minlength=n_rings) / 2
    exterior = area > 0
    owner = _hole_owners(ring_label, exterior, area, row, col, is_rep, ring, pos, base)
    # rings grouped by polygon, exterior first
    ring_order = np.lexsort((~exterior, owner))
    rank = np.empty(n_rings, np.int64)
    rank[ring_order] = np.arange(n_rings)
    length = np.bincount(ring, minlength=n_rings)[ring_order]
    offsets = np.concatenate([[0], np.cumsum(length + 1)]).astype(np.int64)
    xy = np.empty((int(offsets[-1]), 2), np.float64)
    dest = offsets[rank[ring]] + pos
    xy[dest, 0] = col + col_off
    xy[dest, 1] = row + row_off
    xy[offsets[1:] - 1] = xy[offsets[:-1]]  # close the rings
    is_ext = exterior[ring_order]
    poly_offsets = np.concatenate([np.flatnonzero(is_ext), [n_rings]]).astype(np.int64)
    polys = shapely.from_ragged_array(shapely.GeometryType.POLYGON, xy, (offsets, poly_offsets))
    return ring_label[ring_order][is_ext], np.asarray(polys, object)


def _hole_owners(
    ring_label: Ints,
    exterior: NDArray[np.bool_],
    area: NDArray[np.float64],
    row: Ints,
    col: Ints,
    is_rep: NDArray[np.bool_],
    ring: Ints,
    pos: Ints,
    base: Ints,
) -> Ints:
    """Per ring, the index of the exterior ring of its polygon (itself for an exterior).

    A hole belongs to the exterior of its value; where the value has several
    exteriors (several regions), to the smallest one containing the centre of a
    pixel of the hole's region.
    """
    n_rings = len(ring_label)
    owner = np.arange(n_rings)
    holes = np.flatnonzero(~exterior)
    if len(holes) == 0:
        return owner
    ext = np.flatnonzero(exterior)
    ext_sorted = ext[np.argsort(ring_label[ext], kind="stable")]
    ext_labels = ring_label[ext_sorted]
    lo = np.searchsorted(ext_labels, ring_label[holes], side="left")
    hi = np.searchsorted(ext_labels, ring_label[holes], side="right")
    single = hi - lo == 1
    owner[holes[single]] = ext_sorted[lo[single]]
    if single.all():
        return owner
    # several regions of the hole's value: point-in-polygon on their exteriors
    seg_of_ring = np.flatnonzero(is_rep)  # the first segment of each ring
    direction = np.searchsorted(base, seg_of_ring, side="right") - 1
    r0, c0 = row[seg_of_ring], col[seg_of_ring]
    # centre of the region pixel right of the first unit edge of each ring
    dr = np.array([0, 0, -1, -1])[direction]
    dc = np.array([0, -1, -1, 0])[direction]
    px, py = c0 + dc + 0.5, r0 + dr + 0.5
    for k in np.flatnonzero(~single):
        hole = holes[k]
        cand = ext_sorted[lo[k] : hi[k]]
        rings = [_ring_polygon(int(e), row, col, ring, pos) for e in cand]
        inside = shapely.contains_xy(np.asarray(rings, object), px[hole], py[hole])
        owner[hole] = cand[inside][np.argmin(area[cand[inside]])]
    return owner


def _ring_polygon(k: int, row: Ints, col: Ints, ring: Ints, pos: Ints) -> shapely.Polygon:
    """Ring ``k`` as a hole-free Polygon (pixel frame, no offset)."""
    members = np.flatnonzero(ring == k)
    members = members[np.argsort(pos[members])]
    return shapely.Polygon(np.column_stack([col[members], row[members]]).astype(np.float64))
