"""Per-chunk results on disk: what makes runs resumable and lets Dask workers write in parallel.

A worker turns one chunk into a :class:`ChunkOutput` (final interior labels,
optional quantised probabilities, and the small float32 *pieces* that overlap
neighbour chunks) and saves it with :meth:`DirStore.put`, atomically. The
file's presence is the chunk's done marker. Once every chunk is stored,
:func:`write_from_store` streams them in row-major order into the scene-sized
COGs, finishing each seam from the chunk's and its neighbours' pieces; it holds
at most about two rows of chunks' pieces, never a scene-sized array.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from terraseg.core.grid import ChunkGrid, PixelWindow
from terraseg.core.stitch import NODATA, assemble, labels_from_acc
from terraseg.io.raster_sink import RasterSink

__all__ = [
    "ChunkOutput",
    "CoreReader",
    "DirStore",
    "finish_core",
    "write_from_store",
    "write_region",
]

Pieces = list[tuple[PixelWindow, np.ndarray]]


@dataclass(slots=True)
class ChunkOutput:
    """One chunk's contribution, small enough to ship between processes.

    ``labels`` are the final uint8 classes of ``chunk.interior`` (255 = nodata),
    ``None`` when the chunk was skipped as all-nodata; ``probs`` the quantised
    interior probabilities when requested; ``pieces`` the accumulator strips
    outside the interior; ``seam_valid`` the input validity on each seam window.
    """

    index: tuple[int, int]
    labels: np.ndarray | None
    probs: np.ndarray | None
    pieces: Pieces
    seam_valid: Pieces
    stats: dict[str, Any] = field(default_factory=dict)


def _pack(prefix: str, pieces: Pieces, out: dict[str, np.ndarray]) -> None:
    out[f"{prefix}_windows"] = np.array(
        [[w.row_off, w.col_off, w.height, w.width] for w, _ in pieces], dtype=np.int64
    ).reshape(-1, 4)
    for i, (_, arr) in enumerate(pieces):
        out[f"{prefix}_{i}"] = arr


def _unpack(prefix: str, data: Any) -> Pieces:
    windows = data[f"{prefix}_windows"]
    return [(PixelWindow(*map(int, w)), data[f"{prefix}_{i}"]) for i, w in enumerate(windows)]


class DirStore:
    """Chunk outputs as ``.npz`` files in ``root``; a file's presence means "done".

    Safe for many writers: each chunk has its own file, written to a temporary
    name and renamed.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"DirStore({str(self.root)!r})"

    def path(self, index: tuple[int, int]) -> Path:
        return self.root / f"chunk_r{index[0]:05d}_c{index[1]:05d}.npz"

    def has(self, index: tuple[int, int]) -> bool:
        return self.path(index).exists()

    def done(self) -> set[tuple[int, int]]:
        """Indices of every stored chunk."""
        if not self.root.exists():
            return set()
        out = set()
        for p in self.root.glob("chunk_r*_c*.npz"):
            r, c = p.stem.removeprefix("chunk_r").split("_c")
            out.add((int(r), int(c)))
        return out

    def put(self, out: ChunkOutput) -> Path:
        """Save ``out`` atomically; returns its path."""
        self.root.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {"index": np.array(out.index, np.int64)}
        if out.labels is not None:
            arrays["labels"] = out.labels
        if out.probs is not None:
            arrays["probs"] = out.probs
        _pack("piece", out.pieces, arrays)
        _pack("seam", out.seam_valid, arrays)
        final = self.path(out.index)
        tmp = final.with_name(f".{final.stem}.{uuid.uuid4().hex[:8]}.tmp.npz")
        try:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)  # type: ignore[arg-type]
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        return final

    def get(self, index: tuple[int, int]) -> ChunkOutput:
        with np.load(self.path(index)) as data:
            return ChunkOutput(
                index=index,
                labels=data["labels"] if "labels" in data else None,
                probs=data["probs"] if "probs" in data else None,
                pieces=_unpack("piece", data),
                seam_valid=_unpack("seam", data),
            )

    def get_pieces(self, index: tuple[int, int]) -> Pieces:
        """Only the pieces of a chunk (does not load its interior)."""
        with np.load(self.path(index)) as data:
            return _unpack("piece", data)

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------------ other arrays
    # Finished chunk cores and per-chunk instance labels of a cluster run live beside the
    # chunk outputs, under names that :meth:`done` does not count.

    def put_arrays(self, name: str, arrays: dict[str, np.ndarray]) -> Path:
        """Save named arrays as ``<name>.npz`` atomically (a chunk's core, its labels...)."""
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / f"{name}.npz"
        tmp = final.with_name(f".{final.stem}.{uuid.uuid4().hex[:8]}.tmp.npz")
        try:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)  # type: ignore[arg-type]
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        return final

    def get_arrays(self, name: str) -> dict[str, np.ndarray]:
        """The arrays saved by :meth:`put_arrays` under ``name``."""
        with np.load(self.root / f"{name}.npz") as data:
            return {k: data[k] for k in data.files}


def core_name(index: tuple[int, int]) -> str:
    """Store name of a chunk's finished core (:func:`finish_core`)."""
    return f"core_r{index[0]:05d}_c{index[1]:05d}"


def finish_core(
    grid: ChunkGrid, store: DirStore, index: tuple[int, int], *, n_classes: int,
    with_probs: bool,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The final labels (and quantised probabilities) of one chunk's whole core.

    The interior comes from the chunk's stored output as it is; each seam is
    assembled from the chunk's and its neighbours' pieces exactly as
    :func:`write_from_store` does, so the pixels are the same. ``(None, None)``
    for a chunk skipped as all-nodata whose seams hold no prediction either.
    """
    chunk = grid.chunk(*index)
    out = store.get(index)
    core = chunk.core
    labels = np.full(core.shape, NODATA, np.uint8)
    probs = np.full((n_classes, *core.shape), NODATA, np.uint8) if with_probs else None
    any_data = False

    def place(window: PixelWindow, lab: np.ndarray | None, q: np.ndarray | None) -> None:
        nonlocal any_data
        if lab is None or window.height == 0 or window.width == 0:
            return
        rs = slice(window.row_off - core.row_off, window.row_stop - core.row_off)
        cs = slice(window.col_off - core.col_off, window.col_stop - core.col_off)
        labels[rs, cs] = lab
        if probs is not None and q is not None:
            probs[:, rs, cs] = q
        any_data = any_data or bool((lab != NODATA).any())

    place(chunk.interior, out.labels, out.probs)
    if out.seam_valid:
        all_pieces = [p for n in grid.neighbours(chunk) for p in store.get_pieces(n.index)]
        all_pieces += out.pieces
        for window, valid in out.seam_valid:
            acc = assemble(window, all_pieces, n_classes + 1)
            place(window, *labels_from_acc(acc, valid, with_probs=with_probs))
    if not any_data and out.labels is None:
        return None, None
    return labels, probs


class CoreReader:
    """``read(window)`` of the finished cores in a store, as if from ``classes.tif``.

    Windows may span several chunk cores; pixels of a core with no data read as
    nodata (255). ``band`` ``None`` reads the labels, an int ``k`` the probability
    band ``k`` (0-based).
    """

    def __init__(self, grid: ChunkGrid, store: DirStore, *, n_classes: int) -> None:
        self.grid = grid
        self.store = store
        self.n_classes = n_classes
        rows, cols = grid.shape_in_chunks
        self._row_stops = [grid.chunk(i, 0).core.row_stop for i in range(rows)]
        self._col_stops = [grid.chunk(0, j).core.col_stop for j in range(cols)]

    def _span(self, stops: list[int], start: int, stop: int) -> range:
        first = next(i for i, s in enumerate(stops) if s > start)
        last = next(i for i, s in enumerate(stops) if s >= stop)
        return range(first, last + 1)

    def read(self, window: PixelWindow, bands: list[int] | None = None) -> np.ndarray:
        """``(h, w)`` labels, or ``(len(bands), h, w)`` probability bands (0-based)."""
        shape = window.shape if bands is None else (len(bands), *window.shape)
        out = np.full(shape, NODATA, np.uint8)
        if window.height == 0 or window.width == 0:
            return out
        for i in self._span(self._row_stops, window.row_off, window.row_stop):
            for j in self._span(self._col_stops, window.col_off, window.col_stop):
                core = self.grid.chunk(i, j).core
                part = core.intersection(window)
                if part.is_empty:
                    continue
                path = self.store.root / f"{core_name((i, j))}.npz"
                if not path.exists():  # an all-nodata chunk
                    continue
                src = (slice(part.row_off - core.row_off, part.row_stop - core.row_off),
                       slice(part.col_off - core.col_off, part.col_stop - core.col_off))
                dst = (slice(part.row_off - window.row_off, part.row_stop - window.row_off),
                       slice(part.col_off - window.col_off, part.col_stop - window.col_off))
                with np.load(path) as data:
                    if bands is None:
                        out[dst] = data["labels"][src]
                    else:
                        out[(slice(None), *dst)] = data["probs"][bands][(slice(None), *src)]
        return out


def write_from_store(
    grid: ChunkGrid,
    store: DirStore,
    classes: RasterSink,
    probs: RasterSink | None = None,
    *,
    n_classes: int,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Stream every stored chunk into the scene rasters, finishing seams from neighbours' pieces.

    Pieces are loaded once per chunk and kept in a small cache covering about
    two rows of chunks, so memory does not grow with the number of rows.
    """
    rows, cols = grid.shape_in_chunks
    cache: OrderedDict[tuple[int, int], Pieces] = OrderedDict()
    keep = 2 * cols + 4

    def pieces_of(idx: tuple[int, int]) -> Pieces:
        if idx in cache:
            cache.move_to_end(idx)
            return cache[idx]
        got = store.get_pieces(idx)
        cache[idx] = got
        while len(cache) > keep:
            cache.popitem(last=False)
        return got

    chunks = list(grid)
    for i, chunk in enumerate(chunks):
        out = store.get(chunk.index)
        write_region(classes, probs, chunk.interior, out.labels, out.probs)
        if out.seam_valid:
            neigh: Iterable[Pieces] = [pieces_of(n.index) for n in grid.neighbours(chunk)]
            all_pieces = [p for group in neigh for p in group] + out.pieces
            for window, valid in out.seam_valid:
                acc = assemble(window, all_pieces, n_classes + 1)
                labels, qprobs = labels_from_acc(acc, valid, with_probs=probs is not None)
                write_region(classes, probs, window, labels, qprobs)
        if progress is not None:
            progress(i + 1, len(chunks))


def write_region(
    classes: RasterSink,
    probs: RasterSink | None,
    window: PixelWindow,
    labels: np.ndarray | None,
    qprobs: np.ndarray | None,
) -> None:
    """Write one finished region; ``None`` labels/probabilities mean all nodata."""
    if window.height == 0 or window.width == 0:
        return
    if labels is None:
        labels = np.full(window.shape, NODATA, np.uint8)
    classes.write(window, labels[None])
    if probs is not None:
        if qprobs is None:
            qprobs = np.full((probs.count, *window.shape), NODATA, np.uint8)
        probs.write(window, qprobs)
