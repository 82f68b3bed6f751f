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

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypeAlias

import geopandas as gpd
import numpy as np
import pandas as pd
import pyproj
import shapely
from numpy.typing import NDArray

from terraseg.core.grid import PixelWindow
from terraseg.core.match import PolygonMatch, match_polygons
from terraseg.core.metric import local_metric_crs
from terraseg.errors import ConfigError, CRSError, CRSMismatchError, SceneReadError
from terraseg.evaluate.apls import RoadScores, _prf, _road_scores, score_roads

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

Geoms: TypeAlias = "NDArray[np.object_]"
Task: TypeAlias = Literal["auto", "buildings", "roads", "pixels"]
CLASS_NAMES = {0: "background", 1: "building", 2: "road"}
"""Names of terraseg's class values (others are reported as ``class <n>``)."""
RASTER_SUFFIXES = frozenset({".tif", ".tiff", ".vrt", ".img", ".jp2"})
_LAYER_NAMES = {"buildings": ("buildings",), "roads": ("road_centerlines", "centerlines")}


class EvaluationWarning(UserWarning):
    """Something in the inputs that the scores should be read with (repairs, empties)."""


# --------------------------------------------------------------------------- buildings


@dataclass(frozen=True)
class BuildingScores:
    """Building detection scores (SpaceNet: one-to-one matches at IoU >= threshold).

    Attributes
    ----------
    n_pred, n_truth
        Buildings on each side after the ``min_area_m2`` filter.
    tp
        Matched pairs; FP = ``n_pred - tp``, FN = ``n_truth - tp``.
    precision, recall, f1
        With the empty rules of the module docstring.
    mean_iou
        Mean IoU of the matched pairs (0 when none; 1 when both sides are empty).
    iou_threshold, min_area_m2
        The settings used.
    """

    n_pred: int
    n_truth: int
    tp: int
    precision: float
    recall: float
    f1: float
    mean_iou: float
    iou_threshold: float
    min_area_m2: float

    @property
    def fp(self) -> int:
        """Unmatched predictions."""
        return self.n_pred - self.tp

    @property
    def fn(self) -> int:
        """Unmatched true buildings."""
        return self.n_truth - self.tp

    def to_dict(self) -> dict[str, float | int]:
        """A JSON-ready dict."""
        return {
            "n_pred": self.n_pred,
            "n_truth": self.n_truth,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "mean_iou": self.mean_iou,
            "iou_threshold": self.iou_threshold,
            "min_area_m2": self.min_area_m2,
        }


def _building_scores(
    pred: Geoms, truth: Geoms, iou_threshold: float, min_area_m2: float
) -> tuple[BuildingScores, Geoms, Geoms]:
    """Scores, false-positive and false-negative polygons (metres)."""
    if not (0 < iou_threshold <= 1):
        raise ConfigError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    if not (min_area_m2 >= 0 and math.isfinite(min_area_m2)):
        raise ConfigError(f"min_area_m2 must be a finite number >= 0, got {min_area_m2}")
    pred = pred[shapely.area(pred) >= min_area_m2] if len(pred) else pred
    truth = truth[shapely.area(truth) >= min_area_m2] if len(truth) else truth
    m = match_polygons(pred, truth, iou_threshold=iou_threshold)
    tp = len(m.iou)
    p, r, f1 = _prf(tp, len(pred), tp, len(truth))
    mean_iou = float(m.iou.mean()) if tp else (1.0 if not len(pred) and not len(truth) else 0.0)
    fp = np.delete(pred, m.pred_index) if len(pred) else pred
    fn = np.delete(truth, m.truth_index) if len(truth) else truth
    scores = BuildingScores(
        len(pred), len(truth), tp, p, r, f1, mean_iou, iou_threshold, min_area_m2
    )
    return scores, fp, fn


def score_buildings(
    pred: Sequence[Any] | Geoms,
    truth: Sequence[Any] | Geoms,
    *,
    iou_threshold: float = 0.5,
    min_area_m2: float = 0.0,
) -> BuildingScores:
    """Building precision, recall, F1 and mean IoU (SpaceNet rule).

    Parameters
    ----------
    pred, truth
        Valid (Multi)Polygons in one CRS whose units are metres.
    iou_threshold
        A predicted and a true building match when their IoU is at least this.
    min_area_m2
        Polygons smaller than this (m²) are removed from BOTH sides first.

    Examples
    --------
    >>> from shapely import box
    >>> s = score_buildings([box(0, 0, 10, 10), box(20, 0, 30, 10)], [box(2, 0, 12, 10)])
    >>> s.tp, s.fp, s.fn, round(s.mean_iou, 4), round(s.f1, 4)
    (1, 1, 0, 0.6667, 0.6667)
    """
    return _building_scores(
        np.asarray(pred, object), np.asarray(truth, object), iou_threshold, min_area_m2
    )[0]


# --------------------------------------------------------------------------- pixels


def confusion_matrix(
    pred: NDArray[Any], truth: NDArray[Any], *, nodata: int | None = 255
) -> NDArray[np.int64]:
    """The ``(256, 256)`` confusion matrix of two class arrays (rows truth, cols pred).

    Pixels equal to ``nodata`` in either array are ignored. Values must be
    integers in ``[0, 255]``; sum the matrices of windows to stream a scene.

    Examples
    --------
    >>> cm = confusion_matrix(np.array([[1, 1], [0, 255]]), np.array([[1, 0], [0, 0]]))
    >>> cm[:2, :2].tolist()
    [[1, 1], [0, 1]]
    """
    p = np.asarray(pred).ravel()
    t = np.asarray(truth).ravel()
    if p.shape != t.shape:
        raise ConfigError(f"class arrays differ in size: {p.shape} and {t.shape}")
    for a in (p, t):
        if a.size and (a.min() < 0 or a.max() > 255 or not np.all(np.mod(a, 1) == 0)):
            raise ConfigError(
                "class values must be integers in 0-255 (255 = nodata); "
                f"got values in [{a.min()}, {a.max()}]"
            )
    keep = np.ones(p.shape, bool) if nodata is None else (p != nodata) & (t != nodata)
    idx = t[keep].astype(np.int64) * 256 + p[keep].astype(np.int64)
    return np.bincount(idx, minlength=256 * 256).reshape(256, 256).astype(np.int64)


@dataclass(frozen=True, eq=False)
class PixelScores:
    """Per-class pixel scores from a confusion matrix.

    Attributes
    ----------
    confusion
        ``(256, 256)`` counts, rows truth, cols prediction.
    n_ignored
        Pixels skipped as nodata.
    classes
        The classes present on either side, ascending.

    Notes
    -----
    For a class present on either side: IoU = TP / (TP + FP + FN), precision =
    TP / (TP + FP), recall = TP / (TP + FN), a ratio with a zero denominator being 0.
    ``mean_iou`` averages IoU over the present classes, background included;
    ``mean_iou_foreground`` over those other than 0.
    """

    confusion: NDArray[np.int64]
    n_ignored: int
    classes: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        present = (self.confusion.sum(0) + self.confusion.sum(1)) > 0
        object.__setattr__(self, "classes", tuple(int(c) for c in np.flatnonzero(present)))

    def per_class(self) -> dict[int, dict[str, float | int]]:
        """``{class: {iou, precision, recall, f1, truth_px, pred_px}}``."""
        cm = self.confusion
        out: dict[int, dict[str, float | int]] = {}
        for c in self.classes:
            tp, n_p, n_t = int(cm[c, c]), int(cm[:, c].sum()), int(cm[c, :].sum())
            union = n_p + n_t - tp
            p = tp / n_p if n_p else 0.0
            r = tp / n_t if n_t else 0.0
            out[c] = {
                "iou": tp / union if union else 0.0,
                "precision": p,
                "recall": r,
                "f1": 2 * p * r / (p + r) if p + r else 0.0,
                "truth_px": n_t,
                "pred_px": n_p,
            }
        return out

    @property
    def n_pixels(self) -> int:
        """Pixels compared (nodata excluded)."""
        return int(self.confusion.sum())

    @property
    def accuracy(self) -> float:
        """Share of compared pixels whose class agrees (1.0 when none compared)."""
        n = self.n_pixels
        return float(np.trace(self.confusion)) / n if n else 1.0

    @property
    def mean_iou(self) -> float:
        """Mean IoU over the present classes (1.0 when none)."""
        ious = [v["iou"] for v in self.per_class().values()]
        return float(np.mean(ious)) if ious else 1.0

    @property
    def mean_iou_foreground(self) -> float:
        """Mean IoU over the present classes other than 0 (1.0 when none)."""
        ious = [v["iou"] for c, v in self.per_class().items() if c != 0]
        return float(np.mean(ious)) if ious else 1.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; classes keyed by name (``CLASS_NAMES`` or ``class <n>``)."""
        return {
            "n_pixels": self.n_pixels,
            "n_ignored": self.n_ignored,
            "accuracy": self.accuracy,
            "mean_iou": self.mean_iou,
            "mean_iou_foreground": self.mean_iou_foreground,
            "classes": {
                CLASS_NAMES.get(c, f"class {c}"): {"value": c, **v}
                for c, v in self.per_class().items()
            },
        }


def score_pixels(
    pred: str | os.PathLike[str],
    truth: str | os.PathLike[str],
    *,
    nodata: int | None = 255,
    window_px: int = 1024,
) -> PixelScores:
    """Per-class pixel scores of two single-band class rasters on the same grid.

    Reads both files window by window (``window_px`` square windows), so memory does
    not grow with the scene. Pixels equal to ``nodata`` (or to either file's own
    nodata value) in either raster are ignored.

    Raises
    ------
    SceneReadError
        A file is missing or not a readable raster.
    ConfigError
        The rasters differ in size or transform (not the same grid).
    CRSMismatchError
        The rasters are in different CRSs.
    """
    from terraseg.io.scene import open_scene

    if window_px < 1:
        raise ConfigError(f"window_px must be >= 1, got {window_px}", window_px=window_px)
    sp, st = open_scene(pred), open_scene(truth)
    if sp.crs != st.crs:
        raise CRSMismatchError(
            f"'{pred}' is in {sp.crs} but '{truth}' is in {st.crs}; resample the prediction "
            f"onto the truth grid (gdalwarp -t_srs {st.crs} -te/-tr of the truth -r near)",
            pred_crs=str(sp.crs),
            truth_crs=str(st.crs),
        )
    if sp.shape != st.shape or not sp.transform.almost_equals(st.transform, precision=1e-9):
        raise ConfigError(
            f"'{pred}' ({sp.shape[0]}x{sp.shape[1]} px, origin {sp.transform.c:.3f}, "
            f"{sp.transform.f:.3f}, pixel {sp.transform.a:g}) and '{truth}' "
            f"({st.shape[0]}x{st.shape[1]} px, origin {st.transform.c:.3f}, {st.transform.f:.3f}, "
            f"pixel {st.transform.a:g}) are not on the same grid; resample the prediction onto "
            "the truth grid (gdalwarp -te/-tr of the truth, -r near)",
            pred_shape=sp.shape,
            truth_shape=st.shape,
        )
    ignore = [float(v) for v in {nodata, sp.nodata, st.nodata} if v is not None]
    cm = np.zeros((256, 256), np.int64)
    ignored = 0
    rows, cols = st.shape
    for r0 in range(0, rows, window_px):
        for c0 in range(0, cols, window_px):
            w = PixelWindow(r0, c0, min(window_px, rows - r0), min(window_px, cols - c0))
            p = sp.read_window(w, bands=[1], pad="nodata")[0][0]
            t = st.read_window(w, bands=[1], pad="nodata")[0][0]
            keep = ~(np.isin(p, ignore) | np.isin(t, ignore))
            cm += confusion_matrix(p[keep], t[keep], nodata=None)
            ignored += w.size - int(keep.sum())
    return PixelScores(cm, ignored)


# --------------------------------------------------------------------------- files


def _is_raster(path: Path) -> bool:
    return path.suffix.lower() in RASTER_SUFFIXES


def _check_exists(path: Path, role: str) -> None:
    if not path.exists():
        raise SceneReadError(
            f"cannot read {role} '{path}': file not found; check the path", path=str(path)
        )


def _list_layers(path: Path, role: str) -> list[tuple[str, str]]:
    """``[(layer, geometry type)]`` of a vector file (one unnamed layer for Parquet)."""
    if path.suffix.lower() in (".parquet", ".geoparquet"):
        return [(path.stem, "Unknown")]
    import pyogrio

    try:
        return [(str(n), str(t)) for n, t in pyogrio.list_layers(path)]
    except Exception as exc:  # pyogrio raises DataSourceError (a RuntimeError) and others
        raise SceneReadError(
            f"cannot read {role} '{path}' as a vector file ({exc}); pass a GeoPackage, "
            "GeoJSON, FlatGeobuf or GeoParquet file, or a GeoTIFF class raster",
            path=str(path),
        ) from exc


def _kind(geometry_type: str) -> str | None:
    t = geometry_type.lower()
    if "polygon" in t:
        return "buildings"
    if "line" in t:
        return "roads"
    return None


def _pick_layers(
    path: Path, role: str, layers: list[tuple[str, str]], task: Task, layer: str | None
) -> dict[str, str]:
    """``{task: layer}`` for the tasks this file can serve (``task`` or, for auto, both)."""
    names = [n for n, _ in layers]
    listing = ", ".join(f"{n} ({t})" for n, t in layers) or "none"
    if layer is not None:
        if layer not in names:
            raise ConfigError(
                f"{role} '{path}' has no layer '{layer}'; its layers: {listing}",
                path=str(path),
                layer=layer,
                layers=names,
            )
        if task != "auto":
            return {task: layer}
        kind = _kind(dict(layers)[layer]) or _sniff(path, layer)
        return {kind: layer} if kind else {}
    wanted = ["buildings", "roads"] if task == "auto" else [task]
    out: dict[str, str] = {}
    for t in wanted:
        by_name = [n for n in _LAYER_NAMES[t] if n in names]
        by_type = [n for n, g in layers if _kind(g) == t]
        if by_name:
            out[t] = by_name[0]
        elif len(layers) == 1 and (task != "auto" or _kind(layers[0][1]) in (t, None)):
            kind = _kind(layers[0][1]) or (t if task != "auto" else _sniff(path, names[0]))
            if kind == t:
                out[t] = names[0]
        elif len(by_type) == 1:
            out[t] = by_type[0]
    return out


def _sniff(path: Path, layer: str) -> str | None:
    """``"buildings"`` or ``"roads"`` from the geometry types of a layer's first features."""
    gdf = _read_layer(path, layer, max_features=100)
    types = set(gdf.geometry.dropna().geom_type)
    if types and all("Polygon" in t for t in types):
        return "buildings"
    if types and all("LineString" in t for t in types):
        return "roads"
    return None


def _read_layer(path: Path, layer: str, max_features: int | None = None) -> gpd.GeoDataFrame:
    if path.suffix.lower() in (".parquet", ".geoparquet"):
        try:
            gdf = gpd.read_parquet(path)
        except Exception as exc:
            raise SceneReadError(
                f"cannot read GeoParquet '{path}' ({exc}); check the file", path=str(path)
            ) from exc
        return gdf if max_features is None else gdf.iloc[:max_features]
    import pyogrio

    try:
        return pyogrio.read_dataframe(path, layer=layer, max_features=max_features)
    except Exception as exc:
        raise SceneReadError(
            f"cannot read layer '{layer}' of '{path}' ({exc}); check the file",
            path=str(path),
            layer=layer,
        ) from exc


def _repair(gdf: gpd.GeoDataFrame, kind: str, what: str) -> Geoms:
    """Valid polygons (buildings) or LineStrings (roads) of a layer; repairs and drops warned.

    A building keeps the polygonal parts of its (repaired) geometry, one feature
    one building; roads are exploded into LineStrings.
    """
    geoms = np.asarray(gdf.geometry.array, object)
    missing = shapely.is_missing(geoms) if len(geoms) else np.zeros(0, bool)
    if missing.any():
        _warn(f"{what}: ignored {int(missing.sum())} features without geometry")
    geoms = geoms[~missing]
    invalid = ~shapely.is_valid(geoms) if len(geoms) else np.zeros(0, bool)
    if invalid.any():
        geoms = geoms.copy()
        geoms[invalid] = shapely.make_valid(geoms[invalid])
        _warn(f"{what}: repaired {int(invalid.sum())} invalid geometries with make_valid")
    if kind == "buildings":
        ids = [shapely.GeometryType.POLYGON, shapely.GeometryType.MULTIPOLYGON]
    else:
        ids = [shapely.GeometryType.LINESTRING]
    if len(geoms):
        geoms = geoms[~shapely.is_empty(geoms)]
        other = ~np.isin(shapely.get_type_id(geoms), ids)
        if kind == "roads" or other.any():
            parts, index = shapely.get_parts(
                geoms[other] if kind == "buildings" else geoms, return_index=True
            )
            ok = np.isin(shapely.get_type_id(parts), ids) & ~shapely.is_empty(parts)
            if kind == "roads":
                n_other = len(geoms) - len(np.unique(index[ok]))
                geoms = parts[ok]
            else:  # the polygonal parts of collections left by make_valid
                kept = [shapely.union_all(parts[ok & (index == i)]) for i in np.unique(index[ok])]
                n_other = int(other.sum()) - len(kept)
                geoms = np.concatenate([geoms[~other], np.asarray(kept, object)])
            want = "polygons" if kind == "buildings" else "lines"
            if n_other and not len(geoms):
                raise ConfigError(
                    f"{what} holds no {want}, but {kind} are scored on {want}; pass the "
                    f"layer with the {kind} (--pred-layer/--truth-layer) or another --task",
                    task=kind,
                )
            if n_other:
                _warn(f"{what}: ignored {n_other} features that are not {want}")
    return np.asarray(geoms, object)


def _warn(message: str) -> None:
    warnings.warn(message, EvaluationWarning, stacklevel=3)


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
            b, fp, fn = _building_scores(sides["pred"], sides["truth"], iou_threshold, min_area_m2)
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


def _errors_frame(task: str, fp: Geoms, fn: Geoms, crs: pyproj.CRS) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(
        {"task": [task] * (len(fp) + len(fn)), "error": ["FP"] * len(fp) + ["FN"] * len(fn)},
        geometry=gpd.GeoSeries(np.concatenate([fp, fn]) if len(fp) + len(fn) else [], crs=crs),
    )
