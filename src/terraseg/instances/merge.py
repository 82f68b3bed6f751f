"""Globally unique instance ids over a chunked scene (see :mod:`terraseg.instances`).

The approach of dask-image's ``ndmeasure.label``, with the border rule made safe
for touching buildings:

1. each chunk labels its own window independently (local ids ``1..n``);
2. :meth:`InstanceMerger.add_chunk` keeps, per chunk, only per-label statistics and
   the 1-pixel strips along the core's edges (plus the 1-pixel halo just outside
   them, when the chunk labelled one);
3. as soon as both chunks on a face are in, the face is resolved into links
   ``(label in A, label in B)`` and both strips are dropped;
4. :meth:`InstanceMerger.finalize` takes connected components of the link graph
   and numbers them ``1..N`` in row-major chunk order, whatever order the chunks
   arrived in; :meth:`RelabelTable.relabel` then maps a chunk's local labels to
   global ids during a second, streaming pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from terraseg.core.grid import ChunkGrid, PixelWindow
from terraseg.errors import ConfigError, GridError
from terraseg.instances.summary import (
    ChunkStats,
    ChunkSummary,
    Strip,
    face_links,
    summarize_chunk,
)
from terraseg.instances.table import (
    ChunkIndex,
    InstanceMergeError,
    InstanceTable,
    Labels,
    RelabelTable,
)
from terraseg.instances.watershed import Landscape, instances_from_boundary

__all__ = [
    "BOUNDARY_HALO_PX",
    "BOUNDARY_MIN_SEED_PX",
    "BOUNDARY_SEED_P",
    "InstanceMerger",
]


class InstanceMerger:
    """Merge chunk-local instance labels into globally unique ids, out of core.

    Feed every chunk once with :meth:`add_chunk` (any order, e.g. as Dask tasks
    finish), call :meth:`finalize`, then relabel each chunk in a second streaming
    pass with :meth:`relabel` (or ship the returned :class:`RelabelTable`).

    The merger holds, per chunk, only its per-label statistics (local id, pixel
    count, score sum, bbox: 40 bytes per label) and, until the face's other chunk
    arrives, the 1-pixel strips along each core edge (and the halo just outside).
    A face is resolved into links (:func:`face_links`) the moment its second chunk
    is added, and both strips are dropped; in row-major order only one row of
    chunk strips is ever pending. Memory therefore grows with the number of
    instances (and of chunk-cut pieces of them), never with the chunk area.

    Parameters
    ----------
    shape
        Scene ``(rows, cols)`` in pixels. Chunk cores must partition it on a grid:
        chunk ``(i, j + 1)``'s core is right of chunk ``(i, j)``'s, with the same rows.
    pixel_area_m2
        Ground area of one pixel, for :attr:`InstanceTable.area_m2`.
    min_overlap
        The face rule's fraction (see :func:`face_links`), in ``(0, 1]``.

    Notes
    -----
    Give each chunk its labels over ``window`` = core grown by at least one pixel
    (e.g. ``chunk.extent``, labelled in one go) wherever possible: the halo lets the
    rule tell a building cut by the face from two buildings whose common wall lies
    on it. Corner neighbours are compared too (a face of one pixel), but only when
    at least one of the two chunks has a halo there. The result is independent of
    the order chunks are added: links depend only on the two chunks of a face, and
    ids are numbered by the smallest ``(chunk index, local label)`` of each
    component.

    Examples
    --------
    A building split by the border of two chunks, labelled 1 in each:

    >>> m = InstanceMerger((2, 4))
    >>> m.add_chunk((0, 0), PixelWindow(0, 0, 2, 2), np.array([[1, 1], [0, 0]]))
    >>> m.add_chunk((0, 1), PixelWindow(0, 2, 2, 2), np.array([[1, 0], [0, 2]]))
    >>> table = m.finalize()
    >>> table.n_instances, table.table.pixel_count.tolist()
    (2, [3, 1])
    >>> m.relabel((0, 1), np.array([[1, 0], [0, 2]])).tolist()
    [[1, 0], [0, 2]]
    """

    def __init__(
        self,
        shape: tuple[int, int],
        *,
        pixel_area_m2: float = 1.0,
        min_overlap: float = 0.5,
    ) -> None:
        rows, cols = int(shape[0]), int(shape[1])
        if rows < 1 or cols < 1:
            raise GridError(
                f"scene shape must be at least 1 x 1 pixels, got {shape}; pass (rows, cols)",
                shape=shape,
            )
        if not (0.0 < min_overlap <= 1.0):
            raise ConfigError(
                f"min_overlap must be in (0, 1], got {min_overlap}; use e.g. 0.5",
                min_overlap=min_overlap,
            )
        if not (pixel_area_m2 > 0.0 and np.isfinite(pixel_area_m2)):
            raise ConfigError(
                f"pixel_area_m2 must be a positive number, got {pixel_area_m2}; "
                "use gsd_m ** 2 (e.g. 0.25 for 0.5 m pixels)",
                pixel_area_m2=pixel_area_m2,
            )
        self.shape = (rows, cols)
        self.pixel_area_m2 = float(pixel_area_m2)
        self.min_overlap = float(min_overlap)
        self._chunks: dict[ChunkIndex, ChunkStats] = {}
        self._strips: dict[tuple[ChunkIndex, tuple[int, int]], Strip] = {}
        self._links: list[tuple[ChunkIndex, ChunkIndex, NDArray[np.uint32]]] = []
        self._result: RelabelTable | None = None

    @classmethod
    def from_grid(
        cls, grid: ChunkGrid, *, pixel_area_m2: float = 1.0, min_overlap: float = 0.5
    ) -> InstanceMerger:
        """A merger for the chunks of ``grid`` (pass ``chunk.core`` and ``chunk.extent``)."""
        return cls(grid.shape, pixel_area_m2=pixel_area_m2, min_overlap=min_overlap)

    # -- state ---------------------------------------------------------------------------

    @property
    def n_chunks(self) -> int:
        """Chunks added so far."""
        return len(self._chunks)

    @property
    def n_labels(self) -> int:
        """Chunk-local labels held so far (instances cut by chunk borders count once per piece)."""
        return sum(int(s.local_ids.size) for s in self._chunks.values())

    @property
    def n_pending_strips(self) -> int:
        """Border strips waiting for the chunk on their other side."""
        return len(self._strips)

    @property
    def nbytes(self) -> int:
        """Bytes of all numpy arrays the merger holds (stats, pending strips, links)."""
        return (
            sum(s.nbytes for s in self._chunks.values())
            + sum(strip.nbytes for strip in self._strips.values())
            + sum(pairs.nbytes for _, _, pairs in self._links)
        )

    # -- pass 1 --------------------------------------------------------------------------

    def add_chunk(
        self,
        chunk_index: ChunkIndex,
        core: PixelWindow,
        labels: Labels,
        *,
        window: PixelWindow | None = None,
        scores: NDArray[np.floating[Any]] | None = None,
    ) -> None:
        """Record one chunk's local labelling (its stats and border strips only).

        Parameters
        ----------
        chunk_index
            ``(i, j)`` of the chunk; neighbours are ``(i +- 1, j +- 1)``.
        core
            The scene pixels the chunk owns (chunk cores partition the scene).
        labels
            ``(h, w)`` non-negative integer local labels over ``window``, labelled by
            the chunk alone: 0 background, any positive id per object (``1..n``
            ideally; sparse ids work but cost a sort). Labels seen in the halo but not
            in the core are ignored.
        window
            Scene-pixel window of ``labels``, containing ``core``; defaults to ``core``.
            A window one or more pixels larger than the core on a side gives the
            face rule its halo there (recommended: ``chunk.extent``).
        scores
            Optional ``(h, w)`` per-pixel scores over ``window``; each instance's
            score is the mean over its pixels.

        Raises
        ------
        InstanceMergeError
            If the chunk was already added, the merger is finalized, or the labels are
            not non-negative integers.
        GridError
            If shapes and windows disagree or the core does not fit the grid.
        """
        self.add_summary(
            summarize_chunk(chunk_index, core, labels, shape=self.shape, window=window,
                            scores=scores)
        )

    def add_summary(self, summary: ChunkSummary) -> None:
        """Record a chunk from its :func:`summarize_chunk` result (e.g. sent by a worker).

        Raises
        ------
        InstanceMergeError
            If the chunk was already added or the merger is finalized.
        GridError
            If the summary was made for another scene shape, or its core does not
            fit the grid of the chunks already added.
        """
        if self._result is not None:
            raise InstanceMergeError(
                "the merger is finalized; create a new InstanceMerger for another pass"
            )
        key = summary.chunk_index
        if key in self._chunks:
            raise InstanceMergeError(
                f"chunk {key} was already added; each chunk must be added exactly once",
                chunk_index=key,
            )
        if summary.shape != self.shape:
            raise GridError(
                f"chunk {key} was summarized for a {summary.shape} scene, not "
                f"{self.shape}; pass shape=merger.shape to summarize_chunk",
                shape=summary.shape,
            )
        # every face: (direction, own strip, partner strip if the neighbour is in)
        faces: list[tuple[tuple[int, int], Strip, Strip | None]] = []
        for d, strip in summary.strips:
            other = (key[0] + d[0], key[1] + d[1])
            partner = self._strips.get((other, (-d[0], -d[1])))
            if partner is not None:
                _check_face(key, strip, other, partner, d)
            faces.append((d, strip, partner))
        # all checks passed: commit
        self._chunks[key] = summary.stats
        for d, strip, partner in faces:
            other = (key[0] + d[0], key[1] + d[1])
            back = (-d[0], -d[1])
            if partner is None:
                self._strips[(key, d)] = strip
                continue
            del self._strips[(other, back)]
            if d > back:  # resolve as (A, B) with A before B in row-major order
                self._resolve(key, strip, other, partner, d)
            else:
                self._resolve(other, partner, key, strip, back)

    def _resolve(
        self, ka: ChunkIndex, sa: Strip, kb: ChunkIndex, sb: Strip, d: tuple[int, int]
    ) -> None:
        """Links across the face from chunk ``ka`` (direction ``d``) to chunk ``kb``."""
        if d[0] != 0 and d[1] != 0 and sa.out is None and sb.out is None:
            return  # bare corner: no evidence either way, do not link diagonals
        pairs = face_links(sa.own, sa.out, sb.own, sb.out, min_overlap=self.min_overlap)
        if pairs.size:
            self._links.append((ka, kb, pairs))

    # -- finish --------------------------------------------------------------------------

    def finalize(self) -> RelabelTable:
        """Connected components of the links, numbered ``1..N``; the instance table.

        Faces whose other chunk was never added are treated as unlinked (the missing
        chunk has no instances). Calling it twice returns the same table.
        """
        if self._result is not None:
            return self._result
        keys = sorted(self._chunks)
        sizes = np.array([self._chunks[k].local_ids.size for k in keys], np.int64)
        base_of = dict(zip(keys, np.concatenate([[0], np.cumsum(sizes)])[:-1].tolist(),
                           strict=True))
        n = int(sizes.sum())
        if n:
            src = [base_of[ka] + pairs[:, 0].astype(np.int64) - 1 for ka, _, pairs in self._links]
            dst = [base_of[kb] + pairs[:, 1].astype(np.int64) - 1 for _, kb, pairs in self._links]
            s = np.concatenate(src) if src else np.zeros(0, np.int64)
            t = np.concatenate(dst) if dst else np.zeros(0, np.int64)
            graph = coo_matrix((np.ones(s.size, np.int8), (s, t)), shape=(n, n))
            n_comp, comp = connected_components(graph, directed=False)
            # number components by their smallest node: row-major chunk, then local id
            first = np.full(n_comp, n, np.int64)
            np.minimum.at(first, comp, np.arange(n, dtype=np.int64))
            rank = np.empty(n_comp, np.int64)
            rank[np.argsort(first, kind="stable")] = np.arange(n_comp)
            gid = (rank[comp] + 1).astype(np.uint32)
        else:
            n_comp, gid = 0, np.zeros(0, np.uint32)
        counts = _concat([self._chunks[k].pixel_count for k in keys], np.int64)
        ssum = _concat([self._chunks[k].score_sum for k in keys], np.float64)
        bbox = (
            np.concatenate([self._chunks[k].bbox for k in keys]).astype(np.int64)
            if n else np.zeros((0, 4), np.int64)
        )
        g0 = gid.astype(np.int64) - 1
        px = np.bincount(g0, weights=counts, minlength=n_comp).astype(np.int64)
        score = np.bincount(g0, weights=ssum, minlength=n_comp) / np.maximum(px, 1)
        out_bbox = np.empty((n_comp, 4), np.int64)
        out_bbox[:, :2] = np.iinfo(np.int64).max
        out_bbox[:, 2:] = np.iinfo(np.int64).min
        for col in (0, 1):
            np.minimum.at(out_bbox[:, col], g0, bbox[:, col])
        for col in (2, 3):
            np.maximum.at(out_bbox[:, col], g0, bbox[:, col])
        table = InstanceTable(
            ids=np.arange(1, n_comp + 1, dtype=np.uint32),
            pixel_count=px,
            score=score,
            area_m2=px.astype(np.float64) * self.pixel_area_m2,
            bbox=out_bbox,
        )
        local: dict[ChunkIndex, NDArray[np.int64]] = {}
        glob: dict[ChunkIndex, NDArray[np.uint32]] = {}
        for k in keys:
            b = base_of[k]
            local[k] = self._chunks[k].local_ids
            glob[k] = gid[b : b + self._chunks[k].local_ids.size]
        self._result = RelabelTable(
            table, {k: self._chunks[k].core for k in keys}, local, glob
        )
        return self._result

    def relabel(
        self, chunk_index: ChunkIndex, labels: Labels, *, window: PixelWindow | None = None
    ) -> NDArray[np.uint32]:
        """Global ids over a chunk's core; see :meth:`RelabelTable.relabel`.

        Raises
        ------
        InstanceMergeError
            If :meth:`finalize` was not called yet.
        """
        if self._result is None:
            raise InstanceMergeError(
                "relabel() needs the merge result; call finalize() after adding every chunk"
            )
        return self._result.relabel(chunk_index, labels, window=window)

    def iter_links(self) -> Iterator[tuple[ChunkIndex, ChunkIndex, NDArray[np.uint32]]]:
        """``(chunk_a, chunk_b, pairs)`` of every resolved face; pairs are row positions
        ``(index into A's local ids + 1, index into B's local ids + 1)``."""
        yield from self._links


# -- helpers -------------------------------------------------------------------------------


def _check_face(
    ka: ChunkIndex, sa: Strip, kb: ChunkIndex, sb: Strip, d: tuple[int, int]
) -> None:
    """Raise unless ``sb`` is the strip facing ``sa`` one step along ``d``."""
    expect = (sa.origin[0] + d[0], sa.origin[1] + d[1])
    if sb.origin != expect or sb.own.size != sa.own.size:
        raise GridError(
            f"chunks {ka} and {kb} do not share a face: their cores are not aligned "
            f"on a grid (strip at {sa.origin} x {sa.own.size} vs {sb.origin} x "
            f"{sb.own.size}); give cores from one ChunkGrid",
            chunks=(ka, kb),
        )


def _concat(parts: list[NDArray[Any]], dtype: type[Any]) -> NDArray[Any]:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)


# -- labelling one chunk -------------------------------------------------------------------

_FOUR = ndimage.generate_binary_structure(2, 1)


def _label_window(classes: NDArray[Any], building: int, edge: int | None = None) -> NDArray[Any]:
    """Local building labels of one window.

    Without an edge class: 4-connected components of the building class
    (4-connectivity keeps buildings that only touch at a corner apart; buildings
    that share a wall in the class mask become one instance). With the
    ``building edge`` class of a boundary model: a seeded watershed
    (:func:`terraseg.instances.instances_from_boundary`), so touching buildings
    whose interiors the model kept apart come out as separate instances.
    """
    if edge is None:
        labels, _ = ndimage.label(classes == building, structure=_FOUR)
        return np.asarray(labels, dtype=np.int64)
    return instances_from_boundary(
        classes, interior_class=building, edge_class=edge, min_seed_px=BOUNDARY_MIN_SEED_PX
    ).astype(np.int64)


def _label_probabilities(interior_edge: NDArray[Any], *, seed_p: float | None = None,
                         landscape: Landscape = "edge") -> NDArray[Any]:
    """Local building labels of one window from a boundary model's probabilities.

    ``interior_edge`` is ``(2, h, w)``: building-interior and building-edge
    probabilities. Seeds are confident interior (``seed_p``, default
    :data:`BOUNDARY_SEED_P`), so the interiors of touching houses that the model only
    half separates still seed one instance each; buildings are where interior + edge
    >= 0.5, flooded through ``landscape``: the edge probability, or the distance to
    the seeds (which splits a contact half way where the edge probability is flat).
    """
    return instances_from_boundary(
        interior_edge, interior_class=0, edge_class=1,
        seed_thresh=BOUNDARY_SEED_P if seed_p is None else seed_p,
        building_thresh=0.5, min_seed_px=BOUNDARY_MIN_SEED_PX, landscape=landscape,
    ).astype(np.int64)


#: Halo of a boundary model's watershed, pixels: wider than the largest building,
#: so each chunk's watershed agrees with its neighbours' on the face strips.
BOUNDARY_HALO_PX = 96
#: Interior components smaller than this seed no instance of their own (noise).
BOUNDARY_MIN_SEED_PX = 6
#: Interior probability of a seed when probabilities are at hand. Measured with
#: demo-instance on the unseen synthetic scene (seed 21, 1517 buildings): seeds at
#: p >= 0.6 / 0.7 / 0.8 / 0.9 give 1550 / 1573 / 1587 / 1604 instances at about the
#: same F1 (0.890-0.894, pixel matching); 0.6 keeps the count closest to the truth.
BOUNDARY_SEED_P = 0.6
