"""The work of a scene as tasks that run on workers: chunks, cores, COGs, vectors, export.

Each function here is one task of :mod:`terraseg.engine.cluster`'s graph and
runs on a Dask worker (or in the client's process for a synchronous run). A
task reads what it needs from the run's chunk store and the scene, writes its
own outputs next to them, and returns only a small dict (timings, counts, the
worker and device); nothing scene-sized ever travels to the client.

Per scene, with ``n`` chunks:

- ``chunk`` (n tasks): read, infer and blend one chunk; store its interior
  labels and seam pieces (:meth:`~terraseg.io.chunkstore.DirStore.put`).
- ``core`` (n tasks, each after the chunk and its neighbours): finish the
  chunk's seams from the stored pieces and store the whole core
  (:func:`~terraseg.io.chunkstore.finish_core`).
- ``cog`` (1 task, after every core): stream the cores into ``classes.tif``
  (and ``probabilities.tif``), on the scene's own grid.
- vectors: instances, polygons, centerlines and export of the scene, from the
  finished cores (see :mod:`terraseg.engine.cluster`).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from terraseg.core.grid import ChunkGrid
from terraseg.io.chunkstore import DirStore, core_name, finish_core, write_region
from terraseg.io.scene import Scene
from terraseg.models.spec import ModelSpec

__all__ = ["SceneJob", "chunk_task", "cog_task", "core_task", "vector_scene_task"]


@dataclass(frozen=True, slots=True)
class SceneJob:
    """Everything a task of one scene needs; cheap to pickle (paths, numbers, the card).

    Attributes
    ----------
    name
        The scene's stem: names its output folder's files (``<name>.gpkg``).
    scene
        The scene as the model sees it (:class:`~terraseg.engine.adapt.AdaptedScene`).
    spec
        The model card the scene was adapted to (bands, normalisation, classes).
    grid
        The chunk grid and tile lattice (on the model grid when resampled).
    opts
        How a worker builds its predictor
        (:class:`~terraseg.engine.distributed.PredictorOptions`).
    out_dir
        The scene's output folder.
    """

    name: str
    scene: Scene
    spec: ModelSpec
    grid: ChunkGrid
    opts: Any
    out_dir: str
    ramp: str = "cosine"
    pad: str = "reflect"
    with_probs: bool = False
    predict: bool = True
    vectorize: bool = False
    formats: tuple[str, ...] = ("gpkg",)
    to_crs: str | None = None
    vector_chunk_px: int = 2048
    relabel: bool = True
    imagery: str | None = None
    run_info: dict[str, Any] = field(default_factory=dict)

    @property
    def out(self) -> Path:
        return Path(self.out_dir)

    @property
    def store(self) -> DirStore:
        """The run's chunk store: chunk outputs, finished cores, per-chunk labels."""
        return DirStore(self.out / ".chunks")

    @property
    def classes_path(self) -> Path:
        return self.out / "classes.tif"

    @property
    def probs_path(self) -> Path | None:
        return self.out / "probabilities.tif" if self.with_probs else None


def _worker_info() -> dict[str, str]:
    """Which worker and device ran a task (``worker_info`` when the cluster module has it)."""
    from terraseg.engine import distributed

    info = getattr(distributed, "worker_info", None)
    if info is not None:
        return dict(info())
    try:
        from distributed import get_worker

        return {"worker": str(get_worker().address)}
    except (ImportError, ValueError):
        return {"worker": "local"}


def chunk_task(job: SceneJob, index: tuple[int, int]) -> dict[str, Any]:
    """One chunk: read, infer, blend; store its interior and seam pieces. Returns its stats."""
    from terraseg.engine.chunk import run_chunk
    from terraseg.engine.distributed import get_worker_predictor

    predictor, _ = get_worker_predictor(job.opts)
    out = run_chunk(job.scene, job.grid.chunk(*index), job.grid, predictor, job.spec,
                    ramp=job.ramp, pad=job.pad, with_probs=job.with_probs)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    job.store.put(out)
    stats = dict(out.stats)
    stats["seconds"] = dict(stats["seconds"]) | {"store": time.perf_counter() - t0}
    return {"index": list(index), "device": str(predictor.device), **stats, **_worker_info()}


def core_task(job: SceneJob, index: tuple[int, int], *after: Any) -> dict[str, Any]:
    """Finish one chunk's seams from its and its neighbours' stored pieces; store the core.

    ``after`` are the chunk tasks it waits for (their results are not used).
    """
    t0 = time.perf_counter()
    labels, probs = finish_core(job.grid, job.store, index, n_classes=job.spec.n_classes,
                                with_probs=job.with_probs)
    if labels is not None:
        arrays = {"labels": labels} | ({"probs": probs} if probs is not None else {})
        job.store.put_arrays(core_name(index), arrays)
    return {"index": list(index), "seconds": {"core": time.perf_counter() - t0},
            "empty": labels is None}


def cog_task(job: SceneJob, *after: Any) -> dict[str, Any]:
    """Stream every finished core into ``classes.tif`` (and ``probabilities.tif``).

    On the scene's own grid: for a scene read on a model-GSD grid the sinks
    resample the cores back (:func:`~terraseg.engine.outputs.open_sinks`).
    Raises :class:`~terraseg.errors.EmptySceneError`, writing nothing, when no
    chunk holds a valid pixel.
    """
    from terraseg.engine.outputs import RunStats, open_sinks
    from terraseg.engine.pipeline import check_not_empty

    t0 = time.perf_counter()
    store = job.store
    present = {p.stem for p in store.root.glob("core_r*_c*.npz")}
    if not present:
        check_not_empty(job.scene, RunStats())
    with contextlib.ExitStack() as stack:
        classes_sink, probs_sink = open_sinks(stack, job.scene, job.spec, job.classes_path,
                                              job.probs_path, overwrite=True)
        for chunk in job.grid:
            name = core_name(chunk.index)
            if name in present:
                data = store.get_arrays(name)
                write_region(classes_sink, probs_sink, chunk.core, data["labels"],
                             data.get("probs"))
            else:
                write_region(classes_sink, probs_sink, chunk.core, None, None)
        classes_sink.finish()
        if probs_sink is not None:
            probs_sink.finish()
    return {"seconds": {"write": time.perf_counter() - t0}}


def vector_scene_task(job: SceneJob, *after: Any) -> dict[str, Any]:
    """Instances, vectors and export of one scene from its class COG, on one worker."""
    from terraseg.engine.postprocess import vectorize_scene

    t0 = time.perf_counter()
    instances = job.out / "instances.tif"
    probs = job.out / "probabilities.tif"
    formats = job.formats if "gpkg" in job.formats else ("gpkg", *job.formats)
    result = vectorize_scene(
        job.classes_path, instances, job.out, scene_name=job.name,
        chunk_px=job.vector_chunk_px, label=job.relabel or not instances.exists(),
        probabilities_path=probs if probs.exists() else None, formats=formats,  # type: ignore[arg-type]
        to_crs=job.to_crs, run_info=job.run_info, overwrite=True, imagery=job.imagery,
    )
    outputs = {"instances": str(instances)} | {
        Path(p).name: str(p) for p in result.export.paths if Path(p).suffix != ".tif"
    }
    return {"outputs": outputs, "seconds": {"vectors": time.perf_counter() - t0}}
