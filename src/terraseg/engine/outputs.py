"""A run's outputs: paths, raster sinks, the region writer, run statistics, run.json.

Every output of a run is written under a temporary name and renamed together
when the run's :class:`contextlib.ExitStack` closes cleanly.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import os
import platform
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from terraseg._version import __version__
from terraseg.core.grid import ChunkGrid, PixelWindow
from terraseg.core.stitch import (
    labels_from_acc,
)
from terraseg.engine.adapt import AdaptedScene, source_of
from terraseg.engine.chunk import NODATA, STAGES
from terraseg.errors import OutputExistsError
from terraseg.io.atomic import atomic_output, check_writable_dir
from terraseg.io.chunkstore import write_region
from terraseg.io.raster_sink import BUILDING_FILTER_TAGS, RasterSink, bounded_gdal_cache
from terraseg.io.scene import Scene
from terraseg.io.warped import RegriddedSink, scene_validity
from terraseg.models.spec import BUILDING_MIN_AREA_M2, ModelSpec

__all__ = [
    "PredictResult",
    "RunStats",
    "SceneWriter",
    "open_probability_sink",
    "open_sinks",
    "output_paths",
    "peak_rss_mb",
    "run_stats",
    "stage_run_json",
]


@dataclass(slots=True)
class PredictResult:
    """What a scene's prediction wrote and measured."""

    out_dir: Path
    classes_path: Path
    probabilities_path: Path | None
    run_json: Path
    stats: dict[str, Any]
    #: every file written (``classes``, ``instances``, ``<scene>.gpkg``...): name -> path
    outputs: dict[str, str] = field(default_factory=dict)
    #: features per vector layer, when the scene was vectorized
    counts: dict[str, int] = field(default_factory=dict)
    #: building instances in ``instances.tif``, when they were labelled
    n_instances: int | None = None


@dataclass(slots=True)
class RunStats:
    """Counters filled in while :func:`iter_predictions` runs."""

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    chunks_done: int = 0
    tiles_run: int = 0
    chunks_skipped_nodata: int = 0


class SceneWriter:
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

    def __enter__(self) -> SceneWriter:
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


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def output_paths(
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


def filter_tags(min_score: float, min_area_m2: float, seed_p: float | None = None,
                landscape: str = "edge") -> dict[str, str]:
    """Tags of a class COG beyond its class names: the model's building settings
    (:data:`~terraseg.io.raster_sink.BUILDING_FILTER_TAGS`, as
    :meth:`~terraseg.models.spec.ModelSpec.building_settings` gives them) that are not
    the defaults."""
    values = {"min_score": min_score if min_score else None,
              "min_area_m2": min_area_m2 if min_area_m2 != BUILDING_MIN_AREA_M2 else None,
              "seed_p": seed_p}
    tags = {BUILDING_FILTER_TAGS[k]: f"{v:g}" for k, v in values.items() if v is not None}
    if landscape != "edge":
        tags[BUILDING_FILTER_TAGS["landscape"]] = landscape
    return tags


def masks_from_probabilities(
    probs: np.ndarray[Any, Any],
    like: Any,
    out_dir: Path,
    *,
    class_names: dict[int, str],
    tags: dict[str, str] | None = None,
) -> tuple[Path, Path]:
    """``classes.tif`` and ``probabilities.tif`` in ``out_dir`` from in-memory probabilities.

    ``probs`` is ``(class, y, x)`` float as :func:`terraseg.predict` returns it (NaN
    = nodata) on the grid of ``like``; labels are its argmax, as the engine takes
    them from its accumulators, and the probabilities are quantised as the engine
    writes them, so the finishing steps see what a ``terraseg predict`` run wrote.
    ``tags``: the class COG's :func:`filter_tags`.
    """
    from terraseg.core.grid import PixelWindow
    from terraseg.core.stitch import argmax_classes, quantize_probs

    p = np.asarray(probs, np.float32)
    valid = np.asarray(~np.isnan(p).any(axis=0), dtype=bool)
    p = np.where(valid, p, np.float32(0.0))
    labels = argmax_classes(p)
    labels[~valid] = NODATA
    window = PixelWindow(0, 0, *labels.shape)
    classes_path, probs_path = out_dir / "classes.tif", out_dir / "probabilities.tif"
    with RasterSink(classes_path, like=like, nodata=NODATA, class_names=class_names,
                    tags=tags, band_names=["class"]) as sink:
        sink.write(window, labels[None])
    with RasterSink(probs_path, like=like, count=len(p), nodata=NODATA) as sink:
        sink.write(window, quantize_probs(p, valid, nodata=NODATA))
    return classes_path, probs_path


def open_probability_sink(
    stack: contextlib.ExitStack, scene: Scene, spec: ModelSpec, probs_path: Path, *,
    overwrite: bool,
) -> RasterSink:
    """The probability COG sink alone, as :func:`open_sinks` opens it (a cluster writes the
    class and probability COGs in two tasks)."""
    _, probs = _open_sinks(stack, scene, spec, None, probs_path, overwrite=overwrite)
    assert probs is not None
    return probs


def open_sinks(
    stack: contextlib.ExitStack,
    scene: Scene,
    spec: ModelSpec,
    classes_path: Path,
    probs_path: Path | None,
    *,
    overwrite: bool,
) -> tuple[RasterSink, RasterSink | None]:
    """Open the class (and probability) COG sinks on the scene's own grid (see
    :func:`_open_sinks`)."""
    classes, probs = _open_sinks(stack, scene, spec, classes_path, probs_path,
                                 overwrite=overwrite)
    assert classes is not None
    return classes, probs


def _open_sinks(
    stack: contextlib.ExitStack,
    scene: Scene,
    spec: ModelSpec,
    classes_path: Path | None,
    probs_path: Path | None,
    *,
    overwrite: bool,
) -> tuple[RasterSink | None, RasterSink | None]:
    """Open the class (and probability) COG sinks on the scene's own grid.

    For an :class:`~terraseg.engine.adapt.AdaptedScene` on a model grid, the
    sinks are on its source's grid and take model-grid windows
    (:class:`~terraseg.io.warped.RegriddedSink`), so every writer of a run
    works unchanged and the outputs keep the scene's grid and footprint.
    """
    # reads and writes of the whole run happen inside this stack: bound GDAL's cache
    stack.enter_context(bounded_gdal_cache())
    view = scene
    scene = source_of(scene)
    classes_sink: RasterSink | None = None
    if classes_path is not None:  # None: only the probabilities (a cluster task of its own)
        classes_sink = stack.enter_context(
            RasterSink(
                classes_path, like=scene, count=1, dtype="uint8", nodata=NODATA,
                overwrite=overwrite, class_names=spec.class_names(), colormap=spec.colormap(),
                band_names=["class"],
                tags=filter_tags(**spec.building_settings()),
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
    if isinstance(view, AdaptedScene) and view.gridmap is not None:
        # duck-typed: a RegriddedSink has the write/finish/count that every writer uses
        valid = scene_validity(scene, sorted(set(view.input.bands)))
        if classes_sink is not None:
            classes_sink = cast(RasterSink,
                                RegriddedSink(classes_sink, view.gridmap, valid, NODATA))
        if probs_sink is not None:
            probs_sink = cast(RasterSink, RegriddedSink(probs_sink, view.gridmap, valid, NODATA))
    return classes_sink, probs_sink


def run_stats(
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
    adapted = scene.record if isinstance(scene, AdaptedScene) else None
    scene = source_of(scene)
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
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "device": device},
        "config": config or {},
        **({"input": dict(adapted)} if adapted is not None else {}),
        **(extra or {}),
    }


def stage_run_json(stack: contextlib.ExitStack, run_json: Path, stats: dict[str, Any]) -> None:
    """Write ``run.json`` under a temporary name, renamed when ``stack`` closes cleanly.

    Entered after the raster sinks were finished, so all outputs of a run are
    renamed together at the very end; a failure before that (a full disk)
    leaves the previous run's files untouched.
    """
    tmp = stack.enter_context(atomic_output(run_json, overwrite=True))
    tmp.write_text(json.dumps(stats, indent=2, default=str))
