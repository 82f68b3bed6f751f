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

__all__ = ["ChunkOutput", "DirStore", "write_from_store", "write_region"]

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
