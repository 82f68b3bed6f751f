"""Per-chunk summaries for :class:`~terraseg.instances.InstanceMerger`, and the face rule.

A :class:`ChunkSummary` is all the merger needs from one chunk: per-label stats
(40 bytes per label) and the 1-pixel strips along the core edges (plus the halo
pixels just beyond them). :func:`face_links` decides which labels of two chunks
are one object across their shared face.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi

from terraseg.core.grid import PixelWindow
from terraseg.errors import GridError
from terraseg.instances.table import BINCOUNT_SLACK, ChunkIndex, Labels, core_view, norm_index

__all__ = ["DIRECTIONS", "ChunkStats", "ChunkSummary", "Strip", "face_links", "summarize_chunk"]

Dense = NDArray[np.uint32]

# The 8 neighbour directions (drow, dcol), row-major. A chunk's face in direction d is
# shared with the chunk at index + d; the 4 corners are faces of one pixel.
DIRECTIONS: tuple[tuple[int, int], ...] = (
    (-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1),
)


@dataclass(slots=True, eq=False)
class ChunkStats:
    """Per-label statistics of a chunk core's local labels (sorted ``local_ids``)."""

    core: PixelWindow
    local_ids: NDArray[np.int64]  # (n,) sorted, > 0
    pixel_count: NDArray[np.int64]  # (n,)
    score_sum: NDArray[np.float64]  # (n,)
    bbox: NDArray[np.int32]  # (n, 4) scene px

    @property
    def nbytes(self) -> int:
        return (self.local_ids.nbytes + self.pixel_count.nbytes + self.score_sum.nbytes
                + self.bbox.nbytes)


@dataclass(slots=True, eq=False)
class Strip:
    """One side of a face: dense ids (0 = none) of the core-edge pixels and the halo beyond."""

    origin: tuple[int, int]  # scene (row, col) of own[0]
    own: Dense
    out: Dense | None

    @property
    def nbytes(self) -> int:
        return self.own.nbytes + (self.out.nbytes if self.out is not None else 0)


@dataclass(frozen=True, slots=True, eq=False)
class ChunkSummary:
    """All the merger needs from one chunk: per-label stats and its border strips.

    Made by :func:`summarize_chunk` where the chunk was labelled (a Dask worker),
    so that only this (kilobytes: 40 bytes per label and a few bytes per border
    pixel) travels to the process that holds the :class:`InstanceMerger`. Picklable.
    """

    chunk_index: ChunkIndex
    shape: tuple[int, int]
    stats: ChunkStats
    strips: tuple[tuple[tuple[int, int], Strip], ...]

    @property
    def n_labels(self) -> int:
        """Local labels in the chunk's core."""
        return int(self.stats.local_ids.size)

    @property
    def nbytes(self) -> int:
        """Bytes of the summary's arrays."""
        return self.stats.nbytes + sum(strip.nbytes for _, strip in self.strips)


def summarize_chunk(
    chunk_index: ChunkIndex,
    core: PixelWindow,
    labels: Labels,
    *,
    shape: tuple[int, int],
    window: PixelWindow | None = None,
    scores: NDArray[np.floating[Any]] | None = None,
) -> ChunkSummary:
    """One chunk's :class:`ChunkSummary`; see :meth:`InstanceMerger.add_chunk` for the arguments.

    ``shape`` is the scene's ``(rows, cols)``. The summary holds copies: no
    reference to ``labels`` or ``scores`` survives.

    Raises
    ------
    InstanceMergeError
        If the labels are not non-negative integers.
    GridError
        If shapes and windows disagree or the core is outside the scene.
    """
    key = norm_index(chunk_index)
    rows, cols = int(shape[0]), int(shape[1])
    if core.is_empty or not PixelWindow(0, 0, rows, cols).contains(core):
        raise GridError(
            f"chunk {key}'s core {core} is empty or outside the {rows} x {cols} scene; "
            "pass chunk.core",
            core=core,
        )
    core_lab = core_view(labels, core, window)
    win = core if window is None else window
    if scores is not None and scores.shape != labels.shape:
        raise GridError(
            f"scores of shape {scores.shape} do not match labels of shape {labels.shape}; "
            "give scores over the same window",
            shape=scores.shape,
        )
    stats, dense = _chunk_stats(core, core_lab, scores, win)
    strips = []
    for d in DIRECTIONS:
        strip = _strip((rows, cols), core, win, labels, stats.local_ids, dense, d)
        if strip is not None:
            strips.append((d, strip))
    return ChunkSummary(key, (rows, cols), stats, tuple(strips))


def face_links(
    a_own: Dense,
    a_out: Dense | None,
    b_own: Dense,
    b_out: Dense | None,
    *,
    min_overlap: float = 0.5,
) -> NDArray[np.uint32]:
    """Pairs ``(a, b)`` of labels of chunks A and B that are one object across their face.

    ``p`` are A's core pixels along the face and ``q`` the B core pixels facing them
    (same order). ``a_own`` is A's labels at ``p``, ``a_out`` A's labels at ``q`` (its
    1-pixel halo; ``None`` when A labelled no halo); ``b_own`` is B's labels at ``q`` and
    ``b_out`` B's labels at ``p``. 0 means background / not one of the chunk's labels.

    The rule: compare the two chunks' labelings on the pixels that BOTH labelled
    (``p`` and ``q`` when both have halos, ``q`` when only A has one, ``p`` when
    only B has one). Labels ``a`` and ``b`` are one object when they share
    ``c(a, b) >= min_overlap * min(s_a, s_b)`` of those pixels (and at least one),
    where ``s_a`` and ``s_b`` count each label's pixels there. Without any halo the
    compared pixels are the facing pairs ``(p_i, q_i)``: ``a`` at ``p_i`` and ``b`` at
    ``q_i`` are linked when they face each other along at least ``min_overlap`` of the
    shorter of their two runs.

    With halos, two buildings that touch exactly on the face are never linked (each
    chunk sees the wall between them), and for labels that are a relabelling of
    one labelling (an oracle) the rule links exactly the equal ids. Without halos, a
    wall lying exactly on the face cannot be seen, and the two buildings merge.

    Examples
    --------
    A building cut by the face (labels 1 and 5) and two buildings touching on it
    (2 above, 7 below, wall on the face): halos tell them apart.

    >>> a_own = np.array([1, 1, 2, 2], np.uint32); a_out = np.array([1, 1, 0, 0], np.uint32)
    >>> b_own = np.array([5, 5, 7, 7], np.uint32); b_out = np.array([5, 5, 0, 0], np.uint32)
    >>> face_links(a_own, a_out, b_own, b_out).tolist()
    [[1, 5]]
    >>> face_links(a_own, None, b_own, None).tolist()
    [[1, 5], [2, 7]]
    """
    if a_out is not None and b_out is not None:
        la = np.concatenate([a_own, a_out])
        lb = np.concatenate([b_out, b_own])
    elif a_out is not None:
        la, lb = a_out, b_own
    elif b_out is not None:
        la, lb = a_own, b_out
    else:
        la, lb = a_own, b_own
    both = (la != 0) & (lb != 0)
    if not both.any():
        return np.zeros((0, 2), np.uint32)
    keys = (la[both].astype(np.uint64) << np.uint64(32)) | lb[both].astype(np.uint64)
    pair_keys, c = np.unique(keys, return_counts=True)
    pa = (pair_keys >> np.uint64(32)).astype(np.uint32)
    pb = (pair_keys & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    ua, sa = np.unique(la, return_counts=True)
    ub, sb = np.unique(lb, return_counts=True)
    s_a = sa[np.searchsorted(ua, pa)]
    s_b = sb[np.searchsorted(ub, pb)]
    keep = c >= min_overlap * np.minimum(s_a, s_b)
    return np.stack([pa[keep], pb[keep]], axis=1)


def _strip(
    shape: tuple[int, int],
    core: PixelWindow,
    win: PixelWindow,
    labels: Labels,
    local_ids: NDArray[np.int64],
    dense: Dense,
    d: tuple[int, int],
) -> Strip | None:
    """The chunk's strip facing direction ``d``, or None at the scene edge."""
    rows, cols = shape
    dr, dc = d
    if (dr < 0 and core.row_off == 0) or (dr > 0 and core.row_stop == rows):
        return None
    if (dc < 0 and core.col_off == 0) or (dc > 0 and core.col_stop == cols):
        return None
    # own pixels, in core frame (dense) and scene frame
    r_rng = (
        range(0, 1) if dr < 0 else range(core.height - 1, core.height) if dr > 0
        else range(core.height)
    )
    c_rng = (
        range(0, 1) if dc < 0 else range(core.width - 1, core.width) if dc > 0
        else range(core.width)
    )
    # a copy: a view would keep the whole chunk's labels alive
    own = dense[r_rng.start : r_rng.stop, c_rng.start : c_rng.stop].flatten()
    origin = (core.row_off + r_rng.start, core.col_off + c_rng.start)
    # halo pixels: own pixels moved by d, in the labels' frame
    r0 = origin[0] + dr - win.row_off
    c0 = origin[1] + dc - win.col_off
    r1 = r0 + len(r_rng)
    c1 = c0 + len(c_rng)
    out: Dense | None = None
    if r0 >= 0 and c0 >= 0 and r1 <= win.height and c1 <= win.width:
        out = _to_dense(labels[r0:r1, c0:c1].ravel(), local_ids)
    return Strip(origin, own, out)


def _to_dense(values: NDArray[np.integer[Any]], local_ids: NDArray[np.int64]) -> Dense:
    """Positions (1-based) of ``values`` in sorted ``local_ids``; 0 where absent or 0."""
    out = np.zeros(values.shape, np.uint32)
    if local_ids.size == 0 or values.size == 0:
        return out
    v = values.astype(np.int64, copy=False)
    idx = np.minimum(np.searchsorted(local_ids, v), local_ids.size - 1)
    hit = (local_ids[idx] == v) & (v != 0)
    out[hit] = idx[hit].astype(np.uint32) + 1
    return out


def _chunk_stats(
    core: PixelWindow,
    core_lab: Labels,
    scores: NDArray[np.floating[Any]] | None,
    win: PixelWindow,
) -> tuple[ChunkStats, Dense]:
    """Per-label stats of the core and the core's labels as dense ids ``1..n``."""
    top = int(core_lab.max()) if core_lab.size else 0
    flat = core_lab.ravel()
    if top == 0:
        local_ids = np.zeros(0, np.int64)
        dense = np.zeros(core_lab.shape, np.uint32)
        counts = np.zeros(0, np.int64)
    elif top <= BINCOUNT_SLACK * core_lab.size:
        full = np.bincount(flat, minlength=top + 1)
        local_ids = np.flatnonzero(full[1:]).astype(np.int64) + 1
        counts = full[local_ids].astype(np.int64)
        if local_ids.size == top:
            dense = core_lab.astype(np.uint32, copy=False)
        else:
            lut = np.zeros(top + 1, np.uint32)
            lut[local_ids] = np.arange(1, local_ids.size + 1, dtype=np.uint32)
            dense = lut[core_lab]
    else:
        uniq, inv, cnt = np.unique(flat, return_inverse=True, return_counts=True)
        has_bg = bool(uniq[0] == 0)
        local_ids = uniq[int(has_bg):].astype(np.int64)
        counts = cnt[int(has_bg):].astype(np.int64)
        # uniq[0] == 0 takes position 0, so nonzero labels already start at 1
        dense = (inv.reshape(core_lab.shape) + (0 if has_bg else 1)).astype(np.uint32)
    n = int(local_ids.size)
    if scores is None:
        score_sum = np.full(n, np.nan)
    else:
        rel = core.relative_to(win)
        sc = np.asarray(scores[rel.to_slices()], np.float64)
        score_sum = np.bincount(dense.ravel(), weights=sc.ravel(), minlength=n + 1)[1:]
    bbox = np.zeros((n, 4), np.int32)
    if n:
        objs = ndi.find_objects(dense, max_label=n)
        sl = np.array(
            [(o[0].start, o[1].start, o[0].stop, o[1].stop) for o in objs if o is not None],
            np.int64,
        )
        bbox[:] = sl + np.array([core.row_off, core.col_off, core.row_off, core.col_off])
    return ChunkStats(core, local_ids, counts, score_sum, bbox), dense
