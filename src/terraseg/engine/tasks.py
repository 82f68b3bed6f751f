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
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from terraseg.core.grid import ChunkGrid
from terraseg.core.stitch import NODATA
from terraseg.io.chunkstore import DirStore, _local_root, core_name, finish_core
from terraseg.io.objstore import Store, open_store, staged_file
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
    #: where under ``out_dir`` the tasks write the outputs, moved into ``out_dir`` together
    #: when the scene is finished (:data:`~terraseg.io.objstore.STAGE_DIR`); "": in place
    stage: str = ""

    @property
    def final_store(self) -> Store:
        """The scene's output folder: a local folder or an ``s3://`` prefix."""
        return open_store(self.out_dir)

    @property
    def out_store(self) -> Store:
        """Where the tasks write the scene's outputs (its staging folder, if any)."""
        final = self.final_store
        return final.child(self.stage) if self.stage else final

    @property
    def out(self) -> Path:
        """The scene's local output folder (:class:`~terraseg.errors.ConfigError` for s3://)."""
        return _local_root(self.out_store)

    @property
    def store(self) -> DirStore:
        """The run's chunk store: chunk outputs, finished cores, per-chunk labels."""
        return DirStore(self.final_store.child(".chunks"))

    @property
    def classes_path(self) -> Path:
        return self.out / "classes.tif"

    @property
    def probs_path(self) -> Path | None:
        return self.out / "probabilities.tif" if self.with_probs else None


@contextlib.contextmanager
def staged_outputs(store: Store, names: list[str | None]) -> Iterator[list[Path | None]]:
    """Local paths to write ``names`` to, published to ``store`` together on a clean exit.

    A local store gets its own paths (each writer renames its file into place);
    an object store gets temporary files uploaded on exit, nothing on an error.
    """
    if store.is_local:
        yield [store.local_path(n) if n else None for n in names]
        return
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(staged_file(store, n)) if n else None for n in names]


def _worker_info(device: str) -> dict[str, str]:
    """Which worker, GPU and ``CUDA_VISIBLE_DEVICES`` ran a task (for ``run.json``)."""
    from terraseg.engine.distributed import worker_info

    return dict(worker_info(device))


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
    return {"index": list(index), **stats, **_worker_info(job.opts.device),
            "device": str(predictor.device)}


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


def cog_task(job: SceneJob, what: str, *after: Any) -> dict[str, Any]:
    """Stream every finished core into ``classes.tif``, or (``what="probabilities"``)
    ``probabilities.tif``: two tasks, so the two COGs are written in parallel.

    On the scene's own grid: for a scene read on a model-GSD grid the sinks
    resample the cores back (:func:`~terraseg.engine.outputs.open_sinks`).
    Raises :class:`~terraseg.errors.EmptySceneError`, writing nothing, when no
    chunk holds a valid pixel.
    """
    from terraseg.engine.outputs import RunStats, open_probability_sink, open_sinks
    from terraseg.engine.pipeline import check_not_empty

    t0 = time.perf_counter()
    store = job.store
    present = store.names("core_r")
    if not present:
        check_not_empty(job.scene, RunStats())
    probs = what == "probabilities"
    name = "probabilities.tif" if probs else "classes.tif"
    with staged_outputs(job.out_store, [name]) as (path,), contextlib.ExitStack() as stack:
        assert path is not None
        if probs:
            sink = open_probability_sink(stack, job.scene, job.spec, path, overwrite=True)
        else:
            sink, _ = open_sinks(stack, job.scene, job.spec, path, None, overwrite=True)
        key = "probs" if probs else "labels"
        for chunk in job.grid:
            core = core_name(chunk.index)
            if core not in present:
                values = np.full((sink.count, *chunk.core.shape), NODATA, np.uint8)
            else:
                values = store.get_arrays(core)[key]
            if chunk.core.height and chunk.core.width:
                sink.write(chunk.core, values if probs else values.reshape(1, *values.shape[-2:]))
        sink.finish()
    return {"seconds": {f"write_{what}": time.perf_counter() - t0}}


def vector_scene_task(job: SceneJob, *after: Any) -> dict[str, Any]:
    """Instances, vectors and export of one scene from its class COG, on one worker.

    An object-store output is worked on in a local scratch folder: the masks
    are fetched, and every file written is uploaded beside them.
    """
    t0 = time.perf_counter()
    store = job.out_store
    if store.is_local:
        outputs = _vectorize_in(job, job.out)
    else:
        with tempfile.TemporaryDirectory(prefix="terraseg-vectors-") as tmp_:
            tmp = Path(tmp_)
            inputs = ["classes.tif", "probabilities.tif", "instances.tif"]
            for name in inputs:
                if store.exists(name):
                    store.get_file(name, tmp / name)
            before = {p.name: p.stat().st_mtime_ns for p in tmp.iterdir()}
            local = _vectorize_in(job, tmp)
            written = [p for p in sorted(tmp.iterdir())
                       if p.is_file() and before.get(p.name) != p.stat().st_mtime_ns]
            for path in written:
                store.put_file(path, path.name)
            outputs = {k: store.url_of(Path(v).name) for k, v in local.items()}
    counts = outputs.pop("counts")
    return {"outputs": outputs, "seconds": {"vectors": time.perf_counter() - t0}, **counts}


def _vectorize_in(job: SceneJob, folder: Path) -> dict[str, Any]:
    from terraseg.engine.postprocess import vectorize_scene

    instances = folder / "instances.tif"
    probs = folder / "probabilities.tif"
    formats = job.formats if "gpkg" in job.formats else ("gpkg", *job.formats)
    result = vectorize_scene(
        folder / "classes.tif", instances, folder, scene_name=job.name,
        chunk_px=job.vector_chunk_px, label=job.relabel or not instances.exists(),
        probabilities_path=probs if probs.exists() else None, formats=formats,  # type: ignore[arg-type]
        to_crs=job.to_crs, run_info=job.run_info, overwrite=True, imagery=job.imagery,
    )
    counts = {"counts": result.layers.counts(), "n_instances": result.n_instances}
    return {"instances": str(instances), "counts": counts} | {
        Path(p).name: str(p) for p in result.export.paths if Path(p).suffix != ".tif"
    }


# --------------------------------------------------------------------------- vectors, per chunk


def label_name(index: tuple[int, int]) -> str:
    """Store name of a vector chunk's local instance labels."""
    return f"labels_r{index[0]:05d}_c{index[1]:05d}"


def finish_options(job: SceneJob) -> Any:
    """The vector options of a scene predicted in this run, from its card (no COG needed yet).

    The same values :meth:`~terraseg.engine.finish.FinishOptions.from_masks`
    reads back from the class COG the run writes: class ids from the card's
    class names, the scene's grid, nodata 255.
    """
    import pyproj

    from terraseg.core.stitch import NODATA
    from terraseg.engine.finish import FinishOptions
    from terraseg.instances.merge import BOUNDARY_HALO_PX

    names = {name: value for value, name in job.spec.class_names().items()}
    edge = names.get("building edge")
    gx, gy = job.scene.gsd_xy_m
    return FinishOptions(
        shape=job.scene.shape, transform=job.scene.transform,
        crs=pyproj.CRS.from_user_input(job.scene.crs), chunk_px=job.vector_chunk_px,
        building=names.get("building", 1), edge=edge, road=names.get("road", 2),
        halo_px=BOUNDARY_HALO_PX if edge is not None else 8, has_probs=job.with_probs,
        pixel_area_m2=float(gx * gy), nodata=float(NODATA),
        **job.spec.building_settings(),
    )


def _core_readers(job: SceneJob) -> tuple[Any, Any]:
    """``read(window)`` and ``read_probs(window, bands)`` (1-based bands) of the stored cores."""
    from terraseg.io.chunkstore import CoreReader

    reader = CoreReader(job.grid, job.store, n_classes=job.spec.n_classes)

    def read_probs(window: Any, bands: Any) -> Any:
        return reader.read(window, [b - 1 for b in bands])

    return reader.read, (read_probs if job.with_probs else None)


def vector_chunk_task(job: SceneJob, fopts: Any, index: tuple[int, int], window: Any,
                      *after: Any) -> Any:
    """One vector chunk from the finished cores: labels saved to the store, polygons returned.

    Returns a :class:`~terraseg.engine.finish.ChunkVectors` (tens of kB a
    chunk), which goes to the scene's reduce task, worker to worker.
    """
    from terraseg.engine.finish import finish_chunk

    read, read_probs = _core_readers(job)
    store = job.store

    def save(i: tuple[int, int], labels: Any) -> None:
        store.put_arrays(label_name(i), {"labels": labels})

    return finish_chunk(read, read_probs, index, window, fopts, save)


def reduce_buildings_task(job: SceneJob, fopts: Any, *parts: Any) -> Any:
    """The scene's instance merge and building dissolve: ``(buildings, relabel table)``."""
    from terraseg.engine.finish_reduce import reduce_buildings

    return reduce_buildings(parts, fopts)


def reduce_roads_task(job: SceneJob, fopts: Any, *parts: Any) -> Any:
    """The scene's road dissolve and centerline network: ``(roads, network)``."""
    from terraseg.engine.finish_reduce import reduce_roads

    return reduce_roads(parts, fopts)


def instances_task(job: SceneJob, fopts: Any, buildings: Any, *after: Any) -> dict[str, Any]:
    """``instances.tif`` and ``panoptic.tif``: stored chunk labels relabelled to global ids."""
    from terraseg.engine.finish_reduce import write_instance_rasters
    from terraseg.io.masks import open_mask

    t0 = time.perf_counter()
    read, _ = _core_readers(job)
    store = job.store

    def load(i: tuple[int, int]) -> Any:
        return store.get_arrays(label_name(i))["labels"]

    out = job.out_store
    with staged_outputs(out, ["instances.tif", "panoptic.tif"]) as (inst, pan), \
            out.gdal_env("classes.tif"):
        like = open_mask(out.local_path("classes.tif") if out.is_local
                         else out.url_of("classes.tif"))
        assert inst is not None
        write_instance_rasters(fopts, buildings[1], load, read, inst, pan, like=like,
                               overwrite=True)
    return {"seconds": {"instances": time.perf_counter() - t0},
            "outputs": {"instances": out.url_of("instances.tif")},
            "n_instances": buildings[1].n_instances}


def export_task(job: SceneJob, buildings: Any, roads: Any) -> dict[str, Any]:
    """The scene's GeoPackage (+ FlatGeobuf/GeoParquet); the project comes after the masks.

    Needs only the two reduces, not the instance rasters, so a scene's export and
    its ``instances.tif`` run on two workers at once. Returns what
    :func:`project_task` needs: the project's vector layers (a few kB).
    """
    from terraseg.engine.postprocess import VectorLayers, export_vectors

    network = roads[1]
    layers = VectorLayers(buildings[0], roads[0], network.centerlines, network.nodes,
                          network.edges)

    t0 = time.perf_counter()
    formats = job.formats if "gpkg" in job.formats else ("gpkg", *job.formats)

    def run(folder: Path) -> Any:
        return export_vectors(
            layers.as_dict(), folder, scene_name=job.name, formats=formats,  # type: ignore[arg-type]
            run_info=job.run_info, to_crs=job.to_crs, overwrite=True, project=False)

    out = job.out_store
    if out.is_local:
        result = run(job.out)
        paths = [str(p) for p in result.paths]
    else:
        with tempfile.TemporaryDirectory(prefix="terraseg-export-") as tmp_:
            result = run(Path(tmp_))
            paths = []
            for p in result.paths:
                out.put_file(p, Path(p).name)
                paths.append(out.url_of(Path(p).name))
    return {"seconds": {"export": time.perf_counter() - t0},
            "outputs": {Path(p).name: p for p in paths}, "counts": layers.counts(),
            "project": (result.vector_layers, layers.buildings.crs.to_wkt())}


def project_task(job: SceneJob, exported: dict[str, Any], *after: Any) -> dict[str, Any]:
    """The scene's QGIS project over its vectors, masks and imagery (after all of them)."""
    from terraseg.export.writers import write_scene_project

    t0 = time.perf_counter()
    vectors, crs = exported["project"]
    masks = ["classes.tif", "instances.tif", "panoptic.tif"]
    out = job.out_store
    name = f"{job.name}.qgz"

    if out.is_local:
        write_scene_project(
            job.out / name, vectors, crs, imagery=job.imagery, overwrite=True,
            masks={m.removesuffix(".tif"): job.out / m for m in masks if (job.out / m).exists()})
        where = str(job.out / name)
    else:  # styles from the masks' overviews through GDAL (/vsis3/), never a download
        from terraseg.export.qgis_project import inspect_raster

        infos = {}
        for m in masks:
            if out.exists(m):
                with out.gdal_env(m):
                    infos[m.removesuffix(".tif")] = inspect_raster(out.gdal_path(m))
        with tempfile.TemporaryDirectory(prefix="terraseg-project-") as tmp_:
            tmp = Path(tmp_)  # the project's relative paths: its masks lie beside it
            write_scene_project(tmp / name, vectors, crs, imagery=job.imagery, overwrite=True,
                                masks={k: tmp / f"{k}.tif" for k in infos}, mask_infos=infos)
            out.put_file(tmp / name, name)
            where = out.url_of(name)
    seconds = dict(exported["seconds"])
    seconds["export"] += time.perf_counter() - t0
    return {"seconds": seconds, "outputs": {**exported["outputs"], name: where},
            "counts": exported["counts"]}
