"""Plain-function entry points shared by the CLI and notebooks."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias, cast

from terraseg.engine.adapt import adapt_scene, model_gsd
from terraseg.engine.inference import TTA, TilePredictor, check_tta
from terraseg.engine.pipeline import plan_scene
from terraseg.engine.predict_dir import LargeSceneWarning, predict_to_dir
from terraseg.io.inputs import open_input, scene_input
from terraseg.io.stac import DEFAULT_ASSET
from terraseg.models.combine import resolve_models

if TYPE_CHECKING:
    import distributed
    import geopandas as gpd
    import xarray as xr

    from terraseg.config import Workflow
    from terraseg.core.grid import PixelWindow
    from terraseg.engine.batch import RunSummary
    from terraseg.io.scene import Scene

SceneLike: TypeAlias = "str | os.PathLike[str] | Scene | xr.DataArray"
"""A path or URL GDAL reads or a STAC item, an open :class:`~terraseg.io.scene.Scene`, or a
``(band, y, x)`` DataArray (in memory, or Dask-backed and then predicted lazily)."""
WindowLike: TypeAlias = "PixelWindow | Sequence[int] | None"
"""``(row_off, col_off, height, width)`` in scene pixels, a PixelWindow, or None (all)."""
RasterLike: TypeAlias = "str | os.PathLike[str] | xr.DataArray"
"""A raster path or a ``(y, x)`` DataArray with a CRS."""

__all__ = [
    "LargeSceneWarning",
    "RasterLike",
    "SceneLike",
    "WindowLike",
    "extract",
    "plan_summary",
    "predict",
    "predict_to_dir",
    "run",
    "scene_input",
    "segment",
    "vectorize",
]


def plan_summary(
    scene: str | os.PathLike[str],
    *,
    tile_px: int = 512,
    overlap_px: int = 64,
    chunk_px: int = 2048,
    assume_crs: str | None = None,
    asset: str = DEFAULT_ASSET,
) -> dict[str, Any]:
    """Describe the chunk plan of a scene (path, URL or STAC item) without reading pixels."""
    inp = scene_input(scene, asset=asset)
    sc = open_input(inp, assume_crs=assume_crs)
    grid = plan_scene(sc, tile_px=tile_px, overlap_px=overlap_px, chunk_px=chunk_px)
    return {
        "scene": str(sc.path),
        **inp.run_info(),
        "shape": list(sc.shape),
        "crs": sc.crs.to_string(),
        "gsd_m": sc.gsd_m,
        **grid.summary(),
    }


# ----------------------------------------------------------------------------- notebooks


def _as_scene(source: SceneLike, tmpdir: Path) -> Scene:
    """A Scene from a path, a Scene, or an in-memory (band, y, x) DataArray with a CRS."""
    from terraseg.io.scene import Scene

    if isinstance(source, Scene):
        return source
    if isinstance(source, (str, os.PathLike)):
        return open_input(scene_input(source))
    import xarray as xr

    if isinstance(source, xr.DataArray):
        import rioxarray  # noqa: F401  (registers .rio)

        from terraseg.errors import CRSError

        da = source if source.ndim == 3 else source.expand_dims("band")
        if da.rio.crs is None:
            raise CRSError(
                "the DataArray has no CRS; set one with da.rio.write_crs('EPSG:32633')"
            )
        path = tmpdir / "input.tif"
        da.rio.to_raster(path, tiled=True, blockxsize=256, blockysize=256)
        from terraseg.io.scene import open_scene

        return open_scene(path)
    raise TypeError(f"expected a path, a Scene or an xarray.DataArray, got {type(source).__name__}")


def _is_dask(da: xr.DataArray) -> bool:
    from dask.base import is_dask_collection

    return bool(is_dask_collection(da.data))


def _predict_lazy(
    da: xr.DataArray, window: WindowLike, *, model: str, tile_px: int, overlap_px: int,
    chunk_px: int | None, device: str, batch_size: int, probabilities: bool, tta: str = "none",
) -> xr.DataArray:
    """:func:`predict` of a Dask-backed DataArray: the lazy result, or a lazy window of it."""
    from terraseg.engine.lazy import predict_dataarray

    lazy = predict_dataarray(
        da, model=model, tile_px=tile_px, overlap_px=overlap_px,
        chunk_px=2048 if chunk_px is None else chunk_px, device=device,
        batch_size=batch_size, probabilities=probabilities, tta=tta,
    )
    if window is None:
        return lazy
    win = _window_of(window, (lazy.sizes["y"], lazy.sizes["x"]))
    rows, cols = win.to_slices()
    return lazy.isel(y=rows, x=cols)


def _window_of(window: WindowLike, shape: tuple[int, int]) -> PixelWindow:
    from terraseg.core.grid import PixelWindow

    if window is None:
        return PixelWindow(0, 0, *shape)
    if isinstance(window, PixelWindow):
        return window.clip(shape)
    row_off, col_off, height, width = (int(v) for v in window)
    return PixelWindow(row_off, col_off, height, width).clip(shape)


def predict(
    scene: SceneLike,
    *,
    model: str = "demo-instance",
    window: WindowLike = None,
    tile_px: int = 512,
    overlap_px: int = 64,
    device: str = "auto",
    batch_size: int = 8,
    probabilities: bool = False,
    chunk_px: int | None = None,
    resample: bool = True,
    tta: str = "none",
) -> xr.DataArray:
    """Predict classes for a scene or a window of it, as an ``xarray.DataArray`` with CRS.

    Uses the scene's global tile lattice, so a window's labels equal the
    full-scene run's away from the window's edge (at the edge, tiles outside
    the window's chunks are not run and the blend uses the tiles that are).

    A Dask-backed DataArray (``rioxarray.open_rasterio(path, chunks=...)``,
    odc-stac) is predicted lazily (:mod:`terraseg.engine.lazy`): the input is
    read window by window, per engine chunk, never whole, and the result is a
    Dask-backed DataArray chunked by the engine's chunk cores, equal to the
    path-based run everywhere (a ``window`` is a lazy selection of it).
    ``.compute()`` runs it; ``.rio.to_raster(path, lock=True)`` streams it to a file.

    Parameters
    ----------
    scene
        A path or URL GDAL reads, a STAC item JSON, a
        :class:`~terraseg.io.scene.Scene`, or a ``(band, y, x)`` DataArray with a
        CRS (rioxarray), in memory or Dask-backed.
    model
        Bundled model name or checkpoint path.
    window
        ``(row_off, col_off, height, width)`` in scene pixels, or a
        :class:`~terraseg.core.grid.PixelWindow`; ``None`` for the whole scene
        (only sensible for small scenes: the result is in memory).
    probabilities
        Return per-class probabilities ``(class, y, x)`` float32 instead of labels.
    chunk_px
        Chunk size in pixels: the Dask chunks of a lazy result (default 2048);
        for the other inputs, default: the window's size, at most 2048.
    resample
        A scene whose GSD is outside the model card's tolerance is predicted
        at the model's GSD and the result brought back to the scene's grid
        (nearest); ``False`` refuses it. (A Dask-backed DataArray is never
        resampled: its GSD must fit.)
    tta
        ``"d4"``: average the eight flips and rotations of each tile.

    Returns
    -------
    xarray.DataArray
        ``(y, x)`` uint8 labels (255 = nodata) or ``(class, y, x)`` probabilities,
        with ``x``/``y`` pixel-centre coordinates, the scene CRS (``.rio.crs``),
        and ``attrs["classes"]`` / ``attrs["colors"]``; Dask-backed (nothing
        computed yet) for a Dask-backed input, in memory otherwise.
    """
    import tempfile

    import xarray as xr

    from terraseg.engine.pipeline import check_bands
    from terraseg.engine.window import predict_window

    check_tta(tta)
    if isinstance(scene, xr.DataArray) and _is_dask(scene):
        return _predict_lazy(scene, window, model=model, tile_px=tile_px,
                             overlap_px=overlap_px, chunk_px=chunk_px, device=device,
                             batch_size=batch_size, probabilities=probabilities, tta=tta)
    with tempfile.TemporaryDirectory(prefix="terraseg-") as tmp:
        sc = _as_scene(scene, Path(tmp))
        win = _window_of(window, sc.shape)
        net, spec = resolve_models(model, None)
        view, spec = adapt_scene(sc, spec, gsd=model_gsd(model), resample=resample)
        check_bands(view, spec)
        predictor = TilePredictor(net, device=device, batch_size=batch_size,
                                  activation=spec.activation, tta=cast(TTA, tta))
        out = predict_window(view, spec, predictor, win, tile_px=tile_px, overlap_px=overlap_px,
                             chunk_px=chunk_px, probabilities=probabilities)
        return _result_dataarray(out, sc, win, spec)


def _result_dataarray(out: Any, sc: Scene, win: PixelWindow, spec: Any) -> xr.DataArray:
    """``out`` (labels ``(y, x)`` or probabilities ``(class, y, x)``) over ``win`` of ``sc``."""
    import numpy as np
    import rioxarray  # noqa: F401  (registers the .rio accessor)
    import xarray as xr

    probabilities = out.ndim == 3
    transform = sc.transform * sc.transform.translation(win.col_off, win.row_off)
    xs = transform.c + transform.a * (np.arange(win.width) + 0.5)
    ys = transform.f + transform.e * (np.arange(win.height) + 0.5)
    dims = ("class", "y", "x") if probabilities else ("y", "x")
    coords: dict[str, Any] = {"y": ys, "x": xs}
    if probabilities:
        coords["class"] = [c.name for c in spec.classes]
    da = xr.DataArray(out, dims=dims, coords=coords, name="probabilities" if probabilities
                      else "classes")
    da = cast("xr.DataArray", da.rio.write_crs(sc.crs).rio.write_transform(transform))
    if not probabilities:
        da = da.rio.write_nodata(255)
    da.attrs.update(classes=spec.class_names(), colors=spec.colormap(), model=spec.name,
                    **spec.building_attrs())
    return da


def vectorize(
    classes: RasterLike,
    *,
    instances: RasterLike | None = None,
    chunk_px: int = 2048,
    min_area_m2: float | None = None,
    regularize: bool = True,
) -> dict[str, gpd.GeoDataFrame]:
    """Buildings, roads, road centerlines and the road graph as GeoDataFrames.

    ``classes`` is a class COG path or a ``(y, x)`` labels DataArray (e.g. from
    :func:`predict`); ``instances`` an instance COG path/DataArray, computed
    from ``classes`` when omitted. Every GeoDataFrame is in the scene CRS.

    ``classes`` may instead be the ``(class, y, x)`` probabilities of
    ``predict(..., probabilities=True)``: then each building gets its ``score``,
    a boundary model's instances are seeded from its probabilities, and the
    model card's ``building_min_score`` and ``building_min_area_m2`` apply, so the
    buildings are the ones ``terraseg predict`` writes for the same scene.
    ``min_area_m2`` (default: the card's, else 4 m²) drops smaller buildings.
    """
    import tempfile

    from terraseg.engine.postprocess import finish_scene, label_instances, vectorize_masks
    from terraseg.models.spec import BUILDING_MIN_AREA_M2

    with tempfile.TemporaryDirectory(prefix="terraseg-") as tmp:
        t = Path(tmp)
        if not isinstance(classes, (str, os.PathLike)) and classes.ndim == 3:
            if instances is not None:
                raise ValueError("pass instances with a class raster, not with probabilities")
            from terraseg.engine.outputs import filter_tags, masks_from_probabilities

            attrs = classes.attrs
            classes_path, probs_path = masks_from_probabilities(
                classes.values, _grid_of(classes), t,
                class_names={int(k): str(v) for k, v in attrs["classes"].items()},
                tags=filter_tags(float(attrs.get("building_min_score", 0.0)),
                                 float(attrs.get("building_min_area_m2",
                                                 BUILDING_MIN_AREA_M2)),
                                 attrs.get("building_seed_p"),
                                 str(attrs.get("building_landscape", "edge"))))
            vector: dict[str, Any] = {} if min_area_m2 is None else {"min_area_m2": min_area_m2}
            finished = finish_scene(classes_path, t / "instances.tif", chunk_px=chunk_px,
                                    probabilities_path=probs_path, regularize=regularize,
                                    **vector)
            return finished.layers.as_dict()
        classes_path = _as_raster_path(classes, t / "classes.tif")
        if instances is None:
            inst_path = t / "instances.tif"
            label_instances(classes_path, inst_path, chunk_px=chunk_px)
        else:
            inst_path = _as_raster_path(instances, t / "instances.tif")
        layers = vectorize_masks(classes_path, inst_path, chunk_px=chunk_px,
                                 min_area_m2=BUILDING_MIN_AREA_M2 if min_area_m2 is None
                                 else min_area_m2,
                                 regularize=regularize)
        return layers.as_dict()


def _as_raster_path(source: RasterLike, path: Path) -> Path:
    if isinstance(source, (str, os.PathLike)):
        return Path(source)
    import rioxarray  # noqa: F401

    from terraseg.io.raster_sink import RasterSink

    da = source
    names = {int(k): str(v) for k, v in da.attrs.get("classes", {}).items()} or None
    with RasterSink(path, like=_grid_of(da),
                    dtype=str(da.dtype), nodata=da.rio.nodata if da.rio.nodata is not None else 0,
                    class_names=names) as sink:
        from terraseg.core.grid import PixelWindow

        sink.write(PixelWindow(0, 0, *da.shape[-2:]), da.values.reshape(1, *da.shape[-2:]))
    return path


def _grid_of(da: xr.DataArray) -> dict[str, Any]:
    import rioxarray  # noqa: F401  (registers the .rio accessor)

    return {"crs": da.rio.crs, "transform": da.rio.transform(), "shape": da.shape[-2:]}


def run(
    workflow: str | os.PathLike[str] | Workflow,
    *,
    client: distributed.Client | None = None,
    out: str | os.PathLike[str] | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> RunSummary:
    """Run a workflow (path or :class:`~terraseg.config.Workflow`); returns a RunSummary.

    Uses ``client`` (or the workflow's cluster settings) for the chunk tasks.
    """
    from terraseg.config import Workflow, load_workflow
    from terraseg.engine.batch import run_workflow

    wf = workflow if isinstance(workflow, Workflow) else load_workflow(workflow)
    return run_workflow(wf, out=out, resume=resume, overwrite=overwrite, client=client)


def segment(
    scene: SceneLike,
    *,
    method: str = "slic",
    out: str | os.PathLike[str] | None = None,
    window: WindowLike = None,
    overwrite: bool = False,
    **params: Any,
) -> tuple[xr.DataArray, gpd.GeoDataFrame]:
    """Segment a scene without a model; the raster as a DataArray and the segment polygons.

    Runs :func:`terraseg.engine.segment.segment_scene` over the whole scene, out
    of core (into ``out``, or a temporary folder), then loads ``window`` of the
    result (the whole scene by default: only sensible for small scenes).

    Parameters
    ----------
    scene
        A path or URL, a :class:`~terraseg.io.scene.Scene`, or an in-memory
        ``(band, y, x)`` DataArray with a CRS.
    method
        ``"threshold"``, ``"index"``, ``"kmeans"``, ``"slic"``, ``"watershed"``,
        ``"felzenszwalb"`` or ``"canny"``.
    out
        Keep the raster (``classes.tif``, ``segments.tif`` or ``edges.tif``),
        ``segments.gpkg``, ``segments.qgz`` and ``segment.json`` here.
    window
        ``(row_off, col_off, height, width)`` of the result to load, scene pixels.
    **params
        The method's parameters (``expression``, ``band``, ``index``, ``threshold``,
        ``k``, ``segment_size_m2``, ``compactness``, ``scale``, ``min_size_m2``,
        ``sigma_px``, ``edge_low``, ``edge_high``, ``min_length_m``, ``chunk_px``,
        ``seed``, ``labelling``, ``classes``), as :func:`~terraseg.engine.segment.segment_scene`.

    Returns
    -------
    (xarray.DataArray, geopandas.GeoDataFrame)
        ``(y, x)`` classes or edges (uint8, 255 = nodata, ``attrs["classes"]``) or
        global segment ids (uint32, 0 = nodata) with the scene CRS; and every
        segment polygon (or edge line) of the scene, in the scene CRS.
    """
    import tempfile

    import numpy as np
    import rioxarray  # noqa: F401  (registers the .rio accessor)
    import xarray as xr

    from terraseg.engine.segment import METHODS, SegmentMethod, segment_scene
    from terraseg.errors import ConfigError
    from terraseg.io.raster_sink import read_class_names
    from terraseg.io.scene import open_scene

    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    with tempfile.TemporaryDirectory(prefix="terraseg-") as tmp:
        sc = _as_scene(scene, Path(tmp))
        dest = Path(out) if out is not None else Path(tmp) / "segment"
        res = segment_scene(sc, dest, method=cast(SegmentMethod, method),
                            overwrite=overwrite, **params)
        win = _window_of(window, sc.shape)
        raster = open_scene(res.raster)
        values, transform = raster.read_window(win, bands=[1], pad="nodata")
        xs = transform.c + transform.a * (np.arange(win.width) + 0.5)
        ys = transform.f + transform.e * (np.arange(win.height) + 0.5)
        da = xr.DataArray(values[0], dims=("y", "x"), coords={"y": ys, "x": xs},
                          name=res.raster.stem)
        da = cast("xr.DataArray", da.rio.write_crs(sc.crs).rio.write_transform(transform))
        da = da.rio.write_nodata(raster.nodata)
        da.attrs["method"] = method
        if res.raster.name != "segments.tif":
            da.attrs["classes"] = read_class_names(res.raster)
        return da, res.read_segments()


def extract(
    scene: SceneLike,
    *,
    point: tuple[float, float],
    crs: str | int | None = None,
    model: str | None = "demo-instance",
    window_px: int = 256,
    max_window_px: int = 1024,
    device: str = "auto",
    regularize: bool = True,
) -> gpd.GeoDataFrame:
    """The polygon of the object at ``point`` (``(x, y)`` in ``crs``, default the scene's).

    Reads only a window around the point (``window_px``, doubled up to
    ``max_window_px`` while the building reaches its edge): the building of the
    instance ``model`` under the point, or (``model=None``, or no building there)
    the union of the similar-colour superpixels around it. Parameters as
    :func:`terraseg.engine.extract.extract_object`; ``crs="EPSG:4326"`` for
    ``(lon, lat)``. ``scene`` is a path or URL, a :class:`~terraseg.io.scene.Scene`
    (opened once: the cheapest for many clicks) or a small ``(band, y, x)``
    DataArray with a CRS (written to a temporary GeoTIFF on every call). The model
    is loaded once and kept: later calls cost a window read and a forward pass.

    Returns
    -------
    geopandas.GeoDataFrame
        One row in the scene CRS: ``method`` (``"instance"`` or ``"region"``),
        ``area_m2`` (true metres), ``model`` (None for a region), ``score`` (mean
        building probability; NaN for a region), ``x``, ``y`` (the point in the
        scene CRS), ``window_px`` (side of the last window read), ``geometry``.
        A point outside the scene or on nodata raises ConfigError, an unknown
        ``crs`` CRSError, an unknown model ModelLoadError.
    """
    import tempfile

    import geopandas as gpd

    from terraseg.engine.extract import as_record, extract_object

    with tempfile.TemporaryDirectory(prefix="terraseg-") as tmp:
        sc = _as_scene(scene, Path(tmp))
        ex = extract_object(sc, point, crs=crs, model=model, window_px=window_px,
                            max_window_px=max_window_px, device=device, regularize=regularize)
    return gpd.GeoDataFrame([as_record(ex)], geometry=[ex.geometry], crs=ex.crs)
