"""A run's outputs: paths, raster sinks, the region writer, run statistics, run.json.

Every output of a run is written under a temporary name and renamed together
when the run's :class:`contextlib.ExitStack` closes cleanly.
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from terraseg._version import __version__
from terraseg.core.grid import ChunkGrid, PixelWindow
from terraseg.engine.adapt import AdaptedScene, source_of
from terraseg.engine.chunk import NODATA, STAGES
from terraseg.errors import OutputExistsError
from terraseg.io.atomic import check_writable_dir
from terraseg.io.raster_sink import BUILDING_FILTER_TAGS, RasterSink, bounded_gdal_cache
from terraseg.io.scene import Scene
from terraseg.io.warped import RegriddedSink, scene_validity
from terraseg.models.spec import BUILDING_MIN_AREA_M2, ModelSpec

__all__ = [
    "PredictResult",
    "RunStats",
    "open_probability_sink",
    "open_sinks",
    "output_paths",
    "peak_rss_mb",
    "run_stats",
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


def filter_tags(min_score: float, min_area_m2: float) -> dict[str, str]:
    """Tags of a class COG beyond its class names: the model's building filters
    (:data:`~terraseg.io.raster_sink.BUILDING_FILTER_TAGS`) that are not the defaults."""
    values = {"min_score": min_score if min_score else None,
              "min_area_m2": min_area_m2 if min_area_m2 != BUILDING_MIN_AREA_M2 else None}
    return {BUILDING_FILTER_TAGS[k]: f"{v:g}" for k, v in values.items() if v is not None}


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
                tags=filter_tags(spec.building_min_score, spec.building_min_area_m2),
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


