"""Resumable scene runs through a chunk store: parallel, failure-tolerant, restartable.

The store-based twin of :func:`terraseg.engine.pipeline.predict_scene`. A *runner*
computes chunks anywhere (this process, or Dask workers via
:class:`terraseg.engine.distributed.DaskRunner`) and yields their small outputs; each
is saved as it arrives, so an interrupted run recomputes only what is missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from terraseg.core.grid import Chunk, ChunkGrid, PixelWindow
from terraseg.engine.inference import TilePredictor
from terraseg.engine.pipeline import (
    PredictResult,
    Ramp,
    RunStats,
    _open_sinks,
    _output_paths,
    _run_stats,
    _stage_run_json,
    check_bands,
    check_not_empty,
    plan_scene,
    run_chunk,
)
from terraseg.errors import ChunkFailedError, OutputExistsError
from terraseg.io.chunkstore import ChunkOutput, DirStore, write_from_store
from terraseg.io.scene import Scene
from terraseg.models.spec import ModelSpec

__all__ = ["ChunkFailure", "ChunkRunner", "local_runner", "predict_scene_resumable"]


@dataclass(slots=True)
class ChunkFailure:
    """A chunk whose task raised: recorded in ``failures.jsonl``, recomputed on resume."""

    index: tuple[int, int]
    window: PixelWindow
    error: str
    traceback: str


ChunkRunner = Callable[[Sequence[Chunk]], Iterator["ChunkOutput | ChunkFailure"]]
"""Computes the given chunks (in any order, anywhere) and yields their outputs."""


def local_runner(
    scene: Scene,
    grid: ChunkGrid,
    predictor: TilePredictor,
    spec: ModelSpec,
    *,
    ramp: Ramp = "cosine",
    pad: Literal["reflect", "nodata"] = "reflect",
    with_probs: bool = False,
) -> ChunkRunner:
    """A :data:`ChunkRunner` that runs chunks one after another in this process."""

    def run(chunks: Sequence[Chunk]) -> Iterator[ChunkOutput | ChunkFailure]:
        for chunk in chunks:
            try:
                yield run_chunk(scene, chunk, grid, predictor, spec, ramp=ramp, pad=pad,
                                with_probs=with_probs)
            except Exception as exc:  # recorded, the run goes on
                yield ChunkFailure(chunk.index, chunk.core, f"{type(exc).__name__}: {exc}",
                                   traceback.format_exc())

    return run


def _check_store_not_empty(scene: Scene, store: DirStore, grid: ChunkGrid) -> None:
    """All stored chunks skipped as nodata: the scene has nothing to predict."""
    if all(store.get(c.index).labels is None for c in grid):
        check_not_empty(scene, RunStats())


def predict_scene_resumable(
    scene: Scene,
    spec: ModelSpec,
    out_dir: str | os.PathLike[str],
    runner: ChunkRunner,
    *,
    tile_px: int = 512,
    overlap_px: int = 64,
    chunk_px: int = 2048,
    write_probabilities: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    keep_chunks: bool = False,
    progress: Callable[[int, int], None] | None = None,
    config: dict[str, Any] | None = None,
    device: str = "",
) -> PredictResult:
    """Predict a scene through a chunk store: parallel, resumable, failure-tolerant.

    ``runner`` computes the chunks that are not stored yet (on Dask workers, or
    locally); each output is saved in ``out_dir/.chunks/`` as it arrives, so an
    interrupted run continues with ``resume=True`` and recomputes only the
    missing chunks. Chunks that fail are written to ``out_dir/failures.jsonl``
    (window and traceback); the others still finish, and the run then raises
    :class:`~terraseg.errors.ChunkFailedError`. When every chunk is stored the
    COGs are streamed from the store, and the store is removed.
    """
    t_start = time.perf_counter()
    check_bands(scene, spec)
    grid = plan_scene(scene, tile_px=tile_px, overlap_px=overlap_px, chunk_px=chunk_px)
    out, classes_path, probs_path, run_json = _output_paths(
        out_dir, write_probabilities=write_probabilities, overwrite=overwrite
    )
    store = DirStore(out / ".chunks")
    done = store.done()
    if done and not resume:
        if not overwrite:
            raise OutputExistsError(
                f"'{out}' holds {len(done)} chunks of an unfinished run; pass --resume to "
                "continue it or --overwrite to start again",
                path=out,
            )
        store.clear()
        done = set()
    todo = [c for c in grid if c.index not in done]
    failures_path = out / "failures.jsonl"
    failures_path.unlink(missing_ok=True)
    run = RunStats()
    failures: list[ChunkFailure] = []
    n_done = len(done)
    if progress is not None:
        progress(n_done, len(grid))
    for item in runner(todo):
        if isinstance(item, ChunkFailure):
            failures.append(item)
            with open(failures_path, "a") as fh:
                fh.write(json.dumps({
                    "chunk": list(item.index),
                    "window": [item.window.row_off, item.window.col_off,
                               item.window.height, item.window.width],
                    "error": item.error, "traceback": item.traceback,
                }) + "\n")
            continue
        store.put(item)
        for key, value in item.stats.get("seconds", {}).items():
            run.seconds[key] = run.seconds.get(key, 0.0) + value
        run.tiles_run += int(item.stats.get("tiles_run", 0))
        run.chunks_skipped_nodata += int(bool(item.stats.get("skipped")))
        n_done += 1
        if progress is not None:
            progress(n_done, len(grid))
    if failures:
        first = failures[0]
        raise ChunkFailedError(
            f"{len(failures)} of {len(grid)} chunks failed (first: chunk {list(first.index)}: "
            f"{first.error}); details in '{failures_path}'; fix the cause and rerun with "
            "--resume to compute only those chunks",
            failures=failures_path,
        )
    if not todo or run.tiles_run == 0:
        _check_store_not_empty(scene, store, grid)
    t_write = time.perf_counter()
    with contextlib.ExitStack() as stack:
        classes_sink, probs_sink = _open_sinks(
            stack, scene, spec, classes_path, probs_path, overwrite=overwrite
        )
        write_from_store(grid, store, classes_sink, probs_sink, n_classes=spec.n_classes)
        classes_sink.finish()
        if probs_sink is not None:
            probs_sink.finish()
        run.seconds["write"] = time.perf_counter() - t_write
        stats = _run_stats(
            scene, spec, grid, run, wall=time.perf_counter() - t_start, device=device,
            predictor=device, config=config,
            extra={"chunks_computed": len(todo), "chunks_resumed": len(done)},
        )
        _stage_run_json(stack, run_json, stats)
    if not keep_chunks:
        store.clear()
    return PredictResult(out, classes_path, probs_path, run_json, stats)
