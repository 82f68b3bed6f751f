"""The stages of one chunk and of one scene, composed; no Dask here.

One chunk: read its window once (with mask), normalise, batch its lattice
tiles, predict, blend into a chunk accumulator, and split that into the
*interior* (final: no other chunk's tile reaches it) and small *pieces* (the
strips shared with neighbour chunks). One scene: run the chunks in order with
the next chunk's read prefetched, write interiors as soon as they are done,
and finish each chunk's seams once its neighbours are done. Every lattice tile
is predicted exactly once, and the result does not depend on the chunk size.

A notebook can call :func:`predict_chunk` on one chunk with no cluster;
:mod:`terraseg.engine.distributed` schedules the same functions on Dask.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import ctypes
import functools
import json
import logging
import os
import platform
import resource
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from terraseg import __version__
from terraseg.core.grid import Chunk, ChunkGrid, PixelWindow
from terraseg.core.stitch import (
    accumulate_tile,
    assemble,
    labels_from_acc,
    seam_windows,
    split_accumulator,
    tile_weights,
)
from terraseg.engine.inference import Normalize, TilePredictor
from terraseg.errors import BandError, EmptySceneError, OutputExistsError
from terraseg.io.atomic import atomic_output, check_writable_dir
from terraseg.io.chunkstore import ChunkOutput, write_region
from terraseg.io.raster_sink import RasterSink, bounded_gdal_cache
from terraseg.io.scene import Scene, open_scene
from terraseg.models.spec import ModelSpec

__all__ = [
    "run_chunk",
    "RunStats",
    "iter_predictions",
    "ChunkInput",
    "ChunkResult",
    "PredictResult",
    "plan_scene",
    "predict_chunk",
    "predict_scene",
    "read_chunk",
]

log = logging.getLogger(__name__)

NODATA = 255
Ramp = Literal["cosine", "linear", "none"]
_Index = tuple[int, int]
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


def plan_scene(
    scene: Scene, *, tile_px: int = 512, overlap_px: int = 64, chunk_px: int = 2048
) -> ChunkGrid:
    """The chunk grid and global tile lattice for ``scene`` (pure geometry, reads no pixel)."""
    return ChunkGrid.from_shape(
        scene.shape, tile_px=tile_px, overlap_px=overlap_px, chunk_px=chunk_px
    )


def check_bands(scene: Scene, spec: ModelSpec) -> None:
    """Raise :class:`BandError` unless ``scene`` has every band ``spec`` reads."""
    need = max(spec.input.bands)
    if need > scene.count:
        raise BandError(
            f"model '{spec.name}' reads bands {list(spec.input.bands)} but scene "
            f"'{scene.path}' has {scene.count} band(s); choose a scene with {need}+ bands or "
            "set the model's input bands (e.g. [1, 1, 1] for a one-band scene)",
            path=scene.path,
            bands=spec.input.bands,
            count=scene.count,
        )


def check_not_empty(scene: Scene, run: RunStats) -> None:
    """Raise :class:`EmptySceneError` when no tile of the scene held a valid pixel."""
    if run.tiles_run == 0:
        what = f"nodata={scene.nodata:g}" if scene.nodata is not None else "its mask/alpha"
        raise EmptySceneError(
            f"scene '{scene.path}' holds no valid pixels (every pixel is nodata: {what}); "
            "nothing to predict: check the file, its nodata value or the band selection",
            path=scene.path,
        )


def read_chunk(scene: Scene, chunk: Chunk, spec: ModelSpec, *, pad: str = "reflect") -> ChunkInput:
    """Read ``chunk.read_window`` once (boundless, with mask), raw values."""
    t0 = time.perf_counter()
    raw, valid, _ = scene.read_window_with_mask(
        chunk.read_window, bands=list(spec.input.bands), pad=pad  # type: ignore[arg-type]
    )
    normalize = spec.input.affine()  # refuses normalisations that need scene statistics
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


class _MemoryTrimmer:
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


@dataclass(slots=True)
class PredictResult:
    """What :func:`predict_scene` wrote and measured."""

    out_dir: Path
    classes_path: Path
    probabilities_path: Path | None
    run_json: Path
    stats: dict[str, Any]


@dataclass(slots=True)
class RunStats:
    """Counters filled in while :func:`iter_predictions` runs."""

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    chunks_done: int = 0
    tiles_run: int = 0
    chunks_skipped_nodata: int = 0


def iter_predictions(
    scene: Scene,
    grid: ChunkGrid,
    predictor: TilePredictor,
    spec: ModelSpec,
    *,
    ramp: Ramp = "cosine",
    pad: Literal["reflect", "nodata"] = "reflect",
    prefetch: bool = True,
    chunks: Sequence[Chunk] | None = None,
    stats: RunStats | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Iterator[tuple[PixelWindow, np.ndarray | None, np.ndarray]]:
    """Yield finished regions of the scene as ``(window, accumulator, valid)``.

    ``accumulator`` is ``(K + 1, h, w)`` float32 (K weighted scores + weight sum;
    see :func:`terraseg.core.stitch.normalize`) or ``None`` for a region whose chunk
    was all nodata; ``valid`` is the input validity ``(h, w)``. The windows
    partition the scene (or the cores of ``chunks``) exactly once; chunk
    interiors come as soon as their chunk is done, seams once the neighbour
    chunks are. The next chunk's read runs in a thread while the model works.
    """
    stats = stats if stats is not None else RunStats()
    chunks = list(grid) if chunks is None else list(chunks)
    wanted = {c.index for c in chunks}
    n_channels = spec.n_classes + 1
    # Each seam window (a strip of a chunk's core outside its interior) is final
    # once every chunk whose extent reaches into it is done; only those chunks'
    # pieces are kept for it. Emitting window by window, not chunk by chunk,
    # frees a chunk's pieces about one chunk row after it ran instead of two,
    # which halves what a wide scene holds (measured at 32768²).
    needs: dict[_Index, list[tuple[PixelWindow, list[_Index]]]] = {}
    users: dict[_Index, int] = dict.fromkeys(wanted, 0)  # pending seam windows needing a chunk
    watchers: dict[_Index, set[_Index]] = {i: set() for i in wanted}  # j -> chunks waiting on j
    for c in chunks:
        around = [c, *(n for n in grid.neighbours(c) if n.index in wanted)]
        needs[c.index] = []
        for w in seam_windows(c):
            who = [n.index for n in around if not n.extent.intersection(w).is_empty]
            needs[c.index].append((w, who))
            for j in who:
                users[j] += 1
                watchers[j].add(c.index)
    pieces: dict[_Index, list[tuple[PixelWindow, np.ndarray]]] = {}
    # seam windows of predicted chunks still waiting: (window, chunks needed, validity)
    pending: dict[_Index, list[tuple[PixelWindow, list[_Index], np.ndarray]]] = {}
    workspace: dict[str, np.ndarray] = {}  # one accumulator, reused chunk after chunk
    trim_memory = _MemoryTrimmer()

    def load(c: Chunk) -> ChunkInput:
        return read_chunk(scene, c, spec, pad=pad)

    def ready_seams(idx: _Index) -> Iterator[tuple[PixelWindow, np.ndarray, np.ndarray]]:
        left = []
        for w, who, valid in pending.get(idx, []):
            if not all(j in pieces for j in who):
                left.append((w, who, valid))
                continue
            yield w, assemble(w, [p for j in who for p in pieces[j]], n_channels), valid
            for j in who:
                users[j] -= 1
                if users[j] == 0:  # nobody needs j's pieces any more
                    del pieces[j]
        if idx in pending:
            pending[idx] = left

    with cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="terraseg-read") as pool:
        future = pool.submit(load, chunks[0]) if prefetch and chunks else None
        for i, chunk in enumerate(chunks):
            if future is not None:
                inp = future.result()
                # read the next chunk while this one is on the model
                future = pool.submit(load, chunks[i + 1]) if i + 1 < len(chunks) else None
            else:
                inp = load(chunk)
            res = predict_chunk(inp, grid, predictor, ramp=ramp, workspace=workspace)
            del inp
            for key, value in res.seconds.items():
                stats.seconds[key] = stats.seconds.get(key, 0.0) + value
            stats.tiles_run += res.n_tiles_run
            stats.chunks_skipped_nodata += int(res.skipped)
            if res.interior is not None and res.interior.shape[0] != n_channels:
                raise BandError(
                    f"model '{spec.name}' returned {res.interior.shape[0] - 1} channels but its "
                    f"spec lists {spec.n_classes} classes; fix the model card",
                    name=spec.name,
                )
            yield chunk.interior, res.interior, res.interior_valid
            if users[chunk.index]:
                pieces[chunk.index] = res.pieces
            # small copies: a view would keep the chunk's whole validity mask alive
            pending[chunk.index] = [
                (w, who, np.ascontiguousarray(v))
                for (w, who), (_, v) in zip(needs.pop(chunk.index), res.seam_valid, strict=True)
            ]
            del res
            for idx in sorted(watchers[chunk.index]):
                yield from ready_seams(idx)
            trim_memory()
            stats.chunks_done += 1
            if progress is not None:
                progress(i + 1, len(chunks))
    assert not pieces and not any(pending.values()), "seam windows left unwritten"


class _SceneWriter:
    """Writes finished regions to the class (and probability) sinks.

    Labels are computed on the calling thread (the accumulator is a reused
    buffer), and the GDAL writes (compression) run on a writer thread, at most
    ``max_pending`` regions behind, so they overlap the next chunk's model work.
    Use as a context manager: leaving it waits for every write and re-raises the
    first error.
    """

    def __init__(
        self, classes: RasterSink, probs: RasterSink | None, *, max_pending: int = 4
    ) -> None:
        self.classes = classes
        self.probs = probs
        self.seconds = 0.0  # labels, on the calling thread
        self.thread_seconds = 0.0  # GDAL writes, on the writer thread
        self.max_pending = max_pending
        self._pool = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="terraseg-write")
        self._pending: list[cf.Future[None]] = []

    def __enter__(self) -> _SceneWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        try:
            if exc_type is None:
                self.drain(0)
        finally:  # on an error, queued writes are dropped: the outputs are discarded anyway
            self._pool.shutdown(wait=True, cancel_futures=True)

    def drain(self, keep: int) -> None:
        """Wait until at most ``keep`` writes are pending; re-raise a failed write's error."""
        while len(self._pending) > keep:
            self._pending.pop(0).result()

    def _write(self, window: PixelWindow, labels: np.ndarray | None, q: np.ndarray | None) -> None:
        t0 = time.perf_counter()
        write_region(self.classes, self.probs, window, labels, q)
        self.thread_seconds += time.perf_counter() - t0  # only this thread adds here

    def write(self, window: PixelWindow, acc: np.ndarray | None, valid: np.ndarray) -> None:
        t0 = time.perf_counter()
        labels = qprobs = None
        if acc is not None:
            labels, qprobs = labels_from_acc(acc, valid, with_probs=self.probs is not None)
        self.seconds += time.perf_counter() - t0
        self.drain(self.max_pending - 1)
        self._pending.append(self._pool.submit(self._write, window, labels, qprobs))


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _output_paths(
    out_dir: str | os.PathLike[str], *, write_probabilities: bool, overwrite: bool
) -> tuple[Path, Path, Path | None, Path]:
    """Output folder and file paths; refuses existing outputs unless ``overwrite``."""
    out = Path(out_dir)
    check_writable_dir(out)
    classes_path = out / "classes.tif"
    probs_path = out / "probabilities.tif" if write_probabilities else None
    run_json = out / "run.json"
    for path in (classes_path, probs_path, run_json):
        if path is not None and path.exists() and not overwrite:
            raise OutputExistsError(
                f"output '{path}' already exists; pass --overwrite to replace it", path=path
            )
    return out, classes_path, probs_path, run_json


def _open_sinks(
    stack: contextlib.ExitStack,
    scene: Scene,
    spec: ModelSpec,
    classes_path: Path,
    probs_path: Path | None,
    *,
    overwrite: bool,
) -> tuple[RasterSink, RasterSink | None]:
    # reads and writes of the whole run happen inside this stack: bound GDAL's cache
    stack.enter_context(bounded_gdal_cache())
    classes_sink = stack.enter_context(
        RasterSink(
            classes_path, like=scene, count=1, dtype="uint8", nodata=NODATA,
            overwrite=overwrite, class_names=spec.class_names(), colormap=spec.colormap(),
            band_names=["class"],
        )
    )
    probs_sink = None
    if probs_path is not None:
        probs_sink = stack.enter_context(
            RasterSink(
                probs_path, like=scene, count=spec.n_classes, dtype="uint8", nodata=NODATA,
                overwrite=overwrite, band_names=[c.name for c in spec.classes],
                resampling="average",
            )
        )
    return classes_sink, probs_sink


def _run_stats(
    scene: Scene,
    spec: ModelSpec,
    grid: ChunkGrid,
    run: RunStats,
    *,
    wall: float,
    device: str,
    predictor: str,
    config: dict[str, Any] | None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    mpx = scene.shape[0] * scene.shape[1] / 1e6
    return {
        "terraseg_version": __version__,
        "scene": str(scene.path),
        "shape": list(scene.shape),
        "crs": scene.crs.to_string() if scene.crs else None,
        "model": spec.name,
        "predictor": predictor,
        "grid": grid.summary(),
        "tiles_run": run.tiles_run,
        "chunks_skipped_nodata": run.chunks_skipped_nodata,
        "seconds": {k: round(v, 4) for k, v in run.seconds.items()} | {"wall": round(wall, 4)},
        "throughput_mpx_s": round(mpx / wall, 4) if wall > 0 else None,
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "device": device},
        "config": config or {},
        **(extra or {}),
    }


def _stage_run_json(stack: contextlib.ExitStack, run_json: Path, stats: dict[str, Any]) -> None:
    """Write ``run.json`` under a temporary name, renamed when ``stack`` closes cleanly.

    Entered after the raster sinks were finished, so all outputs of a run are
    renamed together at the very end; a failure before that (a full disk)
    leaves the previous run's files untouched.
    """
    tmp = stack.enter_context(atomic_output(run_json, overwrite=True))
    tmp.write_text(json.dumps(stats, indent=2, default=str))


def predict_scene(
    scene: Scene | str | os.PathLike[str],
    predictor: TilePredictor,
    spec: ModelSpec,
    out_dir: str | os.PathLike[str],
    *,
    tile_px: int = 512,
    overlap_px: int = 64,
    chunk_px: int = 2048,
    ramp: Ramp = "cosine",
    pad: Literal["reflect", "nodata"] = "reflect",
    write_probabilities: bool = False,
    overwrite: bool = False,
    prefetch: bool = True,
    progress: Callable[[int, int], None] | None = None,
    config: dict[str, Any] | None = None,
) -> PredictResult:
    """Predict a whole scene chunk by chunk and write ``classes.tif`` (COG) and ``run.json``.

    In one process, streaming: interiors are written as soon as a chunk is
    done, and only the thin strips shared with neighbour chunks wait for those
    neighbours, so peak memory depends on ``chunk_px`` and the model, not on
    the scene size. For a resumable run on Dask see
    :func:`terraseg.engine.resumable.predict_scene_resumable`.

    Parameters
    ----------
    scene
        An open :class:`~terraseg.io.scene.Scene` or a path GDAL can read.
    predictor
        Runs the model on batches of tiles.
    spec
        Input bands/normalisation and classes of the model.
    out_dir
        Output folder: ``classes.tif`` (uint8 labels, 255 = nodata),
        ``probabilities.tif`` (uint8 0-254 per class, optional) and ``run.json``.
    tile_px, overlap_px, chunk_px
        Global tile lattice and chunk size, in pixels.
    ramp
        Blending window: ``"cosine"`` (default), ``"linear"``, or ``"none"`` (crop
        each tile to its core).
    pad
        How tiles that hang past the scene edge are filled: ``"reflect"`` or ``"nodata"``.
    """
    t_start = time.perf_counter()
    scene = scene if isinstance(scene, Scene) else open_scene(scene)
    check_bands(scene, spec)
    grid = plan_scene(scene, tile_px=tile_px, overlap_px=overlap_px, chunk_px=chunk_px)
    out, classes_path, probs_path, run_json = _output_paths(
        out_dir, write_probabilities=write_probabilities, overwrite=overwrite
    )
    run = RunStats()
    with contextlib.ExitStack() as stack:
        classes_sink, probs_sink = _open_sinks(
            stack, scene, spec, classes_path, probs_path, overwrite=overwrite
        )
        with _SceneWriter(classes_sink, probs_sink) as writer:
            for window, acc, valid in iter_predictions(
                scene, grid, predictor, spec, ramp=ramp, pad=pad, prefetch=prefetch, stats=run,
                progress=progress,
            ):
                writer.write(window, acc, valid)
        check_not_empty(scene, run)  # raising here publishes nothing
        t_write = time.perf_counter()
        classes_sink.finish()
        if probs_sink is not None:
            probs_sink.finish()
        run.seconds["write"] = (
            writer.seconds + writer.thread_seconds + time.perf_counter() - t_write
        )
        stats = _run_stats(
            scene, spec, grid, run, wall=time.perf_counter() - t_start,
            device=str(predictor.device), predictor=repr(predictor), config=config,
        )
        _stage_run_json(stack, run_json, stats)
    # every output is renamed into place here, together
    return PredictResult(out, classes_path, probs_path, run_json, stats)
