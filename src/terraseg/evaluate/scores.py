"""Evaluation: pixel IoU, building F1 at IoU 0.5 (SpaceNet), road length F1 and APLS.

Three families of metrics, each usable on its own from a notebook and all
composed by :func:`evaluate` (the ``terraseg evaluate`` command):

- **Pixels** (two class rasters on the same grid): per-class IoU, precision,
  recall and F1 from a confusion matrix accumulated window by window
  (:func:`score_pixels`), never a full-scene array; pixels that are nodata
  (255, or the file's own nodata) in either raster are ignored.
- **Buildings** (polygons): the SpaceNet rule. Predicted and true polygons are
  matched one-to-one, greedily by decreasing IoU, a pair counting when its IoU is
  at least 0.5 (:func:`match_polygons`; candidates come from an STRtree, never
  all pairs). Precision = TP / predicted, recall = TP / true, F1, and the mean
  IoU of the matched pairs (:func:`score_buildings`).
- **Roads** (centerlines): length-weighted precision (share of predicted length
  within ``buffer_m`` of a true line), recall (share of true length within
  ``buffer_m`` of a predicted line) and F1, plus APLS (:mod:`terraseg.evaluate.apls`,
  :func:`score_roads`).

Empty inputs follow SpaceNet: when the truth is empty the scores are 0 (F1 = 0),
unless the prediction is empty too, in which case they are all 1.0; a warning
says so. Precision is 0 for an empty prediction against a non-empty truth; the
mean IoU is 0 when nothing matched.

Geometries are measured in metres: vector inputs in any CRS are reprojected to
one metric CRS, the truth's when it is projected in metres, else the local UTM
zone of the truth (:func:`terraseg.core.metric.local_metric_crs`). Invalid geometries
are repaired with ``make_valid`` and counted in a warning.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeAlias

import geopandas as gpd
import numpy as np
import pandas as pd
import pyproj
import shapely
from numpy.typing import NDArray

from terraseg.core.match import PolygonMatch, match_polygons
from terraseg.core.metric import local_metric_crs
from terraseg.errors import ConfigError, CRSError
from terraseg.evaluate.apls import RoadScores, _road_scores, score_roads
from terraseg.evaluate.buildings import (
    BuildingScores,
    _building_scores,
    rank_buildings,
    score_buildings,
)
from terraseg.evaluate.layers import RASTER_SUFFIXES as RASTER_SUFFIXES
from terraseg.evaluate.layers import (
    EvaluationWarning,
    Task,
    _check_exists,
    _is_raster,
    _list_layers,
    _pick_layers,
    _read_layer,
    _repair,
    _warn,
)
from terraseg.evaluate.pixels import CLASS_NAMES as CLASS_NAMES
from terraseg.evaluate.pixels import PixelScores, confusion_matrix, score_pixels

__all__ = [
    "BuildingScores",
    "EvaluationReport",
    "EvaluationWarning",
    "PixelScores",
    "PolygonMatch",
    "RoadScores",
    "Task",
    "confusion_matrix",
    "evaluate",
    "match_polygons",
    "score_buildings",
    "score_pixels",
    "score_roads",
]

# The scores of each family live in terraseg.evaluate.pixels, .buildings and .apls (roads),
# the reading and repair of the input files in terraseg.evaluate.layers; they are
# re-exported here, as are CLASS_NAMES and RASTER_SUFFIXES.

Geoms: TypeAlias = "NDArray[np.object_]"


# --------------------------------------------------------------------------- report


@dataclass(frozen=True)
class EvaluationReport:
    """What :func:`evaluate` measured.

    Attributes
    ----------
    pred, truth
        The input paths.
    tasks
        The tasks evaluated (``"pixels"``, or ``"buildings"`` and/or ``"roads"``).
    metric_crs
        The CRS vectors were measured in (None for pixels).
    buildings, roads, pixels
        The scores of each task evaluated, else None.
    layers
        ``{task: (pred layer, truth layer)}`` for vector tasks.
    warnings
        The :class:`EvaluationWarning` messages raised while evaluating.
    errors
        False positives and false negatives (vector tasks): columns ``task``,
        ``error`` (``"FP"`` or ``"FN"``), geometry in ``metric_crs``.
    """

    pred: Path
    truth: Path
    tasks: tuple[str, ...]
    metric_crs: pyproj.CRS | None = None
    buildings: BuildingScores | None = None
    roads: RoadScores | None = None
    pixels: PixelScores | None = None
    layers: dict[str, tuple[str, str]] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    errors: gpd.GeoDataFrame | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """One JSON-ready dict (no geometries)."""
        out: dict[str, Any] = {
            "pred": str(self.pred),
            "truth": str(self.truth),
            "tasks": list(self.tasks),
            "metric_crs": None if self.metric_crs is None else self.metric_crs.to_string(),
        }
        if self.layers:
            out["layers"] = {t: {"pred": p, "truth": q} for t, (p, q) in self.layers.items()}
        for name in ("buildings", "roads", "pixels"):
            scores = getattr(self, name)
            if scores is not None:
                out[name] = scores.to_dict()
        out["warnings"] = list(self.warnings)
        return out


def evaluate(
    pred: str | os.PathLike[str],
    truth: str | os.PathLike[str],
    *,
    task: Task = "auto",
    pred_layer: str | None = None,
    truth_layer: str | None = None,
    min_area_m2: float = 0.0,
    iou_threshold: float = 0.5,
    buffer_m: float = 2.0,
    apls_spacing_m: float = 50.0,
    apls_snap_m: float = 4.0,
    apls_max_pairs: int = 10_000,
    seed: int = 0,
    window_px: int = 1024,
) -> EvaluationReport:
    """Evaluate a prediction file against a truth file.

    Parameters
    ----------
    pred, truth
        Two vector files (GeoPackage, GeoJSON, FlatGeobuf, GeoParquet; any CRS) or two
        single-band class rasters (GeoTIFF; same grid).
    task
        ``"buildings"`` (polygons), ``"roads"`` (centerlines), ``"pixels"`` (class
        rasters) or ``"auto"``: pixels for rasters; for vectors, every task for which
        both files have a layer: ``buildings`` / ``road_centerlines`` by name, else the
        only polygon / line layer (or the given layers' geometry type).
    pred_layer, truth_layer
        Layer names (default: chosen as above).
    min_area_m2
        Buildings smaller than this (m²) are dropped from both sides.
    iou_threshold
        Building match threshold (SpaceNet: 0.5).
    buffer_m
        Road matching buffer (metres).
    apls_spacing_m, apls_snap_m, apls_max_pairs, seed
        APLS settings (:func:`terraseg.evaluate.apls.apls`).
    window_px
        Window size for reading rasters.

    Returns
    -------
    EvaluationReport

    Raises
    ------
    SceneReadError
        A file is missing or unreadable.
    ConfigError
        Unknown layer (the message lists the file's layers), no layer for the task,
        a raster against a vector file, rasters not on one grid, bad settings.
    CRSError
        A vector layer without CRS; rasters in different CRSs.
    """
    p, t = Path(pred), Path(truth)
    _check_exists(p, "prediction")
    _check_exists(t, "truth")
    if task not in ("auto", "buildings", "roads", "pixels"):
        raise ConfigError(f"task must be auto, buildings, roads or pixels, got {task!r}", task=task)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", EvaluationWarning)
        report = _evaluate(
            p,
            t,
            task,
            pred_layer,
            truth_layer,
            min_area_m2,
            iou_threshold,
            buffer_m,
            {
                "node_snap_m": 1.0,
                "spacing_m": apls_spacing_m,
                "snap_m": apls_snap_m,
                "max_pairs": apls_max_pairs,
                "seed": seed,
            },
            window_px,
        )
    notes = []
    for w in caught:
        if issubclass(w.category, EvaluationWarning):
            notes.append(str(w.message))
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return replace(report, warnings=tuple(notes))


def _evaluate(
    p: Path,
    t: Path,
    task: Task,
    pred_layer: str | None,
    truth_layer: str | None,
    min_area_m2: float,
    iou_threshold: float,
    buffer_m: float,
    apls_kw: dict[str, Any],
    window_px: int,
) -> EvaluationReport:
    if _is_raster(p) or _is_raster(t):
        if not (_is_raster(p) and _is_raster(t)):
            raster, vector = (p, t) if _is_raster(p) else (t, p)
            raise ConfigError(
                f"'{raster}' is a raster but '{vector}' is a vector file; pass two class "
                "rasters (pixel metrics) or two vector files (building/road metrics)",
                pred=str(p),
                truth=str(t),
            )
        if task not in ("auto", "pixels"):
            raise ConfigError(
                f"--task {task} needs vector files, but '{p}' and '{t}' are rasters; use "
                "--task pixels, or vectorize the prediction first",
                task=task,
            )
        return EvaluationReport(p, t, ("pixels",), pixels=score_pixels(p, t, window_px=window_px))
    if task == "pixels":
        raise ConfigError(
            f"--task pixels needs two class rasters (GeoTIFF), got '{p}' and '{t}'", task=task
        )
    lp, lt = _list_layers(p, "prediction"), _list_layers(t, "truth")
    if task == "auto" and (pred_layer is None) != (truth_layer is None):
        given = _pick_layers(
            *((p, "prediction", lp) if pred_layer else (t, "truth", lt)),
            "auto",
            pred_layer or truth_layer,
        )
        task = "buildings" if "buildings" in given else "roads" if "roads" in given else "auto"
    pick_p = _pick_layers(p, "prediction", lp, task, pred_layer)
    pick_t = _pick_layers(t, "truth", lt, task, truth_layer)
    tasks = [k for k in ("buildings", "roads") if k in pick_p and k in pick_t]
    if not tasks:
        role, path, layers = ("prediction", p, lp) if not pick_p else ("truth", t, lt)
        want = "building polygons or road centerlines" if task == "auto" else task
        raise ConfigError(
            f"no layer with {want} found in both files (e.g. in {role} '{path}', layers: "
            f"{', '.join(f'{n} ({g})' for n, g in layers) or 'none'}); pass --task and "
            "--pred-layer/--truth-layer",
            task=task,
        )
    frames = {}
    for k in tasks:
        for role, path, layer in (("pred", p, pick_p[k]), ("truth", t, pick_t[k])):
            gdf = _read_layer(path, layer)
            if gdf.crs is None:
                raise CRSError(
                    f"layer '{layer}' of '{path}' has no CRS; set one (e.g. ogr2ogr -a_srs "
                    f"EPSG:32633 out.gpkg {path})",
                    path=str(path),
                    layer=layer,
                )
            frames[(k, role)] = gdf
    first = frames[(tasks[0], "truth")]
    ref = next((frames[(k, "truth")] for k in tasks if len(frames[(k, "truth")])), first)
    if not len(ref):
        ref = next((frames[(k, "pred")] for k in tasks if len(frames[(k, "pred")])), ref)
    bounds = tuple(float(b) for b in ref.total_bounds)
    metric = local_metric_crs(ref.crs, bounds, what=f"'{t}'")  # type: ignore[arg-type]
    report = EvaluationReport(
        p, t, tuple(tasks), metric_crs=metric, layers={k: (pick_p[k], pick_t[k]) for k in tasks}
    )
    errors: list[gpd.GeoDataFrame] = []
    for k in tasks:
        sides = {}
        for role, path in (("pred", p), ("truth", t)):
            layer = pick_p[k] if role == "pred" else pick_t[k]
            what = f"{role} '{path}' layer '{layer}'"
            sides[role] = _repair(frames[(k, role)].to_crs(metric), k, what)
        if not len(sides["truth"]):
            _warn(
                f"truth '{t}' has no {k}; scores follow SpaceNet: 0 unless the prediction is "
                "empty too (then 1.0)"
            )
        if k == "buildings":
            b, fp, fn = _scored_buildings(
                sides, frames[(k, "pred")].to_crs(metric), iou_threshold, min_area_m2
            )
            report = replace(report, buildings=b)
        else:
            r, fp, fn = _road_scores(sides["pred"], sides["truth"], buffer_m, dict(apls_kw))
            report = replace(report, roads=r)
        errors.append(_errors_frame(k, fp, fn, metric))
    return replace(
        report,
        errors=pd.concat(errors, ignore_index=True).pipe(
            gpd.GeoDataFrame, geometry="geometry", crs=metric
        ),
    )


def _scored_buildings(
    sides: dict[str, Geoms], pred: gpd.GeoDataFrame, iou_threshold: float, min_area_m2: float
) -> tuple[BuildingScores, Geoms, Geoms]:
    """Building scores, with AP and F1 by score threshold when ``pred`` has a score column."""
    b, fp, fn = _building_scores(sides["pred"], sides["truth"], iou_threshold, min_area_m2)
    ranked = _scored_polygons(pred, min_area_m2)
    if ranked is not None:
        truth = sides["truth"]
        truth = truth[shapely.area(truth) >= min_area_m2] if len(truth) else truth
        ap, f1s = rank_buildings(*ranked, truth, iou_threshold=iou_threshold)
        b = replace(b, ap=ap, f1_by_score=f1s)
    return b, fp, fn


def _scored_polygons(
    gdf: gpd.GeoDataFrame, min_area_m2: float
) -> tuple[Geoms, NDArray[np.float64]] | None:
    """Valid building polygons and their ``score`` column, aligned; None without scores.

    Geometries are repaired as for the unranked scores (make_valid, polygonal
    parts); features that end up empty or smaller than ``min_area_m2`` are
    dropped with their score.
    """
    if "score" not in gdf.columns or not len(gdf):
        return None
    scores = pd.to_numeric(gdf["score"], errors="coerce").to_numpy(np.float64)
    if not np.isfinite(scores).all():
        return None
    geoms = np.asarray(gdf.geometry.array, object)
    ok = ~shapely.is_missing(geoms)
    geoms, scores = geoms[ok], scores[ok]
    bad = ~shapely.is_valid(geoms)
    if bad.any():
        geoms = geoms.copy()
        geoms[bad] = [_polygonal(g) for g in shapely.make_valid(geoms[bad])]
    keep = ~shapely.is_empty(geoms) & (shapely.area(geoms) >= min_area_m2)
    return geoms[keep], scores[keep]


def _polygonal(geom: shapely.Geometry) -> shapely.Geometry:
    """The polygonal parts of a geometry (make_valid may return a collection)."""
    parts = shapely.get_parts(geom)
    polys = [p for p in parts if shapely.get_type_id(p) in (3, 6)]
    return shapely.union_all(polys) if polys else shapely.Polygon()


def _errors_frame(task: str, fp: Geoms, fn: Geoms, crs: pyproj.CRS) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(
        {"task": [task] * (len(fp) + len(fn)), "error": ["FP"] * len(fp) + ["FN"] * len(fn)},
        geometry=gpd.GeoSeries(np.concatenate([fp, fn]) if len(fp) + len(fn) else [], crs=crs),
    )
