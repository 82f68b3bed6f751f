"""Per-tile detector outputs (Mask R-CNN style) merged into one instance per object.

See :mod:`terraseg.instances` for the protocol and :func:`merge_tile_detections`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from terraseg.core.grid import PixelWindow, TileId, TileLattice
from terraseg.errors import ConfigError, GridError

__all__ = ["Instance", "TileDetections", "merge_tile_detections", "rasterize_instances"]


@dataclass(frozen=True, slots=True, eq=False)
class TileDetections:
    """What an instance model returned for one lattice tile.

    Attributes
    ----------
    tile_id
        ``(i, j)`` of the tile on the global lattice; its scene window is
        ``lattice.tile_window(tile_id)``, the frame of ``masks`` and ``boxes``.
    masks
        ``(n, H, W)`` or ``(n, 1, H, W)`` masks in the tile's frame (``H, W`` at most the
        tile size): bool, or float probabilities thresholded at ``mask_thresh``.
        Pixels past the scene's bottom/right edge (padding) are ignored.
    scores
        ``(n,)`` detection confidences.
    boxes
        Optional ``(n, 4)`` ``(x0, y0, x1, y1)`` boxes in tile pixels (torchvision's
        convention); when given, mask pixels outside the box (rounded outwards) are
        ignored, which is also faster.
    class_ids
        Optional ``(n,)`` integer classes (default 1); only equal classes are merged.
    """

    tile_id: TileId
    masks: NDArray[Any]
    scores: NDArray[np.floating[Any]]
    boxes: NDArray[np.floating[Any]] | None = None
    class_ids: NDArray[np.integer[Any]] | None = None


@dataclass(slots=True, eq=False)
class Instance:
    """One object in scene pixels: a tight window and a boolean mask over it.

    Attributes
    ----------
    window
        Tight bounding window of the mask, in scene pixels.
    mask
        ``window.shape`` bool mask.
    score
        Confidence (the kept detection's score).
    tile_id
        The tile whose detection was kept.
    id
        Global id ``1..N`` once merged (0 before).
    class_id
        The object class.
    n_detections
        How many tile detections were merged into this instance.
    """

    window: PixelWindow
    mask: NDArray[np.bool_]
    score: float
    tile_id: TileId
    id: int = 0
    class_id: int = 1
    n_detections: int = 1

    @property
    def pixel_count(self) -> int:
        """Number of mask pixels."""
        return int(np.count_nonzero(self.mask))

    @property
    def centroid(self) -> tuple[float, float]:
        """Mean ``(row, col)`` of the mask pixels, in scene pixel coordinates (pixel centres
        at ``+0.5``)."""
        rr, cc = np.nonzero(self.mask)
        return (
            float(rr.mean()) + self.window.row_off + 0.5,
            float(cc.mean()) + self.window.col_off + 0.5,
        )


@dataclass(slots=True, eq=False)
class _Candidate:
    inst: Instance
    seen: list[PixelWindow]  # what the tile(s) behind it saw, clipped to the scene
    truncated: bool
    owned: bool
    order: tuple[Any, ...]


def _tight(mask: NDArray[np.bool_], frame: PixelWindow) -> tuple[PixelWindow, NDArray[np.bool_]]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    w = PixelWindow.from_bounds(frame.row_off + r0, frame.col_off + c0,
                                frame.row_off + r1, frame.col_off + c1)
    return w, np.ascontiguousarray(mask[r0:r1, c0:c1])


def _covered(frame: PixelWindow, seen: Sequence[PixelWindow]) -> NDArray[np.bool_]:
    """Which pixels of ``frame`` lie in the union of the ``seen`` windows."""
    cov = np.zeros(frame.shape, np.bool_)
    for w in seen:
        part = w.intersection(frame)
        if not part.is_empty:
            cov[part.relative_to(frame).to_slices()] = True
    return cov


def _touches_cut(inst: Instance, seen: Sequence[PixelWindow], shape: tuple[int, int]) -> bool:
    """True when the mask has a 4-neighbour in the scene that no ``seen`` window covers."""
    w = inst.window
    pad = PixelWindow(w.row_off - 1, w.col_off - 1, w.height + 2, w.width + 2).clip(shape)
    grown = np.zeros(pad.shape, np.bool_)
    sl = w.relative_to(pad).to_slices()
    m = inst.mask
    grown[sl] |= m
    r, c = sl
    # shift the mask by one pixel each way, clipped to the padded frame
    if r.start > 0:
        grown[r.start - 1 : r.stop - 1, c] |= m
    else:
        grown[r.start : r.stop - 1, c] |= m[1:]
    if r.stop < pad.height:
        grown[r.start + 1 : r.stop + 1, c] |= m
    else:
        grown[r.start + 1 : r.stop, c] |= m[:-1]
    if c.start > 0:
        grown[r, c.start - 1 : c.stop - 1] |= m
    else:
        grown[r, c.start : c.stop - 1] |= m[:, 1:]
    if c.stop < pad.width:
        grown[r, c.start + 1 : c.stop + 1] |= m
    else:
        grown[r, c.start + 1 : c.stop] |= m[:, :-1]
    return bool((grown & ~_covered(pad, seen)).any())


def _bbox_union(a: PixelWindow, b: PixelWindow) -> PixelWindow:
    return PixelWindow.from_bounds(min(a.row_off, b.row_off), min(a.col_off, b.col_off),
                                   max(a.row_stop, b.row_stop), max(a.col_stop, b.col_stop))


def _overlap(a: Instance, b: Instance) -> int:
    part = a.window.intersection(b.window)
    if part.is_empty:
        return 0
    ma = a.mask[part.relative_to(a.window).to_slices()]
    mb = b.mask[part.relative_to(b.window).to_slices()]
    return int(np.count_nonzero(ma & mb))


def _paste(dst: NDArray[np.bool_], frame: PixelWindow, inst: Instance,
           keep: NDArray[np.bool_] | None = None) -> None:
    sl = inst.window.relative_to(frame).to_slices()
    dst[sl] |= inst.mask if keep is None else (inst.mask & keep)


def _candidates(
    detections: Iterable[TileDetections],
    lattice: TileLattice,
    shape: tuple[int, int],
    *,
    score_thresh: float,
    mask_thresh: float,
    min_px: int,
) -> list[_Candidate]:
    out: list[_Candidate] = []
    for det in detections:
        tid = (int(det.tile_id[0]), int(det.tile_id[1]))
        masks = np.asarray(det.masks)
        if masks.ndim == 4 and masks.shape[1] == 1:
            masks = masks[:, 0]
        n = masks.shape[0] if masks.ndim == 3 else -1
        scores = np.asarray(det.scores, np.float64).reshape(-1)
        if n < 0 or scores.shape[0] != n:
            raise GridError(
                f"tile {tid}: masks of shape {np.shape(det.masks)} and {scores.shape[0]} scores "
                "do not match; give masks (n, H, W) or (n, 1, H, W) and n scores",
                tile_id=tid,
            )
        tile = lattice.tile_window(tid)
        if masks.shape[1] > tile.height or masks.shape[2] > tile.width:
            raise GridError(
                f"tile {tid}: masks of {masks.shape[1:]} px exceed the {tile.shape} tile; "
                "give masks in the tile's frame",
                tile_id=tid,
            )
        frame = PixelWindow(tile.row_off, tile.col_off, masks.shape[1], masks.shape[2])
        seen = frame.clip(shape)
        core = lattice.core_window(tid, shape)
        classes = (np.ones(n, np.int64) if det.class_ids is None
                   else np.asarray(det.class_ids, np.int64).reshape(-1))
        for k in range(n):
            if scores[k] < score_thresh:
                continue
            region = seen.relative_to(frame)
            if det.boxes is not None:
                x0, y0, x1, y1 = (float(v) for v in det.boxes[k])
                box = PixelWindow.from_bounds(int(np.floor(y0)), int(np.floor(x0)),
                                              int(np.ceil(y1)), int(np.ceil(x1)))
                region = region.intersection(box)
            if region.is_empty:
                continue
            m = masks[k][region.to_slices()]
            mb = m if m.dtype == np.bool_ else (m >= mask_thresh)
            if int(np.count_nonzero(mb)) < min_px:
                continue
            w, crop = _tight(mb, region.translate(frame.row_off, frame.col_off))
            inst = Instance(w, crop, float(scores[k]), tid, class_id=int(classes[k]))
            cr, cc = inst.centroid
            owned = core.contains(PixelWindow(int(cr), int(cc), 1, 1))
            truncated = _touches_cut(inst, [seen], shape)
            order = (truncated, not owned, -inst.score, tid, k)
            out.append(_Candidate(inst, [seen], truncated, owned, order))
    return out


class _GridHash:
    """Instance indices by the grid cells (``cell_px`` square) their windows touch."""

    def __init__(self, cell_px: int) -> None:
        self.cell = cell_px
        self.cells: dict[tuple[int, int], list[int]] = {}

    def keys(self, w: PixelWindow) -> list[tuple[int, int]]:
        c = self.cell
        return [(a, b) for a in range(w.row_off // c, (w.row_stop - 1) // c + 1)
                for b in range(w.col_off // c, (w.col_stop - 1) // c + 1)]

    def add(self, i: int, w: PixelWindow, skip: PixelWindow | None = None) -> None:
        old = set(self.keys(skip)) if skip is not None else set()
        for key in self.keys(w):
            if key not in old:
                self.cells.setdefault(key, []).append(i)

    def remove(self, i: int, w: PixelWindow) -> None:
        for key in self.keys(w):
            self.cells[key].remove(i)

    def near(self, w: PixelWindow) -> list[int]:
        return sorted({i for key in self.keys(w) for i in self.cells.get(key, ())})


def _kept(kept: list[_Candidate | None], i: int) -> _Candidate:
    k = kept[i]
    if k is None:  # pragma: no cover - removed entries are never indexed
        raise AssertionError(f"instance {i} was merged away")
    return k


def _duplicates(k: _Candidate, c: _Candidate, iou_thresh: float, ios_thresh: float) -> bool:
    """Same object: masks agree on the pixels both views saw (IoU or IoS over threshold)."""
    if k.inst.class_id != c.inst.class_id:
        return False
    inter = _overlap(k.inst, c.inst)
    if inter == 0:
        return False
    # c's pixels that k's tiles saw, and k's pixels that c's tiles saw
    a_c = int(np.count_nonzero(c.inst.mask & _covered(c.inst.window, k.seen)))
    a_k = int(np.count_nonzero(k.inst.mask & _covered(k.inst.window, c.seen)))
    if a_c == 0 or a_k == 0:
        return False
    return inter / (a_c + a_k - inter) >= iou_thresh or inter / min(a_c, a_k) >= ios_thresh


def _absorb(target: _Candidate, other: _Candidate, shape: tuple[int, int]) -> None:
    """Add to ``target`` the pixels of ``other`` that ``target``'s tiles did not see."""
    win = _bbox_union(target.inst.window, other.inst.window)
    merged = np.zeros(win.shape, np.bool_)
    _paste(merged, win, target.inst)
    _paste(merged, win, other.inst, ~_covered(other.inst.window, target.seen))
    n = target.inst.n_detections + other.inst.n_detections
    t = target.inst
    target.inst = Instance(win, merged, t.score, t.tile_id, 0, t.class_id, n)
    target.seen = target.seen + [w for w in other.seen if w not in target.seen]
    target.truncated = _touches_cut(target.inst, target.seen, shape)


def merge_tile_detections(
    detections: Iterable[TileDetections],
    lattice: TileLattice,
    shape: tuple[int, int],
    *,
    iou_thresh: float = 0.5,
    ios_thresh: float = 0.7,
    score_thresh: float = 0.0,
    mask_thresh: float = 0.5,
    min_px: int = 1,
) -> list[Instance]:
    """One instance per object from overlapping lattice tiles' detections.

    Every object inside the overlap of two tiles is detected twice (four times at
    corners), and an object larger than the overlap is seen whole by no tile. The
    merge ranks detections (complete before cut by their tile's edge; then owned
    before not owned, where a tile OWNS a detection whose mask centroid lies in its
    core, ``lattice.core_window``; then by score, tile id and index) and visits them
    in that order. A detection that duplicates an instance already kept is dropped,
    or, when the kept instance is cut by its tile edge and the detection shows more
    of it, its pixels outside what the kept instance's tiles saw are added to it.

    Two detections are duplicates when, compared on the pixels BOTH their tiles
    saw, their masks have IoU >= ``iou_thresh`` or intersection over the smaller
    >= ``ios_thresh``. Only instances whose windows share a cell of a grid hash
    (cells of one lattice stride) are compared: never all pairs.

    Parameters
    ----------
    detections
        Per-tile outputs, in any order (the result does not depend on it); consumed
        once, tile by tile.
    lattice
        The global tile lattice the tiles were cut on.
    shape
        Scene ``(rows, cols)`` in pixels.
    iou_thresh, ios_thresh
        Duplicate thresholds (see above).
    score_thresh
        Detections scoring below it are ignored.
    mask_thresh
        Threshold for float masks.
    min_px
        Detections with fewer mask pixels (inside the scene) are ignored.

    Returns
    -------
    list of Instance
        Sorted by window (row, then col), with ids ``1..N`` in that order.

    Examples
    --------
    One 4 x 4 building seen by two overlapping 8-px tiles (stride 6):

    >>> lat = TileLattice(8, 2)
    >>> m0 = np.zeros((1, 8, 8), bool); m0[0, 2:6, 4:8] = True
    >>> m1 = np.zeros((1, 8, 8), bool); m1[0, 2:6, 0:2] = True
    >>> dets = [TileDetections((0, 0), m0, np.array([0.9])),
    ...         TileDetections((0, 1), m1, np.array([0.8]))]
    >>> [(i.id, i.window, i.n_detections) for i in merge_tile_detections(dets, lat, (8, 14))]
    [(1, PixelWindow(row_off=2, col_off=4, height=4, width=4), 2)]
    """
    if not (0.0 < iou_thresh <= 1.0 and 0.0 < ios_thresh <= 1.0):
        raise ConfigError(
            f"iou_thresh and ios_thresh must be in (0, 1], got {iou_thresh} and {ios_thresh}",
            iou_thresh=iou_thresh,
            ios_thresh=ios_thresh,
        )
    rows, cols = int(shape[0]), int(shape[1])
    if rows < 1 or cols < 1:
        raise GridError(f"scene shape must be at least 1 x 1, got {shape}", shape=shape)
    cands = _candidates(detections, lattice, (rows, cols), score_thresh=score_thresh,
                        mask_thresh=mask_thresh, min_px=max(1, min_px))
    cands.sort(key=lambda c: c.order)
    kept = _merge_ranked(cands, lattice.stride_px, (rows, cols), iou_thresh, ios_thresh)
    return _numbered([k.inst for k in kept if k is not None])


def _merge_ranked(
    cands: list[_Candidate],
    cell_px: int,
    shape: tuple[int, int],
    iou_thresh: float,
    ios_thresh: float,
) -> list[_Candidate | None]:
    """Visit ranked candidates, keeping, dropping or absorbing each (see the merge above).

    Returns the kept candidates by first-kept position; ``None`` where one was later
    absorbed into another. Only candidates sharing a grid-hash cell of ``cell_px`` are
    compared.
    """
    index = _GridHash(cell_px)
    kept: list[_Candidate | None] = []
    for cand in cands:
        matches = [
            i for i in index.near(cand.inst.window)
            if (k := kept[i]) is not None and _duplicates(k, cand, iou_thresh, ios_thresh)
        ]
        if not matches:
            index.add(len(kept), cand.inst.window)
            kept.append(cand)
            continue
        complete = [i for i in matches if not _kept(kept, i).truncated]
        if complete:  # a complete view exists: the candidate adds nothing
            _kept(kept, complete[0]).inst.n_detections += 1
            continue
        # partial views only: the candidate (and any partial views it bridges) join the
        # first, each adding only pixels outside what the others' tiles saw
        target = _kept(kept, matches[0])
        old = target.inst.window
        for i in matches[1:]:
            _absorb(target, _kept(kept, i), shape)
            index.remove(i, _kept(kept, i).inst.window)
            kept[i] = None
        _absorb(target, cand, shape)
        index.add(matches[0], target.inst.window, skip=old)
    return kept


def _numbered(result: list[Instance]) -> list[Instance]:
    """``result`` sorted by window (row, then col) and numbered ``1..N`` in that order."""
    result.sort(key=lambda i: (i.window.row_off, i.window.col_off, i.window.height,
                               i.window.width, i.tile_id, -i.score))
    for n, inst in enumerate(result, start=1):
        inst.id = n
    return result


def rasterize_instances(
    instances: Sequence[Instance],
    window: PixelWindow,
    *,
    ids: Sequence[int] | NDArray[np.integer[Any]] | None = None,
) -> NDArray[np.uint32]:
    """Instance ids over ``window`` (scene pixels), 0 elsewhere.

    Where masks overlap, the higher score wins (then the lower id). Ids are
    ``ids[k]`` when given, else each instance's ``id`` (``k + 1`` where it is 0).

    Examples
    --------
    >>> inst = Instance(PixelWindow(1, 1, 2, 2), np.ones((2, 2), bool), 0.9, (0, 0), id=7)
    >>> rasterize_instances([inst], PixelWindow(0, 0, 3, 4)).tolist()
    [[0, 0, 0, 0], [0, 7, 7, 0], [0, 7, 7, 0]]
    """
    out = np.zeros(window.shape, np.uint32)
    if ids is not None and len(ids) != len(instances):
        raise ConfigError(
            f"{len(ids)} ids for {len(instances)} instances; give one id per instance",
            n_ids=len(ids),
        )
    if not instances:
        return out
    bounds = np.array([(i.window.row_off, i.window.col_off, i.window.row_stop, i.window.col_stop)
                       for i in instances], np.int64)
    hit = np.flatnonzero(
        (bounds[:, 0] < window.row_stop) & (bounds[:, 2] > window.row_off)
        & (bounds[:, 1] < window.col_stop) & (bounds[:, 3] > window.col_off)
    )
    labels = [
        int(ids[k]) if ids is not None else (instances[k].id or k + 1)
        for k in range(len(instances))
    ]
    order = sorted(hit.tolist(), key=lambda k: (instances[k].score, -labels[k]))
    for k in order:
        inst = instances[k]
        part = inst.window.intersection(window)
        if part.is_empty:
            continue
        m = inst.mask[part.relative_to(inst.window).to_slices()]
        out[part.relative_to(window).to_slices()][m] = labels[k]
    return out
