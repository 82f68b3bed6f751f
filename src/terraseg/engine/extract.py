"""Interactive object extraction: the polygon of the object at one point of a scene.

:func:`extract_object` reads only a window around the point (never the scene):

1. the point, in the scene CRS or in ``crs`` (e.g. EPSG:4326 lon, lat), becomes a
   scene pixel (:func:`locate_point`); a point outside the scene or on nodata is
   refused with one line;
2. with a model (default ``demo-instance``, a boundary model; any model
   :func:`~terraseg.models.combine.resolve_models` accepts), the model runs on a
   ``window_px`` window centred on the point (of the scene as the model sees it,
   :func:`~terraseg.engine.adapt.adapt_scene`: resampled to the card's GSD when
   outside its tolerance, one band repeated to RGB) and the building instance under it
   is labelled as the engine labels instances (seeded watershed of the interior
   and edge probabilities, :func:`~terraseg.engine.extract_methods.instance_at`).
   A building that reaches the window's edge (not the scene's) is labelled again
   in a window twice as large, up to ``max_window_px``;
3. without a model (``model=None``), or where the model found no building at the
   point, a union of similar-colour superpixels
   (:func:`~terraseg.engine.extract_methods.grow_region`), with the same growing
   window;
4. the mask becomes a polygon in the scene CRS: traced on the pixel corners,
   regularized in metres as ``terraseg predict`` regularizes buildings, its area
   in true metres (:class:`~terraseg.core.metric.MetricFrame`).

Loaded models are kept (:func:`load_extractor`, a small LRU cache), so repeated
clicks cost one window read and one forward pass each. Importing this module
does not import torch (the model machinery loads on the first model call), so
``terraseg extract`` checks the point before paying for it.
"""

from __future__ import annotations

import functools
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyproj
import shapely
from numpy.typing import NDArray

from terraseg.core.grid import PixelWindow
from terraseg.core.metric import MetricFrame, SomeCRS, norm_crs
from terraseg.engine.extract_methods import (
    DEFAULT_LIGHTNESS_WEIGHT,
    DEFAULT_MAX_COLOR_DISTANCE,
    color_segments,
    instance_at,
    similar_union,
    to_unit_rgb,
    touches_edge,
)
from terraseg.errors import ConfigError
from terraseg.io.scene import Scene
from terraseg.vector.polygonize import polygonize_labels
from terraseg.vector.regularize import regularize_polygons

if TYPE_CHECKING:
    from terraseg.engine.inference import TilePredictor
    from terraseg.models.spec import ModelSpec

__all__ = [
    "ExtractMethod",
    "Extraction",
    "ObjectCutWarning",
    "as_record",
    "extract_object",
    "load_extractor",
    "locate_point",
]

ExtractMethod = Literal["instance", "region"]

#: Window sides are multiples of this (the U-Nets downsample 16 or 32 times).
_ALIGN_PX = 32
#: An object within this many pixels of a window side inside the scene may go on past it.
_EDGE_MARGIN_PX = 2


class ObjectCutWarning(UserWarning):
    """The object still reached the edge of the largest window: its polygon is cut there."""


@dataclass(frozen=True, slots=True)
class Extraction:
    """The object at a point.

    Attributes
    ----------
    geometry
        Polygon in the scene CRS (a MultiPolygon only if regularization split it).
    area_m2
        Area of ``geometry`` in true metres (the scene's metric frame).
    method
        ``"instance"`` (a building the model found) or ``"region"`` (colour region).
    crs
        The scene CRS.
    point_xy
        The point in the scene CRS.
    point_px
        ``(row, col)`` of the pixel holding the point.
    window
        The last window read, in pixels of the grid the object was found on: the
        scene's, or the model's when the scene was resampled to the model's GSD.
    model
        The model's name, or ``None`` for the region method.
    score
        Mean building probability of the instance (NaN for a region).
    seconds
        Wall time of the extraction.
    """

    geometry: shapely.Polygon | shapely.MultiPolygon
    area_m2: float
    method: ExtractMethod
    crs: pyproj.CRS
    point_xy: tuple[float, float]
    point_px: tuple[int, int]
    window: PixelWindow
    model: str | None
    score: float
    seconds: float


def _parse_window_px(window_px: int, max_window_px: int) -> tuple[int, int]:
    if window_px < 64 or window_px % _ALIGN_PX:
        raise ConfigError(
            f"window_px must be a multiple of {_ALIGN_PX} of at least 64, got {window_px}; "
            "e.g. 256",
            window_px=window_px,
        )
    if max_window_px < window_px or max_window_px % _ALIGN_PX:
        raise ConfigError(
            f"max_window_px ({max_window_px}) must be a multiple of {_ALIGN_PX} and at least "
            f"window_px ({window_px}); e.g. max_window_px={4 * window_px}",
            max_window_px=max_window_px,
        )
    return window_px, max_window_px


def locate_point(
    scene: Scene, point: tuple[float, float], crs: SomeCRS | None = None
) -> tuple[tuple[float, float], tuple[int, int]]:
    """The point in the scene CRS and the ``(row, col)`` of the scene pixel that holds it.

    Parameters
    ----------
    scene
        The scene.
    point
        ``(x, y)`` in ``crs``: easting, northing; longitude, latitude for EPSG:4326.
    crs
        CRS of ``point``; ``None`` for the scene CRS.

    Raises
    ------
    CRSError
        ``crs`` is unknown.
    ConfigError
        The point is not finite, cannot be transformed, or falls outside the scene.
    """
    x, y = (float(v) for v in point)
    src = None if crs is None else norm_crs(crs, what="point")
    if src is not None and not src.equals(scene.crs):
        tr = pyproj.Transformer.from_crs(src, scene.crs, always_xy=True)
        try:
            x, y = tr.transform(x, y, errcheck=True)
        except pyproj.exceptions.ProjError:
            x = y = math.nan
    given = f"({point[0]:g}, {point[1]:g})" + (f" in {src.to_string()}" if src else "")
    if not (math.isfinite(x) and math.isfinite(y)):
        raise ConfigError(
            f"point {given} cannot be placed in the scene CRS {scene.crs.to_string()}; "
            "check the coordinates and their order (x, y; lon, lat for EPSG:4326)",
            point=point,
        )
    col, row = ~scene.transform * (x, y)
    if not (0 <= row < scene.shape[0] and 0 <= col < scene.shape[1]):
        b = scene.bounds
        hint = "" if crs is not None else "; give --crs EPSG:4326 for lon,lat"
        raise ConfigError(
            f"point {given} falls outside scene '{scene.path}' (x {b.left:.6g}..{b.right:.6g}, "
            f"y {b.bottom:.6g}..{b.top:.6g} in {scene.crs.to_string()}); "
            f"give a point inside it{hint}",
            point=point,
        )
    return (float(x), float(y)), (int(math.floor(row)), int(math.floor(col)))


def _model_key(model: str) -> tuple[str, int | None]:
    """Cache key of a model: its name, and the mtime of a checkpoint file."""
    try:
        return model, os.stat(model).st_mtime_ns if Path(model).is_file() else None
    except OSError:
        return model, None


def load_extractor(model: str, *, device: str = "auto") -> tuple[TilePredictor, ModelSpec]:
    """The predictor and spec of ``model`` for extraction, kept between calls.

    The model runs once on a blank 256² window when loaded, so that the first
    answer costs what the next ones do. A checkpoint file is loaded again when
    it changes on disk. Raises what
    :func:`~terraseg.models.combine.resolve_models` raises for an unknown model.
    """
    return _load_cached(_model_key(model), device)


@functools.lru_cache(maxsize=4)
def _load_cached(key: tuple[str, int | None], device: str) -> tuple[TilePredictor, ModelSpec]:
    from terraseg.engine.inference import TilePredictor
    from terraseg.models.combine import resolve_models

    net, spec = resolve_models(key[0], None)
    if spec.class_id("building") is None:
        raise ConfigError(
            f"model '{key[0]}' has no 'building' class (classes "
            f"{[c.name for c in spec.classes]}); use an instance model such as demo-instance, "
            "or --model none for a colour region",
            model=key[0],
        )
    predictor = TilePredictor(net, device=device, batch_size=1, activation=spec.activation)
    # one pass on a blank default-size window: the first forward pass sets up the CPU
    # kernels (0.84 s against 0.2 s for the next ones, measured), so it is paid here
    blank = np.zeros((1, spec.input.n_bands, 256, 256), np.float32)
    for _ in predictor.predict_stream([blank]):
        pass
    return predictor, spec


def _model_view(
    scene: Scene, model: str, device: str
) -> tuple[Scene, tuple[TilePredictor, ModelSpec]]:
    """The scene as ``model`` sees it (its GSD, bands, value range), and the model.

    :func:`terraseg.engine.adapt.adapt_scene`, as ``terraseg predict`` does: a
    scene outside the card's GSD tolerance is read resampled to the model's GSD.
    """
    from terraseg.engine.adapt import adapt_scene, model_gsd
    from terraseg.engine.pipeline import check_bands

    predictor, spec = load_extractor(model, device=device)
    view, spec = adapt_scene(scene, spec, gsd=model_gsd(model))
    check_bands(view, spec)
    return view, (predictor, spec)


def _window_around(rc: tuple[int, int], size_px: int) -> PixelWindow:
    """A ``size_px`` square window centred on pixel ``rc`` (may run outside the scene)."""
    return PixelWindow(rc[0] - size_px // 2, rc[1] - size_px // 2, size_px, size_px)


def _inner_sides(window: PixelWindow, shape: tuple[int, int]) -> tuple[bool, bool, bool, bool]:
    """``(top, bottom, left, right)``: which sides of ``window`` lie inside the scene."""
    return (
        window.row_off > 0,
        window.row_stop < shape[0],
        window.col_off > 0,
        window.col_stop < shape[1],
    )


def _windows(rc: tuple[int, int], first_px: int, max_px: int) -> list[PixelWindow]:
    sizes = [first_px]
    while sizes[-1] < max_px:
        sizes.append(min(2 * sizes[-1], max_px))
    return [_window_around(rc, s) for s in sizes]


def _instance_mask(
    scene: Scene,
    rc: tuple[int, int],
    predictor: TilePredictor,
    spec: ModelSpec,
    windows: list[PixelWindow],
) -> tuple[NDArray[np.bool_], PixelWindow, float, bool]:
    """The instance under ``rc`` in the first window it does not leave.

    Returns ``(mask, window, score, cut)``; ``cut`` when it left even the largest window.
    """
    from terraseg.engine.postprocess import BOUNDARY_MIN_SEED_PX, BOUNDARY_SEED_P

    building = spec.class_id("building")
    assert building is not None  # load_extractor checked it
    edge = spec.class_id("building edge")
    normalize = spec.input.affine()
    mask, window, score = np.zeros((0, 0), bool), windows[0], math.nan
    for window in windows:
        raw, valid, _ = scene.read_window_with_mask(
            window, bands=list(spec.input.bands), pad="reflect"
        )
        probs = next(iter(predictor.predict_stream([raw[None]], normalize=normalize)))[0]
        local = (rc[0] - window.row_off, rc[1] - window.col_off)
        mask, score = instance_at(
            probs,
            local,
            building=building,
            edge=edge,
            valid=valid,
            seed_p=BOUNDARY_SEED_P,
            min_seed_px=BOUNDARY_MIN_SEED_PX,
        )
        if not mask.any():
            return mask, window, score, False
        if not touches_edge(mask, _inner_sides(window, scene.shape), _EDGE_MARGIN_PX):
            return mask, window, score, False
    return mask, window, score, True


#: The colour region's tolerance is tried at these fractions of ``max_color_distance``,
#: loosest first, each in every window size: the first region that closes inside a
#: window wins. A grey roof flooded into grey paving at the full tolerance is found
#: again at a stricter one instead of being cut by the largest window.
_TOLERANCE_STEPS = (1.0, 0.5, 0.25)


def _region_mask(
    scene: Scene,
    rc: tuple[int, int],
    windows: list[PixelWindow],
    params: dict[str, float],
) -> tuple[NDArray[np.bool_], PixelWindow, bool]:
    """The colour region around ``rc`` at the loosest tolerance that closes in a window."""
    bands = list(range(1, min(scene.count, 3) + 1))
    segments = []
    for window in windows:  # superpixels once per window, reused at every tolerance
        raw, valid, _ = scene.read_window_with_mask(window, bands=bands, pad="nodata")
        labels, means = color_segments(
            to_unit_rgb(raw, valid), valid=valid, segment_size_px=params["segment_size_px"]
        )
        segments.append((window, labels, means))
        local = (rc[0] - window.row_off, rc[1] - window.col_off)
        mask = similar_union(
            labels,
            means,
            local,
            max_color_distance=params["max_color_distance"],
            lightness_weight=params["lightness_weight"],
        )
        if not touches_edge(mask, _inner_sides(window, scene.shape), _EDGE_MARGIN_PX):
            return mask, window, False
    for step in _TOLERANCE_STEPS[1:]:
        for window, labels, means in segments:
            local = (rc[0] - window.row_off, rc[1] - window.col_off)
            mask = similar_union(
                labels,
                means,
                local,
                max_color_distance=step * params["max_color_distance"],
                lightness_weight=params["lightness_weight"],
            )
            if not touches_edge(mask, _inner_sides(window, scene.shape), _EDGE_MARGIN_PX):
                return mask, window, False
    return mask, window, True


def _polygon(
    mask: NDArray[np.bool_],
    window: PixelWindow,
    scene: Scene,
    frame: MetricFrame,
    *,
    regularize: bool,
) -> tuple[shapely.Polygon | shapely.MultiPolygon, float]:
    """The mask's polygon in the scene CRS and its area in m² (regularized like predict's).

    ``mask`` (over ``window``) is one 4-connected object, as the window methods return it.
    """
    _, polys = polygonize_labels(mask.astype(np.int32), window.row_off, window.col_off)
    geom_px = shapely.union_all(polys)
    metric = frame.px_to_metric(np.array([geom_px], object))
    minx, miny, maxx, maxy = geom_px.bounds
    on_scene_edge = minx <= 0 or miny <= 0 or maxx >= scene.shape[1] or maxy >= scene.shape[0]
    if regularize and not on_scene_edge:
        # as terraseg predict: tolerance 1.5 px, fall back below IoU 0.85 with the outline
        metric = regularize_polygons(
            metric, tolerance_m=1.5 * frame.pixel_m, min_iou=0.85, threads=1
        )
    area = float(shapely.area(metric)[0])
    geom = frame.metric_to_crs(metric)[0]
    return shapely.normalize(geom), area


def extract_object(
    scene: Scene,
    point: tuple[float, float],
    *,
    crs: SomeCRS | None = None,
    model: str | None = "demo-instance",
    window_px: int = 256,
    max_window_px: int = 1024,
    device: str = "auto",
    region_window_px: int = 128,
    max_region_window_px: int = 256,
    segment_size_px: float = 16.0,
    max_color_distance: float = DEFAULT_MAX_COLOR_DISTANCE,
    lightness_weight: float = DEFAULT_LIGHTNESS_WEIGHT,
    regularize: bool = True,
) -> Extraction:
    """The polygon of the object at ``point``, from a window around it.

    Parameters
    ----------
    scene
        An open scene.
    point
        ``(x, y)`` in ``crs`` (the scene CRS by default); lon, lat for EPSG:4326.
    crs
        CRS of ``point``.
    model
        Bundled model name or checkpoint (default ``demo-instance``); ``None`` for
        the model-free colour region.
    window_px, max_window_px
        First and largest side of the model's window, pixels (multiples of 32).
        The window doubles while the building reaches its edge.
    device
        ``auto``, ``cpu`` or ``cuda[:N]`` for the model.
    region_window_px, max_region_window_px
        First and largest side of the colour region's window, pixels.
    segment_size_px, max_color_distance, lightness_weight
        The colour region's superpixel area (pixels), the CIELAB distance within
        which a superpixel joins, and the weight of lightness in that distance
        (:func:`~terraseg.engine.extract_methods.grow_region`).
    regularize
        Square the outline as ``terraseg predict`` squares buildings.

    Returns
    -------
    Extraction
        Warns :class:`ObjectCutWarning` when the object reached the edge of the
        largest window (its polygon is then cut there).

    Raises
    ------
    ConfigError
        The point is outside the scene or on nodata; a bad window size or region
        parameter; a model without a building class. (CRSError: ``crs`` is
        unknown; ModelLoadError: the model cannot be loaded.)
    """
    t0 = time.perf_counter()
    first, largest = _parse_window_px(window_px, max_window_px)
    r_first, r_largest = _parse_window_px(region_window_px, max_region_window_px)
    params = _region_params(segment_size_px, max_color_distance, lightness_weight)
    xy, rc = locate_point(scene, point, crs)
    _check_valid(scene, rc, xy)
    method: ExtractMethod = "region"
    mask = np.zeros((0, 0), bool)
    score = math.nan
    window = _window_around(rc, first)
    cut = False
    grid = scene  # the grid the answer was found on: the model's, or the scene's own
    if model is not None:
        grid, (predictor, spec) = _model_view(scene, model, device)
        at = locate_point(grid, xy)[1]
        mask, window, score, cut = _instance_mask(
            grid, at, predictor, spec, _windows(at, first, largest)
        )
        method = "instance" if mask.any() else "region"
    if method == "region":
        grid = scene
        mask, window, cut = _region_mask(scene, rc, _windows(rc, r_first, r_largest), params)
    if cut:
        warnings.warn(
            f"the {method} at ({xy[0]:.6g}, {xy[1]:.6g}) still reaches the edge of the "
            f"{window.height}-px window; its polygon is cut there (raise max_window_px)",
            ObjectCutWarning,
            stacklevel=2,
        )
    frame = MetricFrame.from_scene(grid.transform, grid.crs, grid.shape)
    geom, area = _polygon(mask, window, grid, frame, regularize=regularize)
    return Extraction(
        geometry=geom,
        area_m2=area,
        method=method,
        crs=pyproj.CRS.from_user_input(scene.crs),
        point_xy=xy,
        point_px=rc,
        window=window,
        model=model if method == "instance" else None,
        score=score,
        seconds=time.perf_counter() - t0,
    )


def _region_params(
    segment_size_px: float, max_color_distance: float, lightness_weight: float
) -> dict[str, float]:
    """The colour region's parameters, checked before any pixel is read."""
    checks = (
        ("segment_size_px", segment_size_px, 1.0, "16"),
        ("max_color_distance", max_color_distance, 1e-9, f"{DEFAULT_MAX_COLOR_DISTANCE:g}"),
        ("lightness_weight", lightness_weight, 0.0, f"{DEFAULT_LIGHTNESS_WEIGHT:g}"),
    )
    for name, value, low, example in checks:
        if not (math.isfinite(value) and value >= low):
            raise ConfigError(
                f"{name} must be a finite number >= {low:g}, got {value}; e.g. {example}",
                **{name: value},
            )
    return {
        "segment_size_px": segment_size_px,
        "max_color_distance": max_color_distance,
        "lightness_weight": lightness_weight,
    }


def _check_valid(scene: Scene, rc: tuple[int, int], xy: tuple[float, float]) -> None:
    """Refuse a point on a nodata pixel (nothing to extract there)."""
    _, valid, _ = scene.read_window_with_mask(PixelWindow(rc[0], rc[1], 1, 1), pad="nodata")
    if not valid[0, 0]:
        raise ConfigError(
            f"point ({xy[0]:.6g}, {xy[1]:.6g}) falls on a nodata pixel of scene "
            f"'{scene.path}' (row {rc[0]}, col {rc[1]}); click on the imagery",
            point=xy,
        )


def as_record(ex: Extraction) -> dict[str, Any]:
    """The attributes of an extraction as one row (no geometry)."""
    return {
        "method": ex.method,
        "area_m2": ex.area_m2,
        "model": ex.model,
        "score": ex.score,
        "x": ex.point_xy[0],
        "y": ex.point_xy[1],
        "window_px": ex.window.height,
    }
