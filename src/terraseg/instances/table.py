"""Results of an instance merge: per-instance attributes and chunk-local to global ids."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from terraseg.core.grid import PixelWindow
from terraseg.errors import GridError, TerrasegError

__all__ = ["ChunkIndex", "InstanceMergeError", "InstanceTable", "RelabelTable"]

ChunkIndex = tuple[int, int]
"""A chunk's ``(row_index, col_index)`` in the chunk grid."""

Labels = NDArray[np.integer[Any]]

# Labels whose maximum exceeds this many times the core's pixel count are compacted with
# np.unique (a sort) instead of a bincount / lookup table of size max + 1.
BINCOUNT_SLACK = 4


class InstanceMergeError(TerrasegError, ValueError):
    """Chunks given to :class:`InstanceMerger` are inconsistent or used out of order."""


@dataclass(frozen=True, slots=True, eq=False)
class InstanceTable:
    """Per-instance attributes, one row per global id (columns are numpy arrays).

    Attributes
    ----------
    ids
        ``(N,)`` uint32 global ids, ``1..N`` in order.
    pixel_count
        ``(N,)`` int64 number of pixels.
    score
        ``(N,)`` float64 mean per-pixel score; NaN where a chunk gave no scores.
    area_m2
        ``(N,)`` float64 ``pixel_count * pixel_area_m2``.
    bbox
        ``(N, 4)`` int64 ``(row_start, col_start, row_stop, col_stop)`` in scene pixels
        (stops exclusive).
    """

    ids: NDArray[np.uint32]
    pixel_count: NDArray[np.int64]
    score: NDArray[np.float64]
    area_m2: NDArray[np.float64]
    bbox: NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes held by the columns."""
        return sum(a.nbytes for a in (self.ids, self.pixel_count, self.score, self.area_m2,
                                       self.bbox))

    def to_records(self) -> list[dict[str, Any]]:
        """One plain dict per instance (``id, score, pixel_count, area_m2, bbox``)."""
        return [
            {
                "id": int(i),
                "score": float(s),
                "pixel_count": int(n),
                "area_m2": float(a),
                "bbox": tuple(int(v) for v in b),
            }
            for i, s, n, a, b in zip(
                self.ids, self.score, self.pixel_count, self.area_m2, self.bbox, strict=True
            )
        ]


@dataclass(frozen=True, slots=True, eq=False)
class RelabelTable:
    """The result of a merge: chunk-local labels to global ids, and the instance table.

    Small enough to ship to every worker: it holds two integers per local label
    and one row per instance, never a raster.
    """

    table: InstanceTable
    _cores: dict[ChunkIndex, PixelWindow]
    _local: dict[ChunkIndex, NDArray[np.int64]]
    _global: dict[ChunkIndex, NDArray[np.uint32]]

    @property
    def n_instances(self) -> int:
        """Number of global instances ``N`` (ids are ``1..N``)."""
        return len(self.table)

    @property
    def chunk_indices(self) -> list[ChunkIndex]:
        """The chunks the table knows, row-major."""
        return sorted(self._cores)

    @property
    def nbytes(self) -> int:
        """Bytes held by the lookup arrays and the instance table."""
        return self.table.nbytes + sum(
            self._local[k].nbytes + self._global[k].nbytes for k in self._local
        )

    def lookup(self, chunk_index: ChunkIndex) -> tuple[NDArray[np.int64], NDArray[np.uint32]]:
        """``(local_ids, global_ids)`` of one chunk: sorted local labels and their global ids."""
        key = norm_index(chunk_index)
        if key not in self._local:
            raise InstanceMergeError(
                f"chunk {key} was never added to the merger; add_chunk() it before finalize()",
                chunk_index=key,
            )
        return self._local[key], self._global[key]

    def relabel(
        self,
        chunk_index: ChunkIndex,
        labels: Labels,
        *,
        window: PixelWindow | None = None,
    ) -> NDArray[np.uint32]:
        """Global ids over the chunk's core, from the same local labels given to ``add_chunk``.

        Parameters
        ----------
        chunk_index
            The chunk.
        labels
            ``(h, w)`` local labels over ``window``.
        window
            Scene-pixel window of ``labels``; defaults to the chunk's core. It must
            contain the core; only the core is relabelled.

        Returns
        -------
        numpy.ndarray
            ``(core.height, core.width)`` uint32 global ids, 0 for background.
        """
        local_ids, global_ids = self.lookup(chunk_index)
        core = self._cores[norm_index(chunk_index)]
        core_lab = core_view(labels, core, window)
        out = np.zeros(core_lab.shape, np.uint32)
        if local_ids.size == 0 or core_lab.size == 0:
            return out
        top = int(core_lab.max())
        if top <= BINCOUNT_SLACK * core_lab.size:  # labels as add_chunk saw them: small ids
            lut = np.zeros(top + 1, np.uint32)
            fits = local_ids <= top
            lut[local_ids[fits]] = global_ids[fits]
            np.take(lut, core_lab, out=out)
            return out
        idx = np.searchsorted(local_ids, core_lab)
        idx_c = np.minimum(idx, local_ids.size - 1)
        hit = local_ids[idx_c] == core_lab
        out[hit] = global_ids[idx_c[hit]]
        return out


def norm_index(chunk_index: ChunkIndex) -> ChunkIndex:
    return (int(chunk_index[0]), int(chunk_index[1]))


def core_view(labels: Labels, core: PixelWindow, window: PixelWindow | None) -> Labels:
    """``labels`` (over ``window``, default ``core``) cut to ``core``, after checks."""
    win = core if window is None else window
    if labels.ndim != 2 or labels.shape != win.shape:
        raise GridError(
            f"labels of shape {labels.shape} do not match the window {win.shape}; "
            "pass window= for labels that cover more than the core",
            shape=labels.shape,
            window=win,
        )
    if not win.contains(core):
        raise GridError(
            f"the labels' window {win} does not contain the core {core}; "
            "label at least the whole core",
            window=win,
            core=core,
        )
    if not np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_:
        raise InstanceMergeError(
            f"labels must be integers (0 background, >0 objects), got dtype {labels.dtype}; "
            "label a mask with scipy.ndimage.label first",
            dtype=labels.dtype,
        )
    rel = core.relative_to(win)
    view = labels[rel.to_slices()]
    if np.issubdtype(view.dtype, np.signedinteger) and view.size and int(view.min()) < 0:
        raise InstanceMergeError(
            "labels must be >= 0 (0 background); got negative values", dtype=labels.dtype
        )
    if view.dtype == np.uint64:
        if view.size and int(view.max()) > np.iinfo(np.int64).max:
            raise InstanceMergeError("labels above 2**63 - 1 are not supported")
        view = view.astype(np.int64)
    return view
