"""Plan a scene and run its chunks in one process; no Dask here.

``terraseg predict`` and ``terraseg run`` go through one resumable driver,
:func:`terraseg.engine.cluster.run_scenes` (tasks in :mod:`terraseg.engine.tasks`,
planned by :func:`terraseg.engine.batch.plan_scene_job`): chunks into a chunk
store that a killed or failed run resumes from. This module holds what that
driver shares with the streaming path of a predictor built in memory
(:func:`predict_scene`: benchmarks and recipes; :func:`iter_predictions`: a
window for the notebook API, :mod:`terraseg.engine.window`), which runs the
chunks in order with the next chunk's read prefetched, writes interiors as soon
as they are done and finishes each chunk's seams once its neighbours are done.
Every lattice tile is predicted exactly once, and the result does not depend on
the chunk size. :mod:`terraseg.engine.chunk` holds the per-chunk stages.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from terraseg.core.grid import Chunk, ChunkGrid, PixelWindow
from terraseg.core.stitch import (
    assemble,
    seam_windows,
)
from terraseg.engine.chunk import (
    NODATA,
    ChunkInput,
    ChunkResult,
    MemoryTrimmer,
    Ramp,
    predict_chunk,
    read_chunk,
    run_chunk,
)
from terraseg.engine.inference import TilePredictor
from terraseg.engine.outputs import (
    PredictResult,
    RunStats,
    SceneWriter,
    open_sinks,
    output_paths,
    run_stats,
    stage_run_json,
)
from terraseg.engine.resume import check_resume
from terraseg.errors import (
    BandError,
    EmptySceneError,
    OutputExistsError,
    ResumeMismatchError,
)
from terraseg.io.chunkstore import DirStore
from terraseg.io.scene import Scene, open_scene
from terraseg.models.spec import ModelSpec

__all__ = [
    "NODATA",
    "ChunkInput",
    "ChunkResult",
    "PredictResult",
    "Ramp",
    "RunStats",
    "check_bands",
    "check_not_empty",
    "iter_predictions",
    "plan_scene",
    "predict_chunk",
    "predict_scene",
    "read_chunk",
    "run_chunk",
]

log = logging.getLogger(__name__)

_Index = tuple[int, int]
_Needs = list[tuple[PixelWindow, list[_Index]]]  # seam windows and the chunks each needs


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


def _plan_seams(
    grid: ChunkGrid, chunks: Sequence[Chunk], wanted: set[_Index]
) -> tuple[dict[_Index, _Needs], dict[_Index, int], dict[_Index, set[_Index]]]:
    """Which chunks each seam window needs, and the reverse maps.

    Returns ``needs`` (chunk -> its seam windows with the chunks whose extent
    reaches each), ``users`` (chunk -> how many pending seam windows need its
    pieces) and ``watchers`` (chunk j -> the chunks whose seams wait on j).
    """
    needs: dict[_Index, _Needs] = {}
    users: dict[_Index, int] = dict.fromkeys(wanted, 0)
    watchers: dict[_Index, set[_Index]] = {i: set() for i in wanted}
    for c in chunks:
        around = [c, *(n for n in grid.neighbours(c) if n.index in wanted)]
        needs[c.index] = []
        for w in seam_windows(c):
            who = [n.index for n in around if not n.extent.intersection(w).is_empty]
            needs[c.index].append((w, who))
            for j in who:
                users[j] += 1
                watchers[j].add(c.index)
    return needs, users, watchers


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
    needs, users, watchers = _plan_seams(grid, chunks, wanted)
    pieces: dict[_Index, list[tuple[PixelWindow, np.ndarray]]] = {}
    # seam windows of predicted chunks still waiting: (window, chunks needed, validity)
    pending: dict[_Index, list[tuple[PixelWindow, list[_Index], np.ndarray]]] = {}
    workspace: dict[str, np.ndarray] = {}  # one accumulator, reused chunk after chunk
    trim_memory = MemoryTrimmer()

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
    the scene size. It is the engine's fastest path for a predictor built in memory
    (benchmarks, recipes): the next chunk's read overlaps the model, and nothing is
    stored. A chunk that raises fails the run, leaving no output.
    ``terraseg predict`` and ``terraseg run`` use the resumable driver,
    :func:`~terraseg.engine.predict_dir.predict_to_dir` and
    :func:`~terraseg.engine.cluster.run_scenes`, built from the same per-chunk
    functions (same classes, tested).

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
    out, classes_path, probs_path, run_json = output_paths(
        out_dir, write_probabilities=write_probabilities, overwrite=overwrite
    )
    run = RunStats()
    with contextlib.ExitStack() as stack:
        classes_sink, probs_sink = open_sinks(
            stack, scene, spec, classes_path, probs_path, overwrite=overwrite
        )
        with SceneWriter(classes_sink, probs_sink) as writer:
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
        stats = run_stats(
            scene, spec, grid, run, wall=time.perf_counter() - t_start,
            device=str(predictor.device), predictor=repr(predictor), config=config,
        )
        stage_run_json(stack, run_json, stats)
    # every output is renamed into place here, together
    return PredictResult(out, classes_path, probs_path, run_json, stats)


# --------------------------------------------------------------------------- resumable


def _resumable_chunks(
    out: Path | str, store: DirStore, manifest: Mapping[str, Any], *, resume: bool, overwrite: bool
) -> set[tuple[int, int]]:
    """The stored chunks this run may keep; writes the manifest before any chunk is stored."""
    done = store.done()
    if done and resume:
        try:
            check_resume(out, store, manifest)
        except ResumeMismatchError as exc:
            if not overwrite:
                raise
            log.warning("discarding %d stored chunks: %s", len(done), exc)
            resume = False
    if done and not resume:
        if not overwrite:
            raise OutputExistsError(
                f"'{out}' holds {len(done)} chunks of an unfinished run; pass --resume to "
                "continue it or --overwrite to start again",
                path=out,
            )
        store.clear()
        done = set()
    store.write_manifest(manifest)
    return done
