"""One chunk: read its window once, batch its lattice tiles, predict, blend, split.

A chunk reads its window (with mask) once, normalises on the device, runs its
lattice tiles through the model in batches, blends them into one accumulator
and splits that into the *interior* (final: no other chunk's tile reaches it)
and small *pieces* (strips shared with neighbour chunks). A notebook can call
:func:`predict_chunk` on one chunk with no cluster.
"""

from __future__ import annotations

import ctypes
import functools
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from terraseg.core.grid import Chunk, ChunkGrid, PixelWindow
from terraseg.core.stitch import (
    accumulate_tile,
    labels_from_acc,
    seam_windows,
    split_accumulator,
    tile_weights,
)
from terraseg.engine.adapt import AdaptedScene
from terraseg.engine.inference import Normalize, TilePredictor
from terraseg.errors import BandError
from terraseg.io.chunkstore import ChunkOutput
from terraseg.io.scene import Scene
from terraseg.models.spec import ModelSpec

__all__ = [
    "NODATA",
    "STAGES",
    "ChunkInput",
    "ChunkResult",
    "MemoryTrimmer",
    "Ramp",
    "predict_chunk",
    "read_chunk",
    "run_chunk",
]

NODATA = 255
Ramp = Literal["cosine", "linear", "none"]
STAGES = ("read", "infer", "blend", "write")  # normalising is part of "infer" (on the device)


@dataclass(slots=True)
class ChunkInput:
    """A chunk's input: raw band-selected ``x`` ``(band, y, x)`` over its read window.

    Values stay in the scene's dtype; the model's normalisation is applied per
    batch on the device (:meth:`~terraseg.models.spec.InputSpec.affine`), so a
    uint8 chunk costs a quarter of the memory of a float32 one.
    """

    chunk: Chunk
    x: np.ndarray
    valid: np.ndarray
    seconds: dict[str, float]
    normalize: Normalize


@dataclass(slots=True)
class ChunkResult:
    """What one chunk contributes to the scene.

    ``interior`` is the chunk accumulator ``(K + 1, h, w)`` over
    ``chunk.interior`` (``None`` when the chunk was skipped as all-nodata);
    ``pieces`` are the accumulator strips outside the interior, in scene pixel
    windows, to be summed with the neighbours' pieces; ``seam_valid`` holds the
    input validity mask of each of the chunk's seam windows.
    """

    chunk: Chunk
    interior: np.ndarray | None
    interior_valid: np.ndarray
    pieces: list[tuple[PixelWindow, np.ndarray]]
    seam_valid: list[tuple[PixelWindow, np.ndarray]]
    n_tiles: int
    n_tiles_run: int
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def skipped(self) -> bool:
        return self.interior is None


def read_chunk(scene: Scene, chunk: Chunk, spec: ModelSpec, *, pad: str = "reflect") -> ChunkInput:
    """Read ``chunk.read_window`` once (boundless, with mask), raw values.

    An :class:`~terraseg.engine.adapt.AdaptedScene` is read on its model grid, and
    with its own input (adapted bands, fitted normalisation) rather than ``spec``'s,
    so a Dask worker that rebuilt the card's spec still reads what the client fitted.
    """
    t0 = time.perf_counter()
    inp = scene.input if isinstance(scene, AdaptedScene) else spec.input
    raw, valid, _ = scene.read_window_with_mask(
        chunk.read_window, bands=list(inp.bands), pad=pad  # type: ignore[arg-type]
    )
    normalize = inp.affine()  # refuses normalisations that need scene statistics
    x = raw if valid.any() else np.empty((0, 0, 0), raw.dtype)
    seconds = {"read": time.perf_counter() - t0}
    return ChunkInput(chunk, x, valid, seconds, normalize)


def _tile_batches(
    inp: ChunkInput,
    tiles: Sequence[tuple[tuple[int, int], PixelWindow]],
    batch_size: int,
    *,
    channels_last: bool = True,
) -> Iterator[np.ndarray]:
    """Batches ``(b, C, H, W)`` of tiles cut from the chunk input.

    With ``channels_last`` the batch is a ``(b, C, H, W)`` view of NHWC memory,
    which the predictor hands to the model without another copy.
    """
    origin = inp.chunk.read_window
    for start in range(0, len(tiles), batch_size):
        group = tiles[start : start + batch_size]
        views = [inp.x[(slice(None), *_rel(w, origin))] for _, w in group]
        if channels_last:
            yield np.stack([v.transpose(1, 2, 0) for v in views]).transpose(0, 3, 1, 2)
        else:
            yield np.stack(views)


def predict_chunk(
    inp: ChunkInput,
    grid: ChunkGrid,
    predictor: TilePredictor,
    *,
    ramp: Ramp = "cosine",
    workspace: dict[str, np.ndarray] | None = None,
) -> ChunkResult:
    """Predict every lattice tile of one chunk and blend them into its accumulator.

    Tiles whose input is entirely nodata are not run; a chunk whose input is
    entirely nodata runs no model at all. With ``workspace`` (a dict the caller
    keeps between chunks) the accumulator is a reused buffer, so the result's
    ``interior`` is only valid until the next call with the same workspace.

    Thread-safe: several threads may predict different chunks through one
    ``predictor`` at once (its kept batch buffers are per thread); a
    ``workspace`` belongs to one thread.
    """
    chunk = inp.chunk
    seconds = dict(inp.seconds)
    origin = chunk.read_window
    core = chunk.core
    core_valid = inp.valid[
        core.row_off - origin.row_off : core.row_stop - origin.row_off,
        core.col_off - origin.col_off : core.col_stop - origin.col_off,
    ]
    seams = [(w, core_valid[_rel(w, core)]) for w in seam_windows(chunk)]
    interior_valid = core_valid[_rel(chunk.interior, core)]
    all_tiles = chunk.tiles()
    run = [
        (tid, w)
        for tid, w in all_tiles
        if inp.valid[
            max(w.row_off - origin.row_off, 0) : w.row_stop - origin.row_off,
            max(w.col_off - origin.col_off, 0) : w.col_stop - origin.col_off,
        ].any()
    ]
    if not run:
        seconds.update(infer=0.0, blend=0.0)
        return ChunkResult(chunk, None, interior_valid, [], seams, len(all_tiles), 0, seconds)

    extent = chunk.extent
    acc: np.ndarray | None = None
    infer_s = blend_s = 0.0
    t = time.perf_counter()
    done = 0
    for scores in predictor.predict_stream(
        _tile_batches(inp, run, predictor.batch_size, channels_last=predictor.channels_last),
        normalize=inp.normalize,
        reuse_buffers=True,  # each batch is blended before the next is requested
    ):
        t1 = time.perf_counter()
        infer_s += t1 - t
        if acc is None:
            acc = _accumulator(workspace, scores.shape[1] + 1, extent)
        for k in range(scores.shape[0]):
            tid, w = run[done + k]
            weights = tile_weights(grid.lattice, tid, grid.n_tiles_yx, ramp=ramp)
            # scores is the predictor's kept buffer: weight it in place
            accumulate_tile(acc, extent, w, scores[k], weights, scratch=True)
        done += scores.shape[0]
        t = time.perf_counter()
        blend_s += t - t1
    assert acc is not None  # at least one tile ran
    interior, pieces = split_accumulator(acc, chunk)
    seconds.update(infer=infer_s, blend=blend_s)
    return ChunkResult(
        chunk, interior, interior_valid, pieces, seams, len(all_tiles), len(run), seconds
    )


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or ``None`` where there is no glibc."""
    try:
        fn: Callable[[int], int] = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    return fn


class MemoryTrimmer:
    """Give the heap's free pages back to the OS when resident memory has grown a lot.

    Freed chunk-sized arrays leave holes that glibc keeps, and peak RSS crept up
    with scene size (1.64 GB at 32768² with the GDAL cache bounded). Trimming
    after every chunk fixed that but cost 15-20 % of the ``cheap`` model's
    throughput (the pages are faulted in again), so ``malloc_trim`` runs only
    when RSS is ``slack_mb`` above what it was after the last trim (64 MB: with
    192 MB the 2048² → 16384² growth was 250 MB, with 64 MB 160 MB, of which
    56 MB are the seam strips of one chunk row). A no-op without glibc or
    ``/proc``.
    """

    def __init__(self, slack_mb: float = 64.0) -> None:
        self.slack = slack_mb * 2**20
        self.base: float | None = None

    @staticmethod
    def _rss() -> float | None:
        try:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None

    def __call__(self) -> None:
        trim = _malloc_trim()
        rss = self._rss()
        if trim is None or rss is None:
            return
        if self.base is None:
            self.base = rss
        elif rss > self.base + self.slack:
            trim(0)
            self.base = self._rss() or rss


def _accumulator(
    workspace: dict[str, np.ndarray] | None, n_channels: int, extent: PixelWindow
) -> np.ndarray:
    """A zeroed ``(n_channels, h, w)`` float32 accumulator, from ``workspace`` when given.

    Zeroing a kept buffer costs less than page-faulting a fresh 76 MB one for
    every 2048-px chunk, and keeps the heap from fragmenting as the scene grows.
    """
    shape = (n_channels, extent.height, extent.width)
    if workspace is None:
        return np.zeros(shape, np.float32)
    buf = workspace.get("acc")
    same = buf is not None and buf.shape[0] == n_channels
    h, w = buf.shape[1:] if buf is not None and same else (0, 0)
    if buf is None or not same or h < shape[1] or w < shape[2]:  # grow to cover both extents
        buf = workspace["acc"] = np.empty(
            (n_channels, max(shape[1], h), max(shape[2], w)), np.float32
        )
    acc = buf[:, : shape[1], : shape[2]]
    acc.fill(0.0)
    return acc


def _rel(window: PixelWindow, frame: PixelWindow) -> tuple[slice, slice]:
    """Slices of ``window`` inside an array that covers ``frame``."""
    return (
        slice(window.row_off - frame.row_off, window.row_stop - frame.row_off),
        slice(window.col_off - frame.col_off, window.col_stop - frame.col_off),
    )


def run_chunk(
    scene: Scene,
    chunk: Chunk,
    grid: ChunkGrid,
    predictor: TilePredictor,
    spec: ModelSpec,
    *,
    ramp: Ramp = "cosine",
    pad: Literal["reflect", "nodata"] = "reflect",
    with_probs: bool = False,
) -> ChunkOutput:
    """Read, predict and reduce one chunk to a :class:`~terraseg.io.chunkstore.ChunkOutput`.

    The unit of work of a Dask task: the interior becomes final uint8 labels at
    once (small to store and ship); only the seam pieces stay float32.
    """
    t0 = time.perf_counter()
    res = predict_chunk(read_chunk(scene, chunk, spec, pad=pad), grid, predictor, ramp=ramp)
    labels = qprobs = None
    if res.interior is not None:
        if res.interior.shape[0] != spec.n_classes + 1:
            raise BandError(
                f"model '{spec.name}' returned {res.interior.shape[0] - 1} channels but its "
                f"spec lists {spec.n_classes} classes; fix the model card",
                name=spec.name,
            )
        labels, qprobs = labels_from_acc(res.interior, res.interior_valid, with_probs=with_probs)
    stats = {
        "seconds": res.seconds | {"chunk": time.perf_counter() - t0},
        "tiles": res.n_tiles,
        "tiles_run": res.n_tiles_run,
        "skipped": res.skipped,
    }
    return ChunkOutput(chunk.index, labels, qprobs, res.pieces, res.seam_valid, stats)
